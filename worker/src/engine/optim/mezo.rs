//! MeZO (Malladi et al., 2023, "Fine-Tuning Language Models with Just Forward Passes",
//! Algorithm 1): zeroth-order SGD. Each step draws a direction `z ~ N(0, I)`, measures the loss
//! at `θ + εz` and `θ − εz`, and moves along `z` by the projected gradient
//! `(L₊ − L₋) / 2ε`. No backward pass and no optimizer state; `z` is never stored: it is
//! regenerated from `(seed, step, parameter)` each of the four times it is needed (the
//! paper's in-place seed trick), one parameter at a time.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{OptimError, read_state, write_state};
use crate::engine::rng;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MezoConfig {
    /// Perturbation scale ε.
    pub epsilon: f64,
    /// Decoupled weight decay, multiplied by the learning rate.
    pub weight_decay: f64,
}

impl Default for MezoConfig {
    fn default() -> Self {
        Self {
            epsilon: 1e-3,
            weight_decay: 0.0,
        }
    }
}

/// What one MeZO step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MezoStep {
    /// The mean of the two perturbed losses (an estimate of the loss at θ).
    pub loss: f64,
    /// `(L₊ − L₋) / 2ε`: the directional derivative along `z`.
    pub projected_grad: f64,
}

/// MeZO's settings; it has no state beyond the step count the trainer keeps.
#[derive(Debug)]
pub struct Mezo {
    config: MezoConfig,
    seed: u64,
}

const FORMAT: &str = "tuna-mezo";

impl Mezo {
    pub fn new(config: MezoConfig, seed: u64) -> Self {
        Self { config, seed }
    }

    /// `z` for `name` at `step`: standard normal, from its own seeded stream.
    fn direction(&self, step: u64, name: &str, var: &Var) -> Result<Tensor, OptimError> {
        let mut g = rng::stream(self.seed, &format!("mezo/{step}/{name}"));
        let z: Vec<f64> = (0..var.elem_count()).map(|_| rng::normal(&mut g)).collect();
        Ok(Tensor::from_vec(z, var.dims(), var.device())?.to_dtype(var.dtype())?)
    }

    /// `θ ← θ + scale·z` for every parameter, one parameter's `z` alive at a time.
    fn perturb(
        &self,
        vars: &BTreeMap<String, Var>,
        step: u64,
        scale: f64,
    ) -> Result<(), OptimError> {
        for (name, var) in vars {
            let z = self.direction(step, name, var)?;
            let theta = var.as_detached_tensor();
            var.set(&(theta + (z * scale)?)?)?;
        }
        Ok(())
    }

    /// Step number `step` (0-based) with learning rate `lr`; `loss` evaluates the training
    /// loss of this step's batch at the current parameters (forward only).
    pub fn step(
        &self,
        vars: &BTreeMap<String, Var>,
        step: u64,
        lr: f64,
        loss: &mut dyn FnMut() -> Result<f64, OptimError>,
    ) -> Result<MezoStep, OptimError> {
        let eps = self.config.epsilon;
        self.perturb(vars, step, eps)?;
        let plus = loss()?;
        self.perturb(vars, step, -2.0 * eps)?;
        let minus = loss()?;
        self.perturb(vars, step, eps)?;
        let projected_grad = (plus - minus) / (2.0 * eps);
        for (name, var) in vars {
            let z = self.direction(step, name, var)?;
            let theta = var.as_detached_tensor();
            let decayed = (&theta * (1.0 - lr * self.config.weight_decay))?;
            var.set(&(decayed - (z * (lr * projected_grad))?)?)?;
        }
        Ok(MezoStep {
            loss: 0.5 * (plus + minus),
            projected_grad,
        })
    }

    /// MeZO keeps no state; the file records the algorithm and step so a checkpoint of
    /// another optimizer is refused on resume.
    pub fn save(&self, path: &Path, step: u64) -> Result<(), OptimError> {
        write_state(path, FORMAT, step, &BTreeMap::new(), &BTreeMap::new())
    }

    /// The step count of a state written by [`Self::save`].
    pub fn load(&self, path: &Path, device: &Device) -> Result<u64, OptimError> {
        Ok(read_state(path, FORMAT, device)?.0)
    }
}
