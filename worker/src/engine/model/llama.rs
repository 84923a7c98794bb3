//! A differentiable Llama-family decoder (Llama, Mistral, Qwen2, SmolLM): GQA, RoPE,
//! RMSNorm, SwiGLU, tied or untied embeddings. Unlike candle-transformers' inference model
//! it returns logits for every position, keeps no KV cache, uses only ops with backward
//! rules, and routes every linear through [`AdaptedLinear`] so adapters can attach.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor};

use super::ModelError;
use super::config::LlamaConfig;
use super::ops::{Rope, causal_mask, compute_dtype, repeat_kv, rms_norm};
use super::weights::Weights;
use crate::engine::adapters::{Adaptable, AdaptedLinear, Mode};
use crate::engine::kernels;

mod checkpoint;
mod tape;
pub use checkpoint::CheckpointedPass;
pub use tape::LossTape;

#[derive(Debug, Clone)]
struct Attention {
    q_proj: AdaptedLinear,
    k_proj: AdaptedLinear,
    v_proj: AdaptedLinear,
    o_proj: AdaptedLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: AdaptedLinear,
    up_proj: AdaptedLinear,
    down_proj: AdaptedLinear,
}

#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: Tensor,
    self_attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
}

/// The decoder with its LM head.
#[derive(Debug, Clone)]
pub struct Llama {
    config: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: AdaptedLinear,
    inv_freq: Vec<f64>,
    /// Prompt-tuning virtual token embeddings `[n, hidden]`, prepended to every sequence.
    prompt: Option<Tensor>,
    /// Prefix-tuning keys and values `[n, layers·2·kv_heads·head_dim]` (PEFT's
    /// `PREFIX_TUNING` row layout), attended to by every real position of every layer.
    prefix: Option<Tensor>,
    /// Recompute each decoder layer in backward instead of keeping its activations.
    checkpointing: bool,
}

fn linear(
    w: &Weights,
    prefix: &str,
    out_f: usize,
    in_f: usize,
    bias: bool,
) -> Result<AdaptedLinear, ModelError> {
    let weight = w.get(&format!("{prefix}.weight"), &[out_f, in_f])?;
    let bias = if bias {
        Some(w.get(&format!("{prefix}.bias"), &[out_f])?)
    } else {
        None
    };
    Ok(AdaptedLinear::new(weight, bias))
}

