//! Search spaces: parameter kinds and the CARBS transforms between "param" and "basic" space
//! (docs/search-notes.md §1.4). In basic space a distance of 1 is one `scale`, so CARBS's fixed search
//! radius means the same relative move in every dimension.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::SearchError;

/// A parameter value: a number (real or integer) or a categorical choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Real(f64),
    Choice(String),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Real(v) => Some(*v),
            Value::Choice(_) => None,
        }
    }
    pub fn as_choice(&self) -> Option<&str> {
        match self {
            Value::Choice(c) => Some(c),
            Value::Real(_) => None,
        }
    }
}

/// A full assignment, keyed by parameter name (sorted, so hashes and traces are stable).
pub type Params = BTreeMap<String, Value>;

/// How a real parameter maps to basic space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Linear,
    /// `log_base(v)`; CARBS uses base 10.
    Log {
        base: f64,
    },
    /// `log10(v / (1 - v))`, for fractions in (0, 1).
    Logit,
}

/// A real or integer parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealSpec {
    pub transform: Transform,
    pub min: f64,
    pub max: f64,
    /// Basic-space unit, in transformed units (CARBS `scale`).
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub integer: bool,
    /// Integers are rounded to multiples of this (CARBS `rounding_factor`).
    #[serde(default = "one")]
    pub rounding: f64,
}

fn one() -> f64 {
    1.0
}

