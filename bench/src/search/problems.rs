//! The offline problem suite of docs/search-notes.md §4.3: pure functions of (x, fidelity, seed) with
//! counter-based noise, so a rerun of the whole benchmark is bit-identical.

use std::f64::consts::PI;
use std::io::Write;
use std::process::{Command, Stdio};

use tuna_server::search::rng::{hash_words, mix64};
use tuna_server::search::{ParamDef, Params, RealSpec, Space, Value};

/// One evaluation up to a resource: the noisy value (`None` = the run failed) and the
/// cumulative cost of reaching that resource from zero.
#[derive(Debug, Clone, Copy)]
pub struct Eval {
    pub value: Option<f64>,
    pub cost: f64,
}

/// The resource dimension of a multi-fidelity problem.
#[derive(Debug, Clone)]
pub struct Fidelity {
    pub name: &'static str,
    pub spec: RealSpec,
    /// Resources at which a run reports an intermediate value.
    pub reports: Vec<f64>,
    /// First ASHA rung (grace period): early enough to save cost, late enough that the
    /// ranking of curves means something.
    pub min_rung: f64,
}

pub trait Problem: Send + Sync {
    fn name(&self) -> &str;
    /// The searched parameters, without the fidelity.
    fn space(&self) -> Space;
    fn fidelity(&self) -> Option<Fidelity> {
        None
    }
    /// Evaluate at resource `r` (the full budget when there is no fidelity).
    /// `noise_key` identifies the draw (seed, configuration, replicate, report index).
    fn evaluate(&self, p: &Params, r: f64, noise_key: u64) -> Eval;
    /// Noise-free objective at full fidelity, if known.
    fn truth(&self, p: &Params) -> Option<f64>;
    /// The known optimum of `truth`, if any.
    fn optimum(&self) -> Option<f64>;
    /// Cost of one full evaluation: the budget unit.
    fn unit_cost(&self) -> f64;
    /// True for the cost-aware problem whose metric is the Pareto regret area.
    fn pareto_metric(&self) -> Option<&ParetoRef> {
        None
    }
    /// CARBS search centres where the neutral midpoint is wrong: CARBS is meant to start in a
    /// low-cost region (its README) and grow along the Pareto front; the centre is also its
    /// first suggestion.
    fn carbs_centers(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}

/// Standard normal from a hash (Box–Muller on two derived uniforms).
pub fn n01(key: u64) -> f64 {
    let a = mix64(key);
    let b = mix64(a ^ 0xD1B5_4A32_D192_ED03);
    let u1 = ((a >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (b >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

/// Hash of an assignment (values by bit pattern), the "quantised x" of the noise key.
pub fn params_key(p: &Params) -> u64 {
    let mut words = Vec::new();
    for (k, v) in p {
        words.push(k.bytes().fold(0u64, |h, b| mix64(h ^ b as u64)));
        words.push(match v {
            Value::Real(x) => x.to_bits(),
            Value::Choice(c) => c.bytes().fold(7u64, |h, b| mix64(h ^ b as u64)),
        });
    }
    hash_words(&words)
}

fn get(p: &Params, k: &str) -> f64 {
    p.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn unit_space(names: &[&str]) -> Space {
    let params = names
        .iter()
        .map(|n| ParamDef::real(n, RealSpec::linear(0.0, 1.0)))
        .collect();
    Space::new(params).unwrap_or_else(|_| unreachable!("static space is valid"))
}

/// Report points r_max·3^(−k), k = 4..0, so every η = 3 rung from r_max/81 is a report.
fn geometric_reports(max: f64) -> Vec<f64> {
    (0..=4).rev().map(|k| max / 3f64.powi(k)).collect()
}

// ---------------------------------------------------------------------------------------
/// P1: MF-Branin (dragonfly variant), u ∈ [0,1]², fidelity z ∈ [1/81, 1].
pub struct Branin;

impl Branin {
    fn f(u1: f64, u2: f64, z: f64) -> f64 {
        let x1 = 15.0 * u1 - 5.0;
        let x2 = 15.0 * u2;
        let b = 5.1 / (4.0 * PI * PI) - 0.01 * (1.0 - z);
        let c = 5.0 / PI - 0.1 * (1.0 - z);
        let t = 1.0 / (8.0 * PI) + 0.005 * (1.0 - z);
        (x2 - b * x1 * x1 + c * x1 - 6.0).powi(2) + 10.0 * (1.0 - t) * x1.cos() + 10.0
    }
    fn cost(z: f64) -> f64 {
        0.05 + 0.95 * z.powf(1.5)
    }
}

impl Problem for Branin {
    fn name(&self) -> &str {
        "mf-branin"
    }
    fn space(&self) -> Space {
        unit_space(&["u1", "u2"])
    }
    fn fidelity(&self) -> Option<Fidelity> {
        Some(Fidelity {
            name: "z",
            spec: RealSpec::log(1.0 / 81.0, 1.0),
            reports: geometric_reports(1.0),
            min_rung: 1.0 / 27.0,
        })
    }
    fn evaluate(&self, p: &Params, z: f64, key: u64) -> Eval {
        // Noise N(0, 0.05) with 0.05 the variance, as the reference states.
        let v = Self::f(get(p, "u1"), get(p, "u2"), z) + 0.05f64.sqrt() * n01(key);
        Eval {
            value: Some(v),
            cost: Self::cost(z),
        }
    }
    fn truth(&self, p: &Params) -> Option<f64> {
        Some(Self::f(get(p, "u1"), get(p, "u2"), 1.0))
    }
    fn optimum(&self) -> Option<f64> {
        Some(0.397_887_357_729_738)
    }
    fn unit_cost(&self) -> f64 {
        1.0
    }
}

// ---------------------------------------------------------------------------------------
/// P2: MF-Hartmann 3 / 6 (mfpbench), fidelity z ∈ [3, 100], one-sided shrinking noise.
pub struct Hartmann {
    pub dims: usize,
    pub bias: f64,
    pub noise: f64,
    pub label: &'static str,
}

const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
const A3: [[f64; 3]; 4] = [
    [3.0, 10.0, 30.0],
    [0.1, 10.0, 35.0],
    [3.0, 10.0, 30.0],
    [0.1, 10.0, 35.0],
];
const P3: [[f64; 3]; 4] = [
    [3689.0, 1170.0, 2673.0],
    [4699.0, 4387.0, 7470.0],
    [1091.0, 8732.0, 5547.0],
    [381.0, 5743.0, 8828.0],
];
const A6: [[f64; 6]; 4] = [
    [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
    [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
    [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
    [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
];
const P6: [[f64; 6]; 4] = [
    [1312.0, 1696.0, 5569.0, 124.0, 8283.0, 5886.0],
    [2329.0, 4135.0, 8307.0, 3736.0, 1004.0, 9991.0],
    [2348.0, 1451.0, 3522.0, 2883.0, 3047.0, 6650.0],
    [4047.0, 8828.0, 8732.0, 5743.0, 1091.0, 381.0],
];
const NAMES: [&str; 6] = ["x1", "x2", "x3", "x4", "x5", "x6"];

impl Hartmann {
    pub fn h3() -> Self {
        Self {
            dims: 3,
            bias: 0.5,
            noise: 0.1,
            label: "mf-hartmann3",
        }
    }
    pub fn h6() -> Self {
        // The "good" preset, which the reference's ASHA gate names.
        Self {
            dims: 6,
            bias: 2.5,
            noise: 2.0,
            label: "mf-hartmann6",
        }
    }
    fn zhat(z: f64) -> f64 {
        z.ln() / 100f64.ln()
    }
    fn h(&self, x: &[f64], z: f64) -> f64 {
        let zh = Self::zhat(z);
        (0..4)
            .map(|i| {
                let a = ALPHA[i] - self.bias * (1.0 - zh);
                let s: f64 = (0..self.dims)
                    .map(|j| {
                        let (aij, pij) = if self.dims == 3 {
                            (A3[i][j], P3[i][j])
                        } else {
                            (A6[i][j], P6[i][j])
                        };
                        aij * (x[j] - 1e-4 * pij).powi(2)
                    })
                    .sum();
                -a * (-s).exp()
            })
            .sum()
    }
    fn xs(&self, p: &Params) -> Vec<f64> {
        NAMES[..self.dims].iter().map(|n| get(p, n)).collect()
    }
}

impl Problem for Hartmann {
    fn name(&self) -> &str {
        self.label
    }
    fn space(&self) -> Space {
        unit_space(&NAMES[..self.dims])
    }
    fn fidelity(&self) -> Option<Fidelity> {
        Some(Fidelity {
            name: "z",
            spec: RealSpec::log(3.0, 100.0),
            reports: geometric_reports(100.0)
                .into_iter()
                .filter(|&r| r >= 3.0)
                .collect(),
            min_rung: 100.0 / 27.0,
        })
    }
    fn evaluate(&self, p: &Params, z: f64, key: u64) -> Eval {
        let v = self.h(&self.xs(p), z) + n01(key).abs() * self.noise * (1.0 - Self::zhat(z));
        Eval {
            value: Some(v),
            cost: 0.05 + 0.95 * (z / 100.0).powi(2),
        }
    }
    fn truth(&self, p: &Params) -> Option<f64> {
        Some(self.h(&self.xs(p), 100.0))
    }
    fn optimum(&self) -> Option<f64> {
        Some(if self.dims == 3 { -3.862_78 } else { -3.322_37 })
    }
    fn unit_cost(&self) -> f64 {
        1.0
    }
}

// ---------------------------------------------------------------------------------------
/// Reference frontier for the Pareto regret area (P3).
pub struct ParetoRef {
    /// Log-spaced costs (budget units) and the compute-optimal loss L*(C) at each.
    pub grid: Vec<(f64, f64)>,
    /// Loss charged where no run at cost ≤ C exists yet.
    pub empty_loss: f64,
}

/// P3: Chinchilla-style cost-aware problem (constants: Hoffmann et al. 2022, approach 3).
pub struct Chinchilla {
    reference: ParetoRef,
}

const CH_E: f64 = 1.69;
const CH_A: f64 = 406.4;
const CH_B: f64 = 410.7;
const CH_ALPHA: f64 = 0.34;
const CH_BETA: f64 = 0.28;
const N_RANGE: (f64, f64) = (1e7, 1e9);
const D_RANGE: (f64, f64) = (1e8, 1e10);
/// Seconds per FLOP-unit: cost in seconds = 6·N·D / 1e14; the budget unit is the largest run.
const FLOPS_PER_S: f64 = 1e14;

impl Chinchilla {
    pub fn new() -> Self {
        let unit = 6.0 * N_RANGE.1 * D_RANGE.1 / FLOPS_PER_S;
        let c_lo = 6.0 * N_RANGE.0 * D_RANGE.0 / FLOPS_PER_S;
        let grid = (0..40)
            .map(|i| {
                let c = c_lo * (unit / c_lo).powf(i as f64 / 39.0);
                (c / unit, Self::optimal_loss(c))
            })
            .collect();
        Self {
            reference: ParetoRef {
                grid,
                empty_loss: Self::base_loss(N_RANGE.0, D_RANGE.0) + 0.5,
            },
        }
    }
    fn lr_star(n: f64) -> f64 {
        3e-3 * (n / 1e8).powf(-0.25)
    }
    fn base_loss(n: f64, d: f64) -> f64 {
        CH_E + CH_A / n.powf(CH_ALPHA) + CH_B / d.powf(CH_BETA)
    }
    fn loss(p: &Params) -> f64 {
        let (n, d, lr, w) = (get(p, "n"), get(p, "d"), get(p, "lr"), get(p, "warmup"));
        let logit = |v: f64| (v / (1.0 - v)).log10();
        Self::base_loss(n, d)
            + 0.05 * (lr.log10() - Self::lr_star(n).log10()).powi(2)
            + 0.5 * 0.02 * (logit(w) - logit(0.05)).powi(2)
    }
    /// min over N (D = C/6N) inside the box, at the optimal lr and warmup.
    fn optimal_loss(c_seconds: f64) -> f64 {
        let c = c_seconds * FLOPS_PER_S / 6.0;
        (0..=400)
            .filter_map(|i| {
                let n = N_RANGE.0 * (N_RANGE.1 / N_RANGE.0).powf(i as f64 / 400.0);
                let d = c / n;
                (d >= D_RANGE.0 * 0.999 && d <= D_RANGE.1 * 1.001).then(|| Self::base_loss(n, d))
            })
            .fold(f64::INFINITY, f64::min)
    }
}

impl Problem for Chinchilla {
    fn name(&self) -> &str {
        "chinchilla"
    }
    fn space(&self) -> Space {
        let params = vec![
            ParamDef::real("n", RealSpec::log(N_RANGE.0, N_RANGE.1)),
            ParamDef::real("d", RealSpec::log(D_RANGE.0, D_RANGE.1)),
            ParamDef::real("lr", RealSpec::log(1e-5, 1e-1).with_scale(0.5)),
            ParamDef::real("warmup", RealSpec::logit(0.001, 0.5)),
        ];
        Space::new(params).unwrap_or_else(|_| unreachable!("static space is valid"))
    }
    fn evaluate(&self, p: &Params, _r: f64, key: u64) -> Eval {
        let (n, d, lr) = (get(p, "n"), get(p, "d"), get(p, "lr"));
        let cost = 6.0 * n * d / FLOPS_PER_S;
        // Divergence when lr > 8·lr*(N): the run fails (charged in full).
        let value = (lr <= 8.0 * Self::lr_star(n)).then(|| Self::loss(p) + 0.01 * n01(key));
        Eval { value, cost }
    }
    fn truth(&self, p: &Params) -> Option<f64> {
        Some(Self::loss(p))
    }
    fn optimum(&self) -> Option<f64> {
        Some(Self::base_loss(N_RANGE.1, D_RANGE.1))
    }
    fn unit_cost(&self) -> f64 {
        6.0 * N_RANGE.1 * D_RANGE.1 / FLOPS_PER_S
    }
    fn pareto_metric(&self) -> Option<&ParetoRef> {
        Some(&self.reference)
    }
    fn carbs_centers(&self) -> Vec<(&'static str, f64)> {
        vec![("n", 1e7), ("d", 1e8)]
    }
}

// ---------------------------------------------------------------------------------------
/// P4: "LoRA-sim" learning curves with crossing curves and divergence (docs/search-notes.md §4.3).
pub struct LoraSim {
    optimum: f64,
}

const T_MAX: f64 = 2000.0;
const L0: f64 = 3.0;

impl LoraSim {
    pub fn new() -> Self {
        let mut s = Self { optimum: 0.0 };
        s.optimum = s.find_optimum();
        s
    }
    fn lr_star(b: f64, ar: f64) -> f64 {
        2e-4 * (b / 32.0).sqrt() * ar.powf(-0.5)
    }
    /// Noise-free loss at step t, or `None` once diverged.
    fn curve(p: &Params, t: f64) -> Option<f64> {
        let (lr, r, ar, b, w, wd) = (
            get(p, "lr"),
            get(p, "r"),
            get(p, "alpha_ratio"),
            get(p, "batch"),
            get(p, "warmup"),
            get(p, "wd"),
        );
        let ls = Self::lr_star(b, ar);
        if lr > 10.0 * ls && t >= 50.0 * (10.0 * ls / lr) {
            return None;
        }
        // Our addition: warmup matters a little (best near 6%), so that dimension is not inert.
        let l_inf = 1.0
            + 0.15 * (lr.log10() - ls.log10()).powi(2)
            + 0.3 * r.powf(-0.5)
            + 0.02 * (wd.log10() + 3.0).powi(2)
            + 0.01 * ((w / (1.0 - w)).log10() - (0.06f64 / 0.94).log10()).powi(2);
        let tau = 300.0 * (ls / lr).powf(0.7) * (32.0 / b).sqrt();
        // Crossing curves, as the reference has them: above lr* the curve learns faster
        // (γ = 1.2, shorter τ) but plateaus higher (L∞ grows with the lr's distance from lr*).
        let gamma = if lr > ls { 1.2 } else { 0.8 };
        Some(l_inf + (L0 - l_inf) * (1.0 + t / tau).powf(-gamma))
    }
    fn step_cost(p: &Params) -> f64 {
        get(p, "batch") * (1.0 + get(p, "r") / 256.0) / (32.0 * (1.0 + 16.0 / 256.0)) / T_MAX
    }
    /// Deterministic search for the noise-free optimum at T_max (random + local refinement).
    fn find_optimum(&self) -> f64 {
        let space = self.space();
        let mut best = (f64::INFINITY, Params::new());
        for k in 0..20_000u64 {
            let p = space.sample_uniform(&mut tuna_server::search::rng::rng_for(99, 1, k));
            if let Some(v) = Self::curve(&p, T_MAX)
                && v < best.0
            {
                best = (v, p);
            }
        }
        let x0 = space.to_basic(&best.1);
        let mut x = x0;
        let mut step = 0.2;
        let mut fx = best.0;
        while step > 1e-4 {
            let mut improved = false;
            for i in 0..x.len() {
                for dir in [-1.0, 1.0] {
                    let mut y = x.clone();
                    y[i] += dir * step;
                    let p = space.from_basic(&y);
                    if let Some(v) = Self::curve(&p, T_MAX)
                        && v < fx
                    {
                        fx = v;
                        x = space.to_basic(&p);
                        improved = true;
                    }
                }
            }
            if !improved {
                step /= 2.0;
            }
        }
        fx
    }
}

impl Problem for LoraSim {
    fn name(&self) -> &str {
        "lora-sim"
    }
    fn space(&self) -> Space {
        let params = vec![
            ParamDef::real("lr", RealSpec::log(1e-6, 1e-2).with_scale(0.5)),
            ParamDef::real("r", RealSpec::log(4.0, 128.0).integer().with_scale(0.5)),
            ParamDef::real("alpha_ratio", RealSpec::log(0.25, 8.0)),
            ParamDef::real("batch", RealSpec::log(8.0, 256.0).integer().with_scale(0.5)),
            ParamDef::real("warmup", RealSpec::logit(0.005, 0.3)),
            ParamDef::real("wd", RealSpec::log(1e-6, 1e-1)),
        ];
        Space::new(params).unwrap_or_else(|_| unreachable!("static space is valid"))
    }
    fn fidelity(&self) -> Option<Fidelity> {
        Some(Fidelity {
            name: "steps",
            spec: RealSpec::log(T_MAX / 81.0, T_MAX),
            // Every 5% of T_max plus the η = 3 rungs.
            reports: {
                let mut r: Vec<f64> = (1..=20).map(|i| T_MAX * i as f64 / 20.0).collect();
                r.extend(geometric_reports(T_MAX));
                r.sort_by(f64::total_cmp);
                r.dedup();
                r
            },
            // R/r = 27: four η = 3 rungs (74, 222, 667, 2000 steps), as ASHA's paper sets
            // r = R/η^k; at 74 steps the curves already separate by learning speed.
            min_rung: T_MAX / 27.0,
        })
    }
    fn evaluate(&self, p: &Params, t: f64, key: u64) -> Eval {
        let sigma = 0.02 / (get(p, "batch") / 32.0).sqrt();
        Eval {
            value: Self::curve(p, t).map(|v| v + sigma * n01(key)),
            cost: t * Self::step_cost(p),
        }
    }
    fn truth(&self, p: &Params) -> Option<f64> {
        Some(Self::curve(p, T_MAX).unwrap_or(L0))
    }
    /// The product's LoRA defaults (docs/search-notes.md §4.3): lr 2e-4 and rank 16, the
    /// values the QLoRA paper and PEFT's examples start from; the rest stay at their midpoints.
    fn carbs_centers(&self) -> Vec<(&'static str, f64)> {
        vec![("lr", 2e-4), ("r", 16.0)]
    }
    fn optimum(&self) -> Option<f64> {
        Some(self.optimum)
    }
    fn unit_cost(&self) -> f64 {
        1.0
    }
}

// ---------------------------------------------------------------------------------------
/// P5: categorical table, AutoRAG-shaped: K × C × E, reward = w(2·acc − 1) − (1 − w)·t/t_max.
pub struct CategoricalTable;

const KS: [&str; 5] = ["1", "3", "5", "7", "9"];
const CS: [&str; 5] = ["0.3", "0.5", "0.7", "0.9", "1"];
const ES: [&str; 3] = ["e1", "e2", "e3"];
const W: f64 = 0.5;
const BATCH: u64 = 4;

impl CategoricalTable {
    fn idx(p: &Params, name: &str, choices: &[&str]) -> usize {
        let v = p.get(name).and_then(Value::as_choice).unwrap_or("");
        choices.iter().position(|c| *c == v).unwrap_or(0)
    }
    fn arm(p: &Params) -> (usize, usize, usize) {
        (
            Self::idx(p, "k", &KS),
            Self::idx(p, "c", &CS),
            Self::idx(p, "e", &ES),
        )
    }
    fn p_acc(k: usize, c: usize, e: usize) -> f64 {
        const AK: [f64; 5] = [-0.12, 0.0, 0.06, 0.08, 0.09];
        const BC: [f64; 5] = [-0.10, -0.03, 0.02, 0.05, 0.06];
        const CE: [f64; 3] = [0.0, 0.05, -0.04];
        let inter = 0.04 * n01(hash_words(&[42, k as u64, c as u64, e as u64]));
        (0.55 + AK[k] + BC[c] + CE[e] + inter).clamp(0.05, 0.95)
    }
    fn cost(k: usize, c: usize) -> f64 {
        KS[k].parse::<f64>().unwrap_or(1.0) * CS[c].parse::<f64>().unwrap_or(1.0) / 9.0
    }
    fn expected(k: usize, c: usize, e: usize) -> f64 {
        -(W * (2.0 * Self::p_acc(k, c, e) - 1.0) - (1.0 - W) * Self::cost(k, c))
    }
}

impl Problem for CategoricalTable {
    fn name(&self) -> &str {
        "categorical"
    }
    fn space(&self) -> Space {
        let params = vec![
            ParamDef::categorical("k", &KS),
            ParamDef::categorical("c", &CS),
            ParamDef::categorical("e", &ES),
        ];
        Space::new(params).unwrap_or_else(|_| unreachable!("static space is valid"))
    }
    fn evaluate(&self, p: &Params, _r: f64, key: u64) -> Eval {
        let (k, c, e) = Self::arm(p);
        let pa = Self::p_acc(k, c, e);
        let acc: f64 = (0..BATCH)
            .map(|i| {
                let u = (mix64(hash_words(&[key, i])) >> 11) as f64 / (1u64 << 53) as f64;
                if u < pa { 1.0 } else { -1.0 }
            })
            .sum::<f64>()
            / BATCH as f64;
        Eval {
            value: Some(-(W * acc - (1.0 - W) * Self::cost(k, c))),
            cost: Self::cost(k, c),
        }
    }
    fn truth(&self, p: &Params) -> Option<f64> {
        let (k, c, e) = Self::arm(p);
        Some(Self::expected(k, c, e))
    }
    fn optimum(&self) -> Option<f64> {
        let mut best = f64::INFINITY;
        for k in 0..KS.len() {
            for c in 0..CS.len() {
                for e in 0..ES.len() {
                    best = best.min(Self::expected(k, c, e));
                }
            }
        }
        Some(best)
    }
    fn unit_cost(&self) -> f64 {
        1.0
    }
}

// ---------------------------------------------------------------------------------------
/// A problem behind a command: parameters as JSON on stdin,
/// `{"objective": .., "cost": .., "failed": bool}` on stdout. No fidelity; without a known
/// optimum (`--problem-optimum`) its "regret" is the best observed objective itself.
pub struct External {
    pub cmd: String,
    pub space: Space,
    pub unit: f64,
    pub optimum: Option<f64>,
}

impl Problem for External {
    fn name(&self) -> &str {
        "external"
    }
    fn space(&self) -> Space {
        self.space.clone()
    }
    fn evaluate(&self, p: &Params, _r: f64, _key: u64) -> Eval {
        let failed = Eval {
            value: None,
            cost: 0.0,
        };
        let Ok(input) = serde_json::to_vec(p) else {
            return failed;
        };
        let child = Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            return failed;
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input);
        }
        let Ok(out) = child.wait_with_output() else {
            return failed;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return failed;
        };
        let cost = v["cost"].as_f64().unwrap_or(1.0);
        let bad = v["failed"].as_bool().unwrap_or(false);
        Eval {
            value: v["objective"].as_f64().filter(|_| !bad),
            cost,
        }
    }
    fn truth(&self, _p: &Params) -> Option<f64> {
        None
    }
    fn optimum(&self) -> Option<f64> {
        self.optimum
    }
    fn unit_cost(&self) -> f64 {
        self.unit
    }
}

// ---------------------------------------------------------------------------------------
/// The BBOB-style landscape of a [`Bbob`] problem (COCO's noiseless definitions, without the
/// rotations and oscillation transforms, on x ∈ [−5, 5]^d with the optimum f = 0 at `x_opt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landscape {
    /// f2-like separable ellipsoid, conditioning 10³.
    Ellipsoid,
    /// f8 Rosenbrock: a curved valley.
    Rosenbrock,
    /// f3-like Rastrigin: a grid of 10^d local minima.
    Rastrigin,
    /// f7-like step ellipsoid: plateaus, zero gradient almost everywhere.
    StepEllipsoid,
    /// f1 sphere.
    Sphere,
}

/// P6: BBOB-like shifted functions in 2–8 dimensions, noise-free or with BBOB's moderate
/// multiplicative Gaussian noise (f·exp(0.1·N), docs/search-notes.md §4.3). Shifts are drawn
/// from a fixed hash, so every run of the suite sees the same problems.
pub struct Bbob {
    pub label: &'static str,
    pub kind: Landscape,
    /// Optimum location in [−5, 5]^d (never the box centre, where CARBS starts).
    pub x_opt: Vec<f64>,
    pub noisy: bool,
}

const BBOB_NAMES: [&str; 8] = ["x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8"];

impl Bbob {
    /// Optimum drawn uniformly in [−4, 4]^d from `salt` (COCO's range for x_opt).
    pub fn shifted(
        label: &'static str,
        kind: Landscape,
        dims: usize,
        noisy: bool,
        salt: u64,
    ) -> Self {
        let x_opt = (0..dims as u64)
            .map(|i| {
                let u = (mix64(hash_words(&[0xBB0B, salt, i])) >> 11) as f64 / (1u64 << 53) as f64;
                -4.0 + 8.0 * u
            })
            .collect();
        Self {
            label,
            kind,
            x_opt,
            noisy,
        }
    }

    /// Rosenbrock whose valley runs through the box centre: z = x + (−1, 1, …, 1) puts the
    /// centre on the valley floor at f = 4, the optimum at x = (2, 0, …, 0).
    pub fn valley_through_centre(label: &'static str, dims: usize, noisy: bool) -> Self {
        let mut x_opt = vec![0.0; dims];
        x_opt[0] = 2.0;
        Self {
            label,
            kind: Landscape::Rosenbrock,
            x_opt,
            noisy,
        }
    }

    fn dims(&self) -> usize {
        self.x_opt.len()
    }

    fn f(&self, p: &Params) -> f64 {
        let d = self.dims();
        let z: Vec<f64> = (0..d)
            .map(|i| 10.0 * get(p, BBOB_NAMES[i]) - 5.0 - self.x_opt[i])
            .collect();
        let cond = |i: usize, e: f64| {
            if d > 1 {
                10f64.powf(e * i as f64 / (d - 1) as f64)
            } else {
                1.0
            }
        };
        match self.kind {
            Landscape::Sphere => z.iter().map(|v| v * v).sum(),
            Landscape::Ellipsoid => (0..d).map(|i| cond(i, 3.0) * z[i] * z[i]).sum(),
            Landscape::StepEllipsoid => (0..d)
                .map(|i| cond(i, 2.0) * (z[i] * 2.0).round().powi(2) / 4.0)
                .sum(),
            Landscape::Rastrigin => {
                10.0 * d as f64
                    + z.iter()
                        .map(|v| v * v - 10.0 * (2.0 * PI * v).cos())
                        .sum::<f64>()
            }
            Landscape::Rosenbrock => {
                let s = (d as f64).sqrt() / 8.0;
                let w: Vec<f64> = z.iter().map(|v| s.max(1.0) * v + 1.0).collect();
                (0..d - 1)
                    .map(|i| 100.0 * (w[i] * w[i] - w[i + 1]).powi(2) + (w[i] - 1.0).powi(2))
                    .sum()
            }
        }
    }
}

impl Problem for Bbob {
    fn name(&self) -> &str {
        self.label
    }
    fn space(&self) -> Space {
        unit_space(&BBOB_NAMES[..self.dims()])
    }
    fn evaluate(&self, p: &Params, _r: f64, key: u64) -> Eval {
        let f = self.f(p);
        let v = if self.noisy {
            f * (0.1 * n01(key)).exp()
        } else {
            f
        };
        Eval {
            value: Some(v),
            cost: 1.0,
        }
    }
    fn truth(&self, p: &Params) -> Option<f64> {
        Some(self.f(p))
    }
    fn optimum(&self) -> Option<f64> {
        Some(0.0)
    }
    fn unit_cost(&self) -> f64 {
        1.0
    }
}

/// The BBOB-like part of the suite: off-centre optima, curved valleys (one through the
/// centre), many local minima and plateaus, 2–8 dimensions, noise-free and noisy.
pub fn bbob_suite() -> Vec<Bbob> {
    use Landscape::*;
    vec![
        Bbob::shifted("bbob-ellipsoid-4d", Ellipsoid, 4, false, 1),
        Bbob::valley_through_centre("bbob-valley-2d", 2, false),
        Bbob::shifted("bbob-rosenbrock-5d", Rosenbrock, 5, false, 2),
        Bbob::shifted("bbob-rastrigin-3d", Rastrigin, 3, false, 3),
        Bbob::shifted("bbob-step-5d", StepEllipsoid, 5, false, 4),
        Bbob::shifted("bbob-sphere-8d-noisy", Sphere, 8, true, 5),
        Bbob::valley_through_centre("bbob-valley-4d-noisy", 4, true),
        Bbob::shifted("bbob-rastrigin-2d-noisy", Rastrigin, 2, true, 6),
    ]
}

/// The built-in suite.
pub fn suite() -> Vec<Box<dyn Problem>> {
    let mut s: Vec<Box<dyn Problem>> = vec![
        Box::new(Branin),
        Box::new(Hartmann::h3()),
        Box::new(Hartmann::h6()),
        Box::new(Chinchilla::new()),
        Box::new(LoraSim::new()),
        Box::new(CategoricalTable),
    ];
    for b in bbob_suite() {
        s.push(Box::new(b));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, f64)]) -> Params {
        kv.iter()
            .map(|(k, v)| (k.to_string(), Value::Real(*v)))
            .collect()
    }

    #[test]
    fn known_optima() {
        let b = Branin.truth(&params(&[("u1", (PI + 5.0) / 15.0), ("u2", 2.275 / 15.0)]));
        assert!((b.unwrap_or(0.0) - 0.397_887).abs() < 1e-4);
        let h = Hartmann::h3().truth(&params(&[
            ("x1", 0.114_614),
            ("x2", 0.555_649),
            ("x3", 0.852_547),
        ]));
        assert!((h.unwrap_or(0.0) + 3.862_78).abs() < 1e-4);
        let h6 = Hartmann::h6().truth(&params(&[
            ("x1", 0.20169),
            ("x2", 0.150_011),
            ("x3", 0.476_874),
            ("x4", 0.275_332),
            ("x5", 0.311_652),
            ("x6", 0.6573),
        ]));
        assert!((h6.unwrap_or(0.0) + 3.322_37).abs() < 1e-4);
    }

    /// Every BBOB-like problem has f = 0 at its x_opt and, where CARBS starts, a worse value.
    #[test]
    fn bbob_optimum_is_zero_at_x_opt_and_off_centre() {
        for b in bbob_suite() {
            let at = |x: &[f64]| {
                let p: Params = x
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (BBOB_NAMES[i].to_string(), Value::Real((v + 5.0) / 10.0)))
                    .collect();
                b.truth(&p).unwrap_or(f64::NAN)
            };
            assert!(at(&b.x_opt).abs() < 1e-9, "{}", b.label);
            let centre = vec![0.0; b.x_opt.len()];
            assert!(at(&centre) > 1e-3, "{}: centre {}", b.label, at(&centre));
        }
    }

    /// The valley problems put the centre on the valley floor: its neighbours off the floor
    /// are worse, so a search that only looks nearby sees the centre as a local optimum.
    #[test]
    fn valley_centre_lies_on_the_valley_floor() {
        let b = Bbob::valley_through_centre("v", 2, false);
        let p = |x1: f64, x2: f64| -> Params {
            params(&[("x1", (x1 + 5.0) / 10.0), ("x2", (x2 + 5.0) / 10.0)])
        };
        let c = b.truth(&p(0.0, 0.0)).unwrap_or(f64::NAN);
        assert!((c - 4.0).abs() < 1e-9);
        assert!(b.truth(&p(0.0, 0.3)).unwrap_or(0.0) > c);
        assert!(b.truth(&p(0.0, -0.3)).unwrap_or(0.0) > c);
    }
}
