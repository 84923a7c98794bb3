//! SwiGLU's `silu(gate) · up` as one graph node, or as a forward and a backward outside the
//! graph; the forward keeps `sigmoid(gate)` so the backward needs no `exp`.

use candle_core::{CpuStorage, Result, Tensor};

use super::cpu::{View, detached, dispatch_dtype, msg, tensor};
use super::precomputed::{Grads2, Precomputed};
use super::real::Real;

/// `silu(gate) · up` as one node (same shapes, f32/f64, CPU).
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    // The tape's forward and backward (one SwiGLU implementation), `sigmoid(gate)` kept.
    let (out, sig) = silu_mul_saving(&gate, &up)?;
    let bwd = move |gate: &Tensor, up: &Tensor, g: &Tensor| -> Result<Grads2> {
        let (dg, du) = silu_mul_backward(gate, up, &sig, g)?;
        Ok((gate.track_op().then_some(dg), up.track_op().then_some(du)))
    };
    let shape = gate.shape().clone();
    gate.apply_op2(&up, Precomputed::binary("fused-silu-mul", out, shape, bwd))
}

/// [`silu_mul`] outside the graph, also returning `sigmoid(gate)` for
/// [`silu_mul_backward`] (keeping it spares the backward two passes of `exp`).
pub(crate) fn silu_mul_forward(gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    let (out, sig) = silu_mul_saving(&gate, &up)?;
    Ok((detached(out, gate.shape()), sig))
}

/// `silu(gate) · up` as a storage, and `sigmoid(gate)` (contiguous inputs).
fn silu_mul_saving(gate: &Tensor, up: &Tensor) -> Result<(CpuStorage, Tensor)> {
    if gate.shape() != up.shape() {
        return Err(msg("silu_mul: shapes differ"));
    }
    dispatch_dtype!(gate.dtype(), silu_mul_fwd_saving(gate, up))
}

const SILU_CHUNK: usize = 4096;

fn silu_mul_fwd_saving<T: Real>(gate: &Tensor, up: &Tensor) -> Result<(CpuStorage, Tensor)> {
    use rayon::prelude::*;
    let (gv, uv) = (View::of(gate)?, View::of(up)?);
    let (gs, us) = (gv.slice::<T>()?, uv.slice::<T>()?);
    let mut y = vec![T::zero(); gs.len()];
    let mut sig = vec![T::zero(); gs.len()];
    y.par_chunks_mut(SILU_CHUNK)
        .zip(sig.par_chunks_mut(SILU_CHUNK))
        .enumerate()
        .for_each(|(c, (yc, sc))| {
            let lo = c * SILU_CHUNK;
            let (g, u) = (&gs[lo..lo + yc.len()], &us[lo..lo + yc.len()]);
            for (s, &x) in sc.iter_mut().zip(g) {
                *s = T::zero() - x;
            }
            T::exp_in_place(sc);
            for (((o, s), &x), &uv) in yc.iter_mut().zip(sc.iter_mut()).zip(g).zip(u) {
                *s = T::one() / (T::one() + *s);
                *o = x * *s * uv;
            }
        });
    Ok((T::to_cpu_storage_owned(y), tensor(sig, gate.shape())?))
}

/// `(dL/dgate, dL/dup)` of [`silu_mul`] for the output gradient `g`, given the
/// `sigmoid(gate)` from [`silu_mul_forward`], in one pass.
pub(crate) fn silu_mul_backward(
    gate: &Tensor,
    up: &Tensor,
    sig: &Tensor,
    g: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (gate, up, sig, g) = (
        gate.contiguous()?,
        up.contiguous()?,
        sig.contiguous()?,
        g.contiguous()?,
    );
    if gate.shape() != up.shape() || gate.shape() != sig.shape() || gate.shape() != g.shape() {
        return Err(msg("silu_mul backward: shapes differ"));
    }
    dispatch_dtype!(gate.dtype(), silu_mul_bwd_saved(&gate, &up, &sig, &g))
}

fn silu_mul_bwd_saved<T: Real>(
    gate: &Tensor,
    up: &Tensor,
    sig: &Tensor,
    g: &Tensor,
) -> Result<(Tensor, Tensor)> {
    use rayon::prelude::*;
    let (gv, uv, sv, dv) = (View::of(gate)?, View::of(up)?, View::of(sig)?, View::of(g)?);
    let (gs, us) = (gv.slice::<T>()?, uv.slice::<T>()?);
    let (ss, ds) = (sv.slice::<T>()?, dv.slice::<T>()?);
    let mut dg = vec![T::zero(); gs.len()];
    let mut du = vec![T::zero(); gs.len()];
    dg.par_chunks_mut(SILU_CHUNK)
        .zip(du.par_chunks_mut(SILU_CHUNK))
        .enumerate()
        .for_each(|(c, (dgc, duc))| {
            let lo = c * SILU_CHUNK;
            for (i, (a, b)) in dgc.iter_mut().zip(duc.iter_mut()).enumerate() {
                let (x, u, s, dy) = (gs[lo + i], us[lo + i], ss[lo + i], ds[lo + i]);
                // d silu/dx = sig · (1 + x · (1 − sig)); d(silu · u)/du = x · sig
                *a = dy * u * (s * (T::one() + x * (T::one() - s)));
                *b = dy * x * s;
            }
        });
    Ok((tensor(dg, gate.shape())?, tensor(du, gate.shape())?))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{compare, rand};
    use super::*;
    use candle_core::DType;

    #[test]
    fn fused_silu_mul_matches_composed() {
        for dtype in [DType::F32, DType::F64] {
            let g = rand(&[5, 30, 700], 3, dtype);
            let u = rand(&[5, 30, 700], 4, dtype);
            compare(
                &[g, u],
                |t| silu_mul(&t[0], &t[1]),
                |t| candle_nn::ops::silu(&t[0])? * &t[1],
                1e-5,
            );
        }
    }
}
