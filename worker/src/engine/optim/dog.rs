//! DoG, Distance over Gradients (Ivgi, Hinder & Carmon, 2023, "DoG is SGD's Best Friend"),
//! as the authors' `dog` package runs it (all parameters as one vector): SGD with the step
//! size `η_t = max_{i≤t} ‖x_i − x_0‖ / sqrt(Σ_{i≤t} ‖g_i‖² + ε)`, started from
//! `r_ε = reps_rel · (1 + ‖x_0‖)`. No learning rate to tune; the `lr` passed in multiplies
//! `η_t` (the paper's `c`, 1 by default; a schedule still shapes it).

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{Algorithm, Grads, OptimError, Params, SavedState, sum_sq};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DogConfig {
    /// The first distance relative to `1 + ‖x_0‖` (the paper suggests 1e-6).
    pub reps_rel: f64,
    /// Added to the gradient sum (numerical safety).
    pub eps: f64,
    /// L2 penalty added to the gradient, as the reference does.
    pub weight_decay: f64,
}

impl Default for DogConfig {
    fn default() -> Self {
        Self {
            reps_rel: 1e-6,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// DoG's state: the initial point, the largest distance from it, the gradient sum.
#[derive(Debug)]
pub struct Dog {
    config: DogConfig,
    x0: BTreeMap<String, Tensor>,
    rbar: f64,
    g_sum: f64,
    started: bool,
}

impl Dog {
    pub fn new(params: &BTreeMap<String, Var>, config: DogConfig) -> Result<Self, OptimError> {
        let x0 = params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_detached_tensor().copy()?)))
            .collect::<Result<_, OptimError>>()?;
        Ok(Self {
            config,
            x0,
            rbar: 0.0,
            g_sum: 0.0,
            started: false,
        })
    }
}

impl Algorithm for Dog {
    const FORMAT: &'static str = "tuna-dog";

    fn update(
        &mut self,
        params: &Params,
        grads: &Grads,
        lr: f64,
        _t: u64,
    ) -> Result<f64, OptimError> {
        let c = self.config;
        let mut effective = Vec::new();
        let (mut g_sq, mut dist_sq, mut x0_sq) = (0.0, 0.0, 0.0);
        for (name, var, _) in params.iter() {
            let mut g = params.grad(grads, name, var)?;
            let theta = var.as_detached_tensor();
            if c.weight_decay > 0.0 {
                g = (g + (&theta * c.weight_decay)?)?;
            }
            g_sq += sum_sq(&g)?;
            let x0 = self
                .x0
                .get(name)
                .ok_or_else(|| OptimError::State(format!("no initial point for `{name}`")))?;
            if self.started {
                dist_sq += sum_sq(&(&theta - x0)?)?;
            } else {
                x0_sq += sum_sq(x0)?;
            }
            effective.push(g);
        }
        if self.started {
            self.rbar = self.rbar.max(dist_sq.sqrt());
            self.g_sum += g_sq;
        } else {
            self.rbar = c.reps_rel * (1.0 + x0_sq.sqrt());
            self.g_sum = g_sq + c.eps;
            self.started = true;
        }
        if self.g_sum <= 0.0 {
            return Err(OptimError::State(
                "DoG needs a non-zero gradient to set its first step".into(),
            ));
        }
        let eta = lr * self.rbar / self.g_sum.sqrt();
        for ((_, var, scale), g) in params.iter().zip(effective) {
            let theta = var.as_detached_tensor();
            var.set(&(theta - (g * (eta * scale))?)?)?;
        }
        Ok(eta)
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.x0
            .iter()
            .map(|(n, t)| (format!("{n}.x0"), t.clone()))
            .collect()
    }

    fn scalars(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("rbar".to_string(), self.rbar),
            ("g_sum".to_string(), self.g_sum),
            ("started".to_string(), f64::from(u8::from(self.started))),
        ])
    }

    fn restore(&mut self, params: &Params, state: &SavedState) -> Result<(), OptimError> {
        for (name, var, _) in params.iter() {
            let x0 = state.tensor(&format!("{name}.x0"), var.dims(), var)?;
            self.x0.insert(name.clone(), x0);
        }
        self.rbar = state.scalar("rbar")?;
        self.g_sum = state.scalar("g_sum")?;
        self.started = state.scalar("started")? != 0.0;
        Ok(())
    }
}
