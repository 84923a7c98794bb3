//! A differentiable BERT encoder (BERT, MiniLM, sentence-transformers checkpoints) with
//! mean pooling and a classification head. candle-transformers' `bert.rs` cannot train:
//! its fused `LayerNorm` has no backward and its linears cannot carry adapters. Here layer
//! norm is built from basic ops and every linear is an [`AdaptedLinear`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor, Var};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::ModelError;
use super::config::ConfigError;
use super::ops::compute_dtype;
use super::weights::Weights;
use crate::engine::adapters::{Adaptable, AdaptedLinear, Mode, PEFT_PREFIX};
use crate::engine::rng;

/// The `config.json` fields BERT needs (HF `BertConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "bert_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    /// Class names by id, when the checkpoint is a classifier.
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
}

fn bert_type() -> String {
    "bert".into()
}
fn gelu() -> String {
    "gelu".into()
}
fn two() -> usize {
    2
}
fn ln_eps() -> f64 {
    1e-12
}

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, Path::new("<config.json>"))
    }

    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = serde_json::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from(path),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        if !matches!(
            self.model_type.as_str(),
            "bert" | "roberta" | "xlm-roberta" | "minilm"
        ) {
            return bad(
                "model_type",
                &format!("`{}` is not a BERT encoder", self.model_type),
            );
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return bad(field, "must be positive");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad("num_attention_heads", "must divide hidden_size");
        }
        if Activation::parse(&self.hidden_act).is_none() {
            return bad(
                "hidden_act",
                &format!("`{}` is not one of gelu, gelu_new, relu", self.hidden_act),
            );
        }
        Ok(())
    }

    /// Label names in id order from `id2label`, if present and complete.
    pub fn labels(&self) -> Option<Vec<String>> {
        let map = self.id2label.as_ref()?;
        (0..map.len())
            .map(|i| map.get(&i.to_string()).cloned())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::GeluErf => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
        }
    }
}

/// Layer norm from basic ops (candle's fused `LayerNorm` drops gradients): normalise over
/// the last dim in f32, then scale and shift.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(compute_dtype(dtype))?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed
        .to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

#[derive(Debug, Clone)]
struct BertLayer {
    query: AdaptedLinear,
    key: AdaptedLinear,
    value: AdaptedLinear,
    attn_out: AdaptedLinear,
    attn_norm: Norm,
    intermediate: AdaptedLinear,
    output: AdaptedLinear,
    out_norm: Norm,
}

/// The encoder. `prefix` is `""` for a bare `BertModel` checkpoint (sentence-transformers)
/// or `"bert."` for `BertFor*` ones, and is part of every module path (so PEFT keys match
/// the checkpoint).
#[derive(Debug, Clone)]
pub struct Bert {
    config: BertConfig,
    prefix: String,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embed_norm: Norm,
    layers: Vec<BertLayer>,
    act: Activation,
}

fn linear(w: &Weights, path: &str, out_f: usize, in_f: usize) -> Result<AdaptedLinear, ModelError> {
    let weight = w.get(&format!("{path}.weight"), &[out_f, in_f])?;
    let bias = w.get(&format!("{path}.bias"), &[out_f])?;
    Ok(AdaptedLinear::new(weight, Some(bias)))
}

fn norm(w: &Weights, path: &str, h: usize) -> Result<Norm, ModelError> {
    // Old TF-converted checkpoints name these gamma/beta.
    let get = |new: &str, old: &str| {
        let name = format!("{path}.{new}");
        if w.contains(&name) {
            w.get(&name, &[h])
        } else if w.contains(&format!("{path}.{old}")) {
            w.get(&format!("{path}.{old}"), &[h])
        } else {
            w.get(&name, &[h])
        }
    };
    Ok(Norm {
        weight: get("weight", "gamma")?,
        bias: get("bias", "beta")?,
    })
}

