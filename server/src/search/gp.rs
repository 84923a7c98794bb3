//! Exact Gaussian-process posteriors with fixed kernels, as CARBS uses them (docs/search-notes.md §1.7):
//! pyro's 1000 Adam steps at lr 1e-4 barely move the hyperparameters, so we keep them fixed and
//! only need a Cholesky solve. Hand-rolled: n stays in the hundreds, and no crate exposes the
//! Linear + Matérn-3/2 sum with sequential Thompson draws.

use rand::Rng;

use super::rng::normal;

/// Jitter pyro adds to the diagonal on top of the noise.
pub const JITTER: f64 = 1e-4;

/// Covariance functions.
#[derive(Debug, Clone, PartialEq)]
pub enum Kernel {
    /// `lin_var · x·x' + m_var · (1 + √3 r) e^{−√3 r}` with ARD length scales
    /// (CARBS output, cost and success GPs; the linear part is not centred, as in CARBS).
    LinearMatern32 {
        lin_var: f64,
        matern_var: f64,
        lengthscales: Vec<f64>,
    },
    /// `var · exp(−r²/2)` (CARBS's 1-D Pareto GP).
    Rbf { var: f64, lengthscale: f64 },
}

impl Kernel {
    /// CARBS's kernel for `dims` inputs with every length scale equal to the search radius.
    pub fn carbs(dims: usize, radius: f64) -> Self {
        Kernel::LinearMatern32 {
            lin_var: 1.0,
            matern_var: 1.0,
            lengthscales: vec![radius; dims],
        }
    }

    pub fn eval(&self, a: &[f64], b: &[f64]) -> f64 {
        match self {
            Kernel::LinearMatern32 {
                lin_var,
                matern_var,
                lengthscales,
            } => {
                let mut dot = 0.0;
                let mut r2 = 0.0;
                for ((x, y), l) in a.iter().zip(b).zip(lengthscales) {
                    dot += x * y;
                    let d = (x - y) / l;
                    r2 += d * d;
                }
                let s = 3f64.sqrt() * r2.sqrt();
                lin_var * dot + matern_var * (1.0 + s) * (-s).exp()
            }
            Kernel::Rbf { var, lengthscale } => {
                let r2: f64 = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| ((x - y) / lengthscale).powi(2))
                    .sum();
                var * (-0.5 * r2).exp()
            }
        }
    }
}

/// Numerical failure of a GP solve.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GpError {
    #[error("covariance matrix is not positive definite")]
    NotPositiveDefinite,
    #[error("no training points")]
    Empty,
}

/// In-place lower Cholesky factor of the row-major `n × n` matrix `a` (upper part zeroed).
pub fn cholesky(a: &mut [f64], n: usize) -> Result<(), GpError> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if !(d > 0.0 && d.is_finite()) {
            return Err(GpError::NotPositiveDefinite);
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
        for k in j + 1..n {
            a[j * n + k] = 0.0;
        }
    }
    Ok(())
}

