//! RMSNorm as one graph node, plus the out-of-graph pieces of the hand-written backward: the
//! residual add fused with the norm after it, and the norm's input gradient fused with the
//! skip connection's.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};

use super::cpu::{View, dispatch, dispatch_dtype, msg, storage_slice, tensor};
use super::parallel::par_chunks;
use super::real::Real;

/// RMSNorm `x / sqrt(mean(x²) + eps) * w` over the last dim as one node; `x` and `w` in the
/// same dtype (f32/f64, CPU).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    x.apply_op2(&w, RmsNormOp { eps })
}

struct RmsNormOp {
    eps: f64,
}

fn rms_fwd<T: Real>(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    eps: f64,
) -> Result<(CpuStorage, Shape)> {
    let x = storage_slice::<T>(s1, l1)?;
    let w = storage_slice::<T>(s2, l2)?;
    let h = w.len();
    if h == 0 || x.len() % h != 0 || l1.dims().last() != Some(&h) {
        return Err(msg("rms_norm: weight does not match the last dim"));
    }
    let mut y = vec![T::zero(); x.len()];
    let eps = T::from_f64(eps);
    let hn = T::from_f64(h as f64);
    par_chunks(&mut y, h, x.len() * 3, |r, out| {
        let xr = &x[r * h..(r + 1) * h];
        let mut ss = T::zero();
        for &v in xr {
            ss += v * v;
        }
        let denom = (ss / hn + eps).sqrt_();
        for ((o, &v), &wv) in out.iter_mut().zip(xr).zip(w) {
            *o = v / denom * wv;
        }
    });
    Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
}

/// `dL/dx` of RMSNorm (plus `residual`, when given: the gradient arriving at `x` along
/// the skip connection, added in the same pass) and, with `want_w`, `dL/dw`.
fn rms_bwd<T: Real>(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f64,
    want_w: bool,
    residual: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let (xv, wv, gv) = (View::of(x)?, View::of(w)?, View::of(g)?);
    let (xs, ws, gs) = (xv.slice::<T>()?, wv.slice::<T>()?, gv.slice::<T>()?);
    let rv = residual.map(View::of).transpose()?;
    let rs = match &rv {
        Some(v) => Some(v.slice::<T>()?),
        None => None,
    };
    if rs.is_some_and(|r| r.len() != xs.len()) {
        return Err(msg("rms_norm backward: residual does not match x"));
    }
    let h = ws.len();
    let rows = xs.len() / h.max(1);
    let eps = T::from_f64(eps);
    let hn = T::from_f64(h as f64);
    let mut dx = vec![T::zero(); xs.len()];
    par_chunks(&mut dx, h, xs.len() * 5, |r, out| {
        let xr = &xs[r * h..(r + 1) * h];
        let gr = &gs[r * h..(r + 1) * h];
        let mut ss = T::zero();
        for &v in xr {
            ss += v * v;
        }
        let inv = T::one() / (ss / hn + eps).sqrt_();
        // y = x·inv·w; dx = inv·(g∘w) − x·inv³·Σ(g∘w∘x)/h
        let mut dot = T::zero();
        for ((&gj, &wj), &xj) in gr.iter().zip(ws).zip(xr) {
            dot += gj * wj * xj;
        }
        let c = inv * inv * inv * dot / hn;
        for (((o, &gj), &wj), &xj) in out.iter_mut().zip(gr).zip(ws).zip(xr) {
            *o = inv * gj * wj - xj * c;
        }
        if let Some(rs) = rs {
            for (o, &rj) in out.iter_mut().zip(&rs[r * h..(r + 1) * h]) {
                *o += rj;
            }
        }
    });
    let dw = if want_w {
        let mut acc = vec![T::zero(); h];
        for r in 0..rows {
            let xr = &xs[r * h..(r + 1) * h];
            let gr = &gs[r * h..(r + 1) * h];
            let mut ss = T::zero();
            for &v in xr {
                ss += v * v;
            }
            let denom = (ss / hn + eps).sqrt_();
            for ((a, &gj), &xj) in acc.iter_mut().zip(gr).zip(xr) {
                *a += gj * (xj / denom);
            }
        }
        Some(tensor(acc, w.shape())?)
    } else {
        None
    };
    Ok((tensor(dx, x.shape())?, dw))
}

