//! Fine-tuning methods besides LoRA: IA3, prompt tuning, BitFit and full fine-tuning.
//! Each produces an [`AdapterSet`] whose vars the trainer, optimizer and checkpoints
//! handle exactly like LoRA's.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor, TensorId, Var};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::linear::Ia3;
use super::targets::{matches_name, select};
use super::{Adaptable, AdapterConfig, AdapterError, AdapterSet, PEFT_PREFIX, TargetModules};
use crate::engine::rng;

/// A fine-tuning method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Method {
    /// LoRA and its variants, configured by [`AdapterConfig`] ([`AdapterSet::attach`]).
    Lora,
    /// IA3 vectors; `None` lists take the model's PEFT defaults (Llama: k/v/down_proj,
    /// down_proj scaling its input).
    Ia3 {
        target_modules: Option<Vec<String>>,
        feedforward_modules: Option<Vec<String>>,
    },
    /// `num_virtual_tokens` trainable input embeddings prepended to every sequence,
    /// initialised from randomly chosen vocabulary rows.
    PromptTuning { num_virtual_tokens: usize },
    /// Prefix tuning (P-tuning v2, Li & Liang 2021; Liu et al. 2022): `num_virtual_tokens`
    /// trainable keys and values in every attention layer, PEFT's `PREFIX_TUNING` without the
    /// reparameterisation MLP. `layout` is filled in from the model when attached.
    PrefixTuning {
        num_virtual_tokens: usize,
        layout: Option<super::PrefixLayout>,
    },
    /// Only biases train (linear biases and, where the model has them, norm biases).
    BitFit,
    /// Every base parameter trains (the baseline); vars are keyed by HF name.
    Full,
}

/// Standard deviation of the initial prefix keys and values.
const PREFIX_INIT_STD: f64 = 0.02;

/// Short name of a method, for logs and configs.
pub type MethodKind = &'static str;

impl Method {
    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Lora => "lora",
            Method::Ia3 { .. } => "ia3",
            Method::PromptTuning { .. } => "prompt_tuning",
            Method::PrefixTuning { .. } => "prefix_tuning",
            Method::BitFit => "bitfit",
            Method::Full => "full",
        }
    }
}

