//! AdamW with bias correction and decoupled weight decay (identical to `torch.optim.AdamW`),
//! whose moments and step count can be saved and restored for exact resume.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{Grads, OptimError};

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

/// AdamW over named `Var`s. The learning rate is passed to each [`AdamW::step`] so the
/// schedule lives outside; per-parameter multipliers give LoRA+ (`lr_B = λ·lr`).
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: BTreeMap<String, Var>,
    lr_scale: BTreeMap<String, f64>,
    moments: BTreeMap<String, Moments>,
    step: u64,
}

impl AdamW {
    pub fn new(params: &BTreeMap<String, Var>, config: AdamWConfig) -> Result<Self, OptimError> {
        let mut moments = BTreeMap::new();
        for (name, var) in params {
            let z = var.zeros_like()?;
            moments.insert(name.clone(), Moments { m: z.clone(), v: z });
        }
        Ok(Self {
            config,
            params: params.clone(),
            lr_scale: BTreeMap::new(),
            moments,
            step: 0,
        })
    }

    /// Multiplies the learning rate of every parameter whose name satisfies `pred`
    /// (LoRA+: `|n| n.ends_with("lora_B.weight")`, factor ≈ 16).
    pub fn set_lr_scale(&mut self, pred: impl Fn(&str) -> bool, factor: f64) {
        for name in self.params.keys() {
            if pred(name) {
                self.lr_scale.insert(name.clone(), factor);
            }
        }
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr`. Every parameter must have a gradient.
    pub fn step(&mut self, grads: &Grads, lr: f64) -> Result<(), OptimError> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (name, var) in &self.params {
            let g = grads
                .0
                .get(name)
                .ok_or_else(|| OptimError::State(format!("no gradient for `{name}`")))?;
            let mom = self
                .moments
                .get_mut(name)
                .ok_or_else(|| OptimError::State(format!("no moments for `{name}`")))?;
            let lr = lr * self.lr_scale.get(name).copied().unwrap_or(1.0);
            let g = g.to_dtype(var.dtype())?;
            mom.m = ((&mom.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            mom.v = ((&mom.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let theta = var.as_detached_tensor();
            let decayed = (&theta * (1.0 - lr * c.weight_decay))?;
            let denom = ((&mom.v / bc2)?.sqrt()? + c.eps)?;
            let update = ((&mom.m / bc1)? / denom)?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Moments as named tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`, torch's names).
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (name, mom) in &self.moments {
            out.insert(format!("{name}.exp_avg"), mom.m.clone());
            out.insert(format!("{name}.exp_avg_sq"), mom.v.clone());
        }
        out
    }

    /// Restores moments and step count saved by [`Self::state_tensors`]/[`Self::save`].
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: u64,
    ) -> Result<(), OptimError> {
        for (name, var) in &self.params {
            let get = |suffix: &str| -> Result<Tensor, OptimError> {
                let key = format!("{name}.{suffix}");
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| OptimError::State(format!("missing `{key}`")))?;
                if t.dims() != var.dims() {
                    return Err(OptimError::State(format!(
                        "`{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                Ok(t.to_dtype(var.dtype())?.to_device(var.device())?)
            };
            let m = get("exp_avg")?;
            let v = get("exp_avg_sq")?;
            self.moments.insert(name.clone(), Moments { m, v });
        }
        self.step = step;
        Ok(())
    }

    /// Writes the state as safetensors, with the step count in the metadata.
    pub fn save(&self, path: &Path) -> Result<(), OptimError> {
        let meta = HashMap::from([
            ("format".to_string(), "tuna-adamw".to_string()),
            ("step".to_string(), self.step.to_string()),
        ]);
        safetensors::tensor::serialize_to_file(&self.state_tensors(), Some(meta), path).map_err(
            |e| OptimError::Io {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
        )
    }

    /// Reads a state written by [`Self::save`].
    pub fn load(&mut self, path: &Path, device: &Device) -> Result<(), OptimError> {
        let io = |reason: String| OptimError::Io {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| io(e.to_string()))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| io(e.to_string()))?;
        let step = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| io("no `step` in metadata".into()))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
        self.load_state(&tensors, step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn params(v: f32) -> BTreeMap<String, Var> {
        BTreeMap::from([(
            "w".to_string(),
            Var::from_vec(vec![v, -v], 2, &Device::Cpu).unwrap(),
        )])
    }

    fn grads(v: f32) -> Grads {
        Grads(BTreeMap::from([(
            "w".to_string(),
            Tensor::from_vec(vec![v, 2.0 * v], 2, &Device::Cpu).unwrap(),
        )]))
    }

    #[test]
    fn first_step_moves_by_lr_and_decay_is_decoupled() {
        let p = params(1.0);
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::new(&p, cfg).unwrap();
        opt.step(&grads(0.5), 0.01).unwrap();
        let w = p["w"].to_vec1::<f32>().unwrap();
        // Bias-corrected first step is lr·sign(g); decay multiplies θ by (1 - lr·wd).
        assert!((w[0] - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6, "{w:?}");
        assert!((w[1] - (-(1.0 - 0.001) - 0.01)).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn saved_state_resumes_identically() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (params(1.0), params(1.0));
        let mut a = AdamW::new(&p1, AdamWConfig::default()).unwrap();
        for i in 0..3 {
            a.step(&grads(0.1 * i as f32 + 0.2), 0.05).unwrap();
        }
        a.save(&dir.path().join("opt.safetensors")).unwrap();
        p2["w"]
            .set(&p1["w"].as_detached_tensor().copy().unwrap())
            .unwrap();
        let mut b = AdamW::new(&p2, AdamWConfig::default()).unwrap();
        b.load(&dir.path().join("opt.safetensors"), &Device::Cpu)
            .unwrap();
        assert_eq!(b.steps(), 3);
        a.step(&grads(0.7), 0.05).unwrap();
        b.step(&grads(0.7), 0.05).unwrap();
        let (x, y) = (
            p1["w"].to_vec1::<f32>().unwrap(),
            p2["w"].to_vec1::<f32>().unwrap(),
        );
        assert_eq!(x, y);
        assert_eq!(p1["w"].dtype(), DType::F32);
    }

    #[test]
    fn lr_scale_applies_per_parameter() {
        let p = BTreeMap::from([
            (
                "x.lora_A.weight".to_string(),
                Var::from_vec(vec![0f32], 1, &Device::Cpu).unwrap(),
            ),
            (
                "x.lora_B.weight".to_string(),
                Var::from_vec(vec![0f32], 1, &Device::Cpu).unwrap(),
            ),
        ]);
        let g = Grads(
            p.keys()
                .map(|k| (k.clone(), Tensor::new(&[1f32], &Device::Cpu).unwrap()))
                .collect(),
        );
        let mut opt = AdamW::new(&p, AdamWConfig::default()).unwrap();
        opt.set_lr_scale(|n| n.ends_with("lora_B.weight"), 16.0);
        opt.step(&g, 0.01).unwrap();
        let a = p["x.lora_A.weight"].to_vec1::<f32>().unwrap()[0];
        let b = p["x.lora_B.weight"].to_vec1::<f32>().unwrap()[0];
        assert!((b / a - 16.0).abs() < 1e-4);
    }
}
