//! The methods compared, and how each is set up on a problem.

use tuna_server::search::asha::{Asha, AshaConfig, StopRule, Variant};
use tuna_server::search::bandit::{Bandit, BanditConfig, Policy};
use tuna_server::search::carbs::{Carbs, CarbsConfig};
use tuna_server::search::hyperband::Hyperband;
use tuna_server::search::random::RandomSearch;
use tuna_server::search::{ParamDef, SearchError, Searcher, Space, Value, WithStopping};

use super::problems::Problem;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Random,
    /// ASHA as published: random configurations, promotion (pause and resume from the
    /// checkpoint; η = 3, first rung the problem's `min_rung`).
    Asha,
    /// Random configurations, ASHA's stopping variant (η = 3, same rungs).
    AshaStop,
    /// Brackets of promotion ASHA (η = 3, first rung the problem's `min_rung`).
    Hyperband,
    /// CARBS with the fidelity as a searched (cost) dimension.
    Carbs,
    /// CARBS plus the ASHA stopping rule on its intermediate reports.
    CarbsStop,
    /// Hierarchical UCB over categoricals, CARBS for any real rest.
    BanditCarbs,
    /// Flat Thompson sampling over the categorical contexts.
    Thompson,
    OptunaTpe,
    OptunaTpeSh,
    /// Optuna's GP sampler (needs torch and scipy in the anchor Python).
    OptunaGp,
    /// The original CARBS (imbue-ai's Python package) on CARBS-rs's space: same centres,
    /// the fidelity as a searched dimension.
    CarbsPy,
}

impl Method {
    /// Methods run in the Rust thread pool (Optuna runs separately).
    pub const ALL: [Method; 8] = [
        Method::Random,
        Method::Asha,
        Method::AshaStop,
        Method::Hyperband,
        Method::Carbs,
        Method::CarbsStop,
        Method::BanditCarbs,
        Method::Thompson,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Random => "random",
            Method::Asha => "asha",
            Method::AshaStop => "asha-stop",
            Method::Hyperband => "hyperband",
            Method::Carbs => "carbs",
            Method::CarbsStop => "carbs+stop",
            Method::BanditCarbs => "bandit-ucb",
            Method::Thompson => "bandit-ts",
            Method::OptunaTpe => "optuna-tpe",
            Method::OptunaTpeSh => "optuna-tpe+sh",
            Method::OptunaGp => "optuna-gp",
            Method::CarbsPy => "carbs-py",
        }
    }

    pub fn order(self) -> usize {
        self as usize
    }

    /// Whether the method makes sense on `p` (ASHA needs a fidelity, CARBS real parameters,
    /// the bandits categorical ones).
    pub fn applies(self, p: &dyn Problem) -> bool {
        let space = p.space();
        let categorical = !space.is_flat_real();
        match self {
            Method::Random | Method::OptunaTpe | Method::OptunaGp => true,
            Method::Asha | Method::AshaStop | Method::Hyperband | Method::OptunaTpeSh => {
                p.fidelity().is_some()
            }
            Method::CarbsStop => p.fidelity().is_some() && !categorical,
            Method::Carbs | Method::CarbsPy => !categorical,
            Method::BanditCarbs | Method::Thompson => categorical,
        }
    }

    fn carbs_config(p: &dyn Problem, seed: u64) -> CarbsConfig {
        let mut cfg = CarbsConfig {
            seed,
            // Bench sizes (defaults 100 and 256) keep the whole suite, CARBS sweeps of up to
            // 300 suggestions included, within its 2-minute budget on 2 cores.
            candidates_per_dim: 40,
            max_gp_points: 80,
            // Each problem's centre (its neutral midpoint, or the cheap corner where CARBS is
            // meant to start) is a baseline worth running as is.
            suggest_center_first: true,
            ..Default::default()
        };
        if p.pareto_metric().is_some() {
            // The whole cost-performance front is scored, so none of it is written off as too
            // cheap (CARBS's default ignores the cheapest 20% when it picks where to search),
            // and the random phase around the cheap-corner centre lasts three draws per
            // dimension (the CARBS maintainer advises at least one per dimension).
            cfg.min_pareto_cost_fraction = 0.0;
            cfg.num_random_samples = 3 * p.space().params().len();
        }
        cfg
    }

    pub fn carbs_space(p: &dyn Problem) -> Result<Space, SearchError> {
        let centers = p.carbs_centers();
        let mut params: Vec<ParamDef> = p
            .space()
            .params()
            .iter()
            .map(|d| match centers.iter().find(|c| c.0 == d.name) {
                Some(&(_, v)) => d.clone().with_center(Value::Real(v)),
                None => d.clone(),
            })
            .collect();
        if let Some(f) = p.fidelity() {
            params.push(ParamDef::real(f.name, f.spec));
        }
        Space::new(params)
    }

    pub fn build(self, p: &dyn Problem, seed: u64) -> Result<Box<dyn Searcher>, SearchError> {
        let rungs = || {
            p.fidelity()
                .map(|f| AshaConfig::new(3.0, f.min_rung, f.spec.max))
                .ok_or_else(|| SearchError::Unsupported("needs a fidelity".into()))
        };
        Ok(match self {
            Method::Random => Box::new(RandomSearch::new(p.space(), seed)),
            Method::Asha => Box::new(Asha::new(p.space(), rungs()?, Variant::Promotion, seed)?),
            Method::AshaStop => Box::new(Asha::new(p.space(), rungs()?, Variant::Stopping, seed)?),
            Method::Hyperband => Box::new(Hyperband::new(
                p.space(),
                rungs()?,
                Variant::Promotion,
                seed,
            )?),
            Method::Carbs => Box::new(Carbs::new(
                Self::carbs_space(p)?,
                Self::carbs_config(p, seed),
            )?),
            Method::CarbsStop => Box::new(WithStopping {
                inner: Carbs::new(Self::carbs_space(p)?, Self::carbs_config(p, seed))?,
                stopper: StopRule::new(rungs()?)?,
            }),
            Method::BanditCarbs => Box::new(Bandit::new(
                p.space(),
                BanditConfig {
                    seed,
                    carbs: Self::carbs_config(p, seed),
                    ..Default::default()
                },
            )?),
            Method::Thompson => Box::new(Bandit::new(
                p.space(),
                BanditConfig {
                    seed,
                    policy: Policy::Thompson { sigma: 0.5 },
                    hierarchical: false,
                    carbs: Self::carbs_config(p, seed),
                },
            )?),
            Method::OptunaTpe | Method::OptunaTpeSh | Method::OptunaGp | Method::CarbsPy => {
                return Err(SearchError::Unsupported(
                    "the Python anchors run through their client".into(),
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::problems::suite;
    use crate::search::sim::{Limits, simulate};

    #[test]
    fn same_seed_gives_bit_identical_trace_per_method_and_problem() {
        for p in suite() {
            for m in Method::ALL {
                if !m.applies(p.as_ref()) {
                    continue;
                }
                for workers in [1, 4] {
                    let lim = Limits {
                        workers,
                        budget: 2.0,
                        max_runs: 12,
                    };
                    let run = |seed| {
                        let mut s = m.build(p.as_ref(), seed).unwrap();
                        simulate(p.as_ref(), s.as_mut(), seed, lim)
                    };
                    let (a, b) = (run(3), run(3));
                    assert!(!a.completions.is_empty(), "{} {}", p.name(), m.name());
                    assert_eq!(a.hash, b.hash, "{} {} W={workers}", p.name(), m.name());
                }
            }
        }
    }
}
