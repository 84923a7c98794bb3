//! Causal grouped-query attention with RoPE as one graph node (or, for the hand-written
//! backward, a forward and a backward outside the graph): no `[b, heads, t, t]` mask, no
//! repeated KV heads, and the masked half of every score product skipped.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};

use super::cpu::{View, cpu_storage, detached, dispatch_dtype, matmul_views, msg, tensor};
use super::parallel::par_chunks;
use super::precomputed::{Grads3, Precomputed};
use super::real::Real;
use super::reduce::{lane_max, lane_sum};

type Prepared = (Tensor, Tensor, Tensor, CpuStorage, AttentionSaved);

/// Checks the attention inputs and runs the forward pass, keeping what the backward needs.
fn attention_prepare(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    (b, t): (usize, usize),
    (heads, kv_heads): (usize, usize),
) -> Result<Prepared> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
    let qw = q.dims().last().copied().unwrap_or(0);
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || !qw.is_multiple_of(heads) {
        return Err(msg("attention: bad head counts"));
    }
    let d = qw / heads;
    if q.elem_count() != b * t * qw
        || k.elem_count() != b * t * kv_heads * d
        || v.elem_count() != b * t * kv_heads * d
        || k.dims().last() != Some(&(kv_heads * d))
    {
        return Err(msg("attention: q/k/v shapes do not match"));
    }
    if cos.dims2()? != (t, d) || sin.dims2()? != (t, d) || !d.is_multiple_of(2) {
        return Err(msg("attention: rope tables do not match"));
    }
    let dims = AttnDims {
        b,
        t,
        heads,
        kv_heads,
        d,
    };
    let (out, saved) = dispatch_dtype!(q.dtype(), attn_fwd(&q, &k, &v, &cos, &sin, dims))?;
    Ok((q, k, v, out, saved))
}

/// Causal grouped-query attention with RoPE, as one node: `q` `[b·t, heads·d]`, `k`, `v`
/// `[b·t, kv_heads·d]` straight from the projections (or the same as `[b, t, ·]`); `cos`,
/// `sin` `[t, d]` (HF layout); returns `q`'s shape, ready for `o_proj`. Equals
/// `softmax(rope(q)·rope(k)ᵀ/√d + causal) · v` with KV heads repeated.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    bt: (usize, usize),
    heads: (usize, usize),
) -> Result<Tensor> {
    let (q, k, v, out, saved) = attention_prepare(q, k, v, cos, sin, bt, heads)?;
    let bwd = move |q: &Tensor, k: &Tensor, v: &Tensor, g: &Tensor| {
        let g = g.contiguous()?;
        let want = [q.track_op(), k.track_op(), v.track_op()];
        let shapes = [q.shape(), k.shape(), v.shape()];
        dispatch_dtype!(q.dtype(), attn_bwd(&saved, &g, want, shapes))
    };
    let shape = q.shape().clone();
    q.apply_op3(
        &k,
        &v,
        Precomputed::ternary("fused-causal-attention", out, shape, bwd),
    )
}

/// [`causal_attention`] outside candle's graph: the output `[b·t, heads·d]` and what the
/// backward needs, for hand-written backward passes.
pub(crate) fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    bt: (usize, usize),
    heads: (usize, usize),
) -> Result<(Tensor, AttentionSaved)> {
    let (q, _, _, out, saved) = attention_prepare(q, k, v, cos, sin, bt, heads)?;
    Ok((detached(out, q.shape()), saved))
}

/// `(dq, dk, dv)` for the output gradient `g` of an [`attention_forward`], in the shapes
/// of its inputs (`[b·t, ·]`).
pub(crate) fn attention_backward(
    saved: &AttentionSaved,
    g: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let g = g.contiguous()?;
    let AttnDims {
        b,
        t,
        heads,
        kv_heads,
        d,
    } = saved.dims;
    let (qs, kvs) = (
        Shape::from((b * t, heads * d)),
        Shape::from((b * t, kv_heads * d)),
    );
    let (dq, dk, dv) =
        dispatch_dtype!(g.dtype(), attn_bwd(saved, &g, [true; 3], [&qs, &kvs, &kvs]))?;
    match (dq, dk, dv) {
        (Some(dq), Some(dk), Some(dv)) => Ok((dq, dk, dv)),
        _ => Err(msg("attention: backward skipped a wanted gradient")),
    }
}

#[derive(Debug, Clone, Copy)]
struct AttnDims {
    b: usize,
    t: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
}

/// What [`attention_backward`] needs from an [`attention_forward`].
pub(crate) struct AttentionSaved {
    dims: AttnDims,
    /// RoPE'd queries `[b·kv, rep·t, d]`, keys `[b·kv, t, d]`, values `[b·kv, t, d]`.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Attention probabilities `[b·kv, rep·t, t]` (zero above the diagonal).
    p: Tensor,
    cos: Tensor,
    sin: Tensor,
}

