//! Merging fine-tuned deltas of one module (docs/design.md §4.9): average, Model Stock, task
//! arithmetic and TIES, then a truncated SVD that re-factors the merged delta as LoRA.
//!
//! Every rule is defined on the deltas `ΔW = s·B·A` of the sources (row-major `[out, in]`, in
//! f64), never on the factors: averaging LoRA factors is not averaging deltas (`mean(B)·mean(A)
//! ≠ mean(B·A)`). The linear rules (average, Model Stock, task arithmetic) still never form a
//! delta ([`merge_low_rank`]): `Σ cᵢ·BᵢAᵢ` is the product of the stacked factors, and Model
//! Stock's cosines come from `r × r` Gram products, so memory stays at the factors' size. TIES
//! works entry by entry and needs the dense deltas ([`merge`], [`refactor`]). Model Stock's
//! anchor is the base weight, whose delta is zero, so no base weight is read.

use super::adapters::svd::{self, matmul, matmul_tn, orthonormalize};

/// How the deltas of the sources are combined.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// `mean(Δᵢ)`.
    Average,
    /// `t · mean(Δᵢ)` with Model Stock's ratio `t` ([`model_stock_ratio`]).
    ModelStock,
    /// `Σ wᵢ Δᵢ`.
    TaskArithmetic { weights: Vec<f64> },
    /// TIES on `wᵢ Δᵢ`: keep each delta's `density` share of largest magnitudes, elect a sign
    /// per entry from the sum of the trimmed deltas, average the entries that agree with it.
    Ties { weights: Vec<f64>, density: f64 },
}

/// One module's merged delta.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// Row-major, the sources' shape.
    pub delta: Vec<f64>,
    /// Model Stock's ratio `t` for this module (`None` for the other rules).
    pub ratio: Option<f64>,
}

/// Merges the deltas of one module (all of the same length; at least one).
pub fn merge(rule: &Rule, deltas: &[Vec<f64>]) -> Merged {
    let len = deltas.first().map_or(0, Vec::len);
    let k = deltas.len().max(1) as f64;
    let weighted = |weights: &[f64]| -> Vec<Vec<f64>> {
        deltas
            .iter()
            .zip(weights.iter().chain(std::iter::repeat(&1.0)))
            .map(|(d, w)| d.iter().map(|x| x * w).collect())
            .collect()
    };
    match rule {
        Rule::Average => Merged {
            delta: mean(deltas, len, k),
            ratio: None,
        },
        Rule::ModelStock => {
            let t = model_stock_ratio(deltas);
            let delta = mean(deltas, len, k).into_iter().map(|x| t * x).collect();
            Merged {
                delta,
                ratio: Some(t),
            }
        }
        Rule::TaskArithmetic { weights } => {
            let mut delta = vec![0.0; len];
            for d in weighted(weights) {
                for (acc, x) in delta.iter_mut().zip(d) {
                    *acc += x;
                }
            }
            Merged { delta, ratio: None }
        }
        Rule::Ties { weights, density } => Merged {
            delta: ties(&weighted(weights), *density),
            ratio: None,
        },
    }
}

fn mean(deltas: &[Vec<f64>], len: usize, k: f64) -> Vec<f64> {
    let mut out = vec![0.0; len];
    for d in deltas {
        for (acc, x) in out.iter_mut().zip(d) {
            *acc += x / k;
        }
    }
    out
}

/// Model Stock's interpolation ratio (Jang et al. 2024, eq. 3) for `k` fine-tuned deltas from
/// the same anchor: `t = k·cos θ / (1 + (k − 1)·cos θ)`, with `cos θ` the mean cosine over
/// pairs of deltas (the paper assumes one angle between every pair and measures it so). A
/// zero delta has cosine 0 with anything. `t` is clamped to `[0, 1]`: a negative mean cosine
/// (deltas that undo each other) leaves the anchor.
pub fn model_stock_ratio(deltas: &[Vec<f64>]) -> f64 {
    ratio_from_gram(&|i, j| dot(&deltas[i], &deltas[j]), deltas.len())
}

