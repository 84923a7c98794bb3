//! Llama-family configuration parsed from an HF `config.json` (Llama, Mistral, Qwen2, SmolLM).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A malformed or unsupported `config.json`. Each variant names the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read model config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed model config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid model config: field `{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("unsupported model_type `{0}` (supported: llama, mistral, qwen2)")]
    UnsupportedModelType(String),
}

/// Llama3-style RoPE frequency scaling (`rope_scaling` with `rope_type: "llama3"`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default = "one")]
    pub low_freq_factor: f64,
    #[serde(default = "four")]
    pub high_freq_factor: f64,
    #[serde(default = "default_max_pos")]
    pub original_max_position_embeddings: usize,
}

fn one() -> f64 {
    1.0
}
fn four() -> f64 {
    4.0
}
fn default_max_pos() -> usize {
    8192
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_model_type() -> String {
    "llama".to_string()
}

/// The subset of HF's `LlamaConfig`/`MistralConfig`/`Qwen2Config` the decoder needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Explicit head size (Qwen3/Gemma style); defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o. Qwen2 has q/k/v bias without declaring it; see [`Self::qkv_bias`].
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
}

impl LlamaConfig {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses config JSON, reading RoPE settings from either layout: `rope_theta` and
    /// `rope_scaling` at the top level (transformers 4), or one `rope_parameters` object
    /// (transformers 5 writes only that; ignoring it would silently train with the default
    /// theta). Top-level fields win where both are present.
    fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let mut json: serde_json::Value = serde_json::from_str(text)?;
        if let Some(obj) = json.as_object_mut()
            && let Some(params) = obj.get("rope_parameters").cloned()
            && params.is_object()
        {
            if !obj.contains_key("rope_theta")
                && let Some(theta) = params.get("rope_theta")
            {
                obj.insert("rope_theta".into(), theta.clone());
            }
            let typed = params
                .get("rope_type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t != "default");
            if typed && obj.get("rope_scaling").is_none_or(|v| v.is_null()) {
                obj.insert("rope_scaling".into(), params);
            }
        }
        serde_json::from_value(json)
    }

