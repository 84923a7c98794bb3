//! Sweep search algorithms (docs/design.md §5): pure, seeded, and driven through one trait.
//!
//! Every algorithm minimises its objective (a controller negates maximised metrics) and draws
//! each random choice from an RNG derived from `(seed, counter)`, never from global state. Its
//! state is therefore a pure function of the ordered calls it has seen: a controller rebuilds
//! it after a restart by replaying the sweep's event log (suggestions in trial order, then the
//! observations and intermediate reports in the order they were recorded).

pub mod asha;
pub mod bandit;

pub mod carbs;
pub mod gp;
pub mod grid;
pub mod hyperband;
pub mod pareto;
pub mod random;
pub mod rng;
pub mod space;

pub use space::{Condition, Domain, ParamDef, Params, RealSpec, Space, Transform, Value};

/// A trial's id inside one sweep; assigned by the algorithm in suggestion order (0, 1, 2, …).
pub type TrialId = u64;

/// Errors of the search layer, typed so the API can map them to `INVALID_ARGUMENT` once.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SearchError {
    /// The search space or an algorithm option is invalid; `field` names the culprit.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// An observation or report named a trial this algorithm never suggested.
    #[error("unknown trial {0}")]
    UnknownTrial(TrialId),
    /// The space holds a parameter kind this algorithm cannot search.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl SearchError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// What to run next.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub trial: TrialId,
    pub params: Params,
    /// Resource (steps, fidelity) to run the trial up to; `None` means the full budget.
    pub budget: Option<f64>,
    /// True when `trial` already ran to a lower rung and must resume from its checkpoint
    /// (ASHA promotion) rather than start fresh.
    pub resume: bool,
}

/// The result of one finished (or stopped) trial run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    /// The objective (lower is better). Ignored when `failed`.
    pub objective: f64,
    /// What the run cost (seconds, FLOPs…): CARBS models it, budgets sum it.
    pub cost: f64,
    /// True when the hyperparameters caused the failure (divergence, OOM). Infrastructure
    /// failures must be retried by the controller and never reported here.
    pub failed: bool,
    /// Resource the run reached (its last step); `None` means the full budget.
    pub resource: Option<f64>,
    /// Intermediate `(step, value)` reports, in step order.
    pub reports: Vec<(f64, f64)>,
}

/// Early-stopping verdict for a running trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Stop,
}

/// One interface for every algorithm, so the controller and the benchmark drive them alike.
pub trait Searcher: Send {
    /// Up to `n` new runs. Fewer (possibly none) when the algorithm is exhausted (grid) or
    /// must wait for results (synchronous rungs).
    fn suggest(&mut self, n: usize) -> Result<Vec<Suggestion>, SearchError>;
    /// Record a finished run of `trial`.
    fn observe(&mut self, trial: TrialId, obs: &Observation) -> Result<(), SearchError>;
    /// Record an intermediate report and say whether the trial should stop now.
    fn should_stop(&mut self, trial: TrialId, step: f64, value: f64) -> Decision;
}

impl<S: Searcher + ?Sized> Searcher for Box<S> {
    fn suggest(&mut self, n: usize) -> Result<Vec<Suggestion>, SearchError> {
        (**self).suggest(n)
    }
    fn observe(&mut self, trial: TrialId, obs: &Observation) -> Result<(), SearchError> {
        (**self).observe(trial, obs)
    }
    fn should_stop(&mut self, trial: TrialId, step: f64, value: f64) -> Decision {
        (**self).should_stop(trial, step, value)
    }
}

/// One recorded call on a [`Searcher`]: what a controller persists so it can rebuild the
/// algorithm's state after a restart by [`replay`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `suggest(n)` was called (its suggestions are recomputed identically on replay).
    Suggest(usize),
    Observe(TrialId, Observation),
    Report {
        trial: TrialId,
        step: f64,
        value: f64,
    },
}

/// Rebuild a fresh searcher's state from its event log. Searchers are pure functions of their
/// seed and the ordered calls, so the result is identical to the instance that was lost; the
/// returned suggestions let the caller check them against the persisted trials.
pub fn replay<S: Searcher + ?Sized>(
    searcher: &mut S,
    events: &[Event],
) -> Result<Vec<Suggestion>, SearchError> {
    let mut suggested = Vec::new();
    for e in events {
        match e {
            Event::Suggest(n) => suggested.extend(searcher.suggest(*n)?),
            Event::Observe(t, o) => searcher.observe(*t, o)?,
            Event::Report { trial, step, value } => {
                searcher.should_stop(*trial, *step, *value);
            }
        }
    }
    Ok(suggested)
}