impl Bert {
    /// Loads `config.json` and safetensors weights from an HF model folder.
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::from_dir(dir, dtype, device)?;
        Self::load(config, &weights)
    }

    /// Builds the encoder from named HF weights, checking every name and shape.
    pub fn load(config: BertConfig, w: &Weights) -> Result<Self, ModelError> {
        config.validate()?;
        let prefix = ["", "bert.", "roberta.", "model."]
            .into_iter()
            .find(|p| w.contains(&format!("{p}embeddings.word_embeddings.weight")))
            .unwrap_or("")
            .to_string();
        let h = config.hidden_size;
        let inter = config.intermediate_size;
        let e = format!("{prefix}embeddings");
        let word_embeddings = w.get(
            &format!("{e}.word_embeddings.weight"),
            &[config.vocab_size, h],
        )?;
        let position_embeddings = w.get(
            &format!("{e}.position_embeddings.weight"),
            &[config.max_position_embeddings, h],
        )?;
        let token_type_embeddings = w.get(
            &format!("{e}.token_type_embeddings.weight"),
            &[config.type_vocab_size, h],
        )?;
        let embed_norm = norm(w, &format!("{e}.LayerNorm"), h)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("{prefix}encoder.layer.{i}");
            layers.push(BertLayer {
                query: linear(w, &format!("{p}.attention.self.query"), h, h)?,
                key: linear(w, &format!("{p}.attention.self.key"), h, h)?,
                value: linear(w, &format!("{p}.attention.self.value"), h, h)?,
                attn_out: linear(w, &format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: norm(w, &format!("{p}.attention.output.LayerNorm"), h)?,
                intermediate: linear(w, &format!("{p}.intermediate.dense"), inter, h)?,
                output: linear(w, &format!("{p}.output.dense"), h, inter)?,
                out_norm: norm(w, &format!("{p}.output.LayerNorm"), h)?,
            });
        }
        let act = Activation::parse(&config.hidden_act).ok_or(ConfigError::Invalid {
            field: "hidden_act",
            reason: config.hidden_act.clone(),
        })?;
        Ok(Self {
            config,
            prefix,
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embed_norm,
            layers,
            act,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.word_embeddings.device()
    }

    pub fn dtype(&self) -> DType {
        self.word_embeddings.dtype()
    }

    /// Embedding output (word + position + token type 0, layer-normed) `[b, t, h]`.
    pub fn embeddings(&self, input_ids: &Tensor) -> Result<Tensor, ModelError> {
        let (b, t) = input_ids.dims2()?;
        if t > self.config.max_position_embeddings {
            return Err(ModelError::Candle(candle_core::Error::Msg(format!(
                "sequence of {t} tokens exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            ))));
        }
        let h = self.config.hidden_size;
        let words = self
            .word_embeddings
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let pos = self.position_embeddings.narrow(0, 0, t)?;
        let tt = self.token_type_embeddings.narrow(0, 0, 1)?;
        let x = words.broadcast_add(&pos)?.broadcast_add(&tt)?;
        Ok(layer_norm(
            &x,
            &self.embed_norm.weight,
            &self.embed_norm.bias,
            self.config.layer_norm_eps,
        )?)
    }

    /// Last hidden states `[b, t, h]` for ids `[b, t]` and `attention_mask` `[b, t]` (1 real,
    /// 0 padding; any numeric dtype). Padded keys get a large negative score, as HF does.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mode: &Mode,
    ) -> Result<Tensor, ModelError> {
        let dtype = self.dtype();
        let (b, t) = input_ids.dims2()?;
        let mask = attention_mask.to_dtype(DType::F32)?;
        // (1 - m) · f32::MIN, like HF's extended attention mask: exp underflows to exactly 0.
        // Scores and softmax run in f32 (f64 in gradient checks) over any base dtype.
        let stats = compute_dtype(dtype);
        let bias = ((mask.ones_like()? - &mask)? * f64::from(f32::MIN))?
            .to_dtype(stats)?
            .reshape((b, 1, 1, t))?;
        let mut x = self.embeddings(input_ids)?;
        let heads = self.config.num_attention_heads;
        let hd = self.config.hidden_size / heads;
        let eps = self.config.layer_norm_eps;
        for l in &self.layers {
            let split = |y: Tensor| -> candle_core::Result<Tensor> {
                y.reshape((b, t, heads, hd))?.transpose(1, 2)?.contiguous()
            };
            let q = split(l.query.forward(&x, mode)?)?;
            let k = split(l.key.forward(&x, mode)?)?;
            let v = split(l.value.forward(&x, mode)?)?;
            let scores =
                (q.matmul(&k.t()?)?.to_dtype(stats)? / (hd as f64).sqrt())?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?;
            let ctx =
                probs
                    .matmul(&v)?
                    .transpose(1, 2)?
                    .reshape((b, t, self.config.hidden_size))?;
            let a = (l.attn_out.forward(&ctx, mode)? + &x)?;
            x = layer_norm(&a, &l.attn_norm.weight, &l.attn_norm.bias, eps)?;
            let inter = self.act.apply(&l.intermediate.forward(&x, mode)?)?;
            let o = (l.output.forward(&inter, mode)? + &x)?;
            x = layer_norm(&o, &l.out_norm.weight, &l.out_norm.bias, eps)?;
        }
        Ok(x)
    }

    /// Mean of the hidden states over real tokens `[b, h]` (sentence-transformers pooling).
    pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor, ModelError> {
        let m = attention_mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
        let sum = hidden.broadcast_mul(&m)?.sum(1)?;
        let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        Ok(sum.broadcast_div(&count)?)
    }

    /// Class logits `[b, labels]`: encoder → mean pooling → `head`.
    pub fn classify(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        head: &ClassifierHead,
        mode: &Mode,
    ) -> Result<Tensor, ModelError> {
        let hidden = self.forward(input_ids, attention_mask, mode)?;
        let pooled = Self::mean_pool(&hidden, attention_mask)?;
        head.forward(&pooled.to_dtype(compute_dtype(self.dtype()))?)
    }
}

const LAYER_MODULES: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

impl Adaptable for Bert {
    fn linears(&self) -> Vec<(String, &AdaptedLinear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let lins = [
                &l.query,
                &l.key,
                &l.value,
                &l.attn_out,
                &l.intermediate,
                &l.output,
            ];
            for (name, lin) in LAYER_MODULES.iter().zip(lins) {
                out.push((format!("{}encoder.layer.{i}.{name}", self.prefix), lin));
            }
        }
        out
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear)> {
        let mut out = Vec::new();
        let prefix = self.prefix.clone();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let lins = [
                &mut l.query,
                &mut l.key,
                &mut l.value,
                &mut l.attn_out,
                &mut l.intermediate,
                &mut l.output,
            ];
            for (name, lin) in LAYER_MODULES.iter().zip(lins) {
                out.push((format!("{prefix}encoder.layer.{i}.{name}"), lin));
            }
        }
        out
    }

    fn output_modules(&self) -> Vec<String> {
        Vec::new()
    }

    fn other_params_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let p = self.prefix.clone();
        let mut out = vec![
            (
                format!("{p}embeddings.word_embeddings.weight"),
                &mut self.word_embeddings,
            ),
            (
                format!("{p}embeddings.position_embeddings.weight"),
                &mut self.position_embeddings,
            ),
            (
                format!("{p}embeddings.token_type_embeddings.weight"),
                &mut self.token_type_embeddings,
            ),
            (
                format!("{p}embeddings.LayerNorm.weight"),
                &mut self.embed_norm.weight,
            ),
            (
                format!("{p}embeddings.LayerNorm.bias"),
                &mut self.embed_norm.bias,
            ),
        ];
        for (i, l) in self.layers.iter_mut().enumerate() {
            let q = format!("{p}encoder.layer.{i}");
            out.push((
                format!("{q}.attention.output.LayerNorm.weight"),
                &mut l.attn_norm.weight,
            ));
            out.push((
                format!("{q}.attention.output.LayerNorm.bias"),
                &mut l.attn_norm.bias,
            ));
            out.push((
                format!("{q}.output.LayerNorm.weight"),
                &mut l.out_norm.weight,
            ));
            out.push((format!("{q}.output.LayerNorm.bias"), &mut l.out_norm.bias));
        }
        out
    }

    fn ia3_defaults(&self) -> (Vec<String>, Vec<String>) {
        (
            vec!["key".into(), "value".into(), "output.dense".into()],
            vec!["output.dense".into()],
        )
    }
}

/// The trainable classification head on the pooled output, `[labels, hidden]` + bias, in
/// f32. Its var names are the PEFT `modules_to_save` keys for a `classifier` module.
#[derive(Debug, Clone)]
pub struct ClassifierHead {
    pub weight: Var,
    pub bias: Var,
}

impl ClassifierHead {
    /// Fresh head: weight ~ U(±1/√hidden) from `seed`, bias 0.
    pub fn new(
        hidden: usize,
        labels: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut g = rng::stream(seed, "classifier");
        let bound = 1.0 / (hidden as f32).sqrt();
        let w: Vec<f32> = (0..hidden * labels)
            .map(|_| g.random_range(-bound..bound))
            .collect();
        Ok(Self {
            weight: Var::from_tensor(&Tensor::from_vec(w, (labels, hidden), device)?)?,
            bias: Var::zeros(labels, DType::F32, device)?,
        })
    }

    pub fn forward(&self, pooled: &Tensor) -> Result<Tensor, ModelError> {
        Ok(pooled
            .matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())?)
    }

    /// The head's vars by PEFT key (`base_model.model.classifier.weight` / `.bias`).
    pub fn vars(&self) -> BTreeMap<String, Var> {
        BTreeMap::from([
            (
                format!("{PEFT_PREFIX}classifier.weight"),
                self.weight.clone(),
            ),
            (format!("{PEFT_PREFIX}classifier.bias"), self.bias.clone()),
        ])
    }
}