    /// Parses and validates a config from JSON text (no file name in errors).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let cfg = Self::parse(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("<config.json>"),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants the forward pass relies on, so a bad file fails at load time
    /// with the field name rather than as a shape error deep inside attention.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(ConfigError::UnsupportedModelType(self.model_type.clone()));
        }
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        let kv = self.num_kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return Err(invalid(
                "num_key_value_heads",
                format!(
                    "({kv}) must be positive and divide num_attention_heads ({})",
                    self.num_attention_heads
                ),
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(invalid(
                "hidden_size",
                format!(
                    "({}) must be divisible by num_attention_heads ({})",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        let hd = self.head_size();
        if hd == 0 || !hd.is_multiple_of(2) {
            return Err(invalid(
                "head_dim",
                format!("({hd}) must be positive and even for RoPE"),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(invalid("rms_norm_eps", "must be a positive number"));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(invalid("rope_theta", "must be a positive number"));
        }
        if let Some(rs) = &self.rope_scaling {
            if !matches!(rs.rope_type.as_str(), "default" | "llama3") {
                return Err(invalid(
                    "rope_scaling",
                    format!("type `{}` is not supported (default, llama3)", rs.rope_type),
                ));
            }
            if rs.rope_type == "llama3"
                && !(rs.factor > 0.0 && rs.high_freq_factor > rs.low_freq_factor)
            {
                return Err(invalid(
                    "rope_scaling",
                    "needs factor > 0 and high_freq_factor > low_freq_factor",
                ));
            }
        }
        Ok(())
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_size(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether q/k/v projections carry a bias (always for Qwen2).
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type == "qwen2"
    }

    /// Whether o_proj carries a bias (Qwen2 has none).
    pub fn o_bias(&self) -> bool {
        self.attention_bias
    }

    /// RoPE inverse frequencies, one per pair of head dimensions (with llama3 scaling if set).
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let hd = self.head_size();
        let base: Vec<f64> = (0..hd)
            .step_by(2)
            .map(|i| 1.0 / self.rope_theta.powf(i as f64 / hd as f64))
            .collect();
        match &self.rope_scaling {
            Some(rs) if rs.rope_type == "llama3" => {
                let old = rs.original_max_position_embeddings as f64;
                let low_wavelen = old / rs.low_freq_factor;
                let high_wavelen = old / rs.high_freq_factor;
                base.into_iter()
                    .map(|freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / rs.factor
                        } else {
                            let smooth = (old / wavelen - rs.low_freq_factor)
                                / (rs.high_freq_factor - rs.low_freq_factor);
                            (1.0 - smooth) * freq / rs.factor + smooth * freq
                        }
                    })
                    .collect()
            }
            _ => base,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"hidden_size":32,"intermediate_size":64,"vocab_size":100,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
        "rms_norm_eps":1e-5,"rope_theta":10000.0,"max_position_embeddings":64}"#;

    #[test]
    fn reads_rope_settings_written_by_transformers_5() {
        // transformers 5 writes `rope_parameters` and no top-level `rope_theta`.
        let v5 = r#"{"hidden_size":32,"intermediate_size":64,"vocab_size":100,
            "num_hidden_layers":2,"num_attention_heads":4,"max_position_embeddings":64,
            "rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":32.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192}}"#;
        let cfg = LlamaConfig::from_json(v5).unwrap();
        assert_eq!(cfg.rope_theta, 500000.0);
        let rs = cfg
            .rope_scaling
            .expect("llama3 scaling read from rope_parameters");
        assert_eq!((rs.rope_type.as_str(), rs.factor), ("llama3", 32.0));
        let plain = v5.replace(r#""rope_type":"llama3""#, r#""rope_type":"default""#);
        let cfg = LlamaConfig::from_json(&plain).unwrap();
        assert_eq!((cfg.rope_theta, cfg.rope_scaling), (500000.0, None));
        // The top-level field wins where both are written.
        let both = v5.replace(
            "\"max_position_embeddings\":64",
            "\"max_position_embeddings\":64,\"rope_theta\":1000.0",
        );
        assert_eq!(LlamaConfig::from_json(&both).unwrap().rope_theta, 1000.0);
    }

    #[test]
    fn parses_a_minimal_llama_config() {
        let cfg = LlamaConfig::from_json(GOOD).unwrap();
        assert_eq!(cfg.head_size(), 8);
        assert_eq!(cfg.num_kv_heads(), 2);
        assert!(!cfg.tie_word_embeddings);
        assert_eq!(cfg.rope_inv_freq().len(), 4);
    }

    #[test]
    fn missing_field_is_named() {
        let err = LlamaConfig::from_json(r#"{"hidden_size":32}"#).unwrap_err();
        assert!(err.to_string().contains("intermediate_size"), "{err}");
    }

    #[test]
    fn bad_head_split_is_named() {
        let text = GOOD.replace(r#""num_key_value_heads":2"#, r#""num_key_value_heads":3"#);
        let err = LlamaConfig::from_json(&text).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    field: "num_key_value_heads",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_and_unknown_model_type_fail_cleanly() {
        let text = GOOD.replace(r#""vocab_size":100"#, r#""vocab_size":"lots""#);
        let err = LlamaConfig::from_json(&text).unwrap_err();
        assert!(
            err.to_string().contains("vocab_size") || err.to_string().contains("invalid type"),
            "{err}"
        );
        let text = GOOD.replace('{', r#"{"model_type":"gpt2","#);
        let err = LlamaConfig::from_json(&text).unwrap_err();
        assert!(matches!(err, ConfigError::UnsupportedModelType(ref t) if t == "gpt2"));
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let err = LlamaConfig::from_file(Path::new("/nonexistent/config.json")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/config.json"));
    }
}
