//! Asynchronous successive halving (docs/search-notes.md §2.3–§2.5), in both variants:
//! - **promotion** (the paper; pause/resume): a trial runs to one rung at a time and is
//!   resumed from its checkpoint when it ranks in the top 1/η of its rung;
//! - **stopping** (Ray, Optuna, Syne Tune ASHA-STOP): a trial runs to the full budget and is
//!   stopped at a milestone when it is not in the top 1/η of the values recorded there.
//!
//! Edge-case semantics (the libraries disagree, so we pick and test one): the comparison
//! *includes* the trial itself; a rung with fewer than `grace` results never stops anyone and
//! never promotes (`grace = η` is Ray/Syne Tune's "continue"; `grace = 0` or `1` is Optuna's
//! "only the best so far continues"); at least one trial per rung always survives.

use std::collections::{BTreeMap, BTreeSet};

use super::random::RandomSearch;
use super::{Decision, Observation, Params, SearchError, Searcher, Space, Suggestion, TrialId};

/// Rung geometry and the small-rung policy.
#[derive(Debug, Clone, PartialEq)]
pub struct AshaConfig {
    /// Reduction factor η ≥ 2.
    pub eta: f64,
    /// First rung's resource r.
    pub min_resource: f64,
    /// Full budget R (always the last rung).
    pub max_resource: f64,
    /// Results a rung needs before it stops or promotes anyone (see module docs).
    pub grace: usize,
    /// Minimum early-stopping rate s: rungs are r·η^(s+k).
    pub bracket: u32,
}

impl AshaConfig {
    pub fn new(eta: f64, min_resource: f64, max_resource: f64) -> Self {
        Self {
            eta,
            min_resource,
            max_resource,
            grace: eta.max(0.0) as usize,
            bracket: 0,
        }
    }

    pub fn validate(&self) -> Result<(), SearchError> {
        if !(self.eta >= 2.0 && self.eta.is_finite()) {
            return Err(SearchError::invalid("asha.eta", "must be at least 2"));
        }
        if !(self.min_resource > 0.0 && self.min_resource.is_finite()) {
            return Err(SearchError::invalid(
                "asha.min_resource",
                "must be positive",
            ));
        }
        if !(self.max_resource >= self.min_resource && self.max_resource.is_finite()) {
            return Err(SearchError::invalid(
                "asha.max_resource",
                "must be at least min_resource",
            ));
        }
        Ok(())
    }

    /// Rung resources r·η^(s+k) below R, then R itself.
    pub fn rungs(&self) -> Vec<f64> {
        let mut out = Vec::new();
        let mut r = self.min_resource * self.eta.powi(self.bracket as i32);
        while r < self.max_resource * (1.0 - 1e-9) {
            out.push(r);
            r *= self.eta;
        }
        out.push(self.max_resource);
        out
    }

    /// How many of `n` results at a rung survive, or `None` while the rung is under grace.
    fn keep(&self, n: usize) -> Option<usize> {
        (n >= self.grace.max(1)).then(|| ((n as f64 / self.eta).floor() as usize).max(1))
    }
}

/// The stopping rule on its own: milestones at the rungs, values compared with what others
/// recorded there. Reusable on top of any searcher (see [`super::WithStopping`]).
#[derive(Debug, Clone)]
pub struct StopRule {
    cfg: AshaConfig,
    rungs: Vec<f64>,
    /// Values recorded per rung (the last rung, the full budget, needs no decision).
    recorded: Vec<Vec<f64>>,
    /// Next milestone index per trial.
    next_rung: BTreeMap<TrialId, usize>,
}

impl StopRule {
    pub fn new(cfg: AshaConfig) -> Result<Self, SearchError> {
        cfg.validate()?;
        let rungs = cfg.rungs();
        Ok(Self {
            recorded: vec![Vec::new(); rungs.len()],
            rungs,
            cfg,
            next_rung: BTreeMap::new(),
        })
    }

    pub fn rungs(&self) -> &[f64] {
        &self.rungs
    }

    /// Record `value` at `step` and decide. NaN/∞ stops at once (divergence).
    pub fn report(&mut self, trial: TrialId, step: f64, value: f64) -> Decision {
        if !value.is_finite() {
            return Decision::Stop;
        }
        let k = self.next_rung.entry(trial).or_insert(0);
        let last = self.rungs.len() - 1;
        while *k < last && step >= self.rungs[*k] * (1.0 - 1e-9) {
            let rung = &mut self.recorded[*k];
            rung.push(value);
            *k += 1;
            let Some(keep) = self.cfg.keep(rung.len()) else {
                continue;
            };
            let mut sorted = rung.clone();
            sorted.sort_by(f64::total_cmp);
            if value > sorted[keep - 1] {
                return Decision::Stop;
            }
        }
        Decision::Continue
    }
}

