//! Bandits over categorical choices (docs/search-notes.md §2.7), with CARBS for the continuous rest.
//!
//! Arms are *contexts*: complete assignments of the categorical parameters (conditions
//! honoured). Flat mode runs UCB1 (`Q + α·sqrt(ln t / N)`) or Gaussian Thompson sampling over
//! all contexts. Hierarchical mode is AutoRAG-HP's Hier-MAB: a high-level bandit picks which
//! categorical to change, a low-level bandit per categorical picks its value, the others keep
//! the previous pull's values; a reward updates the pulled high arm and the low arms of every
//! value in the context (our reading of the paper's ambiguous text). Each context that has
//! active real parameters gets its own CARBS over them, seeded from `(seed, context)`.
//!
//! Rewards are the negated objective, min-max normalised over everything observed so far
//! (failures count as the worst value); pending pulls count as pulls so a batch spreads out.

use std::collections::BTreeMap;

use super::carbs::{Carbs, CarbsConfig};
use super::rng::{hash_words, normal, rng_for};
use super::{
    Decision, Domain, Observation, Params, SearchError, Searcher, Space, Suggestion, TrialId, Value,
};

/// RNG stream id for bandit draws.
const STREAM: u64 = 0x6261_6e64; // "band"

/// How an arm is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// UCB1 with exploration constant α (the paper uses 1).
    Ucb { alpha: f64 },
    /// Gaussian Thompson sampling: θ ~ N(Q, σ²/(N+1)) on normalised rewards.
    Thompson { sigma: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct BanditConfig {
    pub seed: u64,
    pub policy: Policy,
    pub hierarchical: bool,
    /// Options of the per-context CARBS (its seed is derived per context).
    pub carbs: CarbsConfig,
}

impl Default for BanditConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            policy: Policy::Ucb { alpha: 1.0 },
            hierarchical: true,
            carbs: CarbsConfig::default(),
        }
    }
}

/// Pull count and the objectives received.
#[derive(Debug, Clone, Default)]
struct Arm {
    pulls: u64,
    sum: f64,
    observed: u64,
}

pub struct Bandit {
    cfg: BanditConfig,
    space: Space,
    /// Categorical parameters: (name, choices).
    cats: Vec<(String, Vec<String>)>,
    contexts: Vec<Params>,
    flat: Vec<Arm>,
    high: Vec<Arm>,
    low: Vec<Vec<Arm>>,
    current: Option<usize>,
    carbs: BTreeMap<usize, Carbs>,
    trials: BTreeMap<TrialId, (usize, Option<usize>, Option<TrialId>)>,
    lo: f64,
    hi: f64,
    t: u64,
    next: TrialId,
}

impl Bandit {
    pub fn new(space: Space, cfg: BanditConfig) -> Result<Self, SearchError> {
        let cats: Vec<(String, Vec<String>)> = space
            .params()
            .iter()
            .filter_map(|p| match &p.domain {
                Domain::Categorical(c) => Some((p.name.clone(), c.clone())),
                Domain::Real(_) => None,
            })
            .collect();
        let mut contexts = vec![Params::new()];
        for p in space.params() {
            let Domain::Categorical(choices) = &p.domain else {
                continue;
            };
            let mut next = Vec::new();
            for c in contexts {
                if space.is_active(p, &c) {
                    for v in choices {
                        let mut q = c.clone();
                        q.insert(p.name.clone(), Value::Choice(v.clone()));
                        next.push(q);
                    }
                } else {
                    next.push(c);
                }
            }
            contexts = next;
        }
        if let Policy::Ucb { alpha } | Policy::Thompson { sigma: alpha } = cfg.policy
            && !(alpha >= 0.0 && alpha.is_finite())
        {
            return Err(SearchError::invalid(
                "bandit.policy",
                "constant must be ≥ 0",
            ));
        }
        Ok(Self {
            flat: vec![Arm::default(); contexts.len()],
            high: vec![Arm::default(); cats.len()],
            low: cats
                .iter()
                .map(|(_, c)| vec![Arm::default(); c.len()])
                .collect(),
            cats,
            contexts,
            cfg,
            space,
            current: None,
            carbs: BTreeMap::new(),
            trials: BTreeMap::new(),
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
            t: 0,
            next: 0,
        })
    }

    /// The categorical contexts (arms), in enumeration order.
    pub fn contexts(&self) -> &[Params] {
        &self.contexts
    }

    /// Mean normalised reward of an arm (1 = best objective seen, 0 = worst).
    fn q(&self, a: &Arm) -> Option<f64> {
        if a.observed == 0 {
            return None;
        }
        let mean = a.sum / a.observed as f64;
        Some(if self.hi > self.lo {
            (self.hi - mean) / (self.hi - self.lo)
        } else {
            0.5
        })
    }