/// Deterministic small BERT model folders (random weights from a seed) for tests.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyBertSpec {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub vocab: usize,
    pub max_positions: usize,
}

impl Default for TinyBertSpec {
    fn default() -> Self {
        Self {
            hidden: 32,
            intermediate: 64,
            layers: 2,
            heads: 4,
            vocab: 256,
            max_positions: 64,
        }
    }
}

impl TinyBertSpec {
    pub fn config(&self) -> BertConfig {
        BertConfig {
            model_type: "bert".into(),
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            intermediate_size: self.intermediate,
            hidden_act: "gelu".into(),
            max_position_embeddings: self.max_positions,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            id2label: None,
        }
    }

    /// All weights by HF `BertModel` name, f32, drawn from `seed`.
    pub fn weights(&self, seed: u64) -> Result<BTreeMap<String, Tensor>, ModelError> {
        let (h, i) = (self.hidden, self.intermediate);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![self.vocab, h],
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![self.max_positions, h],
            ),
            ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
        ];
        for l in 0..self.layers {
            let p = format!("encoder.layer.{l}");
            for (m, o, n) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ] {
                shapes.push((format!("{p}.{m}.weight"), vec![o, n]));
                shapes.push((format!("{p}.{m}.bias"), vec![o]));
            }
            for m in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("{p}.{m}.weight"), vec![h]));
                shapes.push((format!("{p}.{m}.bias"), vec![h]));
            }
        }
        let mut out = BTreeMap::new();
        for (name, shape) in shapes {
            let mut g = rng::stream(seed, &name);
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("LayerNorm.weight") {
                (0..n).map(|_| 1.0 + g.random_range(-0.1..0.1)).collect()
            } else if shape.len() == 1 {
                (0..n).map(|_| g.random_range(-0.1..0.1)).collect()
            } else if name.contains("embeddings") {
                (0..n).map(|_| g.random_range(-1.0..1.0)).collect()
            } else {
                let bound = 1.0 / (shape[1] as f32).sqrt();
                (0..n).map(|_| g.random_range(-bound..bound)).collect()
            };
            out.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        Ok(out)
    }

    /// Writes `config.json` and `model.safetensors` into `dir`.
    pub fn write(&self, dir: &Path, seed: u64) -> Result<BertConfig, ModelError> {
        let fail = |path: PathBuf, reason: String| ModelError::Write { path, reason };
        std::fs::create_dir_all(dir).map_err(|e| fail(dir.to_path_buf(), e.to_string()))?;
        let cfg = self.config();
        let mut json =
            serde_json::to_value(&cfg).map_err(|e| fail(dir.join("config.json"), e.to_string()))?;
        if let Some(obj) = json.as_object_mut() {
            obj.remove("id2label");
            obj.insert("architectures".into(), serde_json::json!(["BertModel"]));
            obj.insert("hidden_dropout_prob".into(), serde_json::json!(0.1));
            obj.insert(
                "attention_probs_dropout_prob".into(),
                serde_json::json!(0.1),
            );
            obj.insert("initializer_range".into(), serde_json::json!(0.02));
        }
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| fail(dir.join("config.json"), e.to_string()))?;
        std::fs::write(dir.join("config.json"), text)
            .map_err(|e| fail(dir.join("config.json"), e.to_string()))?;
        let path = dir.join("model.safetensors");
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::tensor::serialize_to_file(&self.weights(seed)?, Some(meta), &path)
            .map_err(|e| fail(path.clone(), e.to_string()))?;
        Ok(cfg)
    }
}
