//! AdamW with bias correction and decoupled weight decay (identical to `torch.optim.AdamW`).

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{Algorithm, Grads, OptimError, Params, SavedState, state_of};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled decay (HF Trainer's default is 0.0; candle's is 0.01, so be explicit).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

#[derive(Debug, Clone)]
struct Moments {
    m: Tensor,
    v: Tensor,
}

/// AdamW's moments per parameter.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    moments: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(params: &BTreeMap<String, Var>, config: AdamWConfig) -> Result<Self, OptimError> {
        let mut moments = BTreeMap::new();
        for (name, var) in params {
            let z = var.zeros_like()?;
            moments.insert(name.clone(), Moments { m: z.clone(), v: z });
        }
        Ok(Self { config, moments })
    }
}

impl Algorithm for AdamW {
    const FORMAT: &'static str = "tuna-adamw";

    fn update(
        &mut self,
        params: &Params,
        grads: &Grads,
        lr: f64,
        t: u64,
    ) -> Result<f64, OptimError> {
        let c = self.config;
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (name, var, scale) in params.iter() {
            let g = params.grad(grads, name, var)?;
            let mom = state_of(&mut self.moments, name, "moments")?;
            let lr = lr * scale;
            mom.m = ((&mom.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            mom.v = ((&mom.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let theta = var.as_detached_tensor();
            let decayed = (&theta * (1.0 - lr * c.weight_decay))?;
            let denom = ((&mom.v / bc2)?.sqrt()? + c.eps)?;
            let update = ((&mom.m / bc1)? / denom)?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(lr)
    }

    /// Moments named as torch names them (`<param>.exp_avg`, `<param>.exp_avg_sq`).
    fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (name, mom) in &self.moments {
            out.insert(format!("{name}.exp_avg"), mom.m.clone());
            out.insert(format!("{name}.exp_avg_sq"), mom.v.clone());
        }
        out
    }

    fn scalars(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    fn restore(&mut self, params: &Params, state: &SavedState) -> Result<(), OptimError> {
        for (name, var, _) in params.iter() {
            let m = state.tensor(&format!("{name}.exp_avg"), var.dims(), var)?;
            let v = state.tensor(&format!("{name}.exp_avg_sq"), var.dims(), var)?;
            self.moments.insert(name.clone(), Moments { m, v });
        }
        Ok(())
    }
}
