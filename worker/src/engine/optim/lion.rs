//! Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2):
//! the update is the sign of an interpolation of the momentum and the gradient, so every
//! coordinate moves by exactly `lr`; one state tensor per parameter.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{Algorithm, Grads, OptimError, Params, SavedState, state_of};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LionConfig {
    /// Interpolation of momentum and gradient in the update.
    pub beta1: f64,
    /// Decay of the momentum.
    pub beta2: f64,
    /// Decoupled, multiplied by the learning rate as in AdamW.
    pub weight_decay: f64,
}

impl Default for LionConfig {
    /// The paper's defaults.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.0,
        }
    }
}

/// Lion's momentum per parameter.
#[derive(Debug)]
pub struct Lion {
    config: LionConfig,
    momentum: BTreeMap<String, Tensor>,
}

impl Lion {
    pub fn new(params: &BTreeMap<String, Var>, config: LionConfig) -> Result<Self, OptimError> {
        let momentum = params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.zeros_like()?)))
            .collect::<Result<_, OptimError>>()?;
        Ok(Self { config, momentum })
    }
}

impl Algorithm for Lion {
    const FORMAT: &'static str = "tuna-lion";

    fn update(
        &mut self,
        params: &Params,
        grads: &Grads,
        lr: f64,
        _t: u64,
    ) -> Result<f64, OptimError> {
        let c = self.config;
        for (name, var, scale) in params.iter() {
            let g = params.grad(grads, name, var)?;
            let m = state_of(&mut self.momentum, name, "momentum")?;
            let lr = lr * scale;
            // c_t = β1·m + (1-β1)·g;  θ ← θ·(1 - lr·λ) - lr·sign(c_t);  m ← β2·m + (1-β2)·g.
            let direction = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?.sign()?;
            let theta = var.as_detached_tensor();
            let decayed = (&theta * (1.0 - lr * c.weight_decay))?;
            var.set(&(decayed - (direction * lr)?)?)?;
            *m = ((&*m * c.beta2)? + (&g * (1.0 - c.beta2))?)?;
        }
        Ok(lr)
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.momentum
            .iter()
            .map(|(n, m)| (format!("{n}.exp_avg"), m.clone()))
            .collect()
    }

    fn scalars(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    fn restore(&mut self, params: &Params, state: &SavedState) -> Result<(), OptimError> {
        for (name, var, _) in params.iter() {
            let m = state.tensor(&format!("{name}.exp_avg"), var.dims(), var)?;
            self.momentum.insert(name.clone(), m);
        }
        Ok(())
    }
}