/// `[b, t, n·d]` → `[b, n, t, d]`, rotated by RoPE when given the `[t, d]` tables.
fn split_heads<T: Real>(
    x: &[T],
    rope: Option<(&[T], &[T])>,
    b: usize,
    t: usize,
    n: usize,
    d: usize,
) -> Vec<T> {
    let _ = b;
    let mut out = vec![T::zero(); x.len()];
    let half = d / 2;
    par_chunks(&mut out, t * d, x.len() * 2, |bh, dst| {
        let (bi, hi) = (bh / n, bh % n);
        for ti in 0..t {
            let src = &x[(bi * t + ti) * n * d + hi * d..][..d];
            let o = &mut dst[ti * d..(ti + 1) * d];
            match rope {
                None => o.copy_from_slice(src),
                Some((cos, sin)) => {
                    let (c, s) = (&cos[ti * d..(ti + 1) * d], &sin[ti * d..(ti + 1) * d]);
                    for i in 0..half {
                        o[i] = src[i] * c[i] + (T::zero() - src[i + half]) * s[i];
                        let j = i + half;
                        o[j] = src[j] * c[j] + src[i] * s[j];
                    }
                }
            }
        }
    });
    out
}

/// Inverse of [`split_heads`]: `[b, n, t, d]` → `[b, t, n·d]`, applying the transpose of
/// the RoPE rotation (the gradient of the forward rotation) when given tables.
fn merge_heads<T: Real>(
    x: &[T],
    rope: Option<(&[T], &[T])>,
    b: usize,
    t: usize,
    n: usize,
    d: usize,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    let half = d / 2;
    let _ = b;
    par_chunks(&mut out, n * d, x.len() * 2, |bt, dst| {
        let (bi, ti) = (bt / t, bt % t);
        for hi in 0..n {
            let src = &x[((bi * n + hi) * t + ti) * d..][..d];
            let o = &mut dst[hi * d..(hi + 1) * d];
            match rope {
                None => o.copy_from_slice(src),
                Some((cos, sin)) => {
                    let (c, s) = (&cos[ti * d..(ti + 1) * d], &sin[ti * d..(ti + 1) * d]);
                    for i in 0..half {
                        let j = i + half;
                        o[i] = src[i] * c[i] + src[j] * s[j];
                        o[j] = src[j] * c[j] - src[i] * s[i];
                    }
                }
            }
        }
    });
    out
}

/// Query rows per block of the causal attention. A block of rows `[i0, i1)` only sees keys
/// `[0, i1)`, so its score and value products skip the masked part above the diagonal
/// (about 3/8 of the work at four blocks per sequence).
const ATTN_BLOCK: usize = 32;

/// `[m, k]` block at `offset` of a row-major matrix with row stride `stride`.
fn block(m: usize, k: usize, stride: usize, offset: usize) -> Layout {
    Layout::new(Shape::from((m, k)), vec![stride, 1], offset)
}

/// `acc += src` elementwise.
fn add_into<T: Real>(acc: &mut [T], src: &[T]) {
    for (a, &x) in acc.iter_mut().zip(src) {
        *a += x;
    }
}

