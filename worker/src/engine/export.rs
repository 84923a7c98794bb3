//! HF PEFT export: `adapter_config.json` + `adapter_model.safetensors` (keys without the
//! adapter name, `{"format":"pt"}` metadata), loading such a folder back, and a merged
//! full-model export (`config.json` + `model.safetensors`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::adapters::set::merge_all;
use crate::engine::adapters::{
    Adaptable, AdapterConfig, AdapterError, AdapterSet, LoraInit, Method, TargetModules,
};
use crate::engine::model::Llama;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("adapter_config.json: {0}")]
    Config(String),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error("tensor op failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The PEFT `task_type` written into the config.
pub const CAUSAL_LM: &str = "CAUSAL_LM";

/// The fields of PEFT's `adapter_config.json` that we read back.
#[derive(Debug, Deserialize)]
struct PeftConfigIn {
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f32,
    target_modules: TargetModules,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    modules_to_save: Option<serde_json::Value>,
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` for `set` into `dir`.
/// `target_modules` is written as the sorted distinct module names that were adapted, as
/// PEFT itself does after resolving `all-linear`.
pub fn save_adapter(
    dir: &Path,
    set: &AdapterSet,
    base_model_name_or_path: &str,
    task_type: &str,
) -> Result<(), ExportError> {
    let write_err = |path: &Path, reason: String| ExportError::Write {
        path: path.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e.to_string()))?;
    if !matches!(set.method(), Method::Lora) {
        return save_method(dir, set, base_model_name_or_path, task_type);
    }
    let (tensors, r, lora_alpha) = if set.initial().is_empty() {
        (set.tensors(), set.config().r, set.config().lora_alpha)
    } else {
        pissa_as_lora(set)?
    };
    save_lora_tensors(
        dir,
        set,
        &tensors,
        r,
        lora_alpha,
        base_model_name_or_path,
        task_type,
    )
}

/// Writes `tensors` (PEFT LoRA keys of `set`'s modules) as a PEFT LoRA adapter of rank `r`
/// and `lora_alpha`, with `set`'s other settings: the plain export, and adapters rebuilt from
/// several factor pairs (PiSSA as LoRA, a chain of LoRA links).
pub fn save_lora_tensors(
    dir: &Path,
    set: &AdapterSet,
    tensors: &BTreeMap<String, Tensor>,
    r: usize,
    lora_alpha: f64,
    base_model_name_or_path: &str,
    task_type: &str,
) -> Result<(), ExportError> {
    let write_err = |path: &Path, reason: String| ExportError::Write {
        path: path.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e.to_string()))?;
    let cfg = set.config();
    let mut targets: Vec<&str> = set
        .modules()
        .iter()
        .map(|m| m.rsplit('.').next().unwrap_or(m))
        .collect();
    targets.sort_unstable();
    targets.dedup();
    let alpha = if lora_alpha.fract() == 0.0 && lora_alpha.abs() < 1e15 {
        json!(lora_alpha as i64)
    } else {
        json!(lora_alpha)
    };
    let init = match cfg.init {
        LoraInit::Gaussian => json!("gaussian"),
        // Converted PiSSA is a plain LoRA on the original weights.
        LoraInit::Default | LoraInit::Pissa | LoraInit::LoraGa => json!(true),
    };
    let config = json!({
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": null,
        "inference_mode": true,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": cfg.use_rslora,
        "use_dora": cfg.use_dora,
        "init_lora_weights": init,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    let path = dir.join(ADAPTER_CONFIG);
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| write_err(&path, e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| write_err(&path, e.to_string()))?;
    let path = dir.join(ADAPTER_WEIGHTS);
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(tensors, Some(meta), &path)
        .map_err(|e| write_err(&path, e.to_string()))?;
    Ok(())
}

/// Non-LoRA methods. IA3 and prompt tuning write PEFT's own config and keys
/// (`…ia3_l`, `prompt_embeddings`); BitFit and full fine-tuning are not PEFT types, so
/// they write the trained tensors under their HF names with `peft_type` `BITFIT`/`FULL`
/// (only our loader reads these; use the merged-model export for other consumers).
fn save_method(
    dir: &Path,
    set: &AdapterSet,
    base_model_name_or_path: &str,
    task_type: &str,
) -> Result<(), ExportError> {
    let write_err = |path: &Path, reason: String| ExportError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let short = |mods: &[String]| {
        let mut v: Vec<String> = mods
            .iter()
            .map(|m| m.rsplit('.').next().unwrap_or(m).to_string())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let config = match set.method() {
        Method::Ia3 { .. } => {
            let ff: Vec<String> = set
                .vars()
                .iter()
                .filter(|(_, v)| v.dims().first() == Some(&1) && v.dims().get(1) != Some(&1))
                .filter_map(|(k, _)| {
                    k.strip_suffix(".ia3_l")
                        .and_then(|m| m.strip_prefix(crate::engine::adapters::PEFT_PREFIX))
                        .map(String::from)
                })
                .collect();
            json!({
                "peft_type": "IA3",
                "task_type": task_type,
                "base_model_name_or_path": base_model_name_or_path,
                "revision": null,
                "inference_mode": true,
                "target_modules": short(set.modules()),
                "feedforward_modules": short(&ff),
                "fan_in_fan_out": false,
                "modules_to_save": null,
                "init_ia3_weights": true,
            })
        }
        Method::PromptTuning { num_virtual_tokens } => {
            let token_dim = set
                .vars()
                .get("prompt_embeddings")
                .and_then(|v| v.dims().get(1).copied())
                .unwrap_or(0);
            json!({
                "peft_type": "PROMPT_TUNING",
                "task_type": task_type,
                "base_model_name_or_path": base_model_name_or_path,
                "revision": null,
                "inference_mode": true,
                "num_virtual_tokens": num_virtual_tokens,
                "token_dim": token_dim,
                "num_transformer_submodules": 1,
                "prompt_tuning_init": "RANDOM",
            })
        }
        Method::PrefixTuning {
            num_virtual_tokens,
            layout,
        } => {
            let layout = layout.ok_or_else(|| {
                ExportError::Config("a prefix-tuning set without its layout".into())
            })?;
            let token_dim = layout.kv_heads * layout.head_dim;
            // As PEFT writes it after its grouped-query adjustment: `token_dim` and
            // `num_attention_heads` describe the key/value heads.
            json!({
                "peft_type": "PREFIX_TUNING",
                "task_type": task_type,
                "base_model_name_or_path": base_model_name_or_path,
                "revision": null,
                "inference_mode": true,
                "num_virtual_tokens": num_virtual_tokens,
                "token_dim": token_dim,
                "num_transformer_submodules": 1,
                "num_attention_heads": layout.kv_heads,
                "num_layers": layout.layers,
                "encoder_hidden_size": token_dim,
                "prefix_projection": false,
            })
        }
        m @ (Method::Lora | Method::BitFit | Method::Full) => json!({
            "peft_type": m.kind().to_uppercase(),
            "task_type": task_type,
            "base_model_name_or_path": base_model_name_or_path,
            "parameters": set.vars().keys().collect::<Vec<_>>(),
        }),
    };
    let path = dir.join(ADAPTER_CONFIG);
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| write_err(&path, e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| write_err(&path, e.to_string()))?;
    let path = dir.join(ADAPTER_WEIGHTS);
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(&set.tensors(), Some(meta), &path)
        .map_err(|e| write_err(&path, e.to_string()))?;
    Ok(())
}

/// PEFT's PiSSA conversion (`path_initial_model_for_weight_conversion`): the trained
/// `s·BA` applies to the residual `W - s·B₀A₀`, so relative to the original `W` the update
/// is `s(BA - B₀A₀) = s·[B | -B₀]·[A ; A₀]`: rank 2r, with alpha scaled so `s` is unchanged.
fn pissa_as_lora(
    set: &AdapterSet,
) -> Result<(BTreeMap<String, candle_core::Tensor>, usize, f64), ExportError> {
    let cfg = set.config();
    let current = set.tensors();
    let init = set.initial();
    let mut out = BTreeMap::new();
    for (name, t) in &current {
        let t0 = init
            .get(name)
            .ok_or_else(|| ExportError::Config(format!("no initial PiSSA value for `{name}`")))?;
        let joined = if name.ends_with("lora_A.weight") {
            candle_core::Tensor::cat(&[t, t0], 0)?
        } else {
            candle_core::Tensor::cat(&[t, &t0.neg()?], 1)?
        };
        out.insert(name.clone(), joined);
    }
    let alpha = if cfg.use_rslora {
        cfg.lora_alpha * std::f64::consts::SQRT_2
    } else {
        cfg.lora_alpha * 2.0
    };
    Ok((out, cfg.r * 2, alpha))
}

/// Reads an adapter folder this module wrote and attaches it to `model`: PEFT's `LORA`
/// (rsLoRA, DoRA), `IA3`, `PROMPT_TUNING` and `PREFIX_TUNING`, and our `FULL`/`BITFIT` layouts (trained
/// tensors under their HF names). Every tensor must match the attached set exactly.
pub fn load_adapter<M: Adaptable>(dir: &Path, model: &mut M) -> Result<AdapterSet, ExportError> {
    let read_err = |path: &Path, reason: String| ExportError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ExportError::Config(e.to_string()))?;
    let peft_type = value
        .get("peft_type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| ExportError::Config("`peft_type` is missing".into()))?;
    let names = |key: &str| -> Result<Option<Vec<String>>, ExportError> {
        match value.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| ExportError::Config(format!("`{key}`: {e}"))),
        }
    };
    let virtual_tokens = || -> Result<usize, ExportError> {
        value
            .get("num_virtual_tokens")
            .and_then(|n| n.as_u64())
            .filter(|n| (1..=4096).contains(n))
            .map(|n| n as usize)
            .ok_or_else(|| ExportError::Config("`num_virtual_tokens` must be 1..=4096".into()))
    };
    let set = match peft_type {
        "LORA" => attach_lora(&text, model)?,
        "IA3" => crate::engine::adapters::methods::attach(
            model,
            &Method::Ia3 {
                target_modules: names("target_modules")?,
                feedforward_modules: names("feedforward_modules")?,
            },
            0,
        )?,
        "PROMPT_TUNING" => crate::engine::adapters::methods::attach(
            model,
            &Method::PromptTuning {
                num_virtual_tokens: virtual_tokens()?,
            },
            0,
        )?,
        "PREFIX_TUNING" => {
            if value.get("prefix_projection").and_then(|p| p.as_bool()) == Some(true) {
                return Err(ExportError::Config(
                    "prefix_projection (the reparameterisation MLP) is not supported".into(),
                ));
            }
            crate::engine::adapters::methods::attach(
                model,
                &Method::PrefixTuning {
                    num_virtual_tokens: virtual_tokens()?,
                    layout: None,
                },
                0,
            )?
        }
        "FULL" => crate::engine::adapters::methods::attach(model, &Method::Full, 0)?,
        "BITFIT" => crate::engine::adapters::methods::attach(model, &Method::BitFit, 0)?,
        other => {
            return Err(ExportError::Config(format!(
                "peft_type `{other}` is not supported (LORA, IA3, PROMPT_TUNING, PREFIX_TUNING, \
                 FULL, BITFIT)"
            )));
        }
    };
    let path = dir.join(ADAPTER_WEIGHTS);
    let bytes = std::fs::read(&path).map_err(|e| read_err(&path, e.to_string()))?;
    let device = set
        .vars()
        .values()
        .next()
        .map(|v| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let tensors = candle_core::safetensors::load_buffer(&bytes, &device)?;
    set.load_tensors(&tensors)?;
    Ok(set)
}

/// A PEFT LoRA adapter folder read without a model: its config and tensors (on the CPU).
#[derive(Debug)]
pub struct LoraFile {
    pub config: AdapterConfig,
    /// By PEFT key (`base_model.model.<module>.lora_A.weight`, `….lora_B.weight`).
    pub tensors: HashMap<String, Tensor>,
}

/// Reads a plain LoRA adapter folder (rsLoRA included; DoRA's magnitude is not a delta, so it
/// is refused), e.g. a merge job's source.
pub fn read_lora(dir: &Path) -> Result<LoraFile, ExportError> {
    let read_err = |path: &Path, reason: String| ExportError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ExportError::Config(e.to_string()))?;
    match value.get("peft_type").and_then(|t| t.as_str()) {
        Some("LORA") => {}
        other => {
            return Err(ExportError::Config(format!(
                "peft_type {other:?} is not LORA: only LoRA adapters merge"
            )));
        }
    }
    let peft: PeftConfigIn =
        serde_json::from_str(&text).map_err(|e| ExportError::Config(e.to_string()))?;
    if peft.use_dora {
        return Err(ExportError::Config(
            "a DoRA adapter rescales the merged weight per row, which is not a delta: only \
             plain LoRA adapters merge"
                .into(),
        ));
    }
    let config = AdapterConfig {
        r: peft.r,
        lora_alpha: peft.lora_alpha,
        lora_dropout: 0.0,
        target_modules: peft.target_modules,
        use_rslora: peft.use_rslora,
        use_dora: false,
        init: LoraInit::Default,
        seed: 0,
    };
    config.validate()?;
    let path = dir.join(ADAPTER_WEIGHTS);
    let bytes = std::fs::read(&path).map_err(|e| read_err(&path, e.to_string()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)?;
    Ok(LoraFile { config, tensors })
}

/// Attaches the LoRA (rsLoRA, DoRA) a PEFT `adapter_config.json` describes.
fn attach_lora<M: Adaptable>(config: &str, model: &mut M) -> Result<AdapterSet, ExportError> {
    let peft: PeftConfigIn =
        serde_json::from_str(config).map_err(|e| ExportError::Config(e.to_string()))?;
    if peft.bias.as_deref().is_some_and(|b| b != "none") {
        return Err(ExportError::Config(
            "only bias = \"none\" is supported".into(),
        ));
    }
    if peft.modules_to_save.as_ref().is_some_and(|m| !m.is_null()) {
        return Err(ExportError::Config(
            "modules_to_save is not supported".into(),
        ));
    }
    let config = AdapterConfig {
        r: peft.r,
        lora_alpha: peft.lora_alpha,
        lora_dropout: peft.lora_dropout,
        target_modules: peft.target_modules,
        use_rslora: peft.use_rslora,
        use_dora: peft.use_dora,
        init: LoraInit::Default,
        seed: 0,
    };
    Ok(AdapterSet::attach(model, &config)?)
}

/// Shards of a merged export stay below this size (as `transformers` cuts them by default
/// at 5 GB; 2 GiB keeps each file loadable by 32-bit offset readers and uploads resumable).
pub const MERGED_SHARD_BYTES: usize = 2 << 30;

/// Folds the adapter into `model`'s weights and writes an HF model folder in `dtype`:
/// `config.json` and `model.safetensors`, or shards of at most `shard_bytes` named
/// `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`. Tensors are
/// converted one shard at a time, so besides the model at most one shard's copy is held.
/// The model stays merged afterwards; call `unmerge_all` to keep training.
pub fn save_merged(
    dir: &Path,
    model: &mut Llama,
    dtype: candle_core::DType,
    shard_bytes: usize,
) -> Result<(), ExportError> {
    merge_all(model)?;
    let write_err = |path: &Path, reason: String| ExportError::Write {
        path: path.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e.to_string()))?;
    let (tensors, tied) = model.state_dict();
    let mut cfg = model.config().clone();
    cfg.tie_word_embeddings = tied;
    let mut config =
        serde_json::to_value(ConfigOut::from(&cfg)).map_err(|e| write_err(dir, e.to_string()))?;
    let torch_dtype = match dtype {
        candle_core::DType::BF16 => "bfloat16",
        candle_core::DType::F16 => "float16",
        _ => "float32",
    };
    if let Some(obj) = config.as_object_mut() {
        obj.insert("architectures".into(), json!(["LlamaForCausalLM"]));
        obj.insert("torch_dtype".into(), json!(torch_dtype));
    }
    let path = dir.join("config.json");
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| write_err(&path, e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| write_err(&path, e.to_string()))?;

    // Shards in key order, each cut before it would pass `shard_bytes`.
    let mut shards: Vec<Vec<&String>> = vec![Vec::new()];
    let mut size = 0usize;
    let mut total = 0usize;
    for (name, t) in &tensors {
        let bytes = t.elem_count() * dtype.size_in_bytes();
        total += bytes;
        if size > 0 && size + bytes > shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        if let Some(last) = shards.last_mut() {
            last.push(name);
        }
    }
    let n = shards.len();
    let file_name = |i: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        }
    };
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut weight_map = BTreeMap::new();
    for (i, names) in shards.iter().enumerate() {
        let file = file_name(i);
        let mut shard = BTreeMap::new();
        for name in names {
            let t = &tensors[*name];
            shard.insert((*name).clone(), t.to_dtype(dtype)?);
            weight_map.insert((*name).clone(), file.clone());
        }
        let path = dir.join(&file);
        safetensors::tensor::serialize_to_file(&shard, Some(meta.clone()), &path)
            .map_err(|e| write_err(&path, e.to_string()))?;
    }
    if n > 1 {
        let index = json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        let path = dir.join("model.safetensors.index.json");
        let text =
            serde_json::to_string_pretty(&index).map_err(|e| write_err(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| write_err(&path, e.to_string()))?;
    }
    Ok(())
}

/// `config.json` as HF writes it for the fields we model.
#[derive(Debug, Serialize)]
struct ConfigOut<'a> {
    model_type: &'a str,
    hidden_size: usize,
    intermediate_size: usize,
    vocab_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rope_scaling: Option<&'a crate::engine::model::config::RopeScaling>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bos_token_id: Option<u32>,
    max_position_embeddings: usize,
    tie_word_embeddings: bool,
    attention_bias: bool,
    mlp_bias: bool,
    hidden_act: &'a str,
}

impl<'a> From<&'a crate::engine::model::LlamaConfig> for ConfigOut<'a> {
    fn from(c: &'a crate::engine::model::LlamaConfig) -> Self {
        Self {
            model_type: &c.model_type,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            vocab_size: c.vocab_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_kv_heads(),
            head_dim: c.head_dim,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: c.rope_theta,
            rope_scaling: c.rope_scaling.as_ref(),
            bos_token_id: c.bos_token_id,
            max_position_embeddings: c.max_position_embeddings,
            tie_word_embeddings: c.tie_word_embeddings,
            attention_bias: c.attention_bias,
            mlp_bias: c.mlp_bias,
            hidden_act: "silu",
        }
    }
}