/// Makes the parameters of `method` trainable on `model` and returns them as a set.
/// `seed` drives the only random choice (prompt-tuning init rows).
pub fn attach<M: Adaptable>(
    model: &mut M,
    method: &Method,
    seed: u64,
) -> Result<AdapterSet, AdapterError> {
    let mut vars = BTreeMap::new();
    let mut modules = Vec::new();
    // What the set records: the method as asked, with what attaching resolved.
    let mut stored = method.clone();
    match method {
        Method::Lora => {
            return Err(AdapterError::Invalid(
                "LoRA is attached with AdapterSet::attach and an AdapterConfig".into(),
            ));
        }
        Method::Ia3 {
            target_modules,
            feedforward_modules,
        } => {
            let (def_t, def_ff) = model.ia3_defaults();
            let targets = target_modules.clone().unwrap_or(def_t);
            let ff = feedforward_modules.clone().unwrap_or(def_ff);
            if targets.is_empty() {
                return Err(AdapterError::Invalid(
                    "IA3 needs target_modules for this model".into(),
                ));
            }
            if let Some(f) = ff.iter().find(|f| !targets.contains(f)) {
                return Err(AdapterError::Invalid(format!(
                    "feedforward module `{f}` is not in target_modules"
                )));
            }
            let paths: Vec<String> = model.linears().into_iter().map(|(p, _)| p).collect();
            let selected = select(
                &paths,
                &model.output_modules(),
                &TargetModules::Names(targets),
            )?;
            for (path, lin) in model.linears_mut() {
                if !selected.contains(&path) {
                    continue;
                }
                let on_input = ff.iter().any(|f| matches_name(&path, f));
                let shape = if on_input {
                    (1, lin.in_features())
                } else {
                    (lin.out_features(), 1)
                };
                let device = lin.weight().device().clone();
                let l = Var::ones(shape, DType::F32, &device)?;
                let key = format!("{PEFT_PREFIX}{path}");
                vars.insert(format!("{key}.ia3_l"), l.clone());
                lin.attach_ia3(Ia3 { key, l, on_input });
                modules.push(path);
            }
        }
        Method::PromptTuning { num_virtual_tokens } => {
            let n = *num_virtual_tokens;
            if n == 0 {
                return Err(AdapterError::Invalid(
                    "num_virtual_tokens must be positive".into(),
                ));
            }
            let emb = model.input_embeddings().ok_or_else(|| {
                AdapterError::Invalid("prompt tuning is not supported by this model".into())
            })?;
            let vocab = emb.dim(0)?;
            let mut g = rng::stream(seed, "prompt_tuning/init");
            let rows: Vec<u32> = (0..n).map(|_| g.random_range(0..vocab as u32)).collect();
            let idx = Tensor::from_vec(rows, n, emb.device())?;
            let init = emb.index_select(&idx, 0)?.to_dtype(DType::F32)?;
            let var = Var::from_tensor(&init)?;
            model.set_prompt(Some(var.as_tensor().clone()))?;
            vars.insert("prompt_embeddings".to_string(), var);
        }
        Method::PrefixTuning {
            num_virtual_tokens, ..
        } => {
            let n = *num_virtual_tokens;
            if n == 0 {
                return Err(AdapterError::Invalid(
                    "num_virtual_tokens must be positive".into(),
                ));
            }
            let layout = model.prefix_layout().ok_or_else(|| {
                AdapterError::Invalid("prefix tuning is not supported by this model".into())
            })?;
            // Small keys and values: at the start the prefix draws little attention and adds
            // little to it, so training starts near the base model (PEFT's N(0, 1) embedding
            // would start far from it).
            let mut g = rng::stream(seed, "prefix_tuning/init");
            let values: Vec<f32> = (0..n * layout.width())
                .map(|_| (rng::normal(&mut g) * PREFIX_INIT_STD) as f32)
                .collect();
            let device = model
                .linears()
                .first()
                .map(|(_, l)| l.weight().device().clone())
                .unwrap_or(candle_core::Device::Cpu);
            let var = Var::from_vec(values, (n, layout.width()), &device)?;
            model.set_prefix(Some(var.as_tensor().clone()))?;
            vars.insert("prompt_embeddings".to_string(), var);
            stored = Method::PrefixTuning {
                num_virtual_tokens: n,
                layout: Some(layout),
            };
        }
        Method::BitFit => {
            for (path, lin) in model.linears_mut() {
                if let Some(b) = lin.bias() {
                    let var = Var::from_tensor(b)?;
                    lin.set_bias(Some(var.as_tensor().clone()));
                    vars.insert(format!("{path}.bias"), var);
                    modules.push(path);
                }
            }
            for (name, t) in model.other_params_mut() {
                if name.ends_with(".bias") {
                    let var = Var::from_tensor(t)?;
                    *t = var.as_tensor().clone();
                    vars.insert(name, var);
                }
            }
            if vars.is_empty() {
                return Err(AdapterError::Invalid(
                    "BitFit: this model has no bias parameters".into(),
                ));
            }
        }
        Method::Full => {
            // Tied tensors (lm_head = embed_tokens) share one Var, so they stay tied.
            let mut by_id: HashMap<TensorId, Tensor> = HashMap::new();
            let mut make = |name: String, t: &mut Tensor, vars: &mut BTreeMap<String, Var>| {
                if let Some(shared) = by_id.get(&t.id()) {
                    *t = shared.clone();
                    return Ok::<(), AdapterError>(());
                }
                let var = Var::from_tensor(t)?;
                by_id.insert(t.id(), var.as_tensor().clone());
                *t = var.as_tensor().clone();
                vars.insert(name, var);
                Ok(())
            };
            for (name, t) in model.other_params_mut() {
                make(name, t, &mut vars)?;
            }
            for (path, lin) in model.linears_mut() {
                let mut w = lin.weight().clone();
                make(format!("{path}.weight"), &mut w, &mut vars)?;
                lin.set_base_weight(w);
                if let Some(b) = lin.bias() {
                    let mut b = b.clone();
                    make(format!("{path}.bias"), &mut b, &mut vars)?;
                    lin.set_bias(Some(b));
                }
                modules.push(path);
            }
        }
    }
    let names = if modules.is_empty() {
        vec![method.kind().to_string()]
    } else {
        modules.clone()
    };
    let config = AdapterConfig {
        seed,
        ..AdapterConfig::lora(1, 1.0, TargetModules::Names(names))
    };
    Ok(AdapterSet::from_method(config, modules, vars, stored))
}