fn attn_fwd<T: Real>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    dims: AttnDims,
) -> Result<(CpuStorage, AttentionSaved)> {
    use rayon::prelude::*;
    let AttnDims {
        b,
        t,
        heads,
        kv_heads,
        d,
    } = dims;
    let rep = heads / kv_heads;
    let (cv, sv) = (View::of(cos)?, View::of(sin)?);
    let rope = Some((cv.slice::<T>()?, sv.slice::<T>()?));
    let (qs, ks, vs) = {
        let (qv, kv, vv) = (View::of(q)?, View::of(k)?, View::of(v)?);
        (
            split_heads(qv.slice::<T>()?, rope, b, t, heads, d),
            split_heads(kv.slice::<T>()?, rope, b, t, kv_heads, d),
            split_heads(vv.slice::<T>()?, None, b, t, kv_heads, d),
        )
    };
    let qt = tensor(qs, (b * kv_heads, rep * t, d))?;
    let kt = tensor(ks, (b * kv_heads, t, d))?;
    let vt = tensor(vs, (b * kv_heads, t, d))?;
    let scale = T::from_f64(1.0 / (d as f64).sqrt());
    let rt = rep * t;
    let mut p = vec![T::zero(); b * heads * t * t];
    let mut o = vec![T::zero(); b * heads * t * d];
    {
        let (qg, _) = qt.storage_and_layout();
        let (kg, _) = kt.storage_and_layout();
        let (vg, _) = vt.storage_and_layout();
        let (qst, kst, vst) = (cpu_storage(&qg)?, cpu_storage(&kg)?, cpu_storage(&vg)?);
        // One task per KV group (its `rep` query heads share keys and values).
        o.par_chunks_mut(rt * d)
            .zip(p.par_chunks_mut(rt * t))
            .enumerate()
            .try_for_each(|(g, (oc, pc))| -> Result<()> {
                for h in 0..rep {
                    for i0 in (0..t).step_by(ATTN_BLOCK) {
                        let (i1, row0) = ((i0 + ATTN_BLOCK).min(t), h * t + i0);
                        let bl = i1 - i0;
                        let ql = block(bl, d, d, (g * rt + row0) * d);
                        let kl = block(i1, d, d, g * t * d).transpose(0, 1)?;
                        let s = matmul_views(qst, &ql, kst, &kl, (bl, i1, d))?;
                        let mut s = T::cpu_storage_data(s)?;
                        for (r, row) in s.chunks_mut(i1).enumerate() {
                            let (live, masked) = row.split_at_mut(i0 + r + 1);
                            let m = lane_max(live) * scale;
                            for x in live.iter_mut() {
                                *x = *x * scale - m;
                            }
                            T::exp_in_place(live);
                            let inv = T::one() / lane_sum(live);
                            for x in live.iter_mut() {
                                *x *= inv;
                            }
                            masked.fill(T::zero());
                            pc[(row0 + r) * t..][..i1].copy_from_slice(row);
                        }
                        let ps = T::to_cpu_storage_owned(s);
                        let vl = block(i1, d, d, g * t * d);
                        let y = matmul_views(&ps, &block(bl, i1, i1, 0), vst, &vl, (bl, d, i1))?;
                        oc[row0 * d..][..bl * d].copy_from_slice(T::cpu_storage_as_slice(&y)?);
                    }
                }
                Ok(())
            })?;
    }
    let pt = tensor(p, (b * kv_heads, rt, t))?;
    let out = merge_heads(&o, None, b, t, heads, d);
    let saved = AttentionSaved {
        dims,
        q: qt,
        k: kt,
        v: vt,
        p: pt,
        cos: cos.clone(),
        sin: sin.clone(),
    };
    Ok((T::to_cpu_storage_owned(out), saved))
}

