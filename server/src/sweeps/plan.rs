//! The validated sweep spec ("plan"): the search space, the objective, the algorithm with its
//! options, the budget and the trial template, checked field by field so a bad spec is an
//! `INVALID_ARGUMENT` naming the field and never a sweep that fails later.
//!
//! The store keeps the normalized proto (defaults filled in); the controller re-derives the
//! plan from it, so validation is also the decoder and both always agree.

use prost::Message;
use tuna_proto::v1 as pb;

use super::params::{self, Kind};
use crate::domain::spec::JobSpec;
use crate::error::FieldViolation;
use crate::search::asha::{Asha, AshaConfig, StopRule, Variant};
use crate::search::bandit::{Bandit, BanditConfig};
use crate::search::carbs::{Carbs, CarbsConfig};
use crate::search::grid::GridSearch;
use crate::search::hyperband::Hyperband;
use crate::search::random::RandomSearch;
use crate::search::{
    Condition, Domain, ParamDef, Params, RealSpec, SearchError, Searcher, Space, Transform, Value,
    WithStopping,
};

/// Metrics a trial reports that can be optimized, with their natural direction.
pub const OBJECTIVE_METRICS: &[(&str, bool)] = tuna_spec::metrics::OBJECTIVES;
const COST_METRICS: &[&str] = &["train_seconds", "steps"];
const ALGORITHMS: &[&str] = &["carbs", "random", "grid", "asha", "hyperband", "bandit"];
const SCALES: &[&str] = &["linear", "log", "logit", "categorical"];
/// Most parameters of one sweep (each names a distinct searchable field, of which there are
/// fewer), checked before any per-parameter work.
pub const MAX_PARAMETERS: usize = 32;
/// Most choices of one categorical parameter (and values of one condition): every choice is
/// validated as a trial job once, and a grid runs each.
pub const MAX_CHOICES: usize = 256;
/// Longest single choice, in bytes (a `target_modules` list of 64 names fits).
pub const MAX_CHOICE_BYTES: usize = 8 << 10;
/// Most bytes of all the choices of one parameter together.
pub const MAX_CHOICES_TOTAL_BYTES: usize = 64 << 10;
/// Most points of a grid sweep whatever `max_trials` says (its own upper bound).
pub const MAX_GRID_POINTS: usize = 10_000;

/// What a trial costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostMetric {
    /// Running time of the trial's job (claim to finish).
    TrainSeconds,
    /// Optimizer steps the trial ran.
    Steps,
}

/// A validated sweep.
#[derive(Debug, Clone)]
pub struct SweepPlan {
    /// The spec with every default filled in (what is stored and returned).
    pub proto: pb::SweepSpec,
    pub space: Space,
    pub metric: String,
    pub maximize: bool,
    pub cost: CostMetric,
    pub algorithm: String,
    /// ASHA rungs (the algorithm for asha / hyperband; early stopping otherwise).
    pub asha: Option<(AshaConfig, Variant)>,
    pub carbs: CarbsConfig,
    pub grid_levels: usize,
    pub max_trials: u32,
    pub max_total_cost: Option<f64>,
    pub parallelism: u32,
    pub template: pb::JobSpec,
    pub seed: u64,
}

#[derive(Default)]
struct Check(Vec<FieldViolation>);

impl Check {
    fn fail(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }
}

