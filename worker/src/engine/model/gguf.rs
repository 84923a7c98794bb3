//! GGUF import for Llama-family models: tensors are dequantized to f32 by candle's GGUF
//! reader, renamed to HF names, and Q/K rows are un-permuted (llama.cpp's converter
//! permutes them for interleaved RoPE; our model and PEFT use HF's half-split layout).
//! The tokenizer is rebuilt from the GGUF metadata when it is a byte-level BPE.
//!
//! Weights are read fully into memory (mapping needs `unsafe`, which this workspace forbids).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::ModelError;
use super::config::LlamaConfig;
use super::llama::Llama;
use super::tiny::TinySpec;
use super::weights::Weights;
use crate::engine::data::HfTokenizer;
use crate::engine::data::tokenizer::{
    TINY_SPECIAL_TOKENS, byte_level_alphabet, tiny_tokenizer_json,
};

/// A GGUF file that cannot be read or is not a supported Llama-family model.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read GGUF file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("GGUF file {path}: metadata `{key}` {reason}")]
    Metadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("GGUF file {path}: architecture `{arch}` is not supported (llama, mistral, qwen2)")]
    Architecture { path: PathBuf, arch: String },
    #[error("GGUF file {path}: tensor `{name}`: {reason}")]
    Tensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("cannot write GGUF file {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// What a GGUF file yields: the HF-style config, HF-named f32 weights, and the tokenizer
/// when the metadata describes one we can rebuild.
#[derive(Debug)]
pub struct GgufModel {
    pub config: LlamaConfig,
    pub weights: Weights,
    pub tokenizer: Option<HfTokenizer>,
    /// Why no tokenizer could be built, when `tokenizer` is `None`.
    pub tokenizer_error: Option<String>,
}

fn num(v: &Value) -> Option<f64> {
    Some(match v {
        Value::U8(x) => f64::from(*x),
        Value::I8(x) => f64::from(*x),
        Value::U16(x) => f64::from(*x),
        Value::I16(x) => f64::from(*x),
        Value::U32(x) => f64::from(*x),
        Value::I32(x) => f64::from(*x),
        Value::U64(x) => *x as f64,
        Value::I64(x) => *x as f64,
        // Through the shortest decimal form, so 1e-5 stored as f32 reads back as 1e-5.
        Value::F32(x) => x.to_string().parse().ok()?,
        Value::F64(x) => *x,
        _ => return None,
    })
}

/// HF name for a GGUF tensor name, or `None` for tensors we do not use.
fn hf_name(gguf: &str) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// GGUF tensor name for an HF name (inverse of [`hf_name`]).
fn gguf_name(hf: &str) -> Option<String> {
    let top = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Undoes llama.cpp's `permute(w, n_head)` on Q/K rows (weights `[out, in]` or biases
/// `[out]`): `reshape(n_head, hd/2, 2, …) → swap(1, 2) → reshape(out, …)`.
pub fn unpermute(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let out = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = out / n_head;
    w.reshape((n_head, hd / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// llama.cpp's `permute(w, n_head)`: the inverse of [`unpermute`].
pub fn permute(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let out = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = out / n_head;
    w.reshape((n_head, 2, hd / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// Reads a GGUF file: config from metadata, dequantized HF-named weights in `dtype`, and
/// the tokenizer.
pub fn read(path: &Path, dtype: DType, device: &Device) -> Result<GgufModel, ModelError> {
    let read_err = |reason: String| GgufError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| read_err(e.to_string()))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| read_err(e.to_string()))?;
    let meta = |key: &str| -> Result<&Value, GgufError> {
        content
            .metadata
            .get(key)
            .ok_or_else(|| GgufError::Metadata {
                path: path.to_path_buf(),
                key: key.to_string(),
                reason: "is missing".into(),
            })
    };
    let arch = meta("general.architecture")?
        .to_string()
        .map_err(|e| read_err(e.to_string()))?
        .clone();
    if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
        return Err(GgufError::Architecture {
            path: path.to_path_buf(),
            arch,
        }
        .into());
    }
    let number = |key: &str| -> Result<f64, GgufError> {
        let full = format!("{arch}.{key}");
        num(meta(&full)?).ok_or_else(|| GgufError::Metadata {
            path: path.to_path_buf(),
            key: full.clone(),
            reason: "is not a number".into(),
        })
    };
    let opt_number = |key: &str| content.metadata.get(&format!("{arch}.{key}")).and_then(num);
    let hidden = number("embedding_length")? as usize;
    let heads = number("attention.head_count")? as usize;
    let kv_heads = opt_number("attention.head_count_kv").map_or(heads, |v| v as usize);
    let layers = number("block_count")? as usize;

    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let Some(hf) = hf_name(name) else {
            continue;
        };
        let tensor_err = |reason: String| GgufError::Tensor {
            path: path.to_path_buf(),
            name: name.clone(),
            reason,
        };
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| tensor_err(e.to_string()))?;
        let mut t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| tensor_err(e.to_string()))?;
        // llama.cpp permutes Q/K only for llama-arch conversions (Llama, Mistral).
        if arch != "qwen2" {
            if hf.contains("self_attn.q_proj") {
                t = unpermute(&t, heads).map_err(|e| tensor_err(e.to_string()))?;
            } else if hf.contains("self_attn.k_proj") {
                t = unpermute(&t, kv_heads).map_err(|e| tensor_err(e.to_string()))?;
            }
        }
        tensors.insert(hf, t);
    }
    let vocab = tensors
        .get("model.embed_tokens.weight")
        .and_then(|t| t.dims().first().copied())
        .ok_or_else(|| GgufError::Tensor {
            path: path.to_path_buf(),
            name: "token_embd.weight".into(),
            reason: "is missing".into(),
        })?;
    let tie = !tensors.contains_key("lm_head.weight");
    let intermediate = number("feed_forward_length")? as usize;
    let head_dim = opt_number("attention.key_length")
        .map(|v| v as usize)
        .filter(|d| *d != hidden / heads.max(1));
    let config = LlamaConfig {
        model_type: if arch == "qwen2" { "qwen2" } else { "llama" }.into(),
        hidden_size: hidden,
        intermediate_size: intermediate,
        vocab_size: vocab,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        head_dim,
        rms_norm_eps: opt_number("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: opt_number("rope.freq_base").unwrap_or(10_000.0),
        rope_scaling: None,
        max_position_embeddings: opt_number("context_length").map_or(2048, |v| v as usize),
        tie_word_embeddings: tie,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: content
            .metadata
            .get("tokenizer.ggml.bos_token_id")
            .and_then(num)
            .map(|v| v as u32),
    };
    let (tokenizer, tokenizer_error) = match tokenizer_from_gguf(&content) {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(e)),
    };
    Ok(GgufModel {
        config,
        weights: Weights::from_tensors(tensors, dtype, device),
        tokenizer,
        tokenizer_error,
    })
}

/// Rebuilds the HF tokenizer from `tokenizer.ggml.*` (byte-level BPE only) through
/// candle's `TokenizerFromGguf`, with special tokens and chat template from the metadata.
fn tokenizer_from_gguf(content: &Content) -> Result<HfTokenizer, String> {
    let mut inner = tokenizers::Tokenizer::from_gguf(content).map_err(|e| e.to_string())?;
    let pre = content
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    // candle's fallback branch uses ByteLevel(add_prefix_space = true), which HF's GPT-2
    // style tokenizers (SmolLM2 included) do not; SmolLM2 also splits digits one by one.
    if !matches!(pre.as_str(), "qwen2" | "llama3" | "smaug-bpe" | "lfm2") {
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::pre_tokenizers::digits::Digits;
        use tokenizers::pre_tokenizers::sequence::Sequence;
        let byte_level = ByteLevel::new(false, true, true);
        if pre == "smollm" {
            inner.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                byte_level.into(),
            ])));
        } else {
            inner.with_pre_tokenizer(Some(byte_level));
        }
    }
    let tokens = content
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok());
    let token_text = |key: &str| -> Option<String> {
        let id = num(content.metadata.get(key)?)? as usize;
        tokens?.get(id)?.to_string().ok().cloned()
    };
    let template = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    HfTokenizer::from_parts(
        inner,
        token_text("tokenizer.ggml.bos_token_id").as_deref(),
        token_text("tokenizer.ggml.eos_token_id").as_deref(),
        token_text("tokenizer.ggml.padding_token_id").as_deref(),
        template,
    )
    .map_err(|e| e.to_string())
}

