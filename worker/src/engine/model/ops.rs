//! Differentiable building blocks. candle's fused versions of these (`rms_norm`,
//! `rotary_emb::rope`, `softmax_last_dim`) have no backward pass, so gradients to anything
//! upstream of them would silently vanish; these are written with plain ops instead.

use candle_core::{D, DType, Device, Result, Tensor};

use crate::engine::kernels;

pub use crate::engine::kernels::compute_dtype;

/// RMSNorm: `x / sqrt(mean(x²) + eps) * weight`, computed in f32 (or f64). One fused node
/// on the CPU for f32/f64 ([`kernels::rms_norm`]), composed ops otherwise.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if kernels::supported(x) && weight.dtype() == x.dtype() && weight.device().is_cpu() {
        return kernels::rms_norm(x, weight, eps);
    }
    rms_norm_composed(x, weight, eps)
}

/// [`rms_norm`] from primitive ops (any dtype/device; the reference for the fused kernel).
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(compute_dtype(dtype))?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// Precomputed RoPE tables `[max_len, head_dim]` (each frequency repeated for both halves,
/// HF's non-interleaved layout).
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(inv_freq: &[f64], max_len: usize, dtype: DType, device: &Device) -> Result<Self> {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_len * half * 2);
        let mut sin = Vec::with_capacity(max_len * half * 2);
        for pos in 0..max_len {
            for _ in 0..2 {
                for f in inv_freq {
                    // f32 angle like HF/candle, so tables agree with the reference to ~1 ulp.
                    let angle = pos as f32 * (*f as f32);
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = (max_len, 2 * half);
        Ok(Self {
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
        })
    }

    /// Rotates `x` `[batch, heads, seq, head_dim]` for positions `0..seq`:
    /// `x·cos + rotate_half(x)·sin`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.apply_from(x, 0)
    }

    /// The `[seq, head_dim]` cos and sin tables for positions `0..seq`.
    /// [`Self::apply`] for positions `start..start+seq`.
    pub fn apply_from(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_, _, seq, hd) = x.dims4()?;
        let cos = self.cos.narrow(0, start, seq)?;
        let sin = self.sin.narrow(0, start, seq)?;
        let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }

    pub fn tables(&self, seq: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, 0, seq)?, self.sin.narrow(0, 0, seq)?))
    }

    pub fn max_len(&self) -> usize {
        self.cos.dims().first().copied().unwrap_or(0)
    }
}

/// Additive causal mask `[seq, seq]`: 0 on and below the diagonal, -inf above.
pub fn causal_mask(seq: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (seq, seq), device)?.to_dtype(dtype)
}

/// Repeats KV heads `[b, kv, t, d]` → `[b, kv·n_rep, t, d]` for grouped-query attention.
pub fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv, t, d) = x.dims4()?;
    Tensor::cat(&vec![&x; n_rep], 2)?.reshape((b, kv * n_rep, t, d))
}

/// Token-mean cross-entropy over positions where `mask` is 1.
///
/// `logits` `[n, vocab]`, `labels` `[n]` u32, `mask` `[n]` f32. Returns the *sum* of the
/// masked negative log-likelihoods; the caller divides by the token count of the whole
/// accumulation window so micro-batches of different sizes weigh tokens equally.
pub fn masked_nll_sum(logits: &Tensor, labels: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if kernels::supported(logits) {
        return kernels::masked_nll_sum(logits, labels, mask);
    }
    masked_nll_sum_composed(logits, labels, mask)
}

/// [`masked_nll_sum`] from primitive ops (the reference for the fused kernel).
pub fn masked_nll_sum_composed(logits: &Tensor, labels: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let dtype = compute_dtype(logits.dtype());
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(dtype)?, D::Minus1)?;
    let nll = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    (nll * mask.to_dtype(dtype)?)?.sum_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn rms_norm_and_rope_pass_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_vec(
            (0..32).map(|i| i as f32 * 0.1 - 1.0).collect::<Vec<_>>(),
            (1, 2, 2, 8),
            &dev,
        )
        .unwrap();
        let w = Tensor::ones(8, DType::F32, &dev).unwrap();
        let rope = Rope::new(&[1.0, 0.1, 0.01, 0.001], 4, DType::F32, &dev).unwrap();
        let y = rope.apply(&rms_norm(&x, &w, 1e-5).unwrap()).unwrap();
        let loss = candle_nn::ops::softmax(&y, D::Minus1)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(&x).expect("gradient reaches the input");
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }

    #[test]
    fn causal_mask_blocks_the_future() {
        let m = causal_mask(3, DType::F32, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0][0], 0.0);
        assert!(m[0][1].is_infinite());
        assert_eq!(m[2][1], 0.0);
    }
}