impl candle_core::CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch!(s1, rms_fwd(s1, l1, s2, l2, self.eps))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let (dx, dw) = dispatch_dtype!(x.dtype(), rms_bwd(x, w, &g, self.eps, w.track_op(), None))?;
        Ok((x.track_op().then_some(dx), dw))
    }
}

/// `residual + dL/dx` of [`rms_norm`] (a constant `w`) for the output gradient `g`,
/// outside the graph: the gradient reaching a residual-stream tensor that feeds both a
/// norm and the skip connection, in one pass.
pub(crate) fn rms_norm_backward_add(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f64,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (x, w, g) = (x.contiguous()?, w.contiguous()?, g.contiguous()?);
    let residual = residual.map(Tensor::contiguous).transpose()?;
    let r = residual.as_ref();
    Ok(dispatch_dtype!(x.dtype(), rms_bwd(&x, &w, &g, eps, false, r))?.0)
}

/// `(x + y, rms_norm(x + y, w))` in one pass, outside the graph: a residual add and the
/// norm that follows it.
pub(crate) fn add_rms_norm(
    x: &Tensor,
    y: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    if x.shape() != y.shape() {
        return Err(msg("add_rms_norm: shapes differ"));
    }
    let (x, y, w) = (x.contiguous()?, y.contiguous()?, w.contiguous()?);
    dispatch_dtype!(x.dtype(), add_rms_typed(&x, &y, &w, eps))
}

fn add_rms_typed<T: Real>(
    x: &Tensor,
    y: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    use rayon::prelude::*;
    let (xv, yv, wv) = (View::of(x)?, View::of(y)?, View::of(w)?);
    let (xs, ys, ws) = (xv.slice::<T>()?, yv.slice::<T>()?, wv.slice::<T>()?);
    let h = ws.len();
    if h == 0 || xs.len() % h != 0 || x.dims().last() != Some(&h) {
        return Err(msg("add_rms_norm: weight does not match the last dim"));
    }
    let (eps, hn) = (T::from_f64(eps), T::from_f64(h as f64));
    let mut sum = vec![T::zero(); xs.len()];
    let mut normed = vec![T::zero(); xs.len()];
    let row = |r: usize, sr: &mut [T], nr: &mut [T]| {
        let (xr, yr) = (&xs[r * h..(r + 1) * h], &ys[r * h..(r + 1) * h]);
        let mut ss = T::zero();
        for ((o, &a), &b) in sr.iter_mut().zip(xr).zip(yr) {
            *o = a + b;
            ss += *o * *o;
        }
        let denom = (ss / hn + eps).sqrt_();
        for ((o, &v), &wv) in nr.iter_mut().zip(sr.iter()).zip(ws) {
            *o = v / denom * wv;
        }
    };
    if rayon::current_num_threads() > 1 && xs.len() >= 32 * 1024 {
        sum.par_chunks_mut(h)
            .zip(normed.par_chunks_mut(h))
            .enumerate()
            .for_each(|(r, (sr, nr))| row(r, sr, nr));
    } else {
        for (r, (sr, nr)) in sum.chunks_mut(h).zip(normed.chunks_mut(h)).enumerate() {
            row(r, sr, nr);
        }
    }
    Ok((tensor(sum, x.shape())?, tensor(normed, x.shape())?))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{compare, rand};
    use super::*;
    use crate::engine::model::ops;
    use candle_core::{DType, Var};

    #[test]
    fn fused_rms_norm_matches_composed() {
        for dtype in [DType::F32, DType::F64] {
            // Enough rows to take the parallel path.
            let x = rand(&[3, 70, 200], 1, dtype);
            let w = rand(&[200], 2, dtype);
            compare(
                &[x, w],
                |t| rms_norm(&t[0], &t[1], 1e-5),
                |t| ops::rms_norm_composed(&t[0], &t[1], 1e-5),
                1e-5,
            );
        }
    }

    #[test]
    fn fused_ops_skip_gradients_of_constants() {
        let x = Var::from_tensor(&rand(&[4, 64], 9, DType::F32)).unwrap();
        let w = rand(&[64], 10, DType::F32);
        let y = rms_norm(x.as_tensor(), &w, 1e-5).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(x.as_tensor()).is_some());
        assert!(grads.get(&w).is_none());
    }
}