impl Llama {
    /// Loads a Llama-family GGUF file (dequantized to `dtype`); see [`read`] for the
    /// tokenizer that comes with it.
    pub fn from_gguf(path: &Path, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        let m = read(path, dtype, device)?;
        Llama::load(m.config, &m.weights)
    }
}

/// Writes the tiny model of `spec` (weights from `seed`) as an f32 GGUF file the way
/// llama.cpp's converter would (Q/K permuted, GGUF names, byte-level BPE tokenizer in the
/// metadata when the vocab holds it). For tests of the GGUF path.
pub fn write_tiny(spec: &TinySpec, seed: u64, path: &Path) -> Result<(), ModelError> {
    let werr = |reason: String| GgufError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let cfg = spec.config();
    let mut qtensors = Vec::new();
    for (name, t) in spec.weights(seed)? {
        let g = gguf_name(&name).ok_or_else(|| werr(format!("no GGUF name for `{name}`")))?;
        let t = if name.contains("q_proj") {
            permute(&t, spec.heads)?
        } else if name.contains("k_proj") {
            permute(&t, spec.kv_heads)?
        } else {
            t
        };
        let q = QTensor::quantize(&t, GgmlDType::F32).map_err(|e| werr(e.to_string()))?;
        qtensors.push((g, q));
    }
    let s = |v: &str| Value::String(v.to_string());
    let u = |v: usize| Value::U32(v as u32);
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s("llama")),
        ("general.name".into(), s("tuna-tiny")),
        (
            "llama.context_length".into(),
            u(cfg.max_position_embeddings),
        ),
        ("llama.embedding_length".into(), u(cfg.hidden_size)),
        ("llama.block_count".into(), u(cfg.num_hidden_layers)),
        ("llama.feed_forward_length".into(), u(cfg.intermediate_size)),
        ("llama.rope.dimension_count".into(), u(cfg.head_size())),
        (
            "llama.attention.head_count".into(),
            u(cfg.num_attention_heads),
        ),
        (
            "llama.attention.head_count_kv".into(),
            u(cfg.num_kv_heads()),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (
            "llama.rope.freq_base".into(),
            Value::F32(cfg.rope_theta as f32),
        ),
    ];
    if spec.vocab >= crate::engine::data::tokenizer::TINY_TOKENIZER_VOCAB {
        let json = tiny_tokenizer_json();
        let mut tokens: Vec<String> = byte_level_alphabet()
            .iter()
            .map(|c| c.to_string())
            .collect();
        tokens.extend(TINY_SPECIAL_TOKENS.iter().map(|t| t.to_string()));
        let merges: Vec<String> = json["model"]["merges"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
        // Pad to the model's vocab like real conversions do (unused ids).
        let mut types: Vec<Value> = (0..tokens.len())
            .map(|i| {
                Value::I32(if (256..256 + TINY_SPECIAL_TOKENS.len()).contains(&i) {
                    3
                } else {
                    1
                })
            })
            .collect();
        while tokens.len() < spec.vocab {
            tokens.push(format!("<unused{}>", tokens.len()));
            types.push(Value::I32(5));
        }
        meta.extend([
            ("tokenizer.ggml.model".to_string(), s("gpt2")),
            ("tokenizer.ggml.pre".to_string(), s("tuna-tiny")),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(tokens.iter().map(|t| s(t)).collect()),
            ),
            ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
            (
                "tokenizer.ggml.merges".to_string(),
                Value::Array(merges.iter().map(|m| s(m)).collect()),
            ),
            ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(257)),
            ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(258)),
            (
                "tokenizer.ggml.padding_token_id".to_string(),
                Value::U32(256),
            ),
            (
                "tokenizer.chat_template".to_string(),
                s(crate::engine::data::template::CHATML_TEMPLATE),
            ),
        ]);
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let file = File::create(path).map_err(|e| werr(e.to_string()))?;
    let mut w = BufWriter::new(file);
    gguf_file::write(&mut w, &meta_refs, &tensor_refs).map_err(|e| werr(e.to_string()))?;
    std::io::Write::flush(&mut w).map_err(|e| werr(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_round_trips_and_names_map_both_ways() {
        let w = Tensor::arange(0f32, 48.0, &Device::Cpu)
            .unwrap()
            .reshape((8, 6))
            .unwrap();
        let p = permute(&w, 2).unwrap();
        assert_ne!(p.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        let back = unpermute(&p, 2).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        for hf in [
            "model.layers.3.self_attn.k_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.embed_tokens.weight",
            "lm_head.weight",
        ] {
            assert_eq!(hf_name(&gguf_name(hf).unwrap()).as_deref(), Some(hf));
        }
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
