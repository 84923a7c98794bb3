//! The LoRA training step with a hand-written backward pass, outside candle's autograd.
//!
//! candle's backward allocates a zero-filled accumulator and adds into it for every input of
//! every graph node, and its elementwise ops run on a pool that spins after each job; on
//! the small models this service trains on CPUs that bookkeeping costs about as much as
//! the matrix products. When every trainable parameter is a plain LoRA pair (no DoRA, no
//! dropout in this pass, no IA3, bias, prompt or trainable base tensor) the decoder's
//! gradient has a fixed shape, so this module runs the forward pass keeping exactly the
//! activations the backward needs and then computes `dL/dA`, `dL/dB` layer by layer with
//! the fused kernels and candle's matmul. Any other configuration returns `None` and the
//! trainer uses autograd; the tests compare both paths' gradients.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};

use super::super::ops::Rope;
use super::{Layer, Llama};
use crate::engine::adapters::{AdaptedLinear, Mode};
use crate::engine::kernels;

/// A forward pass recorded for [`LossTape::backward`]: the summed masked loss and what the
/// backward pass needs.
pub struct LossTape<'m> {
    /// `Σ mask · nll` over the batch, as [`Llama::masked_nll_sum_flat`] returns it.
    pub nll_sum: f64,
    eps: f64,
    layers: Vec<LayerTape<'m>>,
    /// The last layer's output and the final norm's weight.
    x_last: Tensor,
    norm: &'m Tensor,
    /// `dL/d(final norm output)` for an upstream gradient of 1 (computed with the loss).
    d_head: Tensor,
}

/// A linear layer as the tape runs it: a constant weight plus, for LoRA, its factors.
struct Lin<'m> {
    w: &'m Tensor,
    lora: Option<LoraTape<'m>>,
}

struct LoraTape<'m> {
    a: Tensor,
    b: Tensor,
    scale: f64,
    key: &'m str,
    /// `x Aᵀ` `[n, r]` from the forward pass, for `dL/dB`.
    xa: Tensor,
}

struct LayerTape<'m> {
    layer: &'m Layer,
    x: Tensor,
    hs1: Tensor,
    qkv: [Lin<'m>; 3],
    attn: kernels::AttentionSaved,
    y: Tensor,
    o: Lin<'m>,
    x_mid: Tensor,
    hs2: Tensor,
    gate_up: [Lin<'m>; 2],
    gate: Tensor,
    up: Tensor,
    /// `sigmoid(gate)`, kept for the SwiGLU backward.
    sig: Tensor,
    act: Tensor,
    down: Lin<'m>,
}

/// Whether `lin` is one the tape can run: a constant weight, no bias, no IA3, and either no
/// adapter or an unmerged plain LoRA without dropout in this pass, all in `x`'s dtype.
fn supported(lin: &AdaptedLinear, mode: &Mode, x: &Tensor) -> bool {
    let w = lin.weight();
    if lin.ia3().is_some()
        || lin.bias().is_some()
        || lin.is_merged()
        || w.track_op()
        || w.dtype() != x.dtype()
        || !w.device().is_cpu()
    {
        return false;
    }
    match lin.lora() {
        None => true,
        Some(l) => {
            l.magnitude.is_none()
                && mode.dropout_stream(&l.key, l.dropout).is_none()
                && l.a.dtype() == x.dtype()
                && l.b.dtype() == x.dtype()
        }
    }
}

/// `x Wᵀ` for a constant `w` `[out, in]` and `x` `[n, in]`.
fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.matmul(&w.t()?)
}

fn lin_forward<'m>(lin: &'m AdaptedLinear, x: &Tensor) -> Result<(Tensor, Lin<'m>)> {
    let w = lin.weight();
    match lin.lora() {
        None => Ok((matmul_t(x, w)?, Lin { w, lora: None })),
        Some(l) => {
            let (a, b) = (l.a.as_tensor().detach(), l.b.as_tensor().detach());
            let w_eff = kernels::effective_weight(w, &a, &b, l.scale)?;
            let y = matmul_t(x, &w_eff)?;
            let xa = matmul_t(x, &a)?;
            let lora = LoraTape {
                a,
                b,
                scale: l.scale,
                key: &l.key,
                xa,
            };
            Ok((
                y,
                Lin {
                    w,
                    lora: Some(lora),
                },
            ))
        }
    }
}

