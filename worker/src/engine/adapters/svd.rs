//! Truncated SVD for PiSSA init (candle has no SVD): seeded subspace iteration on `WᵀW`
//! followed by a Jacobi eigen-decomposition of the small projected matrix, in f64.

use rand::Rng;

use crate::engine::rng;
use crate::engine::rng::normal;

/// Top-`k` singular triplets of a row-major `m × n` matrix.
#[derive(Debug, Clone)]
pub struct Truncated {
    /// `m × k`, row-major.
    pub u: Vec<f64>,
    pub s: Vec<f64>,
    /// `k × n`, row-major (rows are right singular vectors).
    pub vt: Vec<f64>,
}

/// Subspace iterations; each multiplies the gap between wanted and unwanted singular
/// values, so a handful (plus oversampling) is plenty for init purposes.
const ITERS: usize = 8;
const OVERSAMPLE: usize = 8;

pub fn truncated(w: &[f64], m: usize, n: usize, k: usize, seed: u64) -> Truncated {
    let k = k.min(m).min(n);
    let p = (k + OVERSAMPLE).min(m).min(n);
    let mut g = rng::stream(seed, "svd");
    // Q: n × p, random then orthonormalised.
    let mut q: Vec<f64> = (0..n * p)
        .map(|_| normal(&mut g) + 1e-3 * g.random::<f64>())
        .collect();
    orthonormalize(&mut q, n, p);
    for _ in 0..ITERS {
        let y = matmul(w, &q, m, n, p); // m × p
        let mut z = matmul_tn(w, &y, m, n, p); // n × p
        orthonormalize(&mut z, n, p);
        q = z;
    }
    // B = W Q (m × p); BᵀB = E Λ Eᵀ gives σ² and rotations within span(Q).
    let b = matmul(w, &q, m, n, p);
    let btb = matmul_tn(&b, &b, m, p, p);
    let (evals, evecs) = jacobi_eigen(btb, p);
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|&i, &j| evals[j].total_cmp(&evals[i]));
    let mut u = vec![0.0; m * k];
    let mut s = vec![0.0; k];
    let mut vt = vec![0.0; k * n];
    for (col, &e) in order.iter().take(k).enumerate() {
        let sigma = evals[e].max(0.0).sqrt();
        s[col] = sigma;
        // v = Q e_col (n), u = B e_col / σ (m).
        for row in 0..n {
            vt[col * n + row] = (0..p).map(|t| q[row * p + t] * evecs[t * p + e]).sum();
        }
        for row in 0..m {
            let val: f64 = (0..p).map(|t| b[row * p + t] * evecs[t * p + e]).sum();
            u[row * k + col] = if sigma > 0.0 { val / sigma } else { 0.0 };
        }
    }
    Truncated { u, s, vt }
}

/// `a (m×n) · b (n×p)`.
pub(crate) fn matmul(a: &[f64], b: &[f64], m: usize, n: usize, p: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * p];
    for i in 0..m {
        for t in 0..n {
            let x = a[i * n + t];
            for j in 0..p {
                out[i * p + j] += x * b[t * p + j];
            }
        }
    }
    out
}

/// `aᵀ (n×m) · b (m×p)` for `a` stored `m × n`.
pub(crate) fn matmul_tn(a: &[f64], b: &[f64], m: usize, n: usize, p: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * p];
    for t in 0..m {
        for i in 0..n {
            let x = a[t * n + i];
            for j in 0..p {
                out[i * p + j] += x * b[t * p + j];
            }
        }
    }
    out
}

/// Modified Gram–Schmidt on the columns of a row-major `rows × cols` matrix, run twice per
/// column ("twice is enough") so orthogonality holds to rounding. A column that loses all but
/// 1e-13 of its norm lies in the span of the earlier ones (a rank-deficient matrix, such as a
/// sum of LoRA deltas): it becomes zero instead of normalised rounding noise, which would
/// not be orthogonal and would spoil the singular values.
pub(crate) fn orthonormalize(q: &mut [f64], rows: usize, cols: usize) {
    let norm = |q: &[f64], j: usize| {
        (0..rows)
            .map(|i| q[i * cols + j].powi(2))
            .sum::<f64>()
            .sqrt()
    };
    for j in 0..cols {
        let before = norm(q, j);
        for _pass in 0..2 {
            for prev in 0..j {
                let dot: f64 = (0..rows)
                    .map(|i| q[i * cols + j] * q[i * cols + prev])
                    .sum();
                for i in 0..rows {
                    q[i * cols + j] -= dot * q[i * cols + prev];
                }
            }
        }
        let after = norm(q, j);
        let keep = after > 1e-300 && after > 1e-13 * before;
        for i in 0..rows {
            q[i * cols + j] = if keep { q[i * cols + j] / after } else { 0.0 };
        }
    }
}

/// Cyclic Jacobi for a symmetric `n × n` matrix: (eigenvalues, eigenvectors as columns).
fn jacobi_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_planted_low_rank_matrix() {
        // W = 5·u1 v1ᵀ + 2·u2 v2ᵀ + tiny noise, 12 × 9.
        let (m, n) = (12, 9);
        let mut g = rng::stream(1, "t");
        let mut u1: Vec<f64> = (0..m).map(|_| normal(&mut g)).collect();
        let mut u2: Vec<f64> = (0..m).map(|_| normal(&mut g)).collect();
        let mut v1: Vec<f64> = (0..n).map(|_| normal(&mut g)).collect();
        let mut v2: Vec<f64> = (0..n).map(|_| normal(&mut g)).collect();
        for x in [&mut u1, &mut u2, &mut v1, &mut v2] {
            let nrm = x.iter().map(|a| a * a).sum::<f64>().sqrt();
            x.iter_mut().for_each(|a| *a /= nrm);
        }
        let w: Vec<f64> = (0..m * n)
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                5.0 * u1[i] * v1[j] + 2.0 * u2[i] * v2[j] + 1e-6 * normal(&mut g)
            })
            .collect();
        let t = truncated(&w, m, n, 2, 3);
        // Reconstruction from the top-2 triplets matches W closely.
        let mut err = 0.0f64;
        for i in 0..m {
            for j in 0..n {
                let r: f64 = (0..2)
                    .map(|c| t.u[i * 2 + c] * t.s[c] * t.vt[c * n + j])
                    .sum();
                err = err.max((r - w[i * n + j]).abs());
            }
        }
        assert!(err < 1e-4, "max reconstruction error {err}");
        assert!(t.s[0] >= t.s[1]);
    }
}
