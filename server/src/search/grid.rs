//! Grid search: every combination of `levels` evenly spaced basic-space points per real
//! parameter (deduplicated after integer rounding) and every categorical choice, honouring
//! conditions. Deterministic; the seed is unused.

use super::{
    Decision, Domain, Observation, ParamDef, Params, SearchError, Searcher, Space, Suggestion,
    TrialId, Value,
};

pub struct GridSearch {
    points: Vec<Params>,
    next: TrialId,
}

impl GridSearch {
    /// Enumerate the grid up front; `levels ≥ 1` points per real parameter.
    pub fn new(space: &Space, levels: usize) -> Result<Self, SearchError> {
        if levels == 0 {
            return Err(SearchError::invalid("grid.levels", "must be at least 1"));
        }
        let mut points = vec![Params::new()];
        for p in space.params() {
            let values = Self::values(p, levels);
            let mut next = Vec::new();
            for partial in points {
                if space.is_active(p, &partial) {
                    for v in &values {
                        let mut q = partial.clone();
                        q.insert(p.name.clone(), v.clone());
                        next.push(q);
                    }
                } else {
                    next.push(partial);
                }
            }
            points = next;
        }
        Ok(Self { points, next: 0 })
    }

    fn values(p: &ParamDef, levels: usize) -> Vec<Value> {
        match &p.domain {
            Domain::Categorical(c) => c.iter().map(|c| Value::Choice(c.clone())).collect(),
            Domain::Real(s) => {
                let mut out: Vec<f64> = Vec::new();
                for i in 0..levels {
                    let u = if levels == 1 {
                        0.5
                    } else {
                        i as f64 / (levels - 1) as f64
                    };
                    let v = s.from_unit(u);
                    if !out.contains(&v) {
                        out.push(v);
                    }
                }
                out.into_iter().map(Value::Real).collect()
            }
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

impl Searcher for GridSearch {
    fn suggest(&mut self, n: usize) -> Result<Vec<Suggestion>, SearchError> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(params) = self.points.get(self.next as usize) else {
                break;
            };
            out.push(Suggestion {
                trial: self.next,
                params: params.clone(),
                budget: None,
                resume: false,
            });
            self.next += 1;
        }
        Ok(out)
    }

    fn observe(&mut self, trial: TrialId, _obs: &Observation) -> Result<(), SearchError> {
        if trial >= self.next {
            return Err(SearchError::UnknownTrial(trial));
        }
        Ok(())
    }

    fn should_stop(&mut self, _trial: TrialId, _step: f64, _value: f64) -> Decision {
        Decision::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::RealSpec;

    #[test]
    fn grid_enumerates_conditional_product() {
        let space = Space::new(vec![
            ParamDef::categorical("method", &["lora", "full"]),
            ParamDef::real("r", RealSpec::log(4.0, 16.0).integer()).when("method", &["lora"]),
            ParamDef::real("lr", RealSpec::log(1e-4, 1e-2)),
        ])
        .unwrap();
        let mut g = GridSearch::new(&space, 3).unwrap();
        // lora: 3 r × 3 lr; full: 3 lr.
        assert_eq!(g.len(), 12);
        let all = g.suggest(100).unwrap();
        assert_eq!(all.len(), 12);
        assert!(g.suggest(1).unwrap().is_empty());
        let r: Vec<f64> = all
            .iter()
            .filter_map(|s| s.params.get("r")?.as_f64())
            .collect();
        assert!(r.contains(&4.0) && r.contains(&8.0) && r.contains(&16.0));
    }
}