/// Solve `L x = b` in place.
fn solve_lower(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

/// Solve `Lᵀ x = b` in place.
fn solve_upper_t(l: &[f64], n: usize, b: &mut [f64]) {
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

/// A fitted zero-mean GP: `K = k(X, X) + (noise + jitter) I`, `α = K⁻¹ y`.
#[derive(Debug, Clone)]
pub struct Gp {
    kernel: Kernel,
    x: Vec<Vec<f64>>,
    chol: Vec<f64>,
    alpha: Vec<f64>,
}

impl Gp {
    /// Fit on `(x, y)`; retries with 10× and 100× jitter before giving up.
    pub fn fit(kernel: Kernel, x: Vec<Vec<f64>>, y: &[f64], noise: f64) -> Result<Self, GpError> {
        let n = x.len();
        if n == 0 {
            return Err(GpError::Empty);
        }
        let mut last = GpError::NotPositiveDefinite;
        for extra in [1.0, 10.0, 100.0] {
            let mut k = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..=i {
                    let v = kernel.eval(&x[i], &x[j]);
                    k[i * n + j] = v;
                    k[j * n + i] = v;
                }
                k[i * n + i] += noise + JITTER * extra;
            }
            match cholesky(&mut k, n) {
                Ok(()) => {
                    let mut alpha = y.to_vec();
                    solve_lower(&k, n, &mut alpha);
                    solve_upper_t(&k, n, &mut alpha);
                    return Ok(Self {
                        kernel,
                        x,
                        chol: k,
                        alpha,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub fn len(&self) -> usize {
        self.x.len()
    }

    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    /// Training inputs, in fit order.
    pub fn inputs(&self) -> &[Vec<f64>] {
        &self.x
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Posterior mean from precomputed cross-covariances `k(X, x)` (O(n)).
    pub fn mean_from(&self, k: &[f64]) -> f64 {
        k.iter().zip(&self.alpha).map(|(a, b)| a * b).sum()
    }

    /// Posterior means and latent variances for many points at once, from their
    /// cross-covariances `ks[j] = k(X, x_j)` and prior variances `kxx[j] = k(x_j, x_j)`.
    /// Same arithmetic as [`Gp::predict`], with the triangular solve batched over points so
    /// its inner loop runs across points (vectorisable).
    pub fn predict_many(&self, ks: &[Vec<f64>], kxx: &[f64]) -> Vec<(f64, f64)> {
        let n = self.x.len();
        let m = ks.len();
        let mut out = Vec::with_capacity(m);
        const BLOCK: usize = 64;
        let mut v = vec![0.0; n * BLOCK];
        for start in (0..m).step_by(BLOCK) {
            let b = BLOCK.min(m - start);
            for i in 0..n {
                for j in 0..b {
                    v[i * BLOCK + j] = ks[start + j][i];
                }
            }
            for i in 0..n {
                let (done, rest) = v.split_at_mut(i * BLOCK);
                let row = &mut rest[..BLOCK];
                for k in 0..i {
                    let l = self.chol[i * n + k];
                    let src = &done[k * BLOCK..k * BLOCK + BLOCK];
                    for j in 0..b {
                        row[j] -= l * src[j];
                    }
                }
                let d = self.chol[i * n + i];
                for r in row.iter_mut().take(b) {
                    *r /= d;
                }
            }
            let mut quad = [0.0; BLOCK];
            for i in 0..n {
                let row = &v[i * BLOCK..i * BLOCK + BLOCK];
                for j in 0..b {
                    quad[j] += row[j] * row[j];
                }
            }
            for j in 0..b {
                let mean = self.mean_from(&ks[start + j]);
                out.push((mean, (kxx[start + j] - quad[j]).max(1e-12)));
            }
        }
        out
    }

    /// Posterior mean only (no triangular solve: O(n)).
    pub fn mean(&self, x: &[f64]) -> f64 {
        self.x
            .iter()
            .zip(&self.alpha)
            .map(|(xi, a)| self.kernel.eval(xi, x) * a)
            .sum()
    }

    /// Posterior mean and latent variance (noise excluded, pyro's `noiseless=True`) at `x`.
    pub fn predict(&self, x: &[f64]) -> (f64, f64) {
        let n = self.x.len();
        let mut v: Vec<f64> = self.x.iter().map(|xi| self.kernel.eval(xi, x)).collect();
        let mean = v.iter().zip(&self.alpha).map(|(a, b)| a * b).sum();
        solve_lower(&self.chol, n, &mut v);
        let var = self.kernel.eval(x, x) - v.iter().map(|a| a * a).sum::<f64>();
        (mean, var.max(1e-12))
    }

    /// One joint posterior draw at `points`: identical in law to pyro's sequential draws that
    /// condition each sample on the previous ones.
    pub fn sample_joint<R: Rng + ?Sized>(&self, points: &[Vec<f64>], rng: &mut R) -> Vec<f64> {
        let n = self.x.len();
        let m = points.len();
        let mut means = Vec::with_capacity(m);
        let mut vs = Vec::with_capacity(m);
        for p in points {
            let mut v: Vec<f64> = self.x.iter().map(|xi| self.kernel.eval(xi, p)).collect();
            means.push(v.iter().zip(&self.alpha).map(|(a, b)| a * b).sum::<f64>());
            solve_lower(&self.chol, n, &mut v);
            vs.push(v);
        }
        let mut cov = vec![0.0; m * m];
        for i in 0..m {
            for j in 0..=i {
                let c = self.kernel.eval(&points[i], &points[j])
                    - vs[i].iter().zip(&vs[j]).map(|(a, b)| a * b).sum::<f64>();
                cov[i * m + j] = c;
                cov[j * m + i] = c;
            }
        }
        let z: Vec<f64> = (0..m).map(|_| normal(rng)).collect();
        for jitter in [1e-8, 1e-6, 1e-4, 1e-2] {
            let mut c = cov.clone();
            for i in 0..m {
                c[i * m + i] += jitter;
            }
            if cholesky(&mut c, m).is_ok() {
                return (0..m)
                    .map(|i| means[i] + (0..=i).map(|k| c[i * m + k] * z[k]).sum::<f64>())
                    .collect();
            }
        }
        // Degenerate covariance: fall back to independent marginal draws.
        (0..m)
            .map(|i| means[i] + cov[i * m + i].max(0.0).sqrt() * z[i])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_range_loop)] // index arithmetic is the point of the adjugate
    fn inv3(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
        let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
        let mut r = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                let (a, b) = ((j + 1) % 3, (j + 2) % 3);
                let (c, d) = ((i + 1) % 3, (i + 2) % 3);
                r[i][j] = (m[a][c] * m[b][d] - m[a][d] * m[b][c]) / det;
            }
        }
        r
    }

    #[test]
    fn posterior_matches_hand_computed_three_points() {
        // RBF(var 1, ℓ 1) on x = 0, 1, 2 with y = 1, 0, -1 and noise 0.1 (+ 1e-4 jitter).
        // Hand computation: e^{-1/2} = 0.60653, e^{-2} = 0.13534, e^{-1/8} = 0.88250,
        // e^{-9/8} = 0.32465; K = [[1.1001, .60653, .13534], [.60653, 1.1001, .60653],
        // [.13534, .60653, 1.1001]]; by symmetry (y odd around x = 1) α = [a, 0, −a] with
        // a = 1 / (1.1001 − 0.13534) = 1.036522, so μ(0.5) = a (0.88250 − 0.32465) = 0.578218.
        let kern = Kernel::Rbf {
            var: 1.0,
            lengthscale: 1.0,
        };
        let x = vec![vec![0.0], vec![1.0], vec![2.0]];
        let gp = Gp::fit(kern.clone(), x.clone(), &[1.0, 0.0, -1.0], 0.1).unwrap();
        let (mu, var) = gp.predict(&[0.5]);
        assert!((mu - 0.578_218).abs() < 1e-5, "mean {mu}");
        // Variance against an independent 3×3 inverse: k** − k*ᵀ K⁻¹ k*.
        let mut k = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                k[i][j] = kern.eval(&x[i], &x[j]) + if i == j { 0.1 + JITTER } else { 0.0 };
            }
        }
        let ki = inv3(k);
        let ks: Vec<f64> = x.iter().map(|xi| kern.eval(xi, &[0.5])).collect();
        let mut quad = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                quad += ks[i] * ki[i][j] * ks[j];
            }
        }
        assert!(
            (var - (1.0 - quad)).abs() < 1e-9,
            "var {var} vs {}",
            1.0 - quad
        );
        assert!((var - 0.082_453).abs() < 1e-5, "var {var}");
    }

    #[test]
    fn carbs_kernel_by_hand() {
        // x = 0.3, x' = 0.6, ℓ = 0.3: r = 1, so k = 0.18 + (1 + √3) e^{−√3} = 0.18 + 0.48333.
        let k = Kernel::carbs(1, 0.3).eval(&[0.3], &[0.6]);
        assert!((k - 0.663_33).abs() < 1e-4, "{k}");
    }

    #[test]
    fn joint_samples_respect_the_data() {
        let gp = Gp::fit(
            Kernel::carbs(1, 0.3),
            vec![vec![0.0], vec![1.0]],
            &[1.0, -1.0],
            1e-4,
        )
        .unwrap();
        let mut rng = crate::search::rng::rng_for(3, 0, 0);
        let s = gp.sample_joint(&[vec![0.0], vec![0.0001]], &mut rng);
        assert!(
            (s[0] - 1.0).abs() < 0.1 && (s[1] - s[0]).abs() < 0.05,
            "{s:?}"
        );
    }
}
