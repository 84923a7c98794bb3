//! The trainable parameters of one adapter across a model, keyed by PEFT file key.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Tensor, Var};

use super::linear::{adapter_dtype, row_norm};
use super::{Adaptable, AdapterConfig, AdapterError, Lora, LoraInit, PEFT_PREFIX, init, targets};

/// Adapter `Var`s by PEFT key (`base_model.model.<module>.lora_A.weight`, `…lora_B.weight`,
/// `…lora_magnitude_vector`). A `BTreeMap` so iteration order — and with it optimizer state
/// layout and checkpoints — is deterministic.
#[derive(Debug, Clone)]
pub struct AdapterSet {
    config: AdapterConfig,
    modules: Vec<String>,
    vars: BTreeMap<String, Var>,
    /// PiSSA only: the initial A and B by var name. The base weight was replaced by
    /// `W - s·B₀A₀`, so export must ship `s(BA - B₀A₀)` to apply to the original `W`.
    initial: BTreeMap<String, Tensor>,
    /// Which PEFT method these vars belong to (LoRA unless built by [`super::methods`]).
    method: super::Method,
}

impl AdapterSet {
    /// Creates fresh adapters on every module `config.target_modules` selects and attaches
    /// them to `model`. A is seeded Kaiming-uniform (or Gaussian), B is zero, so the model's
    /// output is unchanged; DoRA's magnitude starts at ‖W‖_row for the same reason.
    pub fn attach<M: Adaptable>(
        model: &mut M,
        config: &AdapterConfig,
    ) -> Result<Self, AdapterError> {
        config.validate()?;
        if config.init == LoraInit::LoraGa {
            return Err(AdapterError::Invalid(
                "LoRA-GA init needs a gradient batch: use engine::lora_ga::attach".into(),
            ));
        }
        let paths: Vec<String> = model.linears().into_iter().map(|(p, _)| p).collect();
        let selected = targets::select(&paths, &model.output_modules(), &config.target_modules)?;
        let mut vars = BTreeMap::new();
        let mut initial = BTreeMap::new();
        for (path, linear) in model.linears_mut() {
            if !selected.contains(&path) {
                continue;
            }
            let key = format!("{PEFT_PREFIX}{path}");
            let (out_f, in_f) = (linear.out_features(), linear.in_features());
            let device = linear.weight().device().clone();
            let dtype = adapter_dtype(linear.weight().dtype());
            let (a, b) = if config.init == LoraInit::Pissa {
                let (a0, b0) =
                    init::pissa(linear.weight(), config.r, config.scale(), config.seed, &key)?;
                let (a0, b0) = (a0.to_dtype(dtype)?, b0.to_dtype(dtype)?);
                let principal = (b0.matmul(&a0)? * config.scale())?;
                let residual = (linear.weight().to_dtype(dtype)? - principal)?;
                linear.set_base_weight(residual.to_dtype(linear.weight().dtype())?);
                initial.insert(format!("{key}.lora_A.weight"), a0.clone());
                initial.insert(format!("{key}.lora_B.weight"), b0.clone());
                (Var::from_tensor(&a0)?, Var::from_tensor(&b0)?)
            } else {
                let a = init::lora_a(config.r, in_f, config.init, config.seed, &key, &device)?;
                (
                    Var::from_tensor(&a.to_dtype(dtype)?)?,
                    Var::zeros((out_f, config.r), dtype, &device)?,
                )
            };
            let magnitude = if config.use_dora {
                let w = linear.weight().to_dtype(dtype)?;
                Some(Var::from_tensor(&row_norm(&w)?)?)
            } else {
                None
            };
            vars.insert(format!("{key}.lora_A.weight"), a.clone());
            vars.insert(format!("{key}.lora_B.weight"), b.clone());
            if let Some(m) = &magnitude {
                vars.insert(format!("{key}.lora_magnitude_vector"), m.clone());
            }
            linear.attach(Lora {
                key,
                a,
                b,
                magnitude,
                scale: config.scale(),
                dropout: config.lora_dropout,
            });
        }
        Ok(Self {
            config: config.clone(),
            modules: selected,
            vars,
            initial,
            method: super::Method::Lora,
        })
    }

    /// A set for a non-LoRA method (see [`super::methods::attach`]); `config` only carries
    /// the seed and targets there.
    pub(crate) fn from_method(
        config: AdapterConfig,
        modules: Vec<String>,
        vars: BTreeMap<String, Var>,
        method: super::Method,
    ) -> Self {
        Self {
            config,
            modules,
            vars,
            initial: BTreeMap::new(),
            method,
        }
    }

    /// Records an initial factor for export conversion (inits that offset the base weight).
    pub(crate) fn set_initial(&mut self, name: String, value: Tensor) {
        self.initial.insert(name, value);
    }

    /// The method these vars implement.
    pub fn method(&self) -> &super::Method {
        &self.method
    }

    pub fn config(&self) -> &AdapterConfig {
        &self.config
    }

    /// HF module paths that carry an adapter.
    pub fn modules(&self) -> &[String] {
        &self.modules
    }

    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// Initial PiSSA factors by var name (empty for other inits).
    pub fn initial(&self) -> &BTreeMap<String, Tensor> {
        &self.initial
    }

    pub fn num_params(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// Current values, detached, by PEFT key (what goes into `adapter_model.safetensors`).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
            .collect()
    }

    /// Overwrites every Var from `tensors` (a saved adapter). Every key must be present with
    /// the right shape, and no unknown key may appear, so a mismatched file fails loudly.
    pub fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<(), AdapterError> {
        if let Some(extra) = tensors.keys().find(|k| !self.vars.contains_key(*k)) {
            return Err(AdapterError::UnexpectedTensor(extra.clone()));
        }
        for (name, var) in &self.vars {
            let t = tensors
                .get(name)
                .ok_or_else(|| AdapterError::MissingTensor(name.clone()))?;
            if t.dims() != var.dims() {
                return Err(AdapterError::Shape {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    actual: t.dims().to_vec(),
                });
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// Folds every attached adapter into its base weight (for export or fast inference).
pub fn merge_all<M: Adaptable>(model: &mut M) -> Result<(), AdapterError> {
    for (_, linear) in model.linears_mut() {
        linear.merge()?;
    }
    Ok(())
}

/// Restores every base weight saved by [`merge_all`].
pub fn unmerge_all<M: Adaptable>(model: &mut M) {
    for (_, linear) in model.linears_mut() {
        linear.unmerge();
    }
}