    /// Index of the best arm among `arms` (restricted to `allowed`), ties to the lowest index.
    fn choose(&self, arms: &[&Arm], draw: u64) -> usize {
        if let Some(i) = arms.iter().position(|a| a.pulls == 0) {
            return i;
        }
        let total: u64 = arms.iter().map(|a| a.pulls).sum::<u64>().max(1);
        let mut rng = rng_for(self.cfg.seed, STREAM, draw);
        let mut best = (f64::NEG_INFINITY, 0);
        for (i, a) in arms.iter().enumerate() {
            let q = self.q(a).unwrap_or(0.5);
            let score = match self.cfg.policy {
                Policy::Ucb { alpha } => q + alpha * ((total as f64).ln() / a.pulls as f64).sqrt(),
                Policy::Thompson { sigma } => {
                    q + sigma / ((a.observed as f64) + 1.0).sqrt() * normal(&mut rng)
                }
            };
            if score > best.0 {
                best = (score, i);
            }
        }
        best.1
    }

    fn context_index(&self, ctx: &Params) -> Option<usize> {
        self.contexts.iter().position(|c| c == ctx)
    }

    /// Pick the next context; also returns the high arm used (hierarchical mode).
    fn pick(&mut self) -> (usize, Option<usize>) {
        let draw = self.t;
        self.t += 1;
        if !self.cfg.hierarchical || self.cats.is_empty() {
            let arms: Vec<&Arm> = self.flat.iter().collect();
            return (self.choose(&arms, draw), None);
        }
        let Some(cur) = self.current else {
            // First pull: the search centre's choices.
            let mut ctx = Params::new();
            for p in self.space.params() {
                if matches!(p.domain, Domain::Categorical(_)) && self.space.is_active(p, &ctx) {
                    ctx.insert(p.name.clone(), p.center_value());
                }
            }
            return (self.context_index(&ctx).unwrap_or(0), None);
        };
        let mut ctx = self.contexts[cur].clone();
        // High level: which active categorical to change.
        let active: Vec<usize> = (0..self.cats.len())
            .filter(|&i| ctx.contains_key(&self.cats[i].0))
            .collect();
        let high_arms: Vec<&Arm> = active.iter().map(|&i| &self.high[i]).collect();
        let h = active[self.choose(&high_arms, draw ^ 0x5555)];
        let low_arms: Vec<&Arm> = self.low[h].iter().collect();
        let v = self.choose(&low_arms, draw ^ 0xAAAA);
        ctx.insert(
            self.cats[h].0.clone(),
            Value::Choice(self.cats[h].1[v].clone()),
        );
        // Re-resolve conditions: drop now-inactive choices, fill newly active ones greedily.
        let mut resolved = Params::new();
        for p in self.space.params() {
            let Domain::Categorical(choices) = &p.domain else {
                continue;
            };
            if !self.space.is_active(p, &resolved) {
                continue;
            }
            let v = ctx.get(&p.name).cloned().unwrap_or_else(|| {
                let i = self.cats.iter().position(|c| c.0 == p.name).unwrap_or(0);
                let arms: Vec<&Arm> = self.low[i].iter().collect();
                Value::Choice(choices[self.choose(&arms, draw ^ 0xF0F0)].clone())
            });
            resolved.insert(p.name.clone(), v);
        }
        (self.context_index(&resolved).unwrap_or(cur), Some(h))
    }

    fn low_index(&self, cat: usize, ctx: &Params) -> Option<usize> {
        let v = ctx.get(&self.cats[cat].0)?.as_choice()?;
        self.cats[cat].1.iter().position(|c| c == v)
    }

    fn carbs_for(&mut self, ctx: usize) -> Result<Option<&mut Carbs>, SearchError> {
        if !self.carbs.contains_key(&ctx) {
            let Some(sub) = self.space.real_subspace(&self.contexts[ctx]) else {
                return Ok(None);
            };
            let cfg = CarbsConfig {
                seed: hash_words(&[self.cfg.seed, ctx as u64]),
                ..self.cfg.carbs.clone()
            };
            self.carbs.insert(ctx, Carbs::new(sub, cfg)?);
        }
        Ok(self.carbs.get_mut(&ctx))
    }
}

