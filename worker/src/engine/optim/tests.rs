//! Each optimizer against its paper's algorithm, written out again in scalar f64 from the
//! paper / the authors' reference code (not from the tensor code above), on a hand-worked
//! two-parameter problem; plus exact resume from a saved state for every optimizer.

// The references index coordinates as the papers write them.
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};

use super::*;

const TOL: f64 = 1e-6;

/// Gradients of `f(w) = ½·Σ cᵢ·(wᵢ - tᵢ)²` (a different curvature per coordinate), so the
/// gradient changes as the parameters move.
const CURV: [f64; 2] = [1.0, 4.0];
const TARGET: [f64; 2] = [2.0, -1.0];
const START: [f64; 2] = [0.5, 0.25];

fn grad_of(w: &[f64]) -> Vec<f64> {
    w.iter()
        .zip(CURV.iter().zip(TARGET))
        .map(|(w, (c, t))| c * (w - t))
        .collect()
}

fn vars(start: &[f64]) -> BTreeMap<String, Var> {
    BTreeMap::from([(
        "w".to_string(),
        Var::from_vec(start.to_vec(), start.len(), &Device::Cpu).unwrap(),
    )])
}

fn values(v: &BTreeMap<String, Var>) -> Vec<f64> {
    v["w"]
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn grads(v: &BTreeMap<String, Var>) -> Grads {
    let g = grad_of(&values(v));
    Grads(BTreeMap::from([(
        "w".to_string(),
        Tensor::from_vec(g, 2, &Device::Cpu).unwrap(),
    )]))
}

/// Runs `lrs.len()` steps of `config` on the quadratic; returns the parameters after each
/// step and the effective step sizes.
fn run(config: OptimizerConfig, lrs: &[f64]) -> (Vec<Vec<f64>>, Vec<f64>) {
    let v = vars(&START);
    let mut opt = Optimizer::new(&v, config).unwrap();
    let mut path = Vec::new();
    let mut steps = Vec::new();
    for &lr in lrs {
        let g = grads(&v);
        steps.push(opt.step(&g, lr).unwrap());
        path.push(values(&v));
    }
    (path, steps)
}

fn assert_path(name: &str, got: &[Vec<f64>], want: &[Vec<f64>]) {
    assert_eq!(got.len(), want.len());
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                (a - b).abs() <= TOL,
                "{name}: step {} w[{i}] = {a}, the paper's algorithm gives {b}",
                t + 1
            );
        }
    }
}

const LRS: [f64; 4] = [0.1, 0.1, 0.05, 0.02];

#[test]
fn adamw_matches_the_algorithm_by_hand() {
    // Step 1 by hand: m̂ = g, v̂ = g², so θ₁ = θ₀(1 - lr·λ) - lr·sign(g₀).
    // g₀ = (1·(0.5-2), 4·(0.25+1)) = (-1.5, 5); λ = 0.01.
    let config = AdamWConfig {
        weight_decay: 0.01,
        ..Default::default()
    };
    let (path, steps) = run(OptimizerConfig::AdamW(config), &LRS);
    let first = [0.5 * (1.0 - 0.001) + 0.1, 0.25 * (1.0 - 0.001) - 0.1];
    assert!((path[0][0] - first[0]).abs() < 1e-9 && (path[0][1] - first[1]).abs() < 1e-9);
    assert_eq!(steps, LRS.to_vec());
    // Loshchilov & Hutter, Algorithm 2 (as torch.optim.AdamW).
    let (b1, b2, eps, wd) = (0.9, 0.999, 1e-8, 0.01);
    let (mut w, mut m, mut v) = (START.to_vec(), vec![0.0; 2], vec![0.0; 2]);
    let mut want = Vec::new();
    for (t, lr) in LRS.iter().enumerate() {
        let g = grad_of(&w);
        let t = (t + 1) as i32;
        for i in 0..2 {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let mh = m[i] / (1.0 - b1.powi(t));
            let vh = v[i] / (1.0 - b2.powi(t));
            w[i] = w[i] * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + eps);
        }
        want.push(w.clone());
    }
    assert_path("adamw", &path, &want);
}