/// Adds `dL/dA`, `dL/dB` of `lin` (input `x`, output gradient `g`) to `grads`, and returns
/// `dL/dx` when `want_dx`.
fn lin_backward(
    lin: &Lin<'_>,
    x: &Tensor,
    g: &Tensor,
    want_dx: bool,
    grads: &mut BTreeMap<String, Tensor>,
) -> Result<Option<Tensor>> {
    let Some(l) = &lin.lora else {
        return want_dx.then(|| g.matmul(lin.w)).transpose();
    };
    // The small low-rank products run beside the big `dL/dx` product: on their own they
    // leave cores idle.
    let (low_rank, dx) = rayon::join(
        || -> Result<(Tensor, Tensor)> {
            let db = (g.t()?.matmul(&l.xa)? * l.scale)?;
            let gb = g.matmul(&l.b)?;
            let da = (gb.t()?.matmul(x)? * l.scale)?;
            Ok((da, db))
        },
        || -> Result<Option<Tensor>> {
            if !want_dx {
                return Ok(None);
            }
            // The effective weight is rebuilt (cheap next to the product) rather than
            // kept: kept, it would add a copy of every adapted weight to the step's memory.
            let w_eff = kernels::effective_weight(lin.w, &l.a, &l.b, l.scale)?;
            Ok(Some(g.matmul(&w_eff)?))
        },
    );
    let (da, db) = low_rank?;
    grads.insert(format!("{}.lora_A.weight", l.key), da);
    grads.insert(format!("{}.lora_B.weight", l.key), db);
    dx
}

