//! Gradients by parameter name: collected from candle's `GradStore`, summed over
//! micro-batches, measured and clipped.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

/// Gradients keyed like the parameters (PEFT keys), in deterministic order.
#[derive(Debug, Clone, Default)]
pub struct Grads(pub BTreeMap<String, Tensor>);

impl Grads {
    /// Takes the gradient of each of `vars` out of `store`. A var without a gradient is
    /// an error: it means the graph was cut (a no-backward op) and training would
    /// silently ignore it.
    pub fn collect(
        store: &GradStore,
        vars: &BTreeMap<String, Var>,
    ) -> std::result::Result<Self, String> {
        let mut out = BTreeMap::new();
        for (name, var) in vars {
            match store.get(var) {
                Some(g) => {
                    out.insert(name.clone(), g.clone());
                }
                None => return Err(name.clone()),
            }
        }
        Ok(Self(out))
    }

    /// Adds `other` into `self` (gradient accumulation).
    pub fn accumulate(&mut self, other: Grads) -> Result<()> {
        for (name, g) in other.0 {
            let sum = match self.0.remove(&name) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            self.0.insert(name, sum);
        }
        Ok(())
    }

    /// Multiplies every gradient by `factor`.
    pub fn scale(&mut self, factor: f64) -> Result<()> {
        for g in self.0.values_mut() {
            *g = (&*g * factor)?;
        }
        Ok(())
    }

    /// The L2 norm of all gradients taken together (computed in f64).
    pub fn global_norm(&self) -> Result<f64> {
        let mut sq = 0.0;
        for g in self.0.values() {
            sq += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
        Ok(sq.sqrt())
    }

    /// Scales all gradients so their global norm is at most `max_norm` (torch's
    /// `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)`, capped at 1). Returns the norm
    /// before clipping.
    pub fn clip(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.global_norm()?;
        let factor = max_norm / (norm + 1e-6);
        if factor < 1.0 {
            self.scale(factor)?;
        }
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clip_scales_to_max_norm() {
        let t = |v: Vec<f32>| Tensor::from_vec(v, 2, &Device::Cpu).unwrap();
        let mut g = Grads(BTreeMap::from([
            ("a".into(), t(vec![3.0, 0.0])),
            ("b".into(), t(vec![0.0, 4.0])),
        ]));
        assert!((g.global_norm().unwrap() - 5.0).abs() < 1e-9);
        let before = g.clip(1.0).unwrap();
        assert!((before - 5.0).abs() < 1e-9);
        assert!((g.global_norm().unwrap() - 1.0).abs() < 1e-5);
        let mut small = g.clone();
        small.clip(10.0).unwrap();
        assert!((small.global_norm().unwrap() - 1.0).abs() < 1e-5);
    }
}