impl Searcher for Bandit {
    fn suggest(&mut self, n: usize) -> Result<Vec<Suggestion>, SearchError> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (ctx, high) = self.pick();
            self.current = Some(ctx);
            self.flat[ctx].pulls += 1;
            if let Some(h) = high {
                self.high[h].pulls += 1;
            }
            let context = self.contexts[ctx].clone();
            for i in 0..self.cats.len() {
                if let Some(v) = self.low_index(i, &context) {
                    self.low[i][v].pulls += 1;
                }
            }
            let mut params = context;
            let mut local = None;
            if let Some(c) = self.carbs_for(ctx)? {
                let s = c.suggest(1)?.remove(0);
                local = Some(s.trial);
                params.extend(s.params);
            }
            let trial = self.next;
            self.next += 1;
            self.trials.insert(trial, (ctx, high, local));
            out.push(Suggestion {
                trial,
                params,
                budget: None,
                resume: false,
            });
        }
        Ok(out)
    }

    fn observe(&mut self, trial: TrialId, obs: &Observation) -> Result<(), SearchError> {
        let &(ctx, high, local) = self
            .trials
            .get(&trial)
            .ok_or(SearchError::UnknownTrial(trial))?;
        if let (Some(local), Some(c)) = (local, self.carbs.get_mut(&ctx)) {
            c.observe(local, obs)?;
        }
        let value = if obs.failed || !obs.objective.is_finite() {
            if self.hi.is_finite() { self.hi } else { 0.0 }
        } else {
            self.lo = self.lo.min(obs.objective);
            self.hi = self.hi.max(obs.objective);
            obs.objective
        };
        let add = |a: &mut Arm| {
            a.sum += value;
            a.observed += 1;
        };
        add(&mut self.flat[ctx]);
        if let Some(h) = high {
            add(&mut self.high[h]);
        }
        let context = self.contexts[ctx].clone();
        for i in 0..self.cats.len() {
            if let Some(v) = self.low_index(i, &context) {
                add(&mut self.low[i][v]);
            }
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

    fn table_space() -> Space {
        Space::new(vec![
            ParamDef::categorical("k", &["1", "3", "5", "7"]),
            ParamDef::categorical("e", &["a", "b", "c"]),
        ])
        .unwrap()
    }

    /// Deterministic arm values: the best context is k=5, e=b.
    fn value(p: &Params) -> f64 {
        let k: f64 = p["k"]
            .as_choice()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        let e = match p["e"].as_choice() {
            Some("b") => 0.0,
            Some("a") => 0.5,
            _ => 1.0,
        };
        (k - 5.0).abs() * 0.3 + e
    }

    fn run(cfg: BanditConfig, pulls: usize) -> BTreeMap<String, u64> {
        let mut b = Bandit::new(table_space(), cfg).unwrap();
        let mut counts = BTreeMap::new();
        for _ in 0..pulls {
            let s = b.suggest(1).unwrap().remove(0);
            *counts.entry(format!("{:?}", s.params)).or_insert(0) += 1;
            let o = Observation {
                objective: value(&s.params),
                cost: 1.0,
                ..Default::default()
            };
            b.observe(s.trial, &o).unwrap();
        }
        counts
    }

    fn best_key() -> String {
        let p: Params = [
            ("e".to_string(), Value::Choice("b".into())),
            ("k".to_string(), Value::Choice("5".into())),
        ]
        .into();
        format!("{p:?}")
    }

    #[test]
    fn flat_and_hierarchical_bandits_favour_the_best_arm() {
        for policy in [Policy::Ucb { alpha: 1.0 }, Policy::Thompson { sigma: 0.5 }] {
            for hierarchical in [false, true] {
                let cfg = BanditConfig {
                    seed: 2,
                    policy,
                    hierarchical,
                    ..Default::default()
                };
                let counts = run(cfg.clone(), 120);
                let top = counts
                    .iter()
                    .max_by_key(|(_, c)| **c)
                    .map(|(k, _)| k.clone());
                assert_eq!(
                    top,
                    Some(best_key()),
                    "{policy:?} hier={hierarchical}: {counts:?}"
                );
                assert_eq!(counts, run(cfg, 120), "not deterministic");
            }
        }
    }

    #[test]
    fn contexts_get_their_own_carbs_for_real_parameters() {
        let space = Space::new(vec![
            ParamDef::categorical("method", &["lora", "full"]),
            ParamDef::real("r", RealSpec::log(4.0, 64.0).integer().with_scale(3.3))
                .when("method", &["lora"]),
            ParamDef::real("lr", RealSpec::log(1e-5, 1e-2)),
        ])
        .unwrap();
        let cfg = BanditConfig {
            carbs: CarbsConfig {
                candidates_per_dim: 10,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut b = Bandit::new(space, cfg).unwrap();
        assert_eq!(b.contexts().len(), 2);
        for _ in 0..12 {
            let s = b.suggest(2).unwrap();
            for s in s {
                let lora = s.params["method"].as_choice() == Some("lora");
                assert_eq!(s.params.contains_key("r"), lora);
                assert!(s.params.contains_key("lr"));
                let lr = s.params["lr"].as_f64().unwrap();
                let o = Observation {
                    objective: (lr.log10() + 3.0).abs() + if lora { 0.0 } else { 0.5 },
                    cost: 1.0,
                    ..Default::default()
                };
                b.observe(s.trial, &o).unwrap();
            }
        }
    }
}
