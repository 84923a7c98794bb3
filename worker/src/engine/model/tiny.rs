//! Deterministic small Llama model folders (random weights from a seed) for tests and the
//! demo, written in the same layout as an HF checkpoint so they go through the real loader.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::Rng;

use super::ModelError;
use super::config::LlamaConfig;
use crate::engine::adapters::init::normal;
use crate::engine::rng;

/// Shape of a generated model.
#[derive(Debug, Clone, PartialEq)]
pub struct TinySpec {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub tie_embeddings: bool,
    pub rope_theta: f64,
    pub max_positions: usize,
}

impl Default for TinySpec {
    /// 2 layers, hidden 32, GQA 4/2 heads, a vocab just big enough for the generated
    /// byte-level tokenizer (256 bytes + 3 specials + merges): fast in debug test builds.
    fn default() -> Self {
        Self {
            hidden: 32,
            intermediate: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            vocab: crate::engine::data::tokenizer::TINY_TOKENIZER_VOCAB,
            tie_embeddings: false,
            rope_theta: 10_000.0,
            max_positions: 256,
        }
    }
}

impl TinySpec {
    pub fn config(&self) -> LlamaConfig {
        LlamaConfig {
            model_type: "llama".into(),
            hidden_size: self.hidden,
            intermediate_size: self.intermediate,
            vocab_size: self.vocab,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: Some(self.kv_heads),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: self.rope_theta,
            rope_scaling: None,
            max_position_embeddings: self.max_positions,
            tie_word_embeddings: self.tie_embeddings,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: None,
        }
    }

    /// All weights by HF name, f32 on CPU, drawn from `seed`.
    pub fn weights(&self, seed: u64) -> Result<BTreeMap<String, Tensor>, ModelError> {
        let cfg = self.config();
        let hd = cfg.head_size();
        let (h, i) = (self.hidden, self.intermediate);
        let mut shapes: Vec<(String, Vec<usize>)> =
            vec![("model.embed_tokens.weight".into(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            shapes.push((format!("{p}.input_layernorm.weight"), vec![h]));
            shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            shapes.push((
                format!("{p}.self_attn.q_proj.weight"),
                vec![self.heads * hd, h],
            ));
            shapes.push((
                format!("{p}.self_attn.k_proj.weight"),
                vec![self.kv_heads * hd, h],
            ));
            shapes.push((
                format!("{p}.self_attn.v_proj.weight"),
                vec![self.kv_heads * hd, h],
            ));
            shapes.push((
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, self.heads * hd],
            ));
            shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            shapes.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            shapes.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        shapes.push(("model.norm.weight".into(), vec![h]));
        if !self.tie_embeddings {
            shapes.push(("lm_head.weight".into(), vec![self.vocab, h]));
        }
        let mut out = BTreeMap::new();
        for (name, shape) in shapes {
            let mut g = rng::stream(seed, &name);
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if shape.len() == 1 {
                (0..n).map(|_| 1.0 + g.random_range(-0.1..0.1)).collect()
            } else if name.contains("embed_tokens") || name == "lm_head.weight" {
                // Output rows need a real norm: logits are bounded by ‖row‖·‖RMSNorm(x)‖, and
                // with 1/√in rows the best achievable loss sits near ln(vocab) - 3.
                (0..n).map(|_| (normal(&mut g) * 0.5) as f32).collect()
            } else {
                let bound = 1.0 / (shape[1] as f32).sqrt();
                (0..n).map(|_| g.random_range(-bound..bound)).collect()
            };
            out.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        Ok(out)
    }

    /// Writes `config.json`, `model.safetensors` and — when the vocab can hold it — the
    /// deterministic byte-level BPE `tokenizer.json` + `tokenizer_config.json` (ChatML
    /// template) into `dir` (created if needed). A smaller vocab gets no tokenizer files, so
    /// [`load_for_model`](crate::engine::data::load_for_model) falls back to bytes.
    pub fn write(&self, dir: &Path, seed: u64) -> Result<LlamaConfig, ModelError> {
        let io = |e: std::io::Error| ModelError::Write {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let cfg = self.config();
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "vocab_size": cfg.vocab_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_kv_heads(),
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta,
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        let text = serde_json::to_string_pretty(&json).map_err(|e| ModelError::Write {
            path: dir.join("config.json"),
            reason: e.to_string(),
        })?;
        std::fs::write(dir.join("config.json"), text).map_err(io)?;
        if self.vocab >= crate::engine::data::tokenizer::TINY_TOKENIZER_VOCAB {
            use crate::engine::data::tokenizer::{tiny_tokenizer_config, tiny_tokenizer_json};
            for (file, json) in [
                ("tokenizer.json", tiny_tokenizer_json()),
                ("tokenizer_config.json", tiny_tokenizer_config()),
            ] {
                let text = serde_json::to_string_pretty(&json).map_err(|e| ModelError::Write {
                    path: dir.join(file),
                    reason: e.to_string(),
                })?;
                std::fs::write(dir.join(file), text).map_err(io)?;
            }
        }
        let weights = self.weights(seed)?;
        let path = dir.join("model.safetensors");
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::tensor::serialize_to_file(&weights, Some(meta), &path).map_err(|e| {
            ModelError::Write {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(cfg)
    }
}
