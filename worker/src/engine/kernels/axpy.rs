//! `y + s·u` over whole tensors on rayon's pool, outside the graph: the residual adds of the
//! hand-written backward and the LoRA effective weight.

use candle_core::{CpuStorage, Result, Tensor};

use super::cpu::{View, detached, dispatch_dtype, msg};
use super::parallel::par_chunks;
use super::real::Real;

/// `a + b` (same shape, contiguous f32/f64 on the CPU) on rayon's pool, outside the graph;
/// candle's own elementwise ops run on its spinning barrier pool (see [`par_chunks`]).
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(msg("add: shapes differ"));
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    // `a + 1·b` is exactly `a + b`.
    let sum = dispatch_dtype!(a.dtype(), axpy_owned(&a, &b, 1.0))?;
    Ok(detached(sum, a.shape()))
}

/// `y + s · u` into a fresh storage (both contiguous, same shape).
pub(super) fn axpy_owned<T: Real>(y: &Tensor, u: &Tensor, s: f64) -> Result<CpuStorage> {
    let (yv, uv) = (View::of(y)?, View::of(u)?);
    let (ys, us) = (yv.slice::<T>()?, uv.slice::<T>()?);
    if ys.len() != us.len() {
        return Err(msg("axpy: length mismatch"));
    }
    let s = T::from_f64(s);
    let mut out = vec![T::zero(); ys.len()];
    par_chunks(&mut out, 8192, ys.len(), |c, o| {
        let lo = c * 8192;
        for ((o, &a), &b) in o.iter_mut().zip(&ys[lo..]).zip(&us[lo..]) {
            *o = a + b * s;
        }
    });
    Ok(T::to_cpu_storage_owned(out))
}