/// Model Stock's ratio from the Frobenius inner products `gram(i, j)` of `k` deltas.
fn ratio_from_gram(gram: &dyn Fn(usize, usize) -> f64, k: usize) -> f64 {
    if k < 2 {
        return 1.0;
    }
    let norms: Vec<f64> = (0..k).map(|i| gram(i, i).max(0.0).sqrt()).collect();
    let mut sum = 0.0;
    let mut pairs = 0.0;
    for i in 0..k {
        for j in i + 1..k {
            let denom = norms[i] * norms[j];
            sum += if denom > 0.0 { gram(i, j) / denom } else { 0.0 };
            pairs += 1.0;
        }
    }
    let cos = sum / pairs;
    let k = k as f64;
    let t = k * cos / (1.0 + (k - 1.0) * cos);
    if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// TIES-merging (Yadav et al. 2023, Algorithm 1) of already weighted deltas.
pub fn ties(deltas: &[Vec<f64>], density: f64) -> Vec<f64> {
    let len = deltas.first().map_or(0, Vec::len);
    let trimmed: Vec<Vec<f64>> = deltas.iter().map(|d| trim(d, density)).collect();
    let mut out = vec![0.0; len];
    for (p, o) in out.iter_mut().enumerate() {
        let sign = trimmed.iter().map(|d| d[p]).sum::<f64>().signum();
        let (mut sum, mut n) = (0.0, 0.0);
        for d in &trimmed {
            let x = d[p];
            if x != 0.0 && x.signum() == sign {
                sum += x;
                n += 1.0;
            }
        }
        *o = if n > 0.0 { sum / n } else { 0.0 };
    }
    out
}

/// `d` with all but its `ceil(density·len)` largest-magnitude entries set to zero (exactly
/// that many kept; ties between equal magnitudes go to the lower index).
fn trim(d: &[f64], density: f64) -> Vec<f64> {
    let keep = ((density * d.len() as f64).ceil() as usize).min(d.len());
    if keep == d.len() {
        return d.to_vec();
    }
    let mut idx: Vec<usize> = (0..d.len()).collect();
    if keep > 0 {
        idx.select_nth_unstable_by(keep - 1, |&a, &b| {
            d[b].abs().total_cmp(&d[a].abs()).then(a.cmp(&b))
        });
    }
    let mut out = vec![0.0; d.len()];
    for &i in &idx[..keep] {
        out[i] = d[i];
    }
    out
}

/// A merged delta as LoRA factors of rank `r`: `B = U·√S` (`[out, r]`), `A = √S·Vᵀ`
/// (`[r, in]`), so `B·A` is the best rank-`r` approximation (with scale 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Factored {
    pub b: Vec<f64>,
    pub a: Vec<f64>,
    pub r: usize,
    /// `‖ΔW − B·A‖_F / ‖ΔW‖_F` (0 for a zero delta).
    pub relative_error: f64,
}

/// Re-factors a row-major `rows × cols` delta at rank `r` (at most `min(rows, cols)`).
pub fn refactor(delta: &[f64], rows: usize, cols: usize, r: usize, seed: u64) -> Factored {
    let r = r.min(rows).min(cols).max(1);
    let t = svd::truncated(delta, rows, cols, r, seed);
    let k = t.s.len();
    let mut b = vec![0.0; rows * r];
    let mut a = vec![0.0; r * cols];
    for c in 0..k {
        let root = t.s[c].max(0.0).sqrt();
        for i in 0..rows {
            b[i * r + c] = t.u[i * k + c] * root;
        }
        for j in 0..cols {
            a[c * cols + j] = t.vt[c * cols + j] * root;
        }
    }
    let norm = dot(delta, delta).sqrt();
    let mut err = 0.0;
    for i in 0..rows {
        for j in 0..cols {
            let approx: f64 = (0..r).map(|c| b[i * r + c] * a[c * cols + j]).sum();
            let e = delta[i * cols + j] - approx;
            err += e * e;
        }
    }
    Factored {
        b,
        a,
        r,
        relative_error: if norm > 0.0 { err.sqrt() / norm } else { 0.0 },
    }
}

/// One source's delta of a module as factors, `ΔW = B·A` with the LoRA scale folded into `B`:
/// `b` is `rows × r`, `a` is `r × cols`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LowRank {
    pub b: Vec<f64>,
    pub a: Vec<f64>,
    pub r: usize,
}

impl LowRank {
    /// `B·A`, for checks.
    pub fn dense(&self, rows: usize, cols: usize) -> Vec<f64> {
        matmul(&self.b, &self.a, rows, self.r, cols)
    }
}

/// `⟨BₓAₓ, BᵧAᵧ⟩_F = Σ (BₓᵀBᵧ) ∘ (AₓAᵧᵀ)`, from `r × r` products only.
fn inner(x: &LowRank, y: &LowRank, rows: usize, cols: usize) -> f64 {
    let gb = matmul_tn(&x.b, &y.b, rows, x.r, y.r);
    // AₓAᵧᵀ = (Aₓᵀ)ᵀ(Aᵧᵀ): transpose both (r × cols → cols × r) and reuse matmul_tn.
    let (at_x, at_y) = (transpose(&x.a, x.r, cols), transpose(&y.a, y.r, cols));
    let ga = matmul_tn(&at_x, &at_y, cols, x.r, y.r);
    dot(&gb, &ga)
}