impl SweepPlan {
    /// Validates a client spec; every violation is reported at once.
    pub fn from_proto(spec: Option<&pb::SweepSpec>) -> Result<Self, Vec<FieldViolation>> {
        let mut c = Check::default();
        let Some(spec) = spec else {
            return Err(vec![FieldViolation::new("spec", "is required")]);
        };
        let mut out = spec.clone();

        // The template must be a valid job on its own.
        let template = spec.template.clone().unwrap_or_default();
        let template_spec = match JobSpec::from_proto(Some(&template)) {
            Ok(s) => Some(s),
            Err(v) => {
                for f in v {
                    c.fail(&template_field(&f.field), f.description);
                }
                None
            }
        };

        // Objective.
        let objective = spec.objective.clone().unwrap_or_default();
        let metric = if objective.metric.is_empty() {
            tuna_spec::metrics::EVAL_LOSS.to_string()
        } else {
            objective.metric.clone()
        };
        let natural_max = match OBJECTIVE_METRICS.iter().find(|(m, _)| *m == metric) {
            Some((_, max)) => *max,
            None => {
                c.fail(
                    "spec.objective.metric",
                    format!(
                        "unknown metric {metric:?}; expected one of {}",
                        OBJECTIVE_METRICS
                            .iter()
                            .map(|(m, _)| *m)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                false
            }
        };
        let maximize = match pb::Direction::try_from(objective.direction) {
            Ok(pb::Direction::Unspecified) => natural_max,
            Ok(pb::Direction::Minimize) => false,
            Ok(pb::Direction::Maximize) => true,
            Err(_) => {
                c.fail(
                    "spec.objective.direction",
                    format!("unknown direction {}", objective.direction),
                );
                false
            }
        };
        if metric.starts_with("eval_") && template.validation_file.is_empty() {
            c.fail(
                "spec.objective.metric",
                format!("{metric} needs spec.template.validation_file"),
            );
        }
        if metric == tuna_spec::metrics::EVAL_ACCURACY
            && template.task != tuna_spec::Task::Classification.as_str()
        {
            c.fail(
                "spec.objective.metric",
                "eval_accuracy needs spec.template.task = classification",
            );
        }
        out.objective = Some(pb::Objective {
            metric: metric.clone(),
            direction: if maximize {
                pb::Direction::Maximize
            } else {
                pb::Direction::Minimize
            } as i32,
        });

        // Cost.
        let cost = match spec.cost_metric.as_str() {
            "" | "train_seconds" => CostMetric::TrainSeconds,
            "steps" => CostMetric::Steps,
            other => {
                c.fail(
                    "spec.cost_metric",
                    format!(
                        "unknown cost metric {other:?}; expected one of {}",
                        COST_METRICS.join(", ")
                    ),
                );
                CostMetric::TrainSeconds
            }
        };
        out.cost_metric = match cost {
            CostMetric::TrainSeconds => "train_seconds",
            CostMetric::Steps => "steps",
        }
        .to_string();

        // Budget.
        let max_trials = spec.max_trials.unwrap_or(20);
        if !(1..=10_000).contains(&max_trials) {
            c.fail(
                "spec.max_trials",
                format!("must be between 1 and 10000, got {max_trials}"),
            );
        }
        out.max_trials = Some(max_trials);
        let parallelism = spec.parallelism.unwrap_or(1);
        if !(1..=256).contains(&parallelism) {
            c.fail(
                "spec.parallelism",
                format!("must be between 1 and 256, got {parallelism}"),
            );
        }
        out.parallelism = Some(parallelism);
        if !(spec.max_total_cost.is_finite() && spec.max_total_cost >= 0.0) {
            c.fail(
                "spec.max_total_cost",
                format!(
                    "must be a finite number >= 0 (0 = no cap), got {}",
                    spec.max_total_cost
                ),
            );
        }
        let seed = spec.seed as u64;

        // Space.
        let space = space_from_proto(&mut c, &spec.parameters, &template);

        // Algorithm.
        let alg = spec.algorithm.clone().unwrap_or_default();
        let algorithm = if alg.name.is_empty() {
            "carbs".to_string()
        } else {
            alg.name.clone()
        };
        if !ALGORITHMS.contains(&algorithm.as_str()) {
            c.fail(
                "spec.algorithm.name",
                format!(
                    "unknown algorithm {algorithm:?}; expected one of {}",
                    ALGORITHMS.join(", ")
                ),
            );
        }
        let max_steps = template.hyperparameters.as_ref().and_then(|h| h.max_steps);
        let asha = match &alg.asha {
            Some(a) => asha_from_proto(&mut c, a, max_steps, &algorithm),
            None if matches!(algorithm.as_str(), "asha" | "hyperband") => {
                c.fail(
                    "spec.algorithm.asha",
                    format!("is required by algorithm {algorithm} (at least min_resource)"),
                );
                None
            }
            None => None,
        };
        if let (Some(_), Some(t)) = (&asha, &template_spec)
            && metric.starts_with("eval_")
            && t.hyperparameters.eval_every <= 0
        {
            c.fail(
                "spec.template.hyperparameters.eval_every",
                format!("must be > 0 when stopping early on {metric} (no reports reach the rungs)"),
            );
        }
        let carbs_opts = alg.carbs.unwrap_or_default();
        let mut carbs = CarbsConfig {
            seed,
            ..CarbsConfig::default()
        };
        if let Some(n) = carbs_opts.num_random_samples {
            if !(1..=1000).contains(&n) {
                c.fail(
                    "spec.algorithm.carbs.num_random_samples",
                    format!("must be between 1 and 1000, got {n}"),
                );
            }
            carbs.num_random_samples = n.max(1) as usize;
        }
        if let Some(r) = carbs_opts.search_radius {
            if !(r > 0.0 && r.is_finite()) {
                c.fail(
                    "spec.algorithm.carbs.search_radius",
                    format!("must be positive, got {r}"),
                );
            }
            carbs.search_radius = r;
        }
        if carbs_opts.max_suggestion_cost != 0.0 {
            if !(carbs_opts.max_suggestion_cost > 0.0 && carbs_opts.max_suggestion_cost.is_finite())
            {
                c.fail(
                    "spec.algorithm.carbs.max_suggestion_cost",
                    "must be positive (0 = none)",
                );
            }
            carbs.max_suggestion_cost = Some(carbs_opts.max_suggestion_cost);
        }
        carbs.suggest_center_first = carbs_opts.suggest_center_first.unwrap_or(false);
        let grid_levels = alg.grid_levels.unwrap_or(3);
        if !(2..=100).contains(&grid_levels) {
            c.fail(
                "spec.algorithm.grid_levels",
                format!("must be between 2 and 100, got {grid_levels}"),
            );
        }
        out.algorithm = Some(pb::Algorithm {
            name: algorithm.clone(),
            asha: asha.as_ref().map(|(cfg, variant)| pb::AshaOptions {
                eta: Some(cfg.eta),
                min_resource: Some(cfg.min_resource),
                max_resource: Some(cfg.max_resource),
                grace: Some(cfg.grace as i32),
                variant: match variant {
                    Variant::Stopping => "stopping",
                    Variant::Promotion => "promotion",
                }
                .to_string(),
            }),
            carbs: Some(pb::CarbsOptions {
                num_random_samples: Some(carbs.num_random_samples as i32),
                search_radius: Some(carbs.search_radius),
                max_suggestion_cost: carbs.max_suggestion_cost.unwrap_or(0.0),
                suggest_center_first: Some(carbs.suggest_center_first),
            }),
            grid_levels: Some(grid_levels),
        });

        // A grid runs every point: refuse one larger than the budget before building it (the
        // enumeration stops at the cap, so a 100^4 grid costs no more than a 10,000-point one).
        if algorithm == "grid"
            && (2..=100).contains(&grid_levels)
            && (1..=10_000).contains(&max_trials)
            && let Some(space) = &space
            && let Err(e) = GridSearch::new(space, grid_levels as usize, grid_cap(max_trials))
        {
            c.fail(
                "spec.max_trials",
                format!(
                    "{e}, but max_trials is {max_trials}: a grid sweep runs every point, so \
                     raise max_trials (at most {MAX_GRID_POINTS}), lower \
                     spec.algorithm.grid_levels or search fewer parameters"
                ),
            );
        }

        if !c.0.is_empty() {
            return Err(c.0);
        }
        let Some(space) = space else {
            return Err(vec![FieldViolation::new("spec.parameters", "is invalid")]);
        };
        let plan = SweepPlan {
            proto: out,
            space,
            metric,
            maximize,
            cost,
            algorithm,
            asha,
            carbs,
            grid_levels: grid_levels.max(2) as usize,
            max_trials: max_trials as u32,
            max_total_cost: (spec.max_total_cost > 0.0).then_some(spec.max_total_cost),
            parallelism: parallelism as u32,
            template,
            seed,
        };
        // The algorithm must accept the space (CARBS searches real parameters only, …).
        if let Err(e) = plan.searcher() {
            return Err(vec![FieldViolation::new(
                "spec.algorithm.name",
                format!("{} cannot run this sweep: {e}", plan.algorithm),
            )]);
        }
        Ok(plan)
    }

    /// Decodes and re-validates a stored spec.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let spec = pb::SweepSpec::decode(bytes).map_err(|e| e.to_string())?;
        Self::from_proto(Some(&spec)).map_err(|v| crate::error::ApiError::from(v).to_string())
    }

    /// A fresh searcher in its initial state (seeded, so replaying its log rebuilds it).
    pub fn searcher(&self) -> Result<Box<dyn Searcher>, SearchError> {
        let space = self.space.clone();
        let stop = |cfg: &AshaConfig| StopRule::new(cfg.clone());
        let stopping = self.asha.as_ref().filter(|(_, v)| *v == Variant::Stopping);
        fn wrap<S: Searcher + 'static>(inner: S, stopper: Option<StopRule>) -> Box<dyn Searcher> {
            match stopper {
                Some(stopper) => Box::new(WithStopping { inner, stopper }),
                None => Box::new(inner),
            }
        }
        let stopper = match (self.algorithm.as_str(), stopping) {
            ("asha" | "hyperband", _) | (_, None) => None,
            (_, Some((cfg, _))) => Some(stop(cfg)?),
        };
        Ok(match self.algorithm.as_str() {
            "random" => wrap(RandomSearch::new(space, self.seed), stopper),
            "grid" => wrap(
                GridSearch::new(&space, self.grid_levels, grid_cap(self.max_trials as i32))?,
                stopper,
            ),
            "bandit" => wrap(
                Bandit::new(
                    space,
                    BanditConfig {
                        seed: self.seed,
                        carbs: self.carbs.clone(),
                        ..BanditConfig::default()
                    },
                )?,
                stopper,
            ),
            "asha" | "hyperband" => {
                let (cfg, variant) = self
                    .asha
                    .clone()
                    .ok_or_else(|| SearchError::Unsupported("asha options are missing".into()))?;
                if self.algorithm == "asha" {
                    Box::new(Asha::new(space, cfg, variant, self.seed)?)
                } else {
                    Box::new(Hyperband::new(space, cfg, variant, self.seed)?)
                }
            }
            _ => wrap(Carbs::new(space, self.carbs.clone())?, stopper),
        })
    }

