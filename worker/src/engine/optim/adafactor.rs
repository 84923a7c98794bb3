//! Adafactor (Shazeer & Stern, 2018) as `transformers.optimization.Adafactor` runs it with an
//! external learning rate (`scale_parameter=False, relative_step=False, warmup_init=False`,
//! no first moment): the second moment of a matrix is kept as row and column means
//! (`O(n + m)` memory instead of `O(nm)`), β₂ grows as `1 - t^-0.8`, and each update is
//! scaled down to an RMS of at most `clip_threshold`.

use std::collections::BTreeMap;

use candle_core::{D, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{Algorithm, Grads, OptimError, Params, SavedState, state_of, sum_sq};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdafactorConfig {
    /// Added to the squared gradient (the paper's ε₁).
    pub eps: f64,
    /// Largest RMS of an update before it is scaled down (the paper's d).
    pub clip_threshold: f64,
    /// β₂ at step t is `1 - t^decay_rate`.
    pub decay_rate: f64,
    /// Decoupled, multiplied by the learning rate.
    pub weight_decay: f64,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        Self {
            eps: 1e-30,
            clip_threshold: 1.0,
            decay_rate: -0.8,
            weight_decay: 0.0,
        }
    }
}

/// The second-moment estimate of one parameter.
#[derive(Debug, Clone)]
enum Second {
    /// A matrix: running means of the squared gradient over rows `[n]` and columns `[m]`.
    Factored { row: Tensor, col: Tensor },
    /// Anything else: the full running mean.
    Full(Tensor),
}

/// Adafactor's second moments per parameter.
#[derive(Debug)]
pub struct Adafactor {
    config: AdafactorConfig,
    second: BTreeMap<String, Second>,
}

impl Adafactor {
    pub fn new(
        params: &BTreeMap<String, Var>,
        config: AdafactorConfig,
    ) -> Result<Self, OptimError> {
        let mut second = BTreeMap::new();
        for (name, var) in params {
            let s = match *var.dims() {
                [n, m] => Second::Factored {
                    row: Tensor::zeros(n, var.dtype(), var.device())?,
                    col: Tensor::zeros(m, var.dtype(), var.device())?,
                },
                _ => Second::Full(var.zeros_like()?),
            };
            second.insert(name.clone(), s);
        }
        Ok(Self { config, second })
    }
}

/// Root mean square of a tensor.
fn rms(t: &Tensor) -> Result<f64, OptimError> {
    Ok((sum_sq(t)? / t.elem_count().max(1) as f64).sqrt())
}

impl Algorithm for Adafactor {
    const FORMAT: &'static str = "tuna-adafactor";

    fn update(
        &mut self,
        params: &Params,
        grads: &Grads,
        lr: f64,
        t: u64,
    ) -> Result<f64, OptimError> {
        let c = self.config;
        let beta2 = 1.0 - (t as f64).powf(c.decay_rate);
        for (name, var, scale) in params.iter() {
            let g = params.grad(grads, name, var)?;
            let second = state_of(&mut self.second, name, "second moment")?;
            let sq = (g.sqr()? + c.eps)?;
            let update = match second {
                Second::Factored { row, col } => {
                    *row = ((&*row * beta2)? + (sq.mean(D::Minus1)? * (1.0 - beta2))?)?;
                    *col = ((&*col * beta2)? + (sq.mean(D::Minus2)? * (1.0 - beta2))?)?;
                    // V ≈ row·colᵀ / mean(row): scale rows by rsqrt(row / mean(row)), columns
                    // by rsqrt(col).
                    let row_mean = row.mean_all()?;
                    let r = row
                        .broadcast_div(&row_mean)?
                        .sqrt()?
                        .recip()?
                        .unsqueeze(1)?;
                    let cf = col.sqrt()?.recip()?.unsqueeze(0)?;
                    r.broadcast_mul(&cf)?.mul(&g)?
                }
                Second::Full(v) => {
                    *v = ((&*v * beta2)? + (&sq * (1.0 - beta2))?)?;
                    v.sqrt()?.recip()?.mul(&g)?
                }
            };
            let clip = (rms(&update)? / c.clip_threshold).max(1.0);
            let lr = lr * scale;
            let update = (update * (lr / clip))?;
            let theta = var.as_detached_tensor();
            let decayed = (&theta * (1.0 - lr * c.weight_decay))?;
            var.set(&(decayed - update)?)?;
        }
        Ok(lr)
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (name, s) in &self.second {
            match s {
                Second::Factored { row, col } => {
                    out.insert(format!("{name}.exp_avg_sq_row"), row.clone());
                    out.insert(format!("{name}.exp_avg_sq_col"), col.clone());
                }
                Second::Full(v) => {
                    out.insert(format!("{name}.exp_avg_sq"), v.clone());
                }
            }
        }
        out
    }

    fn scalars(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    fn restore(&mut self, params: &Params, state: &SavedState) -> Result<(), OptimError> {
        for (name, var, _) in params.iter() {
            let s = match *var.dims() {
                [n, m] => Second::Factored {
                    row: state.tensor(&format!("{name}.exp_avg_sq_row"), &[n], var)?,
                    col: state.tensor(&format!("{name}.exp_avg_sq_col"), &[m], var)?,
                },
                _ => Second::Full(state.tensor(&format!("{name}.exp_avg_sq"), var.dims(), var)?),
            };
            self.second.insert(name.clone(), s);
        }
        Ok(())
    }
}