#[test]
fn lion_matches_the_algorithm_by_hand() {
    // Step 1 by hand: m = 0, so the direction is sign(g₀) = (-1, +1):
    // θ₁ = θ₀(1 - lr·λ) - lr·(-1, 1) with λ = 0.1.
    let config = LionConfig {
        weight_decay: 0.1,
        ..Default::default()
    };
    let (path, _) = run(OptimizerConfig::Lion(config), &LRS);
    assert!((path[0][0] - (0.5 * 0.99 + 0.1)).abs() < 1e-12);
    assert!((path[0][1] - (0.25 * 0.99 - 0.1)).abs() < 1e-12);
    // Chen et al. (2023), Algorithm 2.
    let (b1, b2, wd) = (0.9, 0.99, 0.1);
    let (mut w, mut m) = (START.to_vec(), vec![0.0; 2]);
    let mut want = Vec::new();
    for lr in LRS {
        let g = grad_of(&w);
        for i in 0..2 {
            let c = b1 * m[i] + (1.0 - b1) * g[i];
            let sign = if c > 0.0 {
                1.0
            } else if c < 0.0 {
                -1.0
            } else {
                0.0
            };
            w[i] -= lr * (sign + wd * w[i]);
            m[i] = b2 * m[i] + (1.0 - b2) * g[i];
        }
        want.push(w.clone());
    }
    assert_path("lion", &path, &want);
}

/// Shazeer & Stern (2018), Algorithm 4 (vectors) with β̂₂ₜ = 1 - t^-0.8, ε₁ = 1e-30,
/// update clipping at d = 1, no relative step, no parameter scaling.
fn adafactor_vector(lrs: &[f64], wd: f64) -> Vec<Vec<f64>> {
    let (mut w, mut v) = (START.to_vec(), vec![0.0; 2]);
    let mut want = Vec::new();
    for (t, lr) in lrs.iter().enumerate() {
        let g = grad_of(&w);
        let beta = 1.0 - ((t + 1) as f64).powf(-0.8);
        let mut u = [0.0; 2];
        for i in 0..2 {
            v[i] = beta * v[i] + (1.0 - beta) * (g[i] * g[i] + 1e-30);
            u[i] = g[i] / v[i].sqrt();
        }
        let rms = ((u[0] * u[0] + u[1] * u[1]) / 2.0).sqrt();
        let clip = rms.max(1.0);
        for i in 0..2 {
            w[i] = w[i] * (1.0 - lr * wd) - lr * u[i] / clip;
        }
        want.push(w.clone());
    }
    want
}

#[test]
fn adafactor_matches_the_algorithm_by_hand() {
    // Step 1 by hand: β̂₂₁ = 0, so v = g² and u = sign(g) with RMS 1 (no clipping):
    // θ₁ = θ₀ - lr·(-1, 1).
    let (path, _) = run(OptimizerConfig::Adafactor(AdafactorConfig::default()), &LRS);
    assert!((path[0][0] - 0.6).abs() < 1e-12 && (path[0][1] - 0.15).abs() < 1e-12);
    assert_path("adafactor", &path, &adafactor_vector(&LRS, 0.0));
    let config = AdafactorConfig {
        weight_decay: 0.2,
        ..Default::default()
    };
    let (path, _) = run(OptimizerConfig::Adafactor(config), &LRS);
    assert_path("adafactor (decay)", &path, &adafactor_vector(&LRS, 0.2));
}

#[test]
fn adafactor_factors_a_matrix_into_row_and_column_moments() {
    // Algorithm 5 on a 2×2 matrix: R and C are running means of (G² + ε₁) over columns
    // and rows; V̂ = R Cᵀ / mean(R).
    let start = [[0.5, -0.2], [0.1, 0.3]];
    let grad = |w: &[[f64; 2]; 2]| -> [[f64; 2]; 2] {
        let mut g = [[0.0; 2]; 2];
        for i in 0..2 {
            for j in 0..2 {
                g[i][j] = (1.0 + i as f64 + 2.0 * j as f64) * (w[i][j] - 1.0);
            }
        }
        g
    };
    let flat = start.iter().flatten().copied().collect::<Vec<f64>>();
    let v = BTreeMap::from([(
        "m".to_string(),
        Var::from_vec(flat, (2, 2), &Device::Cpu).unwrap(),
    )]);
    let mut opt =
        Optimizer::new(&v, OptimizerConfig::Adafactor(AdafactorConfig::default())).unwrap();
    let (mut w, mut r, mut c) = (start, [0.0; 2], [0.0; 2]);
    for (t, lr) in LRS.iter().enumerate() {
        let cur = v["m"].to_vec2::<f64>().unwrap();
        let cur = [[cur[0][0], cur[0][1]], [cur[1][0], cur[1][1]]];
        let g = grad(&cur);
        let gt =
            Tensor::from_vec(g.iter().flatten().copied().collect(), (2, 2), &Device::Cpu).unwrap();
        opt.step(&Grads(BTreeMap::from([("m".to_string(), gt)])), *lr)
            .unwrap();
        let g = grad(&w);
        let beta = 1.0 - ((t + 1) as f64).powf(-0.8);
        let sq = |i: usize, j: usize| g[i][j] * g[i][j] + 1e-30;
        for i in 0..2 {
            r[i] = beta * r[i] + (1.0 - beta) * (sq(i, 0) + sq(i, 1)) / 2.0;
        }
        for j in 0..2 {
            c[j] = beta * c[j] + (1.0 - beta) * (sq(0, j) + sq(1, j)) / 2.0;
        }
        let rmean = (r[0] + r[1]) / 2.0;
        let mut u = [[0.0; 2]; 2];
        let mut ss = 0.0;
        for i in 0..2 {
            for j in 0..2 {
                u[i][j] = g[i][j] / (r[i] * c[j] / rmean).sqrt();
                ss += u[i][j] * u[i][j];
            }
        }
        let clip = (ss / 4.0).sqrt().max(1.0);
        for i in 0..2 {
            for j in 0..2 {
                w[i][j] -= lr * u[i][j] / clip;
            }
        }
        let got = v["m"].to_vec2::<f64>().unwrap();
        for i in 0..2 {
            for j in 0..2 {
                assert!(
                    (got[i][j] - w[i][j]).abs() <= TOL,
                    "step {}: m[{i}][{j}] = {}, want {}",
                    t + 1,
                    got[i][j],
                    w[i][j]
                );
            }
        }
    }
}