    /// Trials stop at rungs and must checkpoint there so a promotion can resume them.
    pub fn promotes(&self) -> bool {
        matches!(self.asha, Some((_, Variant::Promotion)))
    }

    /// The JobSpec of one run: the template with `params` patched in and, for a rung budget,
    /// `max_steps` set to it (and a checkpoint at its end when promotions may resume it).
    pub fn job_spec(&self, params: &Params, budget: Option<f64>) -> Result<JobSpec, String> {
        let mut spec = self.template.clone();
        for (name, value) in params {
            params::apply(&mut spec, name, value)?;
        }
        if let Some(b) = budget {
            let steps = (b.round() as i64).max(1);
            let h = spec.hyperparameters.get_or_insert_with(Default::default);
            h.max_steps = Some(steps);
            if self.promotes() {
                h.checkpoint_every = Some(steps);
            }
        }
        JobSpec::from_proto(Some(&spec)).map_err(|v| {
            v.iter()
                .map(|f| format!("{}: {}", f.field, f.description))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// The most points a grid of a sweep with `max_trials` may have.
fn grid_cap(max_trials: i32) -> usize {
    usize::try_from(max_trials)
        .unwrap_or(0)
        .min(MAX_GRID_POINTS)
}

/// Refuses a categorical parameter's choices past the count and size limits, and duplicates
/// (one hash set, so linear in the choices' total size). True when they are within limits.
fn choices_within_limits(c: &mut Check, i: usize, choices: &[String]) -> bool {
    let field = format!("spec.parameters[{i}].choices");
    if choices.len() > MAX_CHOICES {
        c.fail(
            &field,
            format!("at most {MAX_CHOICES} choices, got {}", choices.len()),
        );
        return false;
    }
    let total: usize = choices.iter().map(String::len).sum();
    if total > MAX_CHOICES_TOTAL_BYTES {
        c.fail(
            &field,
            format!("at most {MAX_CHOICES_TOTAL_BYTES} bytes of choices in all, got {total}"),
        );
        return false;
    }
    let mut ok = true;
    let mut seen = std::collections::HashSet::with_capacity(choices.len());
    for (j, choice) in choices.iter().enumerate() {
        if choice.len() > MAX_CHOICE_BYTES {
            c.fail(
                &format!("{field}[{j}]"),
                format!("at most {MAX_CHOICE_BYTES} bytes, got {}", choice.len()),
            );
            ok = false;
        } else if !seen.insert(choice.as_str()) {
            let shown: String = choice.chars().take(64).collect();
            c.fail(&field, format!("{shown:?} appears twice"));
            ok = false;
        }
    }
    ok
}

/// `spec.x` of a JobSpec violation becomes `spec.template.x`.
fn template_field(field: &str) -> String {
    match field.strip_prefix("spec") {
        Some(rest) => format!("spec.template{rest}"),
        None => format!("spec.template.{field}"),
    }
}

fn asha_from_proto(
    c: &mut Check,
    a: &pb::AshaOptions,
    max_steps: Option<i64>,
    algorithm: &str,
) -> Option<(AshaConfig, Variant)> {
    let f = "spec.algorithm.asha";
    let eta = a.eta.unwrap_or(3.0);
    if !(eta >= 2.0 && eta.is_finite()) {
        c.fail(
            &format!("{f}.eta"),
            format!("must be at least 2, got {eta}"),
        );
    }
    let Some(min) = a.min_resource else {
        c.fail(
            &format!("{f}.min_resource"),
            "is required (steps of the first rung)",
        );
        return None;
    };
    if !(min > 0.0 && min.is_finite()) {
        c.fail(
            &format!("{f}.min_resource"),
            format!("must be positive, got {min}"),
        );
    }
    let max = match (a.max_resource, max_steps) {
        (Some(m), _) => m,
        (None, Some(s)) => s as f64,
        (None, None) => {
            c.fail(
                &format!("{f}.max_resource"),
                "is required when spec.template.hyperparameters.max_steps is not set",
            );
            return None;
        }
    };
    if !(max >= min && max.is_finite()) {
        c.fail(
            &format!("{f}.max_resource"),
            format!("must be at least min_resource ({min}), got {max}"),
        );
    }
    if let Some(s) = max_steps
        && max > s as f64
    {
        c.fail(
            &format!("{f}.max_resource"),
            format!("{max} exceeds spec.template.hyperparameters.max_steps ({s})"),
        );
    }
    let grace = a.grace.unwrap_or(eta as i32);
    if grace < 1 {
        c.fail(
            &format!("{f}.grace"),
            format!("must be at least 1, got {grace}"),
        );
    }
    let variant = match a.variant.as_str() {
        "" | "stopping" => Variant::Stopping,
        "promotion" => Variant::Promotion,
        other => {
            c.fail(
                &format!("{f}.variant"),
                format!("unknown variant {other:?}; expected stopping or promotion"),
            );
            Variant::Stopping
        }
    };
    if variant == Variant::Promotion && !matches!(algorithm, "asha" | "hyperband") {
        c.fail(
            &format!("{f}.variant"),
            format!("promotion needs algorithm asha or hyperband, not {algorithm}"),
        );
    }
    let mut cfg = AshaConfig::new(eta, min, max);
    cfg.grace = grace.max(1) as usize;
    Some((cfg, variant))
}

fn space_from_proto(
    c: &mut Check,
    parameters: &[pb::Parameter],
    template: &pb::JobSpec,
) -> Option<Space> {
    if parameters.is_empty() {
        c.fail("spec.parameters", "must have at least one parameter");
        return None;
    }
    if parameters.len() > MAX_PARAMETERS {
        c.fail(
            "spec.parameters",
            format!(
                "at most {MAX_PARAMETERS} parameters, got {}",
                parameters.len()
            ),
        );
        return None;
    }
    let before = c.0.len();
    let mut defs = Vec::new();
    for (i, p) in parameters.iter().enumerate() {
        let f = |what: &str| format!("spec.parameters[{i}].{what}");
        let Some(kind) = params::kind_of(&p.name) else {
            c.fail(
                &f("name"),
                format!(
                    "{:?} is not a searchable field; expected one of {}",
                    p.name,
                    params::names()
                ),
            );
            continue;
        };
        if parameters[..i].iter().any(|q| q.name == p.name) {
            c.fail(&f("name"), format!("{:?} appears twice", p.name));
            continue;
        }
        let scale = if p.scale.is_empty() {
            match kind {
                Kind::Choice(_) => "categorical",
                _ => "linear",
            }
        } else {
            p.scale.as_str()
        };
        if !SCALES.contains(&scale) {
            c.fail(
                &f("scale"),
                format!(
                    "unknown scale {scale:?}; expected one of {}",
                    SCALES.join(", ")
                ),
            );
            continue;
        }
        let domain = match (kind, scale) {
            (Kind::Choice(allowed), "categorical") => {
                if p.choices.is_empty() {
                    c.fail(&f("choices"), "a categorical parameter needs choices");
                    continue;
                }
                if !choices_within_limits(c, i, &p.choices) {
                    continue;
                }
                for (j, choice) in p.choices.iter().enumerate() {
                    if let Some(allowed) = allowed
                        && !allowed.contains(&choice.as_str())
                    {
                        c.fail(
                            &format!("spec.parameters[{i}].choices[{j}]"),
                            format!(
                                "{choice:?} is not a value of {}; expected one of {}",
                                p.name,
                                allowed.join(", ")
                            ),
                        );
                    }
                }
                Domain::Categorical(p.choices.clone())
            }
            (Kind::Choice(_), _) => {
                c.fail(
                    &f("scale"),
                    format!("{} is categorical; use scale = \"categorical\"", p.name),
                );
                continue;
            }
            (_, "categorical") => {
                c.fail(
                    &f("scale"),
                    format!("{} is numeric; use linear, log or logit", p.name),
                );
                continue;
            }
            (kind, scale) => {
                if !(p.min.is_finite() && p.max.is_finite()) {
                    c.fail(&f("min"), "bounds must be finite numbers");
                    continue;
                }
                if p.min >= p.max {
                    c.fail(
                        &f("min"),
                        format!("min ({}) must be below max ({})", p.min, p.max),
                    );
                    continue;
                }
                if scale == "log" && p.min <= 0.0 {
                    c.fail(
                        &f("min"),
                        format!("a log scale needs min > 0, got {}", p.min),
                    );
                    continue;
                }
                if scale == "logit" && (p.min <= 0.0 || p.max >= 1.0) {
                    c.fail(&f("min"), "a logit scale needs 0 < min < max < 1");
                    continue;
                }
                let transform = match scale {
                    "log" => Transform::Log { base: 10.0 },
                    "logit" => Transform::Logit,
                    _ => Transform::Linear,
                };
                Domain::Real(RealSpec {
                    transform,
                    min: p.min,
                    max: p.max,
                    scale: p.search_scale.unwrap_or(1.0),
                    integer: p.integer || kind == Kind::Integer,
                    rounding: p.rounding.unwrap_or(1.0),
                })
            }
        };
        let center = match (&domain, p.center, p.center_choice.is_empty()) {
            (Domain::Real(_), Some(v), _) => Some(Value::Real(v)),
            (Domain::Categorical(_), _, false) => Some(Value::Choice(p.center_choice.clone())),
            _ => None,
        };
        if let Some(cond) = &p.condition
            && cond.values.len() > MAX_CHOICES
        {
            c.fail(
                &f("condition.values"),
                format!("at most {MAX_CHOICES} values, got {}", cond.values.len()),
            );
            continue;
        }
        let condition = p.condition.as_ref().map(|cond| Condition {
            parent: cond.parent.clone(),
            values: cond.values.clone(),
        });
        defs.push(ParamDef {
            name: p.name.clone(),
            domain,
            center,
            condition,
        });
    }
    if c.0.len() > before {
        return None;
    }
    let space = match Space::new(defs.clone()) {
        Ok(s) => s,
        Err(e) => {
            let (field, reason) = match &e {
                SearchError::Invalid { field, reason } => (field.clone(), reason.clone()),
                other => (String::new(), other.to_string()),
            };
            // The search layer names `<param>.<what>`; point at the parameter's index.
            let name = field.split('.').next().unwrap_or_default();
            let at = defs
                .iter()
                .position(|d| field.starts_with(&format!("{}.", d.name)) || d.name == name);
            match at {
                Some(i) => c.fail(
                    &format!("spec.parameters[{i}]"),
                    format!("{field}: {reason}"),
                ),
                None => c.fail("spec.parameters", format!("{field}: {reason}")),
            }
            return None;
        }
    };
    // Every bound (and every choice) must give a job CreateJob accepts (checked only on a
    // valid template, whose own violations are reported already).
    let template_ok = JobSpec::from_proto(Some(template)).is_ok();
    for (i, d) in defs.iter().enumerate().filter(|_| template_ok) {
        let probes: Vec<(String, Value)> = match &d.domain {
            Domain::Real(s) => vec![
                ("min".into(), Value::Real(s.round_param(s.min))),
                ("max".into(), Value::Real(s.round_param(s.max))),
            ],
            Domain::Categorical(choices) => choices
                .iter()
                .enumerate()
                .map(|(j, ch)| (format!("choices[{j}]"), Value::Choice(ch.clone())))
                .collect(),
        };
        for (what, v) in probes {
            let mut spec = template.clone();
            if let Err(e) = params::apply(&mut spec, &d.name, &v) {
                c.fail(&format!("spec.parameters[{i}].{what}"), e);
                continue;
            }
            if let Err(v) = JobSpec::from_proto(Some(&spec)) {
                let why: Vec<String> = v
                    .iter()
                    .map(|f| format!("{}: {}", template_field(&f.field), f.description))
                    .collect();
                c.fail(
                    &format!("spec.parameters[{i}].{what}"),
                    format!("gives an invalid trial job ({})", why.join("; ")),
                );
            }
        }
    }
    (c.0.len() == before).then_some(space)
}