impl Llama {
    /// Loads `config.json` and the safetensors weights from an HF model folder.
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::from_dir(dir, dtype, device)?;
        Self::load(config, &weights)
    }

    /// Builds the model from named HF weights, checking every name and shape.
    pub fn load(config: LlamaConfig, w: &Weights) -> Result<Self, ModelError> {
        config.validate()?;
        let h = config.hidden_size;
        let hd = config.head_size();
        let (nh, nkv) = (config.num_attention_heads, config.num_kv_heads());
        let inter = config.intermediate_size;
        let embed_tokens = w.get("model.embed_tokens.weight", &[config.vocab_size, h])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let qkv_bias = config.qkv_bias();
            layers.push(Layer {
                input_layernorm: w.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                self_attn: Attention {
                    q_proj: linear(w, &format!("{p}.self_attn.q_proj"), nh * hd, h, qkv_bias)?,
                    k_proj: linear(w, &format!("{p}.self_attn.k_proj"), nkv * hd, h, qkv_bias)?,
                    v_proj: linear(w, &format!("{p}.self_attn.v_proj"), nkv * hd, h, qkv_bias)?,
                    o_proj: linear(
                        w,
                        &format!("{p}.self_attn.o_proj"),
                        h,
                        nh * hd,
                        config.o_bias(),
                    )?,
                    heads: nh,
                    kv_heads: nkv,
                    head_dim: hd,
                },
                post_attention_layernorm: w
                    .get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                mlp: Mlp {
                    gate_proj: linear(w, &format!("{p}.mlp.gate_proj"), inter, h, config.mlp_bias)?,
                    up_proj: linear(w, &format!("{p}.mlp.up_proj"), inter, h, config.mlp_bias)?,
                    down_proj: linear(w, &format!("{p}.mlp.down_proj"), h, inter, config.mlp_bias)?,
                },
            });
        }
        let norm = w.get("model.norm.weight", &[h])?;
        // Some tied checkpoints still ship `lm_head.weight`; tying wins, as in HF.
        let lm_head = if config.tie_word_embeddings {
            AdaptedLinear::new(embed_tokens.clone(), None)
        } else {
            linear(w, "lm_head", config.vocab_size, h, false)?
        };
        let inv_freq = config.rope_inv_freq();
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            prompt: None,
            checkpointing: false,
            prefix: None,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Base weights by HF name, as currently used by the forward pass (i.e. with adapters
    /// folded in after `merge_all`). An adapted LM head on a tied model cannot stay tied,
    /// so it is written as a separate `lm_head.weight`; `tied` says whether it stayed tied.
    pub fn state_dict(&self) -> (BTreeMap<String, Tensor>, bool) {
        let mut out = BTreeMap::new();
        out.insert(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        );
        out.insert("model.norm.weight".to_string(), self.norm.clone());
        for (i, l) in self.layers.iter().enumerate() {
            out.insert(
                format!("model.layers.{i}.input_layernorm.weight"),
                l.input_layernorm.clone(),
            );
            out.insert(
                format!("model.layers.{i}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.clone(),
            );
        }
        let head_changed = self.lm_head.lora().is_some();
        let tied = self.config.tie_word_embeddings && !head_changed;
        for (path, lin) in self.linears() {
            if path == "lm_head" && tied {
                continue;
            }
            out.insert(format!("{path}.weight"), lin.weight().clone());
            if let Some(b) = lin.bias() {
                out.insert(format!("{path}.bias"), b.clone());
            }
        }
        (out, tied)
    }

    /// Logits `[batch, seq, vocab]` (f32, or f64 for an f64 model) for token ids `[batch, seq]` (u32).
    ///
    /// Attention is causal only: batches are right-padded, so padding never sits before a
    /// real token and cannot influence it; padded positions are excluded from the loss.
    pub fn forward(&self, input_ids: &Tensor, mode: &Mode) -> Result<Tensor, ModelError> {
        let (b, t) = input_ids.dims2()?;
        let logits = self.forward_flat(input_ids, mode)?;
        let v = logits.dim(1)?;
        Ok(logits.reshape((b, t, v))?)
    }

    /// [`Self::forward`] with the logits flattened to `[batch·seq, vocab]` (row `i·seq + j`
    /// is position `j` of sequence `i`), the layout the loss takes. Hidden states stay 2-D
    /// `[batch·seq, hidden]` throughout: every reshape is a graph node whose backward costs a
    /// zero-filled buffer and an add over the whole tensor.
    pub fn forward_flat(&self, input_ids: &Tensor, mode: &Mode) -> Result<Tensor, ModelError> {
        let x = self.hidden_flat(input_ids, mode)?;
        Ok(self
            .lm_head
            .forward(&x, mode)?
            .to_dtype(compute_dtype(self.dtype()))?)
    }

    /// `masked_nll_sum(forward_flat(input_ids), labels, mask)`: the summed causal-LM loss
    /// over `[batch·seq]` flat labels. With a constant, unadapted LM head on the CPU (f32/f64)
    /// the head and the loss run as one fused node that never materialises the
    /// `[batch·seq, vocab]` logits or their gradient.
    pub fn masked_nll_sum_flat(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        mask: &Tensor,
        mode: &Mode,
    ) -> Result<Tensor, ModelError> {
        let x = self.hidden_flat(input_ids, mode)?;
        self.head_nll_sum(&x, labels, mask, mode)
    }

    /// The summed masked loss of the final hidden states `x` `[batch·seq, hidden]`.
    fn head_nll_sum(
        &self,
        x: &Tensor,
        labels: &Tensor,
        mask: &Tensor,
        mode: &Mode,
    ) -> Result<Tensor, ModelError> {
        if let Some(w) = self.lm_head.frozen_weight()
            && kernels::supported(x)
            && w.dtype() == x.dtype()
            && w.device().is_cpu()
        {
            return Ok(kernels::lm_head_nll_sum(x, w, labels, mask)?);
        }
        let logits = self
            .lm_head
            .forward(x, mode)?
            .to_dtype(compute_dtype(self.dtype()))?;
        Ok(super::ops::masked_nll_sum(&logits, labels, mask)?)
    }

    /// The final-norm hidden states `[batch·seq, hidden]` of the real positions.
    fn hidden_flat(&self, input_ids: &Tensor, mode: &Mode) -> Result<Tensor, ModelError> {
        let (mut x, pass) = self.embed(input_ids, mode)?;
        for i in 0..self.layers.len() {
            x = self.layer_forward(i, &x, &pass, mode)?;
        }
        self.final_norm(&x, &pass)
    }

    /// The input of the first decoder layer `[batch·(virtual + seq), hidden]` (token
    /// embeddings, after prompt tuning's virtual tokens) and what every layer of this pass
    /// shares.
    fn embed(&self, input_ids: &Tensor, mode: &Mode) -> Result<(Tensor, Pass), ModelError> {
        let (b, t_in) = input_ids.dims2()?;
        let dtype = self.dtype();
        let device = self.device();
        let h = self.config.hidden_size;
        let mut x = self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?;
        // The reference pass of a preference loss runs the base model: no virtual tokens.
        let prompt = self.prompt.as_ref().filter(|_| mode.adapters_on());
        let n_virtual = prompt.map_or(0, |p| p.dim(0).unwrap_or(0));
        if let Some(p) = prompt {
            let p = p
                .to_dtype(dtype)?
                .unsqueeze(0)?
                .broadcast_as((b, n_virtual, h))?;
            x = Tensor::cat(&[&p, &x.reshape((b, t_in, h))?], 1)?
                .reshape((b * (t_in + n_virtual), h))?;
        }
        let t = t_in + n_virtual;
        let prefix = self.prefix.as_ref().filter(|_| mode.adapters_on());
        // Prefix positions come first: real tokens sit at positions n_prefix.. (as PEFT runs
        // the prefix as a KV cache of that length).
        let n_prefix = prefix.map_or(0, |p| p.dim(0).unwrap_or(0));
        // [n, layers·2·kv·hd] → [n, layers·2, kv, hd], once per pass for every layer.
        let (kv, hd) = (self.config.num_kv_heads(), self.config.head_size());
        let prefix = prefix
            .map(|p| {
                p.to_dtype(dtype)?
                    .reshape((n_prefix, self.layers.len() * 2, kv, hd))
            })
            .transpose()?;
        let rope = Rope::new(&self.inv_freq, n_prefix + t, dtype, device)?;
        let pass = Pass {
            b,
            t,
            t_in,
            n_virtual,
            n_prefix,
            prefix,
            rope,
        };
        Ok((x, pass))
    }

    /// Decoder layer `i` on its input `x` `[b·t, hidden]`.
    fn layer_forward(
        &self,
        i: usize,
        x: &Tensor,
        pass: &Pass,
        mode: &Mode,
    ) -> Result<Tensor, ModelError> {
        let layer = self
            .layers
            .get(i)
            .ok_or_else(|| candle_core::Error::Msg(format!("no decoder layer {i}")))?;
        let eps = self.config.rms_norm_eps;
        let (kv, hd) = (self.config.num_kv_heads(), self.config.head_size());
        let (b, n_prefix) = (pass.b, pass.n_prefix);
        let hs = rms_norm(x, &layer.input_layernorm, eps)?;
        let layer_prefix = match &pass.prefix {
            Some(p) => {
                // This layer's keys and values, [b, kv, n, hd].
                let part = |j: usize| -> candle_core::Result<Tensor> {
                    p.narrow(1, 2 * i + j, 1)?
                        .squeeze(1)?
                        .transpose(0, 1)?
                        .unsqueeze(0)?
                        .broadcast_as((b, kv, n_prefix, hd))?
                        .contiguous()
                };
                Some((part(0)?, part(1)?))
            }
            None => None,
        };
        let x = (x + layer.self_attn.forward(
            &hs,
            (b, pass.t),
            &pass.rope,
            layer_prefix.as_ref(),
            mode,
        )?)?;
        let hs = rms_norm(&x, &layer.post_attention_layernorm, eps)?;
        Ok((&x + layer.mlp.forward(&hs, mode)?)?)
    }

    /// The final norm over the last layer's output, for the real positions only.
    fn final_norm(&self, x: &Tensor, pass: &Pass) -> Result<Tensor, ModelError> {
        let mut x = rms_norm(x, &self.norm, self.config.rms_norm_eps)?;
        if pass.n_virtual > 0 {
            // Logits only for the real positions, so labels and masks line up unchanged.
            let h = self.config.hidden_size;
            x = x
                .reshape((pass.b, pass.t, h))?
                .narrow(1, pass.n_virtual, pass.t_in)?
                .reshape((pass.b * pass.t_in, h))?;
        }
        Ok(x)
    }
}

/// What every decoder layer of one forward pass shares.
struct Pass {
    b: usize,
    /// Positions per sequence, virtual tokens included.
    t: usize,
    /// Real token positions per sequence.
    t_in: usize,
    n_virtual: usize,
    n_prefix: usize,
    /// Prefix-tuning keys and values as `[n, layers·2, kv_heads, head_dim]`.
    prefix: Option<Tensor>,
    rope: Rope,
}

impl Attention {
    /// `x` `[b·t, hidden]` → `[b·t, hidden]`.
    fn forward(
        &self,
        x: &Tensor,
        (b, t): (usize, usize),
        rope: &Rope,
        prefix: Option<&(Tensor, Tensor)>,
        mode: &Mode,
    ) -> candle_core::Result<Tensor> {
        let q = self.q_proj.forward(x, mode)?;
        let k = self.k_proj.forward(x, mode)?;
        let v = self.v_proj.forward(x, mode)?;
        if prefix.is_none() && kernels::supported(x) && q.dtype() == x.dtype() {
            let (cos, sin) = rope.tables(t)?;
            let y = kernels::causal_attention(
                &q,
                &k,
                &v,
                &cos,
                &sin,
                (b, t),
                (self.heads, self.kv_heads),
            )?;
            return self.o_proj.forward(&y, mode);
        }
        self.composed((q, k, v), (b, t), rope, prefix, mode)
    }

    /// Attention from composed ops, optionally over learned prefix keys/values
    /// `[b, kv, n, head_dim]` that every real position sees; the real positions then sit at
    /// RoPE positions `n..n+t`. The fused kernel has no prefix, so prefix tuning runs here and
    /// every prefix entry gets its gradient.
    fn composed(
        &self,
        (q, k, v): (Tensor, Tensor, Tensor),
        (b, t): (usize, usize),
        rope: &Rope,
        prefix: Option<&(Tensor, Tensor)>,
        mode: &Mode,
    ) -> candle_core::Result<Tensor> {
        let n = match prefix {
            Some((pk, _)) => pk.dim(2)?,
            None => 0,
        };
        let split = |y: Tensor, heads: usize| {
            y.reshape((b, t, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = rope.apply_from(&split(q, self.heads)?, n)?;
        let mut k = rope.apply_from(&split(k, self.kv_heads)?, n)?;
        let mut v = split(v, self.kv_heads)?;
        // Scores and softmax run in f32 (f64 in gradient checks) over any base dtype.
        let stats = compute_dtype(q.dtype());
        let mut mask = causal_mask(t, stats, q.device())?;
        if let Some((pk, pv)) = prefix {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
            let visible = Tensor::zeros((t, n), stats, q.device())?;
            mask = Tensor::cat(&[&visible, &mask], 1)?;
        }
        let n_rep = self.heads / self.kv_heads;
        let k = repeat_kv(k, n_rep)?.contiguous()?;
        let v = repeat_kv(v, n_rep)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)?.to_dtype(stats)? / (self.head_dim as f64).sqrt())?
            .broadcast_add(&mask)?;
        // ops::softmax (max/sub/exp/sum/div) keeps the gradient; softmax_last_dim does not.
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?;
        let y = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b * t, self.heads * self.head_dim))?;
        self.o_proj.forward(&y, mode)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor, mode: &Mode) -> candle_core::Result<Tensor> {
        let gate = self.gate_proj.forward(x, mode)?;
        let up = self.up_proj.forward(x, mode)?;
        let h = if kernels::supported(&gate) && up.dtype() == gate.dtype() {
            kernels::silu_mul(&gate, &up)?
        } else {
            (candle_nn::ops::silu(&gate)? * up)?
        };
        self.down_proj.forward(&h, mode)
    }
}