/// Any searcher with an ASHA stopping rule layered on its intermediate reports (for example
/// CARBS + stopping, the hybrid docs/search-notes.md §1.15 suggests): suggestions and observations
/// go to `inner`, stop decisions come from `stopper`.
pub struct WithStopping<S> {
    pub inner: S,
    pub stopper: asha::StopRule,
}

impl<S: Searcher> Searcher for WithStopping<S> {
    fn suggest(&mut self, n: usize) -> Result<Vec<Suggestion>, SearchError> {
        self.inner.suggest(n)
    }
    fn observe(&mut self, trial: TrialId, obs: &Observation) -> Result<(), SearchError> {
        self.inner.observe(trial, obs)
    }
    fn should_stop(&mut self, trial: TrialId, step: f64, value: f64) -> Decision {
        let d = self.stopper.report(trial, step, value);
        if d == Decision::Continue {
            self.inner.should_stop(trial, step, value)
        } else {
            d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::asha::{Asha, AshaConfig, Variant};
    use super::bandit::{Bandit, BanditConfig};
    use super::carbs::{Carbs, CarbsConfig};
    use super::hyperband::Hyperband;
    use super::random::RandomSearch;
    use super::*;

    fn space() -> Space {
        Space::new(vec![
            ParamDef::real("lr", RealSpec::log(1e-5, 1e-1)),
            ParamDef::real("x", RealSpec::linear(-1.0, 1.0)),
        ])
        .unwrap()
    }

    fn objective(p: &Params) -> f64 {
        let lr = p.get("lr").and_then(Value::as_f64).unwrap_or(1.0);
        let x = p.get("x").and_then(Value::as_f64).unwrap_or(0.0);
        (lr.log10() + 3.0).powi(2) + x * x
    }

    /// Drive a searcher with interleaved suggest / report / observe calls, logging events.
    fn drive(s: &mut dyn Searcher, rounds: usize) -> Vec<Event> {
        let mut log = Vec::new();
        let mut pending = s.suggest(2).unwrap();
        log.push(Event::Suggest(2));
        for _ in 0..rounds {
            let sug = pending.remove(0);
            let v = objective(&sug.params);
            let step = sug.budget.unwrap_or(1.0);
            s.should_stop(sug.trial, step, v);
            log.push(Event::Report {
                trial: sug.trial,
                step,
                value: v,
            });
            let o = Observation {
                objective: v,
                cost: step,
                ..Default::default()
            };
            s.observe(sug.trial, &o).unwrap();
            log.push(Event::Observe(sug.trial, o));
            pending.extend(s.suggest(1).unwrap());
            log.push(Event::Suggest(1));
        }
        log
    }

    #[test]
    fn replaying_the_event_log_rebuilds_every_searcher() {
        let cfg = || AshaConfig::new(3.0, 1.0, 9.0);
        let carbs = CarbsConfig {
            seed: 4,
            candidates_per_dim: 10,
            ..Default::default()
        };
        let makers: Vec<Box<dyn Fn() -> Box<dyn Searcher>>> = vec![
            Box::new(|| Box::new(RandomSearch::new(space(), 4))),
            Box::new(move || Box::new(Carbs::new(space(), carbs.clone()).unwrap())),
            Box::new(move || Box::new(Asha::new(space(), cfg(), Variant::Promotion, 4).unwrap())),
            Box::new(move || Box::new(Asha::new(space(), cfg(), Variant::Stopping, 4).unwrap())),
            Box::new(move || {
                Box::new(Hyperband::new(space(), cfg(), Variant::Promotion, 4).unwrap())
            }),
            Box::new(|| Box::new(Bandit::new(space(), BanditConfig::default()).unwrap())),
        ];
        for make in makers {
            let mut original = make();
            let log = drive(original.as_mut(), 12);
            let mut rebuilt = make();
            replay(rebuilt.as_mut(), &log).unwrap();
            assert_eq!(original.suggest(3).unwrap(), rebuilt.suggest(3).unwrap());
        }
    }
}