fn transpose(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = m[i * cols + j];
        }
    }
    out
}

/// A linear rule (not TIES) on factored deltas (`None`: the source does not adapt the module,
/// ΔW = 0), re-factored at `rank`. `Σ cᵢ·BᵢAᵢ = [c₁B₁ … c_kB_k]·[A₁; …; A_k]` exactly, so
/// when `rank` holds the stacked rank the stack is the output (no SVD, error 0). Below it, the
/// stack is re-factored through QR of both factors (`B̃ = Q_b C_b`, `Ãᵀ = Q_a C_a`) and a
/// truncated SVD of the small core `C_b C_aᵀ`; the error is measured in that core.
pub fn merge_low_rank(
    rule: &Rule,
    sources: &[Option<LowRank>],
    rows: usize,
    cols: usize,
    rank: usize,
    seed: u64,
) -> (Factored, Option<f64>) {
    let k = sources.len().max(1) as f64;
    let zero = LowRank {
        b: Vec::new(),
        a: Vec::new(),
        r: 0,
    };
    let get = |i: usize| sources[i].as_ref().unwrap_or(&zero);
    let (coefficients, ratio): (Vec<f64>, Option<f64>) = match rule {
        Rule::Average => (vec![1.0 / k; sources.len()], None),
        Rule::ModelStock => {
            let t = ratio_from_gram(&|i, j| inner(get(i), get(j), rows, cols), sources.len());
            (vec![t / k; sources.len()], Some(t))
        }
        Rule::TaskArithmetic { weights } | Rule::Ties { weights, .. } => (
            (0..sources.len())
                .map(|i| weights.get(i).copied().unwrap_or(1.0))
                .collect(),
            None,
        ),
    };
    let rank = rank.min(rows).min(cols).max(1);
    let stacked: usize = sources.iter().flatten().map(|s| s.r).sum();
    // The stack: B̃ = [c₁B₁ …] (rows × R), Ã = [A₁; …] (R × cols).
    let mut bs = vec![0.0; rows * stacked];
    let mut a_stack = Vec::with_capacity(stacked * cols);
    let mut col = 0;
    for (s, c) in sources.iter().zip(&coefficients) {
        let Some(s) = s else { continue };
        for i in 0..rows {
            for p in 0..s.r {
                bs[i * stacked + col + p] = c * s.b[i * s.r + p];
            }
        }
        a_stack.extend_from_slice(&s.a);
        col += s.r;
    }
    if stacked <= rank {
        let mut b = vec![0.0; rows * rank];
        for i in 0..rows {
            b[i * rank..i * rank + stacked].copy_from_slice(&bs[i * stacked..(i + 1) * stacked]);
        }
        let mut a = a_stack;
        a.resize(rank * cols, 0.0);
        let factored = Factored {
            b,
            a,
            r: rank,
            relative_error: 0.0,
        };
        return (factored, ratio);
    }
    let mut qb = bs.clone();
    orthonormalize(&mut qb, rows, stacked);
    let cb = matmul_tn(&qb, &bs, rows, stacked, stacked);
    let at = transpose(&a_stack, stacked, cols);
    let mut qa = at.clone();
    orthonormalize(&mut qa, cols, stacked);
    let ca = matmul_tn(&qa, &at, cols, stacked, stacked);
    // Core C = C_b·C_aᵀ (R × R): ΔW = Q_b·C·Q_aᵀ.
    let core = matmul(
        &cb,
        &transpose(&ca, stacked, stacked),
        stacked,
        stacked,
        stacked,
    );
    let small = refactor(&core, stacked, stacked, rank, seed);
    let b = matmul(&qb, &small.b, rows, stacked, rank);
    // A = A_c·Q_aᵀ: (rank × R)·(R × cols).
    let a = matmul(
        &small.a,
        &transpose(&qa, cols, stacked),
        rank,
        stacked,
        cols,
    );
    let factored = Factored {
        b,
        a,
        r: rank,
        relative_error: small.relative_error,
    };
    (factored, ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Two unit deltas at angle θ in the plane of e₀, e₁ (padded with zeros).
    fn at_angle(theta: f64, len: usize) -> Vec<Vec<f64>> {
        let mut a = vec![0.0; len];
        let mut b = vec![0.0; len];
        a[0] = 1.0;
        b[0] = theta.cos();
        b[1] = theta.sin();
        vec![a, b]
    }

    #[test]
    fn model_stock_ratio_is_the_papers_formula_for_a_known_angle() {
        for theta_deg in [10.0_f64, 30.0, 45.0, 60.0, 80.0] {
            let theta = theta_deg.to_radians();
            let deltas = at_angle(theta, 12);
            let cos = theta.cos();
            let expected = 2.0 * cos / (1.0 + cos);
            let t = model_stock_ratio(&deltas);
            assert!(close(t, expected, 1e-6), "θ={theta_deg}: {t} vs {expected}");
            // Scaling a delta changes nothing: the ratio depends on the angle only.
            let scaled = vec![
                deltas[0].clone(),
                deltas[1].iter().map(|x| 7.5 * x).collect(),
            ];
            assert!(close(model_stock_ratio(&scaled), expected, 1e-6));
            let m = merge(&Rule::ModelStock, &deltas);
            assert_eq!(m.ratio, Some(t));
            assert!(close(m.delta[0], t * (1.0 + cos) / 2.0, 1e-12));
        }
        // Three deltas with equal pairwise angles: k = 3 in the formula.
        let c: f64 = 0.3;
        // Unit vectors with pairwise cosine c: rows of the Cholesky factor of [[1,c,c],[c,1,c],[c,c,1]].
        let l11 = 1.0;
        let l21 = c;
        let l22 = (1.0 - c * c).sqrt();
        let l31 = c;
        let l32 = (c - l31 * l21) / l22;
        let l33 = (1.0 - l31 * l31 - l32 * l32).sqrt();
        let three = vec![
            vec![l11, 0.0, 0.0, 0.0],
            vec![l21, l22, 0.0, 0.0],
            vec![l31, l32, l33, 0.0],
        ];
        let expected = 3.0 * c / (1.0 + 2.0 * c);
        assert!(close(model_stock_ratio(&three), expected, 1e-6));
    }

    #[test]
    fn model_stock_ratio_is_one_for_equal_deltas_and_zero_for_opposed_ones() {
        let d = vec![1.0, -2.0, 3.0];
        assert!(close(
            model_stock_ratio(&[d.clone(), d.clone()]),
            1.0,
            1e-12
        ));
        let neg: Vec<f64> = d.iter().map(|x| -x).collect();
        assert_eq!(model_stock_ratio(&[d.clone(), neg]), 0.0);
        assert_eq!(model_stock_ratio(&[d, vec![0.0; 3]]), 0.0);
    }

    #[test]
    fn ties_trims_elects_a_sign_and_averages_the_agreeing_entries() {
        // Each keeps 3 of 4 entries: b's −0.01 is trimmed. Entry 0: both positive → mean.
        // Entry 1: +3 vs −3.5 → sign −, only −3.5 kept. Entries 2, 3: one source each.
        let a = vec![2.0, 3.0, 0.1, 0.0];
        let b = vec![4.0, -3.5, -0.01, 5.0];
        let merged = ties(&[a, b], 0.75);
        assert_eq!(merged, vec![3.0, -3.5, 0.1, 5.0]);
        // density 1 keeps everything; a sign vote still drops the disagreeing entries.
        let merged = ties(&[vec![1.0, -2.0], vec![3.0, 1.0]], 1.0);
        assert_eq!(merged, vec![2.0, -2.0]);
    }

    #[test]
    fn trim_keeps_exactly_the_requested_share() {
        let d = vec![0.5, -3.0, 2.0, 0.0, -1.0];
        assert_eq!(trim(&d, 0.4), vec![0.0, -3.0, 2.0, 0.0, 0.0]);
        assert_eq!(trim(&d, 0.01), vec![0.0, -3.0, 0.0, 0.0, 0.0]);
        assert_eq!(trim(&d, 1.0), d);
    }

    #[test]
    fn task_arithmetic_weighs_and_sums() {
        let m = merge(
            &Rule::TaskArithmetic {
                weights: vec![1.0, -0.5],
            },
            &[vec![1.0, 2.0], vec![4.0, 4.0]],
        );
        assert_eq!(m.delta, vec![-1.0, 0.0]);
    }

    /// `B·A` of seeded factors of rank `r`.
    fn low_rank(rows: usize, cols: usize, r: usize, seed: u64) -> Vec<f64> {
        let mut g = crate::engine::rng::stream(seed, "test");
        let b: Vec<f64> = (0..rows * r)
            .map(|_| crate::engine::rng::normal(&mut g))
            .collect();
        let a: Vec<f64> = (0..r * cols)
            .map(|_| crate::engine::rng::normal(&mut g))
            .collect();
        (0..rows * cols)
            .map(|p| {
                (0..r)
                    .map(|c| b[(p / cols) * r + c] * a[c * cols + p % cols])
                    .sum()
            })
            .collect()
    }

    /// Seeded factors of rank `r` (`B` `rows × r`, `A` `r × cols`).
    fn factors(rows: usize, cols: usize, r: usize, seed: u64) -> LowRank {
        let mut g = crate::engine::rng::stream(seed, "factors");
        let b = (0..rows * r)
            .map(|_| crate::engine::rng::normal(&mut g))
            .collect();
        let a = (0..r * cols)
            .map(|_| crate::engine::rng::normal(&mut g))
            .collect();
        LowRank { b, a, r }
    }

    #[test]
    fn the_factored_linear_rules_equal_the_dense_ones_without_forming_a_delta() {
        let (rows, cols) = (20, 28);
        // Correlated deltas (a shared part plus each one's own), so Model Stock's t is not 0.
        let shared = factors(rows, cols, 3, 9);
        let mut sources: Vec<Option<LowRank>> = (0..3)
            .map(|s| {
                let own = factors(rows, cols, 3, s);
                let mix =
                    |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(x, y)| x + 0.5 * y).collect();
                Some(LowRank {
                    b: mix(&shared.b, &own.b),
                    a: mix(&shared.a, &own.a),
                    r: 3,
                })
            })
            .collect();
        // A source that does not adapt this module has ΔW = 0 (still counted in the mean).
        sources.push(None);
        let dense: Vec<Vec<f64>> = sources
            .iter()
            .map(|s| {
                s.as_ref()
                    .map_or(vec![0.0; rows * cols], |s| s.dense(rows, cols))
            })
            .collect();
        let rules = [
            Rule::Average,
            Rule::ModelStock,
            Rule::TaskArithmetic {
                weights: vec![0.5, -1.0, 2.0, 1.0],
            },
        ];
        for rule in rules {
            let want = merge(&rule, &dense);
            // Rank 9 = 3 × 3 holds the stack: exact, no SVD.
            let (f, ratio) = merge_low_rank(&rule, &sources, rows, cols, 9, 1);
            assert_eq!((f.r, f.relative_error), (9, 0.0));
            assert_eq!(ratio.is_some(), want.ratio.is_some());
            if let (Some(a), Some(b)) = (ratio, want.ratio) {
                assert!(close(a, b, 1e-12) && a > 0.3, "{rule:?}: {a} vs {b}");
            }
            let got = LowRank {
                b: f.b,
                a: f.a,
                r: f.r,
            }
            .dense(rows, cols);
            let worst = got
                .iter()
                .zip(&want.delta)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-10, "{rule:?}: {worst}");
            // Below the stacked rank: the same error as the dense truncated SVD.
            let (cut, _) = merge_low_rank(&rule, &sources, rows, cols, 4, 1);
            let dense_cut = refactor(&want.delta, rows, cols, 4, 1);
            assert!(
                close(cut.relative_error, dense_cut.relative_error, 1e-6),
                "{rule:?}: {} vs {}",
                cut.relative_error,
                dense_cut.relative_error
            );
            let approx = LowRank {
                b: cut.b,
                a: cut.a,
                r: 4,
            }
            .dense(rows, cols);
            let norm = dot(&want.delta, &want.delta).sqrt();
            let err: f64 = approx
                .iter()
                .zip(&want.delta)
                .map(|(g, w)| (g - w) * (g - w))
                .sum::<f64>()
                .sqrt()
                / norm;
            assert!(
                close(err, cut.relative_error, 1e-6),
                "{err} vs {}",
                cut.relative_error
            );
        }
    }

    #[test]
    fn refactoring_at_the_summed_rank_is_exact_and_a_smaller_rank_reports_its_error() {
        let (rows, cols) = (24, 40);
        let deltas: Vec<Vec<f64>> = (0..3).map(|s| low_rank(rows, cols, 4, s)).collect();
        let avg = merge(&Rule::Average, &deltas).delta;
        let exact = refactor(&avg, rows, cols, 12, 7);
        assert!(exact.relative_error < 1e-9, "{}", exact.relative_error);
        let cut = refactor(&avg, rows, cols, 4, 7);
        assert!(cut.relative_error > 0.05, "{}", cut.relative_error);
        assert_eq!((cut.b.len(), cut.a.len()), (rows * 4, 4 * cols));
        assert_eq!(refactor(&[0.0; 6], 2, 3, 1, 0).relative_error, 0.0);
    }
}