/// Which ASHA flavour a searcher runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Promotion,
    Stopping,
}

/// ASHA over random configurations (new configurations come from [`RandomSearch`]).
pub struct Asha {
    cfg: AshaConfig,
    variant: Variant,
    rungs: Vec<f64>,
    sampler: RandomSearch,
    next: TrialId,
    params: BTreeMap<TrialId, Params>,
    /// Rung each trial is running to (promotion variant).
    running_to: BTreeMap<TrialId, usize>,
    /// Finished results per rung: (value, trial); failures are +∞.
    results: Vec<Vec<(f64, TrialId)>>,
    promoted: Vec<BTreeSet<TrialId>>,
    stop: StopRule,
}

impl Asha {
    pub fn new(
        space: Space,
        cfg: AshaConfig,
        variant: Variant,
        seed: u64,
    ) -> Result<Self, SearchError> {
        let stop = StopRule::new(cfg.clone())?;
        let rungs = cfg.rungs();
        Ok(Self {
            results: vec![Vec::new(); rungs.len()],
            promoted: vec![BTreeSet::new(); rungs.len()],
            rungs,
            cfg,
            variant,
            sampler: RandomSearch::new(space, seed),
            next: 0,
            params: BTreeMap::new(),
            running_to: BTreeMap::new(),
            stop,
        })
    }

    pub fn rungs(&self) -> &[f64] {
        &self.rungs
    }

    /// The next promotion, highest rung first (promotion variant only).
    pub fn next_promotion(&mut self) -> Option<Suggestion> {
        if self.variant != Variant::Promotion {
            return None;
        }
        for k in (0..self.rungs.len().saturating_sub(1)).rev() {
            let Some(keep) = self.cfg.keep(self.results[k].len()) else {
                continue;
            };
            let mut ranked = self.results[k].clone();
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let pick = ranked
                .iter()
                .take(keep)
                .find(|(v, t)| v.is_finite() && !self.promoted[k].contains(t))
                .map(|&(_, t)| t);
            if let Some(t) = pick {
                self.promoted[k].insert(t);
                self.running_to.insert(t, k + 1);
                return Some(Suggestion {
                    trial: t,
                    params: self.params.get(&t).cloned().unwrap_or_default(),
                    budget: Some(self.rungs[k + 1]),
                    resume: true,
                });
            }
        }
        None
    }

    /// A fresh configuration at the bottom rung (or at full budget when stopping).
    pub fn new_trial(&mut self) -> Suggestion {
        let trial = self.next;
        self.next += 1;
        let params = self.sampler.config(trial);
        self.params.insert(trial, params.clone());
        let budget = match self.variant {
            Variant::Promotion => {
                self.running_to.insert(trial, 0);
                Some(self.rungs[0])
            }
            Variant::Stopping => Some(self.cfg.max_resource),
        };
        Suggestion {
            trial,
            params,
            budget,
            resume: false,
        }
    }
}

impl Searcher for Asha {
    fn suggest(&mut self, n: usize) -> Result<Vec<Suggestion>, SearchError> {
        Ok((0..n)
            .map(|_| self.next_promotion().unwrap_or_else(|| self.new_trial()))
            .collect())
    }

    fn observe(&mut self, trial: TrialId, obs: &Observation) -> Result<(), SearchError> {
        if trial >= self.next {
            return Err(SearchError::UnknownTrial(trial));
        }
        if self.variant == Variant::Promotion {
            let k = self.running_to.get(&trial).copied().unwrap_or(0);
            let v = if obs.failed || !obs.objective.is_finite() {
                f64::INFINITY
            } else {
                obs.objective
            };
            self.results[k].push((v, trial));
        }
        Ok(())
    }

