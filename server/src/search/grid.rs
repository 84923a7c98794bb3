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

/// Why a grid was not built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GridError {
    /// `levels` was 0.
    NoLevels,
    /// The grid has more than `max_points` points; `bound` is the unconditioned product of
    /// the value counts (`None`: it overflows `u64`).
    TooLarge {
        max_points: usize,
        bound: Option<u64>,
    },
}

impl std::fmt::Display for GridError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoLevels => write!(f, "grid levels must be at least 1"),
            Self::TooLarge { max_points, bound } => {
                let bound = bound.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string());
                write!(
                    f,
                    "the grid has more than {max_points} points (up to {bound} combinations)"
                )
            }
        }
    }
}

impl From<GridError> for SearchError {
    fn from(e: GridError) -> Self {
        SearchError::invalid("grid", e.to_string())
    }
}

impl GridSearch {
    /// Enumerates the grid up front; `levels ≥ 1` points per real parameter. A grid of more
    /// than `max_points` points is refused: the product of the value counts is checked first
    /// (with checked arithmetic), and the conditional enumeration stops as soon as it passes
    /// `max_points`, so no more than `max_points` points are ever held.
    pub fn new(space: &Space, levels: usize, max_points: usize) -> Result<Self, GridError> {
        if levels == 0 {
            return Err(GridError::NoLevels);
        }
        let values: Vec<Vec<Value>> = space
            .params()
            .iter()
            .map(|p| Self::values(p, levels))
            .collect();
        let bound = values
            .iter()
            .try_fold(1u64, |acc, v| acc.checked_mul(v.len() as u64));
        let too_large = GridError::TooLarge { max_points, bound };
        let mut points = vec![Params::new()];
        for (p, values) in space.params().iter().zip(&values) {
            let mut next = Vec::with_capacity(points.len().min(max_points));
            for partial in points {
                if space.is_active(p, &partial) {
                    if next.len().saturating_add(values.len()) > max_points {
                        return Err(too_large);
                    }
                    for v in values {
                        let mut q = partial.clone();
                        q.insert(p.name.clone(), v.clone());
                        next.push(q);
                    }
                } else {
                    if next.len() >= max_points {
                        return Err(too_large);
                    }
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
        let mut g = GridSearch::new(&space, 3, 12).unwrap();
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
        // One point fewer than the grid is refused, naming both the cap and the product.
        let err = GridSearch::new(&space, 3, 11).err();
        assert_eq!(
            err,
            Some(GridError::TooLarge {
                max_points: 11,
                bound: Some(18)
            })
        );
    }

    #[test]
    fn a_grid_whose_product_overflows_is_refused_without_allocating() {
        let names: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
        let space = Space::new(
            names
                .iter()
                .map(|n| ParamDef::real(n, RealSpec::linear(0.0, 1.0)))
                .collect(),
        )
        .unwrap();
        // 100 levels per parameter: 10^24 points, past u64.
        let started = std::time::Instant::now();
        let err = GridSearch::new(&space, 100, 10_000).err();
        assert_eq!(
            err,
            Some(GridError::TooLarge {
                max_points: 10_000,
                bound: None
            })
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