#[test]
fn dog_matches_the_algorithm_by_hand() {
    // Step 1 by hand: r̄ = 1e-6·(1 + ‖x₀‖), G = ‖g₀‖² + 1e-8, η = r̄/√G.
    let (path, steps) = run(OptimizerConfig::Dog(DogConfig::default()), &[1.0; 6]);
    let x0_norm = (0.5f64 * 0.5 + 0.25 * 0.25).sqrt();
    let g0_sq = 1.5f64 * 1.5 + 5.0 * 5.0;
    let eta0 = 1e-6 * (1.0 + x0_norm) / (g0_sq + 1e-8).sqrt();
    assert!((steps[0] - eta0).abs() < 1e-15, "{} vs {eta0}", steps[0]);
    // Ivgi et al. (2023), Algorithm 1 (the reference treats all parameters as one vector).
    let (mut w, mut rbar, mut gsum) = (START.to_vec(), 0.0f64, 0.0);
    let mut want = Vec::new();
    let mut want_eta = Vec::new();
    for t in 0..6 {
        let g = grad_of(&w);
        let gg = g[0] * g[0] + g[1] * g[1];
        if t == 0 {
            rbar = 1e-6 * (1.0 + x0_norm);
            gsum = gg + 1e-8;
        } else {
            let d = ((w[0] - START[0]).powi(2) + (w[1] - START[1]).powi(2)).sqrt();
            rbar = rbar.max(d);
            gsum += gg;
        }
        let eta = rbar / gsum.sqrt();
        for i in 0..2 {
            w[i] -= eta * g[i];
        }
        want.push(w.clone());
        want_eta.push(eta);
    }
    assert_path("dog", &path, &want);
    for (a, b) in steps.iter().zip(&want_eta) {
        assert!((a - b).abs() <= 1e-12 * b.max(1e-12), "{a} vs {b}");
    }
    // After the first step the step size grows as the iterates move away from x₀.
    assert!(steps[2..].windows(2).all(|w| w[1] > w[0]), "{steps:?}");
    assert!(steps[5] > 3.0 * steps[1], "{steps:?}");
}

