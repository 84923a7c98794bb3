//! Random search: the baseline every other method must beat. Trial `k` draws from the RNG for
//! `(seed, k)`, so replays and parallel suggestion orders give the same configurations.

use super::rng::rng_for;
use super::{Decision, Observation, SearchError, Searcher, Space, Suggestion, TrialId};

/// RNG stream id for random configurations.
const STREAM: u64 = 0x7261_6e64; // "rand"

pub struct RandomSearch {
    space: Space,
    seed: u64,
    next: TrialId,
}

impl RandomSearch {
    pub fn new(space: Space, seed: u64) -> Self {
        Self {
            space,
            seed,
            next: 0,
        }
    }

    /// The configuration trial `k` gets (also used by ASHA for its new configurations).
    pub fn config(&self, k: TrialId) -> super::Params {
        self.space
            .sample_uniform(&mut rng_for(self.seed, STREAM, k))
    }
}

impl Searcher for RandomSearch {
    fn suggest(&mut self, n: usize) -> Result<Vec<Suggestion>, SearchError> {
        Ok((0..n)
            .map(|_| {
                let trial = self.next;
                self.next += 1;
                Suggestion {
                    trial,
                    params: self.config(trial),
                    budget: None,
                    resume: false,
                }
            })
            .collect())
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
    use crate::search::{ParamDef, RealSpec};

    #[test]
    fn same_seed_same_configs_whatever_the_batching() {
        let space = Space::new(vec![
            ParamDef::real("lr", RealSpec::log(1e-5, 1e-1)),
            ParamDef::categorical("opt", &["adam", "sgd"]),
        ])
        .unwrap();
        let mut a = RandomSearch::new(space.clone(), 7);
        let mut b = RandomSearch::new(space, 7);
        let xa = a.suggest(6).unwrap();
        let mut xb = b.suggest(2).unwrap();
        xb.extend(b.suggest(4).unwrap());
        assert_eq!(xa, xb);
        assert!(a.observe(99, &Observation::default()).is_err());
    }
}
