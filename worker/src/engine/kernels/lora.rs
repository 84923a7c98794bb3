//! A LoRA linear over a frozen weight as one graph node: one GEMM with the effective weight
//! forward, and a backward that never computes the frozen weight's gradient.

use candle_core::{Result, Shape, Tensor};

use super::axpy::axpy_owned;
use super::cpu::{cpu_storage, detached, dispatch_dtype, matmul_views, msg};
use super::precomputed::{Grads3, Precomputed};

/// `x Wᵀ + scale · (x Aᵀ) Bᵀ` for `x` `[n, in]`, a frozen `w` `[out, in]` (no gradient) and
/// trainable `a` `[r, in]`, `b` `[out, r]`, as one node. The backward computes `dL/dx`
/// (only when `x` needs it), `dL/dA` and `dL/dB`, never `dL/dW`.
pub fn lora_linear(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (n, in_f) = x.dims2()?;
    let (out_f, w_in) = w.dims2()?;
    let (r, a_in) = a.dims2()?;
    if w_in != in_f || a_in != in_f || b.dims2()? != (out_f, r) {
        return Err(msg("lora_linear: shapes do not match"));
    }
    let w = w.detach();
    // One GEMM with the effective weight `W + s·B·A` (an `[out, in]` update costing `r/n` of
    // the product) instead of a base GEMM, a low-rank GEMM and a sum over `[n, out]`.
    let w_eff = effective_weight(&w, a, b, scale)?;
    let out = {
        let (xg, xl) = x.storage_and_layout();
        let (wg, wl) = w_eff.storage_and_layout();
        matmul_views(
            cpu_storage(&xg)?,
            xl,
            cpu_storage(&wg)?,
            &wl.transpose(0, 1)?,
            (n, out_f, in_f),
        )?
    };
    // `x Aᵀ` `[n, r]`, kept for `dL/dB` when `B` needs it.
    let xa = if b.track_op() {
        Some(x.detach().matmul(&a.detach().t()?)?)
    } else {
        None
    };
    let bwd = move |x: &Tensor, a: &Tensor, b: &Tensor, g: &Tensor| -> Result<Grads3> {
        let g = g.contiguous()?;
        // dx = g · (W + s·B·A): the effective weight is rebuilt (cheap) rather than kept.
        let dx = if x.track_op() {
            let w_eff = effective_weight(&w, a, b, scale)?;
            Some(g.matmul(&w_eff)?)
        } else {
            None
        };
        // g·B, the gradient reaching the low-rank activations (before the scale).
        let da = if a.track_op() {
            let gb = g.matmul(&b.detach())?;
            Some((gb.t()?.matmul(&x.detach())? * scale)?)
        } else {
            None
        };
        let db = match (&xa, b.track_op()) {
            (Some(xa), true) => Some((g.t()?.matmul(xa)? * scale)?),
            (None, true) => Err(msg("lora_linear: x·Aᵀ was not kept for dL/dB"))?,
            _ => None,
        };
        Ok((dx, da, db))
    };
    let shape = Shape::from((n, out_f));
    x.apply_op3(
        a,
        b,
        Precomputed::ternary("fused-lora-linear", out, shape, bwd),
    )
}

/// `W + s · B · A` `[out, in]`, contiguous and detached.
pub(crate) fn effective_weight(w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let delta = b.detach().matmul(&a.detach())?;
    let w = w.contiguous()?;
    let sum = dispatch_dtype!(w.dtype(), axpy_owned(&w, &delta, scale))?;
    Ok(detached(sum, w.shape()))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{compare, rand};
    use super::*;
    use candle_core::DType;

    #[test]
    fn fused_lora_linear_matches_composed() {
        for dtype in [DType::F32, DType::F64] {
            let x = rand(&[150, 48], 11, dtype);
            let w = rand(&[40, 48], 12, dtype);
            let a = rand(&[4, 48], 13, dtype);
            let b = rand(&[40, 4], 14, dtype);
            let w2 = w.clone();
            compare(
                &[x, a, b],
                |t| lora_linear(&t[0], &w, &t[1], &t[2], 2.5),
                |t| t[0].matmul(&w2.t()?)? + (t[0].matmul(&t[1].t()?)?.matmul(&t[2].t()?)? * 2.5)?,
                1e-5,
            );
        }
    }
}