#[test]
fn dadapt_adam_matches_the_algorithm_by_hand() {
    // Defazio & Mishchenko (2023), Algorithm 3 as the authors' DAdaptAdam (v3) runs it:
    // decoupled decay, no bias correction, d₀ = 1e-6, unbounded growth.
    let wd = 0.01;
    let config = DAdaptConfig {
        weight_decay: wd,
        ..Default::default()
    };
    let lrs = [1.0, 1.0, 1.0, 0.5, 0.5, 0.25];
    let (path, steps) = run(OptimizerConfig::DAdaptAdam(config), &lrs);
    // Step 1 by hand: s = 0 so the numerator is 0 and d stays d₀; m = dlr·(1-β₁)·g,
    // v = (1-β₂)·g², so θ₁ = θ₀(1 - λ·d₀) - d₀·0.1·g / (√0.001·|g| + 1e-8).
    let d0: f64 = 1e-6;
    let g0 = [-1.5f64, 5.0];
    for i in 0..2 {
        let want = START[i] * (1.0 - wd * d0)
            - d0 * 0.1 * g0[i] / ((0.001f64).sqrt() * g0[i].abs() + 1e-8);
        assert!(
            (path[0][i] - want).abs() < 1e-15,
            "{} vs {want}",
            path[0][i]
        );
    }
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let sb2 = b2.sqrt();
    let (mut w, mut m, mut v, mut s) = (START.to_vec(), [0.0f64; 2], [0.0f64; 2], [0.0f64; 2]);
    let (mut d, mut num) = (d0, 0.0);
    let mut want = Vec::new();
    let mut want_dlr = Vec::new();
    for lr in lrs {
        let g = grad_of(&w);
        let dlr = d * lr;
        let mut acc = 0.0;
        let mut l1 = 0.0;
        for i in 0..2 {
            acc += dlr * g[i] * s[i] / (v[i].sqrt() + eps);
            m[i] = b1 * m[i] + dlr * (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            s[i] = sb2 * s[i] + dlr * (1.0 - sb2) * g[i];
            l1 += s[i].abs();
        }
        num = sb2 * num + (1.0 - sb2) * acc;
        let d_hat = num / ((1.0 - sb2) * l1);
        d = d.max(d_hat);
        for i in 0..2 {
            w[i] = w[i] * (1.0 - wd * dlr) - m[i] / (v[i].sqrt() + eps);
        }
        want.push(w.clone());
        want_dlr.push(dlr);
    }
    assert_path("dadapt_adam", &path, &want);
    for (a, b) in steps.iter().zip(&want_dlr) {
        assert!((a - b).abs() <= 1e-12 * b, "{a} vs {b}");
    }
    assert!(steps[3] > steps[0], "d grows: {steps:?}");
}

fn every_config() -> Vec<OptimizerConfig> {
    vec![
        OptimizerConfig::AdamW(AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        }),
        OptimizerConfig::Lion(LionConfig::default()),
        OptimizerConfig::Adafactor(AdafactorConfig::default()),
        OptimizerConfig::Dog(DogConfig::default()),
        OptimizerConfig::DAdaptAdam(DAdaptConfig::default()),
    ]
}

/// A vector and a matrix (Adafactor factors the second), in f32 as training runs.
fn mixed_vars() -> BTreeMap<String, Var> {
    BTreeMap::from([
        (
            "a.lora_A.weight".to_string(),
            Var::from_vec(
                vec![0.3f32, -0.1, 0.7, 0.2, -0.5, 0.05],
                (2, 3),
                &Device::Cpu,
            )
            .unwrap(),
        ),
        (
            "a.lora_B.weight".to_string(),
            Var::from_vec(vec![0.0f32, 0.1], 2, &Device::Cpu).unwrap(),
        ),
    ])
}

fn mixed_grads(vars: &BTreeMap<String, Var>, k: f32) -> Grads {
    Grads(
        vars.iter()
            .map(|(n, v)| {
                let t = v.as_detached_tensor();
                let g = ((t.sin().unwrap() * f64::from(k)).unwrap() + 0.3).unwrap();
                (n.clone(), g)
            })
            .collect(),
    )
}

#[test]
fn every_optimizer_resumes_bit_for_bit_from_its_saved_state() {
    for config in every_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("optimizer.safetensors");
        let a = mixed_vars();
        let mut opt = Optimizer::new(&a, config).unwrap();
        opt.set_lr_scale(|n| n.ends_with("lora_B.weight"), 4.0);
        for k in 0..3 {
            opt.step(&mixed_grads(&a, k as f32 + 1.0), 0.05).unwrap();
        }
        opt.save(&file).unwrap();
        // A fresh optimizer over a copy of the parameters, loaded from the file.
        let b: BTreeMap<String, Var> = a
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    Var::from_tensor(&v.as_detached_tensor().copy().unwrap()).unwrap(),
                )
            })
            .collect();
        let mut resumed = Optimizer::new(&b, config).unwrap();
        resumed.set_lr_scale(|n| n.ends_with("lora_B.weight"), 4.0);
        resumed.load(&file, &Device::Cpu).unwrap();
        assert_eq!(resumed.steps(), 3, "{config:?}");
        for k in 3..6 {
            let sa = opt.step(&mixed_grads(&a, k as f32), 0.05).unwrap();
            let sb = resumed.step(&mixed_grads(&b, k as f32), 0.05).unwrap();
            assert_eq!(sa.to_bits(), sb.to_bits(), "{config:?}: step size");
        }
        for (n, v) in &a {
            assert_eq!(
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b[n].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{config:?}: {n}"
            );
        }
    }
}

