//! D-Adaptation Adam (Defazio & Mishchenko, 2023, "Learning-Rate-Free Learning by
//! D-Adaptation"), as the authors' `dadaptation.DAdaptAdam` (v3) runs it with decoupled
//! weight decay: Adam whose step size `d` is a running lower bound on the distance to the
//! solution, estimated from `Σ ⟨g, s/√v⟩ / ‖s‖₁`. The `lr` passed in multiplies `d` (1 by
//! default; a schedule still shapes it). LoRA+ multipliers act as the reference's
//! `layer_scale`.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{Algorithm, Grads, OptimError, Params, SavedState, state_of};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DAdaptConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled (AdamW-style), multiplied by the adapted step `d·lr`.
    pub weight_decay: f64,
    /// The first estimate of `d`.
    pub d0: f64,
    /// Largest factor `d` may grow by in one step (`inf`: unbounded).
    pub growth_rate: f64,
}

impl Default for DAdaptConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            d0: 1e-6,
            growth_rate: f64::INFINITY,
        }
    }
}

#[derive(Debug, Clone)]
struct Moments {
    m: Tensor,
    v: Tensor,
    s: Tensor,
}

/// D-Adapt Adam's moments, `s` accumulator, `d` and weighted numerator.
#[derive(Debug)]
pub struct DAdaptAdam {
    config: DAdaptConfig,
    moments: BTreeMap<String, Moments>,
    d: f64,
    numerator: f64,
}

impl DAdaptAdam {
    pub fn new(params: &BTreeMap<String, Var>, config: DAdaptConfig) -> Result<Self, OptimError> {
        let mut moments = BTreeMap::new();
        for (name, var) in params {
            let z = var.zeros_like()?;
            moments.insert(
                name.clone(),
                Moments {
                    m: z.clone(),
                    v: z.clone(),
                    s: z,
                },
            );
        }
        Ok(Self {
            config,
            moments,
            d: config.d0,
            numerator: 0.0,
        })
    }
}

fn scalar(t: &Tensor) -> Result<f64, OptimError> {
    Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
}

impl Algorithm for DAdaptAdam {
    const FORMAT: &'static str = "tuna-dadapt-adam";

    fn update(
        &mut self,
        params: &Params,
        grads: &Grads,
        lr: f64,
        _t: u64,
    ) -> Result<f64, OptimError> {
        let c = self.config;
        let sqrt_beta2 = c.beta2.sqrt();
        let dlr = self.d * lr;
        // As the reference: a zero learning rate (a warmup's first step) changes nothing.
        if lr <= 0.0 {
            return Ok(0.0);
        }
        let (mut numerator_acc, mut s_l1) = (0.0, 0.0);
        for (name, var, r) in params.iter() {
            let g = params.grad(grads, name, var)?;
            let mom = state_of(&mut self.moments, name, "moments")?;
            let denom = (mom.v.sqrt()? + c.eps)?;
            numerator_acc += r * dlr * scalar(&(&g * (&mom.s / &denom)?)?)?;
            mom.m = ((&mom.m * c.beta1)? + (&g * (r * dlr * (1.0 - c.beta1)))?)?;
            mom.v = ((&mom.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            mom.s = ((&mom.s * sqrt_beta2)? + (&g * (dlr * (1.0 - sqrt_beta2)))?)?;
            s_l1 += r * scalar(&mom.s.abs()?)?;
        }
        if s_l1 == 0.0 {
            return Ok(0.0);
        }
        self.numerator = sqrt_beta2 * self.numerator + (1.0 - sqrt_beta2) * numerator_acc;
        let d_hat = self.numerator / ((1.0 - sqrt_beta2) * s_l1);
        self.d = self.d.max(d_hat.min(self.d * c.growth_rate));
        for (name, var, _) in params.iter() {
            let mom = self
                .moments
                .get(name)
                .ok_or_else(|| OptimError::State(format!("no moments for `{name}`")))?;
            let denom = (mom.v.sqrt()? + c.eps)?;
            let theta = var.as_detached_tensor();
            let decayed = (&theta * (1.0 - c.weight_decay * dlr))?;
            var.set(&(decayed - (&mom.m / denom)?)?)?;
        }
        Ok(dlr)
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (name, mom) in &self.moments {
            out.insert(format!("{name}.exp_avg"), mom.m.clone());
            out.insert(format!("{name}.exp_avg_sq"), mom.v.clone());
            out.insert(format!("{name}.s"), mom.s.clone());
        }
        out
    }

    fn scalars(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("d".to_string(), self.d),
            ("numerator_weighted".to_string(), self.numerator),
        ])
    }

    fn restore(&mut self, params: &Params, state: &SavedState) -> Result<(), OptimError> {
        for (name, var, _) in params.iter() {
            let m = state.tensor(&format!("{name}.exp_avg"), var.dims(), var)?;
            let v = state.tensor(&format!("{name}.exp_avg_sq"), var.dims(), var)?;
            let s = state.tensor(&format!("{name}.s"), var.dims(), var)?;
            self.moments.insert(name.clone(), Moments { m, v, s });
        }
        self.d = state.scalar("d")?;
        self.numerator = state.scalar("numerator_weighted")?;
        Ok(())
    }
}