fn attn_bwd<T: Real>(
    op: &AttentionSaved,
    g: &Tensor,
    want: [bool; 3],
    shapes: [&Shape; 3],
) -> Result<Grads3> {
    use rayon::prelude::*;
    let AttnDims {
        b,
        t,
        heads,
        kv_heads,
        d,
    } = op.dims;
    let rep = heads / kv_heads;
    let rt = rep * t;
    let d_o = {
        let gv = View::of(g)?;
        T::to_cpu_storage_owned(split_heads(gv.slice::<T>()?, None, b, t, heads, d))
    };
    let scale = T::from_f64(1.0 / (d as f64).sqrt());
    let groups = b * kv_heads;
    let mut dq = vec![T::zero(); groups * rt * d];
    let mut dk = vec![T::zero(); groups * t * d];
    let mut dv = vec![T::zero(); groups * t * d];
    {
        let (qg, _) = op.q.storage_and_layout();
        let (kg, _) = op.k.storage_and_layout();
        let (vg, _) = op.v.storage_and_layout();
        let (pg, _) = op.p.storage_and_layout();
        let (qst, kst) = (cpu_storage(&qg)?, cpu_storage(&kg)?);
        let (vst, pst) = (cpu_storage(&vg)?, cpu_storage(&pg)?);
        let ps = T::cpu_storage_as_slice(pst)?;
        dq.par_chunks_mut(rt * d)
            .zip(dk.par_chunks_mut(t * d))
            .zip(dv.par_chunks_mut(t * d))
            .enumerate()
            .try_for_each(|(gi, ((dqc, dkc), dvc))| -> Result<()> {
                for h in 0..rep {
                    for i0 in (0..t).step_by(ATTN_BLOCK) {
                        let (i1, row0) = ((i0 + ATTN_BLOCK).min(t), h * t + i0);
                        let bl = i1 - i0;
                        let p_off = (gi * rt + row0) * t;
                        let dol = block(bl, d, d, (gi * rt + row0) * d);
                        // dV[0..i1] += P_blockᵀ · dO_block
                        let pl_t = block(bl, i1, t, p_off).transpose(0, 1)?;
                        let dvb = matmul_views(pst, &pl_t, &d_o, &dol, (i1, d, bl))?;
                        add_into(&mut dvc[..i1 * d], T::cpu_storage_as_slice(&dvb)?);
                        // dP = dO_block · V[0..i1]ᵀ, then dS = P ∘ (dP − rowsum(P ∘ dP)) · scale
                        let vl_t = block(i1, d, d, gi * t * d).transpose(0, 1)?;
                        let dp = matmul_views(&d_o, &dol, vst, &vl_t, (bl, i1, d))?;
                        let mut ds = T::cpu_storage_data(dp)?;
                        for (r, row) in ds.chunks_mut(i1).enumerate() {
                            let n = i0 + r + 1;
                            let pr = &ps[p_off + r * t..][..n];
                            let mut dot = T::zero();
                            for (&pj, &gj) in pr.iter().zip(row.iter()) {
                                dot += pj * gj;
                            }
                            let (live, masked) = row.split_at_mut(n);
                            for (x, &pj) in live.iter_mut().zip(pr) {
                                *x = pj * (*x - dot) * scale;
                            }
                            masked.fill(T::zero());
                        }
                        let dss = T::to_cpu_storage_owned(ds);
                        let dsl = block(bl, i1, i1, 0);
                        // dQ_block = dS · K[0..i1]; dK[0..i1] += dSᵀ · Q_block
                        let kl = block(i1, d, d, gi * t * d);
                        let dqb = matmul_views(&dss, &dsl, kst, &kl, (bl, d, i1))?;
                        dqc[row0 * d..][..bl * d].copy_from_slice(T::cpu_storage_as_slice(&dqb)?);
                        let ql = block(bl, d, d, (gi * rt + row0) * d);
                        let dkb = matmul_views(&dss, &dsl.transpose(0, 1)?, qst, &ql, (i1, d, bl))?;
                        add_into(&mut dkc[..i1 * d], T::cpu_storage_as_slice(&dkb)?);
                    }
                }
                Ok(())
            })?;
    }
    let (cv, sv) = (View::of(&op.cos)?, View::of(&op.sin)?);
    let rope = Some((cv.slice::<T>()?, sv.slice::<T>()?));
    let dq = want[0]
        .then(|| tensor(merge_heads(&dq, rope, b, t, heads, d), shapes[0]))
        .transpose()?;
    let dk = want[1]
        .then(|| tensor(merge_heads(&dk, rope, b, t, kv_heads, d), shapes[1]))
        .transpose()?;
    let dv = want[2]
        .then(|| tensor(merge_heads(&dv, None, b, t, kv_heads, d), shapes[2]))
        .transpose()?;
    Ok((dq, dk, dv))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{compare, rand};
    use super::*;
    use crate::engine::model::ops;
    use candle_core::{D, DType, Device};

    /// The composed attention of `Llama` (before fusion): RoPE, repeat_kv, additive causal
    /// mask, `ops::softmax`.
    fn composed_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rope: &ops::Rope,
        heads: usize,
        kv: usize,
    ) -> Result<Tensor> {
        let (b, t, qw) = q.dims3()?;
        let d = qw / heads;
        let split = |y: &Tensor, n: usize| y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous();
        let q = rope.apply(&split(q, heads)?)?;
        let k = rope.apply(&split(k, kv)?)?;
        let v = split(v, kv)?;
        let k = ops::repeat_kv(k, heads / kv)?.contiguous()?;
        let v = ops::repeat_kv(v, heads / kv)?.contiguous()?;
        let mask = ops::causal_mask(t, q.dtype(), q.device())?;
        let s = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(&mask)?;
        let p = candle_nn::ops::softmax(&s, D::Minus1)?;
        p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, heads * d))
    }

    #[test]
    fn fused_attention_matches_composed() {
        for dtype in [DType::F32, DType::F64] {
            for (heads, kv) in [(4, 2), (3, 3), (6, 1)] {
                // Three causal blocks, the last one ragged.
                let (b, t, d) = (2, 2 * ATTN_BLOCK + 7, 16);
                let inv: Vec<f64> = (0..d / 2)
                    .map(|i| 1.0 / 10_000f64.powf(2.0 * i as f64 / d as f64))
                    .collect();
                let rope = ops::Rope::new(&inv, t, dtype, &Device::Cpu).unwrap();
                let (cos, sin) = rope.tables(t).unwrap();
                let q = rand(&[b, t, heads * d], 6, dtype);
                let k = rand(&[b, t, kv * d], 7, dtype);
                let v = rand(&[b, t, kv * d], 8, dtype);
                compare(
                    &[q, k, v],
                    |x| causal_attention(&x[0], &x[1], &x[2], &cos, &sin, (b, t), (heads, kv)),
                    |x| composed_attention(&x[0], &x[1], &x[2], &rope, heads, kv),
                    1e-5,
                );
            }
        }
    }
}