/// `Σ dL/dx` over the linears sharing the input `x` (run concurrently, summed in order).
fn lins_backward(
    lins: &[Lin<'_>],
    x: &Tensor,
    gs: &[&Tensor],
    want_dx: bool,
    grads: &mut BTreeMap<String, Tensor>,
) -> Result<Option<Tensor>> {
    use rayon::prelude::*;
    let parts = lins
        .par_iter()
        .zip(gs.par_iter())
        .map(|(lin, g)| {
            let mut local = BTreeMap::new();
            let dx = lin_backward(lin, x, g, want_dx, &mut local)?;
            Ok((dx, local))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut sum: Option<Tensor> = None;
    for (dx, local) in parts {
        grads.extend(local);
        sum = match (sum, dx) {
            (Some(s), Some(d)) => Some(kernels::add(&s, &d)?),
            (s, d) => s.or(d),
        };
    }
    Ok(sum)
}

/// [`lin_forward`] of several linears over the same input, concurrently.
fn lins_forward<'m, const N: usize>(
    lins: [&'m AdaptedLinear; N],
    x: &Tensor,
) -> Result<[(Tensor, Lin<'m>); N]> {
    use rayon::prelude::*;
    let outs = lins
        .into_par_iter()
        .map(|lin| lin_forward(lin, x))
        .collect::<Result<Vec<_>>>()?;
    outs.try_into()
        .map_err(|_| candle_core::Error::Msg("tape: lost a linear's output".into()))
}

impl Llama {
    /// Runs the forward pass of [`Self::masked_nll_sum_flat`] for the hand-written backward
    /// ([`LossTape::backward`]), or returns `None` when this model's configuration needs
    /// candle's autograd (see the module docs).
    pub fn loss_tape(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        mask: &Tensor,
        mode: &Mode,
    ) -> Result<Option<LossTape<'_>>> {
        if !self.tape_supported(mode) {
            return Ok(None);
        }
        let Some(head) = self.lm_head.frozen_weight() else {
            return Ok(None);
        };
        let (b, t) = input_ids.dims2()?;
        let dtype = self.dtype();
        let eps = self.config.rms_norm_eps;
        let rope = Rope::new(&self.inv_freq, t, dtype, self.device())?;
        let (cos, sin) = rope.tables(t)?;
        let mut x = self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        // The norm after each residual add runs in the add's pass: `hs` is always the
        // normed `x` for whatever comes next (a layer's attention, or the LM head).
        let norm_after = |i: usize| {
            self.layers
                .get(i)
                .map_or(&self.norm, |l: &Layer| &l.input_layernorm)
        };
        let mut hs = kernels::rms_norm(&x, norm_after(0), eps)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let a = &layer.self_attn;
            let hs1 = hs;
            let [(q, lq), (k, lk), (v, lv)] =
                lins_forward([&a.q_proj, &a.k_proj, &a.v_proj], &hs1)?;
            let (y, attn) =
                kernels::attention_forward(&q, &k, &v, &cos, &sin, (b, t), (a.heads, a.kv_heads))?;
            let (o, lo) = lin_forward(&a.o_proj, &y)?;
            let m = &layer.mlp;
            let (x_mid, hs2) = kernels::add_rms_norm(&x, &o, &layer.post_attention_layernorm, eps)?;
            let [(gate, lg), (up, lu)] = lins_forward([&m.gate_proj, &m.up_proj], &hs2)?;
            let (act, sig) = kernels::silu_mul_forward(&gate, &up)?;
            let (down, ld) = lin_forward(&m.down_proj, &act)?;
            let (x_next, hs_next) = kernels::add_rms_norm(&x_mid, &down, norm_after(i + 1), eps)?;
            layers.push(LayerTape {
                layer,
                x,
                hs1,
                qkv: [lq, lk, lv],
                attn,
                y,
                o: lo,
                x_mid,
                hs2,
                gate_up: [lg, lu],
                gate,
                up,
                sig,
                act,
                down: ld,
            });
            x = x_next;
            hs = hs_next;
        }
        let hf = hs;
        let (nll_sum, d_head) = kernels::lm_head_nll_grad(&hf, head, labels, mask)?;
        Ok(Some(LossTape {
            nll_sum,
            eps,
            layers,
            x_last: x,
            norm: &self.norm,
            d_head,
        }))
    }

    /// Every trainable tensor is a plain LoRA factor the tape differentiates, and nothing
    /// else in the model needs a gradient.
    fn tape_supported(&self, mode: &Mode) -> bool {
        let probe = &self.embed_tokens;
        if !kernels::supported(probe)
            || self.prompt.is_some()
            || self.prefix.is_some()
            || probe.track_op()
            || self.norm.track_op()
        {
            return false;
        }
        self.layers.iter().all(|l| {
            let (a, m) = (&l.self_attn, &l.mlp);
            !l.input_layernorm.track_op()
                && !l.post_attention_layernorm.track_op()
                && [
                    &a.q_proj,
                    &a.k_proj,
                    &a.v_proj,
                    &a.o_proj,
                    &m.gate_proj,
                    &m.up_proj,
                    &m.down_proj,
                ]
                .into_iter()
                .all(|lin| supported(lin, mode, probe))
        })
    }
}

impl LossTape<'_> {
    /// The gradient of `loss_scale · nll_sum` with respect to every LoRA factor, keyed like
    /// the adapter's parameters (`<module key>.lora_A.weight`, `….lora_B.weight`).
    pub fn backward(self, loss_scale: f64) -> Result<BTreeMap<String, Tensor>> {
        let eps = self.eps;
        let mut grads = BTreeMap::new();
        let mut dx =
            kernels::rms_norm_backward_add(&self.x_last, self.norm, &self.d_head, eps, None)?;
        for (i, lt) in self.layers.iter().enumerate().rev() {
            let layer = lt.layer;
            // MLP block: x_next = x_mid + down(silu(gate(hs2)) · up(hs2)).
            let d_act = lin_backward(&lt.down, &lt.act, &dx, true, &mut grads)?
                .ok_or_else(|| candle_core::Error::Msg("tape: no gradient for down".into()))?;
            let (d_gate, d_up) = kernels::silu_mul_backward(&lt.gate, &lt.up, &lt.sig, &d_act)?;
            let d_hs2 = lins_backward(&lt.gate_up, &lt.hs2, &[&d_gate, &d_up], true, &mut grads)?
                .ok_or_else(|| {
                candle_core::Error::Msg("tape: no gradient for the MLP".into())
            })?;
            let d_mid = kernels::rms_norm_backward_add(
                &lt.x_mid,
                &layer.post_attention_layernorm,
                &d_hs2,
                eps,
                Some(&dx),
            )?;
            // Attention block: x_mid = x + o(attn(q(hs1), k(hs1), v(hs1))).
            let d_y = lin_backward(&lt.o, &lt.y, &d_mid, true, &mut grads)?
                .ok_or_else(|| candle_core::Error::Msg("tape: no gradient for o".into()))?;
            let (dq, dk, dv) = kernels::attention_backward(&lt.attn, &d_y)?;
            // The embeddings are constant: below the first layer only the LoRA factors
            // need the gradient, not the input.
            let want_dx = i > 0;
            let d_hs1 = lins_backward(&lt.qkv, &lt.hs1, &[&dq, &dk, &dv], want_dx, &mut grads)?;
            dx = match d_hs1 {
                Some(d_hs1) => kernels::rms_norm_backward_add(
                    &lt.x,
                    &layer.input_layernorm,
                    &d_hs1,
                    eps,
                    Some(&d_mid),
                )?,
                None => d_mid,
            };
        }
        if loss_scale != 1.0 {
            for g in grads.values_mut() {
                *g = (&*g * loss_scale)?;
            }
        }
        Ok(grads)
    }
}