const ATTN: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
const MLP: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

impl Adaptable for Llama {
    fn linears(&self) -> Vec<(String, &AdaptedLinear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let a = &l.self_attn;
            for (name, lin) in ATTN
                .iter()
                .zip([&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj])
            {
                out.push((format!("model.layers.{i}.self_attn.{name}"), lin));
            }
            let m = &l.mlp;
            for (name, lin) in MLP.iter().zip([&m.gate_proj, &m.up_proj, &m.down_proj]) {
                out.push((format!("model.layers.{i}.mlp.{name}"), lin));
            }
        }
        out.push(("lm_head".to_string(), &self.lm_head));
        out
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let a = &mut l.self_attn;
            let attn = [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj];
            for (name, lin) in ATTN.iter().zip(attn) {
                out.push((format!("model.layers.{i}.self_attn.{name}"), lin));
            }
            let m = &mut l.mlp;
            for (name, lin) in MLP
                .iter()
                .zip([&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj])
            {
                out.push((format!("model.layers.{i}.mlp.{name}"), lin));
            }
        }
        out.push(("lm_head".to_string(), &mut self.lm_head));
        out
    }

    fn output_modules(&self) -> Vec<String> {
        vec!["lm_head".to_string()]
    }

    fn other_params_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            &mut self.embed_tokens,
        )];
        for (i, l) in self.layers.iter_mut().enumerate() {
            out.push((
                format!("model.layers.{i}.input_layernorm.weight"),
                &mut l.input_layernorm,
            ));
            out.push((
                format!("model.layers.{i}.post_attention_layernorm.weight"),
                &mut l.post_attention_layernorm,
            ));
        }
        out.push(("model.norm.weight".to_string(), &mut self.norm));
        out
    }

    fn set_prompt(
        &mut self,
        prompt: Option<Tensor>,
    ) -> Result<(), crate::engine::adapters::AdapterError> {
        if let Some(p) = &prompt {
            let dims = p.dims();
            if dims.len() != 2 || dims[1] != self.config.hidden_size {
                return Err(crate::engine::adapters::AdapterError::Shape {
                    name: "prompt_embeddings".into(),
                    expected: vec![dims.first().copied().unwrap_or(0), self.config.hidden_size],
                    actual: dims.to_vec(),
                });
            }
        }
        self.prompt = prompt;
        Ok(())
    }

    fn input_embeddings(&self) -> Option<&Tensor> {
        Some(&self.embed_tokens)
    }

    fn prefix_layout(&self) -> Option<crate::engine::adapters::PrefixLayout> {
        Some(crate::engine::adapters::PrefixLayout {
            layers: self.layers.len(),
            kv_heads: self.config.num_kv_heads(),
            head_dim: self.config.head_size(),
        })
    }

    fn set_prefix(
        &mut self,
        prefix: Option<Tensor>,
    ) -> Result<(), crate::engine::adapters::AdapterError> {
        if let Some(p) = &prefix {
            let width = self.prefix_layout().map_or(0, |l| l.width());
            let dims = p.dims();
            if dims.len() != 2 || dims[1] != width {
                return Err(crate::engine::adapters::AdapterError::Shape {
                    name: "prompt_embeddings".into(),
                    expected: vec![dims.first().copied().unwrap_or(0), width],
                    actual: dims.to_vec(),
                });
            }
        }
        self.prefix = prefix;
        Ok(())
    }

    fn ia3_defaults(&self) -> (Vec<String>, Vec<String>) {
        (
            vec!["k_proj".into(), "v_proj".into(), "down_proj".into()],
            vec!["down_proj".into()],
        )
    }
}
