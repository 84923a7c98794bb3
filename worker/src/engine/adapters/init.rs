//! Initial values for LoRA factors, drawn from explicit seeded streams.

use candle_core::{Device, Result, Tensor};
use rand::Rng;

use super::LoraInit;
use crate::engine::rng;

/// `lora_A` `[r, in]` (f32) for the module `key`. Each module has its own stream (seeded by
/// `seed` and its key), so targeting one more module never changes the others' init.
pub fn lora_a(
    r: usize,
    in_features: usize,
    init: LoraInit,
    seed: u64,
    key: &str,
    device: &Device,
) -> Result<Tensor> {
    let mut g = rng::stream(seed, &format!("lora_A/{key}"));
    let n = r * in_features;
    let values: Vec<f32> = match init {
        LoraInit::Default => {
            // torch kaiming_uniform_(a=√5) on [r, in]: bound = √3·√(2/(1+5))/√in = 1/√in.
            let bound = 1.0 / (in_features as f32).sqrt();
            (0..n).map(|_| g.random_range(-bound..bound)).collect()
        }
        // PiSSA factors come from the weight (see `pissa`); this is only a fallback.
        LoraInit::Gaussian | LoraInit::Pissa | LoraInit::LoraGa => {
            let std = 1.0 / r as f64;
            (0..n).map(|_| (normal(&mut g) * std) as f32).collect()
        }
    };
    Tensor::from_vec(values, (r, in_features), device)
}

pub use crate::engine::rng::normal;

/// PiSSA factors for `weight` `[out, in]`: with `W ≈ U S Vᵀ` (top r), `A = √(S/s) Vᵀ`
/// `[r, in]` and `B = U √(S/s)` `[out, r]`, so `s·B·A` is the principal part of `W`
/// (PEFT `pissa_init`). Returns f32 `(A, B)`.
pub fn pissa(
    weight: &Tensor,
    r: usize,
    scale: f64,
    seed: u64,
    key: &str,
) -> Result<(Tensor, Tensor)> {
    let (out_f, in_f) = weight.dims2()?;
    let w: Vec<f64> = weight
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let seed = rng::stream(seed, &format!("pissa/{key}")).random::<u64>();
    let t = super::svd::truncated(&w, out_f, in_f, r, seed);
    let k = t.s.len();
    let root: Vec<f64> = t.s.iter().map(|s| (s / scale).max(0.0).sqrt()).collect();
    // Rank may be limited by the matrix size; missing directions stay zero.
    let mut a = vec![0f32; r * in_f];
    let mut b = vec![0f32; out_f * r];
    for c in 0..k {
        for j in 0..in_f {
            a[c * in_f + j] = (root[c] * t.vt[c * in_f + j]) as f32;
        }
        for i in 0..out_f {
            b[i * r + c] = (t.u[i * k + c] * root[c]) as f32;
        }
    }
    let device = weight.device();
    Ok((
        Tensor::from_vec(a, (r, in_f), device)?,
        Tensor::from_vec(b, (out_f, r), device)?,
    ))
}
