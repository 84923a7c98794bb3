//! Hyperband as brackets of ASHA (docs/search-notes.md §2.2, the asynchronous form of Li et al.):
//! bracket `b` is an ASHA with minimum early-stopping rate `b`, so bracket 0 is the most
//! aggressive and the last bracket is random search at the full budget. New trials go to
//! brackets in proportion to Hyperband's `⌈n_brackets·η^s/(s+1)⌉` (s = rungs above the
//! bottom) by a deterministic weighted round-robin; promotions are served first.

use std::collections::BTreeMap;

use super::asha::{Asha, AshaConfig, Variant};
use super::rng::hash_words;
use super::{Decision, Observation, SearchError, Searcher, Space, Suggestion, TrialId};

pub struct Hyperband {
    brackets: Vec<Asha>,
    weights: Vec<f64>,
    assigned: Vec<u64>,
    /// Global trial id → (bracket, bracket-local trial id), and back.
    to_local: BTreeMap<TrialId, (usize, TrialId)>,
    to_global: BTreeMap<(usize, TrialId), TrialId>,
    next: TrialId,
}

impl Hyperband {
    /// `cfg.bracket` is ignored: every bracket 0..=s_max is run.
    pub fn new(
        space: Space,
        cfg: AshaConfig,
        variant: Variant,
        seed: u64,
    ) -> Result<Self, SearchError> {
        cfg.validate()?;
        let s_max =
            ((cfg.max_resource / cfg.min_resource).ln() / cfg.eta.ln() + 1e-9).floor() as u32;
        let n_brackets = s_max + 1;
        let mut brackets = Vec::new();
        let mut weights = Vec::new();
        for b in 0..n_brackets {
            let mut c = cfg.clone();
            c.bracket = b;
            let s = (n_brackets - 1 - b) as i32;
            weights.push((n_brackets as f64 * cfg.eta.powi(s) / (s as f64 + 1.0)).ceil());
            let bracket_seed = hash_words(&[seed, b as u64]);
            brackets.push(Asha::new(space.clone(), c, variant, bracket_seed)?);
        }
        Ok(Self {
            assigned: vec![0; brackets.len()],
            brackets,
            weights,
            to_local: BTreeMap::new(),
            to_global: BTreeMap::new(),
            next: 0,
        })
    }

    pub fn bracket_count(&self) -> usize {
        self.brackets.len()
    }

    fn globalise(&mut self, b: usize, mut s: Suggestion) -> Suggestion {
        let g = match self.to_global.get(&(b, s.trial)) {
            Some(&g) => g,
            None => {
                let g = self.next;
                self.next += 1;
                self.to_global.insert((b, s.trial), g);
                self.to_local.insert(g, (b, s.trial));
                g
            }
        };
        s.trial = g;
        s
    }
}

impl Searcher for Hyperband {
    fn suggest(&mut self, n: usize) -> Result<Vec<Suggestion>, SearchError> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let promo = (0..self.brackets.len())
                .find_map(|b| self.brackets[b].next_promotion().map(|s| (b, s)));
            let (b, s) = match promo {
                Some(p) => p,
                None => {
                    // Weighted round-robin: the bracket furthest below its share goes next.
                    let b = (0..self.brackets.len())
                        .min_by(|&i, &j| {
                            let fi = (self.assigned[i] as f64 + 1.0) / self.weights[i];
                            let fj = (self.assigned[j] as f64 + 1.0) / self.weights[j];
                            fi.total_cmp(&fj).then(i.cmp(&j))
                        })
                        .unwrap_or(0);
                    self.assigned[b] += 1;
                    (b, self.brackets[b].new_trial())
                }
            };
            out.push(self.globalise(b, s));
        }
        Ok(out)
    }

    fn observe(&mut self, trial: TrialId, obs: &Observation) -> Result<(), SearchError> {
        let &(b, local) = self
            .to_local
            .get(&trial)
            .ok_or(SearchError::UnknownTrial(trial))?;
        self.brackets[b].observe(local, obs)
    }

    fn should_stop(&mut self, trial: TrialId, step: f64, value: f64) -> Decision {
        match self.to_local.get(&trial) {
            Some(&(b, local)) => self.brackets[b].should_stop(local, step, value),
            None => Decision::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{ParamDef, RealSpec};

    #[test]
    fn brackets_share_new_trials_by_hyperband_weights() {
        let space = Space::new(vec![ParamDef::real("x", RealSpec::linear(0.0, 1.0))]).unwrap();
        let mut h =
            Hyperband::new(space, AshaConfig::new(3.0, 1.0, 9.0), Variant::Promotion, 5).unwrap();
        assert_eq!(h.bracket_count(), 3);
        // Weights ⌈3·3^s/(s+1)⌉ for s = 2, 1, 0: 9, 5, 3.
        assert_eq!(h.weights, vec![9.0, 5.0, 3.0]);
        let s = h.suggest(17).unwrap();
        let ids: Vec<u64> = s.iter().map(|s| s.trial).collect();
        assert_eq!(ids, (0..17).collect::<Vec<_>>());
        let budgets: Vec<f64> = s.iter().filter_map(|s| s.budget).collect();
        assert_eq!(budgets.iter().filter(|&&b| b == 1.0).count(), 9);
        assert_eq!(budgets.iter().filter(|&&b| b == 3.0).count(), 5);
        assert_eq!(budgets.iter().filter(|&&b| b == 9.0).count(), 3);
        assert!(h.observe(99, &Observation::default()).is_err());
    }
}