#[test]
fn a_state_file_of_another_optimizer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("optimizer.safetensors");
    let v = mixed_vars();
    let mut adamw = Optimizer::new(&v, OptimizerConfig::default()).unwrap();
    adamw.step(&mixed_grads(&v, 1.0), 0.01).unwrap();
    adamw.save(&file).unwrap();
    let mut lion = Optimizer::new(&v, OptimizerConfig::Lion(LionConfig::default())).unwrap();
    let err = lion.load(&file, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("tuna-adamw") && err.contains("tuna-lion"),
        "{err}"
    );
}

#[test]
fn lr_scale_applies_per_parameter() {
    let p = BTreeMap::from([
        (
            "x.lora_A.weight".to_string(),
            Var::from_vec(vec![0f32], 1, &Device::Cpu).unwrap(),
        ),
        (
            "x.lora_B.weight".to_string(),
            Var::from_vec(vec![0f32], 1, &Device::Cpu).unwrap(),
        ),
    ]);
    let g = Grads(
        p.keys()
            .map(|k| (k.clone(), Tensor::new(&[1f32], &Device::Cpu).unwrap()))
            .collect(),
    );
    for config in [
        OptimizerConfig::default(),
        OptimizerConfig::Lion(LionConfig::default()),
        OptimizerConfig::Adafactor(AdafactorConfig::default()),
    ] {
        for var in p.values() {
            var.set(&var.zeros_like().unwrap()).unwrap();
        }
        let mut opt = Optimizer::new(&p, config).unwrap();
        opt.set_lr_scale(|n| n.ends_with("lora_B.weight"), 16.0);
        opt.step(&g, 0.01).unwrap();
        let a = p["x.lora_A.weight"].to_vec1::<f32>().unwrap()[0];
        let b = p["x.lora_B.weight"].to_vec1::<f32>().unwrap()[0];
        assert!((b / a - 16.0).abs() < 1e-4, "{config:?}: {a} {b}");
    }
}

#[test]
fn mezo_matches_the_algorithm_by_hand() {
    // Malladi et al. (2023), Algorithm 1 on the quadratic: z from the seeded stream of
    // (seed, step, parameter), L± at θ ± εz, θ ← θ(1 - lr·λ) - lr·(L₊ - L₋)/(2ε)·z.
    use crate::engine::rng;
    let (seed, eps, wd) = (7u64, 1e-3, 0.01);
    let f = |w: &[f64]| -> f64 {
        w.iter()
            .zip(CURV.iter().zip(TARGET))
            .map(|(w, (c, t))| 0.5 * c * (w - t) * (w - t))
            .sum()
    };
    let v = vars(&START);
    let mezo = Mezo::new(
        MezoConfig {
            epsilon: eps,
            weight_decay: wd,
        },
        seed,
    );
    let mut w = START.to_vec();
    let lrs = [0.1, 0.1, 0.05];
    for (step, lr) in lrs.iter().enumerate() {
        let mut seen = Vec::new();
        let mut loss = || -> Result<f64, OptimError> {
            let cur = values(&v);
            seen.push(cur.clone());
            Ok(f(&cur))
        };
        let got = mezo.step(&v["w"].clone().into_map(), step as u64, *lr, &mut loss);
        let got = got.unwrap();
        let mut g = rng::stream(seed, &format!("mezo/{step}/w"));
        let z: Vec<f64> = (0..2).map(|_| rng::normal(&mut g)).collect();
        let plus: Vec<f64> = (0..2).map(|i| w[i] + eps * z[i]).collect();
        let minus: Vec<f64> = (0..2).map(|i| w[i] - eps * z[i]).collect();
        // The closure saw exactly θ + εz, then θ − εz.
        for i in 0..2 {
            assert!((seen[0][i] - plus[i]).abs() < 1e-12 && (seen[1][i] - minus[i]).abs() < 1e-12);
        }
        let pg = (f(&plus) - f(&minus)) / (2.0 * eps);
        assert!(
            (got.projected_grad - pg).abs() < 1e-6,
            "{} vs {pg}",
            got.projected_grad
        );
        for i in 0..2 {
            w[i] = w[i] * (1.0 - lr * wd) - lr * pg * z[i];
        }
        let now = values(&v);
        for i in 0..2 {
            assert!(
                (now[i] - w[i]).abs() <= TOL,
                "step {step}: {} vs {}",
                now[i],
                w[i]
            );
        }
    }
    assert!(f(&values(&v)) < f(&START), "three steps lower the loss");
}

/// One parameter as the map the optimizers take.
trait IntoMap {
    fn into_map(self) -> BTreeMap<String, Var>;
}

impl IntoMap for Var {
    fn into_map(self) -> BTreeMap<String, Var> {
        BTreeMap::from([("w".to_string(), self)])
    }
}