impl RealSpec {
    pub fn linear(min: f64, max: f64) -> Self {
        Self {
            transform: Transform::Linear,
            min,
            max,
            scale: 1.0,
            integer: false,
            rounding: 1.0,
        }
    }
    pub fn log(min: f64, max: f64) -> Self {
        Self {
            transform: Transform::Log { base: 10.0 },
            ..Self::linear(min, max)
        }
    }
    pub fn logit(min: f64, max: f64) -> Self {
        Self {
            transform: Transform::Logit,
            ..Self::linear(min, max)
        }
    }
    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = scale;
        self
    }
    pub fn integer(mut self) -> Self {
        self.integer = true;
        self
    }

    fn validate(&self, name: &str) -> Result<(), SearchError> {
        let f = |what: &str| format!("{name}.{what}");
        if !self.min.is_finite() || !self.max.is_finite() {
            return Err(SearchError::invalid(f("min"), "bounds must be finite"));
        }
        if self.min >= self.max {
            return Err(SearchError::invalid(f("min"), "min must be below max"));
        }
        if !(self.scale > 0.0 && self.scale.is_finite()) {
            return Err(SearchError::invalid(f("scale"), "scale must be positive"));
        }
        if self.integer && !(self.rounding > 0.0 && self.rounding.is_finite()) {
            return Err(SearchError::invalid(f("rounding"), "must be positive"));
        }
        match self.transform {
            Transform::Linear => {}
            Transform::Log { base } => {
                if !(base > 1.0 && base.is_finite()) {
                    return Err(SearchError::invalid(f("base"), "log base must exceed 1"));
                }
                // Integer bounds widen by 0.1 (CARBS), so the minimum must stay positive after that.
                let lo = if self.integer {
                    self.min - 0.1
                } else {
                    self.min
                };
                if lo <= 0.0 {
                    return Err(SearchError::invalid(f("min"), "log space needs min > 0"));
                }
            }
            Transform::Logit => {
                if self.integer {
                    return Err(SearchError::invalid(
                        f("integer"),
                        "logit cannot be integer",
                    ));
                }
                if self.min <= 0.0 || self.max >= 1.0 {
                    return Err(SearchError::invalid(
                        f("min"),
                        "logit space needs 0 < min < max < 1",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Param → basic.
    pub fn to_basic(&self, v: f64) -> f64 {
        let t = match self.transform {
            Transform::Linear => v,
            Transform::Log { base } => v.ln() / base.ln(),
            Transform::Logit => (v / (1.0 - v)).log10(),
        };
        t / self.scale
    }

    /// Basic → param (unrounded).
    pub fn from_basic(&self, b: f64) -> f64 {
        let t = b * self.scale;
        match self.transform {
            Transform::Linear => t,
            Transform::Log { base } => base.powf(t),
            Transform::Logit => 1.0 / (10f64.powf(-t) + 1.0),
        }
    }

    /// Round an integer parameter to its rounding factor (identity for reals).
    pub fn round_param(&self, v: f64) -> f64 {
        if self.integer {
            (v / self.rounding).round() * self.rounding
        } else {
            v
        }
    }

    /// Round in basic space (CARBS `round_tensor_in_basic`): map out, round, map back.
    pub fn round_basic(&self, b: f64) -> f64 {
        if self.integer {
            self.to_basic(self.round_param(self.from_basic(b)))
        } else {
            b
        }
    }

    /// Strict basic-space bounds; integers widen by 0.1 so the end values stay reachable.
    pub fn basic_bounds(&self) -> (f64, f64) {
        let (lo, hi) = if self.integer {
            (self.min - 0.1, self.max + 0.1)
        } else {
            (self.min, self.max)
        };
        (self.to_basic(lo), self.to_basic(hi))
    }

    /// Param → [0, 1], uniform in basic space between the (unwidened) bounds.
    pub fn to_unit(&self, v: f64) -> f64 {
        let (lo, hi) = (self.to_basic(self.min), self.to_basic(self.max));
        (self.to_basic(v) - lo) / (hi - lo)
    }

    /// [0, 1] → param, rounded and clamped to the bounds.
    pub fn from_unit(&self, u: f64) -> f64 {
        let (lo, hi) = (self.to_basic(self.min), self.to_basic(self.max));
        let v = self.round_param(self.from_basic(lo + u * (hi - lo)));
        v.clamp(self.min, self.max)
    }
}

/// The kind of values a parameter takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    Real(RealSpec),
    Categorical(Vec<String>),
}

/// A parameter is active only while a categorical parent has one of `values`
/// (e.g. `lora.r` only when `method = lora`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub parent: String,
    pub values: Vec<String>,
}

/// One named parameter with its CARBS search centre.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamDef {
    pub name: String,
    pub domain: Domain,
    /// Where local search starts; defaults to the basic-space midpoint / first choice.
    #[serde(default)]
    pub center: Option<Value>,
    #[serde(default)]
    pub condition: Option<Condition>,
}

impl ParamDef {
    pub fn real(name: &str, spec: RealSpec) -> Self {
        Self {
            name: name.into(),
            domain: Domain::Real(spec),
            center: None,
            condition: None,
        }
    }
    pub fn categorical(name: &str, choices: &[&str]) -> Self {
        Self {
            name: name.into(),
            domain: Domain::Categorical(choices.iter().map(|c| c.to_string()).collect()),
            center: None,
            condition: None,
        }
    }
    pub fn with_center(mut self, center: Value) -> Self {
        self.center = Some(center);
        self
    }
    pub fn when(mut self, parent: &str, values: &[&str]) -> Self {
        self.condition = Some(Condition {
            parent: parent.into(),
            values: values.iter().map(|c| c.to_string()).collect(),
        });
        self
    }

    /// The search centre as a param-space value.
    pub fn center_value(&self) -> Value {
        if let Some(c) = &self.center {
            return c.clone();
        }
        match &self.domain {
            Domain::Real(s) => Value::Real(s.from_unit(0.5)),
            Domain::Categorical(c) => Value::Choice(c.first().cloned().unwrap_or_default()),
        }
    }
}

/// A validated search space. Parents precede the parameters conditional on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Space {
    params: Vec<ParamDef>,
}

impl Space {
    pub fn new(params: Vec<ParamDef>) -> Result<Self, SearchError> {
        if params.is_empty() {
            return Err(SearchError::invalid(
                "space",
                "must have at least one parameter",
            ));
        }
        for (i, p) in params.iter().enumerate() {
            if p.name.is_empty() {
                return Err(SearchError::invalid("space", "parameter name is empty"));
            }
            if params[..i].iter().any(|q| q.name == p.name) {
                return Err(SearchError::invalid(&p.name, "duplicate parameter name"));
            }
            match &p.domain {
                Domain::Real(s) => {
                    s.validate(&p.name)?;
                    if let Some(c) = &p.center {
                        let v = c.as_f64().ok_or_else(|| {
                            SearchError::invalid(format!("{}.center", p.name), "must be a number")
                        })?;
                        if !(s.min..=s.max).contains(&v) {
                            return Err(SearchError::invalid(
                                format!("{}.center", p.name),
                                "outside [min, max]",
                            ));
                        }
                    }
                }
                Domain::Categorical(choices) => {
                    if choices.is_empty() {
                        return Err(SearchError::invalid(&p.name, "no choices"));
                    }
                    if let Some(c) = &p.center
                        && !c
                            .as_choice()
                            .is_some_and(|c| choices.iter().any(|x| x == c))
                    {
                        return Err(SearchError::invalid(
                            format!("{}.center", p.name),
                            "not one of the choices",
                        ));
                    }
                }
            }
            if let Some(cond) = &p.condition {
                let parent = params[..i].iter().find(|q| q.name == cond.parent);
                let Some(Domain::Categorical(choices)) = parent.map(|q| &q.domain) else {
                    return Err(SearchError::invalid(
                        format!("{}.condition", p.name),
                        "parent must be an earlier categorical parameter",
                    ));
                };
                if cond.values.is_empty() || cond.values.iter().any(|v| !choices.contains(v)) {
                    return Err(SearchError::invalid(
                        format!("{}.condition", p.name),
                        "values must be choices of the parent",
                    ));
                }
            }
        }
        Ok(Self { params })
    }

    pub fn params(&self) -> &[ParamDef] {
        &self.params
    }

    pub fn get(&self, name: &str) -> Option<&ParamDef> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Whether `p` is active under the (partial) assignment `given`.
    pub fn is_active(&self, p: &ParamDef, given: &Params) -> bool {
        match &p.condition {
            None => true,
            Some(c) => {
                let parent_active = self
                    .get(&c.parent)
                    .is_some_and(|q| self.is_active(q, given));
                parent_active
                    && given
                        .get(&c.parent)
                        .and_then(Value::as_choice)
                        .is_some_and(|v| c.values.iter().any(|x| x == v))
            }
        }
    }

    /// True when every parameter is real and unconditional (what CARBS searches directly).
    pub fn is_flat_real(&self) -> bool {
        self.params
            .iter()
            .all(|p| matches!(p.domain, Domain::Real(_)) && p.condition.is_none())
    }

    /// The real parameters active under a categorical context, as an unconditional space.
    /// Returns `None` when no real parameter is active there.
    pub fn real_subspace(&self, context: &Params) -> Option<Space> {
        let params: Vec<ParamDef> = self
            .params
            .iter()
            .filter(|p| matches!(p.domain, Domain::Real(_)) && self.is_active(p, context))
            .map(|p| ParamDef {
                condition: None,
                ..p.clone()
            })
            .collect();
        (!params.is_empty()).then_some(Space { params })
    }

    /// A uniform draw (uniform in basic space for reals), honouring conditions.
    pub fn sample_uniform<R: Rng + ?Sized>(&self, rng: &mut R) -> Params {
        let mut out = Params::new();
        for p in &self.params {
            // Draw for every parameter so inactive ones do not shift the RNG stream.
            let v = match &p.domain {
                Domain::Real(s) => Value::Real(s.from_unit(rng.random::<f64>())),
                Domain::Categorical(c) => Value::Choice(c[rng.random_range(0..c.len())].clone()),
            };
            if self.is_active(p, &out) {
                out.insert(p.name.clone(), v);
            }
        }
        out
    }

    /// Basic-space vector of a flat real space's assignment (missing values take the centre).
    pub fn to_basic(&self, params: &Params) -> Vec<f64> {
        self.params
            .iter()
            .map(|p| match &p.domain {
                Domain::Real(s) => {
                    let v = params
                        .get(&p.name)
                        .and_then(Value::as_f64)
                        .or_else(|| p.center_value().as_f64())
                        .unwrap_or(s.min);
                    s.to_basic(v)
                }
                Domain::Categorical(_) => 0.0,
            })
            .collect()
    }

    /// Assignment from a basic-space vector of a flat real space (integers rounded).
    pub fn from_basic(&self, x: &[f64]) -> Params {
        self.params
            .iter()
            .zip(x)
            .filter_map(|(p, &b)| match &p.domain {
                Domain::Real(s) => Some((
                    p.name.clone(),
                    Value::Real(s.round_param(s.from_basic(b)).clamp(s.min, s.max)),
                )),
                Domain::Categorical(_) => None,
            })
            .collect()
    }

    /// Real specs in order (categoricals yield `None`).
    pub fn real_specs(&self) -> Vec<Option<&RealSpec>> {
        self.params
            .iter()
            .map(|p| match &p.domain {
                Domain::Real(s) => Some(s),
                Domain::Categorical(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::rng::rng_for;

    fn specs() -> Vec<RealSpec> {
        vec![
            RealSpec::linear(-3.0, 7.0).with_scale(2.0),
            RealSpec::log(1e-6, 1e-1).with_scale(0.5),
            RealSpec::logit(0.01, 0.3),
            RealSpec::log(4.0, 128.0).with_scale(3.3).integer(),
            RealSpec::linear(1.0, 9.0).integer(),
        ]
    }

    #[test]
    fn transforms_round_trip() {
        for s in specs() {
            for i in 0..=20 {
                let u = i as f64 / 20.0;
                let v = s.from_unit(u);
                assert!(v >= s.min && v <= s.max, "{v} outside {s:?}");
                let back = s.from_basic(s.to_basic(v));
                assert!((back - v).abs() <= 1e-9 * v.abs().max(1.0), "{v} -> {back}");
                if s.integer {
                    assert_eq!(v, v.round());
                    assert_eq!(s.round_basic(s.to_basic(v)), s.to_basic(v));
                } else {
                    assert!((s.to_unit(v) - u).abs() < 1e-9);
                }
            }
        }
    }

    #[test]
    fn log_basic_values_match_carbs() {
        // lr = 1e-4 in LogSpace(scale = 0.5) sits at basic -8 (docs/search-notes.md §1.4).
        let s = RealSpec::log(1e-6, 1.0).with_scale(0.5);
        assert!((s.to_basic(1e-4) + 8.0).abs() < 1e-12);
        let l = RealSpec::logit(0.01, 0.99);
        assert!((l.from_basic(0.0) - 0.5).abs() < 1e-12);
        let i = RealSpec::linear(1.0, 9.0).integer();
        let (lo, hi) = i.basic_bounds();
        assert!((lo - 0.9).abs() < 1e-12 && (hi - 9.1).abs() < 1e-12);
    }

    #[test]
    fn bad_specs_name_the_field() {
        let bad = |p: ParamDef| Space::new(vec![p]).unwrap_err();
        assert!(matches!(
            Space::new(vec![]),
            Err(SearchError::Invalid { .. })
        ));
        let e = bad(ParamDef::real("lr", RealSpec::log(0.0, 1.0)));
        assert_eq!(e, SearchError::invalid("lr.min", "log space needs min > 0"));
        let e = bad(ParamDef::real("x", RealSpec::linear(2.0, 1.0)));
        assert!(matches!(e, SearchError::Invalid { field, .. } if field == "x.min"));
        let e = bad(ParamDef::real("r", RealSpec::log(0.05, 8.0).integer()));
        assert!(matches!(e, SearchError::Invalid { field, .. } if field == "r.min"));
        let e = Space::new(vec![
            ParamDef::real("r", RealSpec::linear(1.0, 2.0)).when("method", &["lora"]),
        ])
        .unwrap_err();
        assert!(matches!(e, SearchError::Invalid { field, .. } if field == "r.condition"));
    }

    #[test]
    fn conditional_parameters_follow_their_parent() {
        let space = Space::new(vec![
            ParamDef::categorical("method", &["lora", "full"]),
            ParamDef::real("lora.r", RealSpec::log(4.0, 64.0).integer()).when("method", &["lora"]),
            ParamDef::real("lr", RealSpec::log(1e-5, 1e-2)),
        ])
        .unwrap();
        let mut seen = [false, false];
        for k in 0..50 {
            let p = space.sample_uniform(&mut rng_for(1, 0, k));
            let lora = p["method"].as_choice() == Some("lora");
            assert_eq!(p.contains_key("lora.r"), lora);
            seen[lora as usize] = true;
        }
        assert!(seen[0] && seen[1]);
        let ctx: Params = [("method".to_string(), Value::Choice("full".into()))].into();
        let sub = space.real_subspace(&ctx).unwrap();
        assert_eq!(sub.params().len(), 1);
        assert!(sub.is_flat_real());
    }
}