    fn should_stop(&mut self, trial: TrialId, step: f64, value: f64) -> Decision {
        match self.variant {
            Variant::Stopping => self.stop.report(trial, step, value),
            Variant::Promotion if !value.is_finite() => Decision::Stop,
            Variant::Promotion => Decision::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{ParamDef, RealSpec};

    fn obs(v: f64) -> Observation {
        Observation {
            objective: v,
            cost: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn rung_geometry() {
        assert_eq!(AshaConfig::new(3.0, 1.0, 9.0).rungs(), vec![1.0, 3.0, 9.0]);
        assert_eq!(
            AshaConfig::new(3.0, 1.0, 10.0).rungs(),
            vec![1.0, 3.0, 9.0, 10.0]
        );
        let mut c = AshaConfig::new(3.0, 1.0, 27.0);
        c.bracket = 1;
        assert_eq!(c.rungs(), vec![3.0, 9.0, 27.0]);
        assert!(AshaConfig::new(1.0, 1.0, 9.0).validate().is_err());
    }

    #[test]
    fn stopping_matches_hand_worked_rung() {
        // η = 3, grace = η: fewer than 3 results at a rung → continue (Ray / Syne Tune).
        let mut s = StopRule::new(AshaConfig::new(3.0, 1.0, 9.0)).unwrap();
        assert_eq!(s.report(0, 1.0, 5.0), Decision::Continue); // n = 1 < 3
        assert_eq!(s.report(1, 1.0, 3.0), Decision::Continue); // n = 2 < 3
        assert_eq!(s.report(2, 1.0, 4.0), Decision::Stop); // [3,4,5], keep 1: 4 > 3
        assert_eq!(s.report(3, 1.0, 2.0), Decision::Continue); // [2,3,4,5], keep 1
        assert_eq!(s.report(4, 1.0, 3.5), Decision::Stop); // keep 1 of 5
        assert_eq!(s.report(5, 1.0, 2.5), Decision::Continue); // keep 2 of 6: ≤ 2.5
        // Trial 3 reaches rung 1 (step 3) alone: under grace there → continue, even if bad.
        assert_eq!(s.report(3, 3.0, 100.0), Decision::Continue);
        // The full budget (step 9) is never a stopping milestone.
        assert_eq!(s.report(3, 9.0, 100.0), Decision::Continue);
        // A report that skips past milestones records every rung it crossed.
        assert_eq!(s.report(6, 3.0, 0.1), Decision::Continue);
        assert_eq!(s.report(7, 1.0, f64::NAN), Decision::Stop);

        // grace = 1: Optuna's rule, only the best so far continues in a small rung.
        let mut c = AshaConfig::new(3.0, 1.0, 9.0);
        c.grace = 1;
        let mut s = StopRule::new(c).unwrap();
        assert_eq!(s.report(0, 1.0, 5.0), Decision::Continue); // best so far
        assert_eq!(s.report(1, 1.0, 3.0), Decision::Continue); // best so far
        assert_eq!(s.report(2, 1.0, 4.0), Decision::Stop); // not the best of 3
        assert_eq!(s.report(3, 1.0, 6.0), Decision::Stop); // keep 1 of 4
    }

    #[test]
    fn promotion_matches_hand_worked_rungs() {
        let space = Space::new(vec![ParamDef::real("x", RealSpec::linear(0.0, 1.0))]).unwrap();
        let mut a =
            Asha::new(space, AshaConfig::new(3.0, 1.0, 9.0), Variant::Promotion, 1).unwrap();
        let first = a.suggest(4).unwrap();
        assert!(first.iter().all(|s| s.budget == Some(1.0) && !s.resume));
        a.observe(0, &obs(0.5)).unwrap();
        a.observe(1, &obs(0.2)).unwrap();
        // Two results < η = 3 in rung 0: nothing is promoted yet, a new trial starts.
        let s = a.suggest(1).unwrap();
        assert_eq!((s[0].trial, s[0].resume), (4, false));
        a.observe(2, &obs(0.9)).unwrap();
        // Three results, keep ⌊3/3⌋ = 1: trial 1 (0.2) goes to rung 1 (resource 3).
        let s = a.suggest(2).unwrap();
        assert_eq!((s[0].trial, s[0].budget, s[0].resume), (1, Some(3.0), true));
        assert_eq!((s[1].trial, s[1].resume), (5, false));
        a.observe(3, &obs(0.1)).unwrap();
        let s = a.suggest(1).unwrap();
        assert_eq!((s[0].trial, s[0].budget), (3, Some(3.0)));
        a.observe(4, &obs(0.3)).unwrap();
        a.observe(5, &obs(0.4)).unwrap();
        // Six results keep 2: trials 3 and 1, both already promoted → new trial 6.
        assert_eq!(a.suggest(1).unwrap()[0].trial, 6);
        a.observe(1, &obs(0.15)).unwrap();
        a.observe(3, &obs(0.05)).unwrap();
        // Rung 1 holds 2 results (< η): no promotion to the top rung yet.
        assert_eq!(a.suggest(1).unwrap()[0].trial, 7);
        a.observe(6, &obs(0.05)).unwrap();
        a.observe(7, &obs(0.01)).unwrap();
        // Rung 0 has 8 results → keep 2 = {7 (0.01), 6 (0.05)}: 7 goes first.
        let s = a.suggest(1).unwrap();
        assert_eq!((s[0].trial, s[0].budget), (7, Some(3.0)));
        a.observe(7, &obs(0.02)).unwrap();
        // Rung 1 now has 3 results: the best (trial 7, 0.02) goes to the top rung, 9.
        let s = a.suggest(1).unwrap();
        assert_eq!((s[0].trial, s[0].budget, s[0].resume), (7, Some(9.0), true));
    }
}
