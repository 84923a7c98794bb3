//! GGUF import for Llama-family models: tensors are dequantized to f32 by candle's GGUF
//! reader, renamed to HF names, and Q/K rows are un-permuted (llama.cpp's converter
//! permutes them for interleaved RoPE; our model and PEFT use HF's half-split layout).
//! The tokenizer is rebuilt from the GGUF metadata when it is a byte-level BPE.
//!
//! Weights are read fully into memory (mapping needs `unsafe`, which this workspace forbids).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, TensorInfo, Value};
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
    let (dims, hd, rest) = head_split(w, n_head)?;
    w.reshape((n_head, hd / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// llama.cpp's `permute(w, n_head)`: the inverse of [`unpermute`].
pub fn permute(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (dims, hd, rest) = head_split(w, n_head)?;
    w.reshape((n_head, 2, hd / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// `w`'s dims, rows per head and columns, when its rows split into `n_head` heads of an
/// even size (a GGUF file's head count and shapes are untrusted: no division by zero).
fn head_split(w: &Tensor, n_head: usize) -> candle_core::Result<(Vec<usize>, usize, usize)> {
    let dims = w.dims().to_vec();
    let Some((&out, rest)) = dims.split_first() else {
        candle_core::bail!("a scalar has no rows to split into heads");
    };
    if n_head == 0 || !out.is_multiple_of(n_head) || !(out / n_head).is_multiple_of(2) {
        candle_core::bail!("{out} rows do not split into {n_head} heads of an even size");
    }
    let rest = rest.iter().product();
    Ok((dims, out / n_head, rest))
}

/// Why tensor `info` cannot be read from a file of `file_len` bytes, checked before candle
/// reads it: candle multiplies the declared dims unchecked (overflowing on a crafted shape)
/// and views an empty tensor's dangling buffer as `f32`s (undefined behaviour).
fn unreadable(info: &TensorInfo, data_offset: u64, file_len: u64) -> Option<String> {
    let elems = info
        .shape
        .dims()
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d));
    if elems == Some(0) {
        return Some(format!("shape {:?} has no elements", info.shape.dims()));
    }
    let bytes = elems
        .and_then(|n| (n / info.ggml_dtype.block_size()).checked_mul(info.ggml_dtype.type_size()));
    let end = bytes
        .and_then(|b| u64::try_from(b).ok())
        .and_then(|b| data_offset.checked_add(info.offset)?.checked_add(b));
    if end.is_some_and(|end| end <= file_len) {
        None
    } else {
        Some(format!(
            "shape {:?} of {:?} does not fit in the file",
            info.shape.dims(),
            info.ggml_dtype
        ))
    }
}

/// Whether the metadata sets `general.alignment` to 0, which candle's reader divides by (a
/// panic). Walks the key/value pairs the way candle does, skipping values; a header it cannot
/// walk is left to candle's reader, which reports it. The reader is rewound.
fn zero_alignment(reader: &mut BufReader<File>) -> std::io::Result<bool> {
    let start = reader.stream_position()?;
    let found = scan_for_zero_alignment(reader).unwrap_or(false);
    reader.seek(std::io::SeekFrom::Start(start))?;
    Ok(found)
}

fn scan_for_zero_alignment(r: &mut BufReader<File>) -> std::io::Result<bool> {
    fn bytes<const N: usize>(r: &mut BufReader<File>) -> std::io::Result<[u8; N]> {
        let mut b = [0; N];
        r.read_exact(&mut b)?;
        Ok(b)
    }
    fn u32_(r: &mut BufReader<File>) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(bytes(r)?))
    }
    fn skip(r: &mut BufReader<File>, n: u64) -> std::io::Result<()> {
        let n = i64::try_from(n).map_err(|_| std::io::ErrorKind::InvalidData)?;
        r.seek_relative(n)
    }
    // GGUF v1 lengths are u32, later ones u64.
    fn len(r: &mut BufReader<File>, v1: bool) -> std::io::Result<u64> {
        Ok(if v1 {
            u64::from(u32_(r)?)
        } else {
            u64::from_le_bytes(bytes(r)?)
        })
    }
    /// Bytes of one value of a fixed-size type.
    fn width(ty: u32) -> Option<u64> {
        match ty {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }
    fn skip_value(r: &mut BufReader<File>, ty: u32, v1: bool, depth: u32) -> std::io::Result<()> {
        if let Some(w) = width(ty) {
            return skip(r, w);
        }
        match ty {
            8 => {
                let n = len(r, v1)?;
                skip(r, n)
            }
            // candle's nesting limit: arrays down to depth 64.
            9 if depth <= 64 => {
                let inner = u32_(r)?;
                let n = len(r, v1)?;
                if let Some(w) = width(inner) {
                    return skip(r, n.checked_mul(w).ok_or(std::io::ErrorKind::InvalidData)?);
                }
                // Strings and arrays each read a length, so a count past the end stops at EOF.
                for _ in 0..n {
                    skip_value(r, inner, v1, depth + 1)?;
                }
                Ok(())
            }
            _ => Err(std::io::ErrorKind::InvalidData.into()),
        }
    }
    let magic = u32_(r)?;
    let version = u32_(r)?;
    if !matches!(magic, 0x4655_4747 | 0x4747_5546) || !(1..=3).contains(&version) {
        return Ok(false);
    }
    let v1 = version == 1;
    let _tensors = len(r, v1)?;
    let kvs = len(r, v1)?;
    const KEY: &[u8; 17] = b"general.alignment";
    // candle keeps the last of repeated keys and strips trailing NULs from every key.
    let mut zero = false;
    for _ in 0..kvs {
        let key_len = len(r, v1)?;
        let mut is_alignment = false;
        if key_len >= KEY.len() as u64 {
            is_alignment = bytes(r)? == *KEY;
            let mut rest = key_len - KEY.len() as u64;
            let mut chunk = [0u8; 4096];
            while rest > 0 {
                let n = rest.min(chunk.len() as u64) as usize;
                r.read_exact(&mut chunk[..n])?;
                is_alignment &= chunk[..n].iter().all(|&b| b == 0);
                rest -= n as u64;
            }
        } else {
            skip(r, key_len)?;
        }
        let ty = u32_(r)?;
        if is_alignment && matches!(ty, 0..=5) {
            // u8, i8, u16, i16, u32, i32: the types candle reads an alignment from.
            let width = [1, 1, 2, 2, 4, 4][ty as usize];
            let mut v = [0u8; 4];
            r.read_exact(&mut v[..width])?;
            zero = v == [0; 4];
        } else {
            // Any other type leaves candle's default alignment.
            zero &= !is_alignment;
            skip_value(r, ty, v1, 0)?;
        }
    }
    Ok(zero)
}

/// Reads a GGUF file: config from metadata, dequantized HF-named weights in `dtype`, and
/// the tokenizer.
pub fn read(path: &Path, dtype: DType, device: &Device) -> Result<GgufModel, ModelError> {
    let read_err = |reason: String| GgufError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| read_err(e.to_string()))?;
    let file_len = file.metadata().map_err(|e| read_err(e.to_string()))?.len();
    let mut reader = BufReader::new(file);
    if zero_alignment(&mut reader).map_err(|e| read_err(e.to_string()))? {
        return Err(read_err("general.alignment is 0".into()).into());
    }
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
        let info = &content.tensor_infos[name];
        if let Some(reason) = unreadable(info, content.tensor_data_offset, file_len) {
            return Err(tensor_err(reason).into());
        }
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

    /// A GGUF v3 file: `kvs` (key, type, raw value) then `tensors` (name, dims, f32, offset
    /// 0), no tensor data.
    fn crafted(kvs: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64])]) -> Vec<u8> {
        let s = |v: &mut Vec<u8>, text: &str| {
            v.extend((text.len() as u64).to_le_bytes());
            v.extend(text.as_bytes());
        };
        let mut v = b"GGUF".to_vec();
        v.extend(3u32.to_le_bytes());
        v.extend((tensors.len() as u64).to_le_bytes());
        v.extend((kvs.len() as u64).to_le_bytes());
        for (key, ty, value) in kvs {
            s(&mut v, key);
            v.extend(ty.to_le_bytes());
            v.extend(value);
        }
        for (name, dims) in tensors {
            s(&mut v, name);
            v.extend((dims.len() as u32).to_le_bytes());
            for d in *dims {
                v.extend(d.to_le_bytes());
            }
            v.extend(0u32.to_le_bytes()); // f32
            v.extend(0u64.to_le_bytes());
        }
        v
    }

    fn llama_kvs() -> Vec<(&'static str, u32, Vec<u8>)> {
        let text = |t: &str| [&(t.len() as u64).to_le_bytes()[..], t.as_bytes()].concat();
        let u32v = |n: u32| n.to_le_bytes().to_vec();
        vec![
            ("general.architecture", 8, text("llama")),
            ("llama.embedding_length", 4, u32v(4)),
            ("llama.attention.head_count", 4, u32v(2)),
            ("llama.block_count", 4, u32v(1)),
            ("llama.feed_forward_length", 4, u32v(8)),
        ]
    }

    fn read_bytes(bytes: &[u8]) -> Result<GgufModel, ModelError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crafted.gguf");
        std::fs::write(&path, bytes).unwrap();
        read(&path, DType::F32, &Device::Cpu)
    }

    #[test]
    fn a_zero_alignment_is_an_error_not_a_division_by_zero() {
        for ty in [0u32, 4, 5] {
            let width = if ty == 0 { 1 } else { 4 };
            let mut kvs = llama_kvs();
            kvs.insert(1, ("general.alignment", ty, vec![0; width]));
            let err = read_bytes(&crafted(&kvs, &[])).unwrap_err();
            assert!(err.to_string().contains("alignment"), "{err}");
        }
        // An array claiming 2^40 bytes before the alignment is skipped at once (the file
        // then ends), not element by element.
        let mut kvs = llama_kvs();
        let huge_array = [&0u32.to_le_bytes()[..], &(1u64 << 40).to_le_bytes()].concat();
        kvs.insert(0, ("tokenizer.ggml.scores", 9, huge_array));
        kvs.push(("general.alignment", 4, vec![0; 4]));
        let started = std::time::Instant::now();
        assert!(read_bytes(&crafted(&kvs, &[])).is_err());
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
        // candle strips trailing NULs from keys.
        let mut kvs = llama_kvs();
        kvs.push(("general.alignment\0\0", 4, vec![0; 4]));
        let err = read_bytes(&crafted(&kvs, &[])).unwrap_err();
        assert!(err.to_string().contains("alignment"), "{err}");
        // A valid alignment still reads (up to the missing embedding tensor), also when it
        // replaces an earlier zero (candle keeps the last of repeated keys).
        let mut kvs = llama_kvs();
        kvs.push(("general.alignment", 4, vec![0; 4]));
        kvs.push(("general.alignment", 4, 64u32.to_le_bytes().to_vec()));
        let err = read_bytes(&crafted(&kvs, &[])).unwrap_err();
        assert!(err.to_string().contains("token_embd.weight"), "{err}");
    }

    #[test]
    fn a_tensor_shape_past_the_file_is_an_error_not_an_overflow() {
        let huge: &[u64] = &[1 << 62, 1 << 62];
        let long: &[u64] = &[4, 1 << 40];
        for dims in [huge, long] {
            let bytes = crafted(&llama_kvs(), &[("token_embd.weight", dims)]);
            let err = read_bytes(&bytes).unwrap_err();
            assert!(
                err.to_string().contains("does not fit in the file"),
                "{err}"
            );
        }
    }

    #[test]
    fn an_empty_tensor_is_an_error_not_a_misaligned_view() {
        let bytes = crafted(&llama_kvs(), &[("token_embd.weight", &[0, 4])]);
        let err = read_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("has no elements"), "{err}");
    }

    #[test]
    fn q_k_rows_that_do_not_split_into_heads_are_an_error_not_a_panic() {
        let w = Tensor::zeros((8, 6), DType::F32, &Device::Cpu).unwrap();
        assert!(unpermute(&w, 0).is_err());
        assert!(permute(&w, 0).is_err());
        assert!(unpermute(&w, 3).is_err()); // 8 rows, 3 heads
        assert!(unpermute(&w, 8).is_err()); // heads of one row cannot be halved
        let scalar = Tensor::new(1f32, &Device::Cpu).unwrap();
        assert!(unpermute(&scalar, 1).is_err());
        // A Q weight with a head count of 0 in the metadata.
        let mut kvs = llama_kvs();
        kvs[2].2 = 0u32.to_le_bytes().to_vec();
        let f32s = |n: usize| vec![0u8; 4 * n];
        let mut bytes = crafted(&kvs, &[("blk.0.attn_q.weight", &[4, 4])]);
        bytes.resize(bytes.len().div_ceil(32) * 32, 0);
        bytes.extend(f32s(16));
        let err = read_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("heads"), "{err}");
    }
}
