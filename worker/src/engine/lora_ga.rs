//! LoRA-GA init (Wang et al. 2024, "LoRA-GA: Low-Rank Adaptation with Gradient
//! Approximation"): with `G = U S Vᵀ` the gradient of the loss w.r.t. a frozen weight on
//! one batch, `B₀ = U[:, :r]·c` and `A₀ = V[:, r:2r]ᵀ·c` with `c = out^¼/√γ` ("stable
//! output" scaling), so the first LoRA step moves `W` along the best rank-2r approximation
//! of the full fine-tuning step. The base becomes `W - s·B₀A₀` so the model starts
//! unchanged; export converts like PiSSA (the update relative to `W` is `s(BA - B₀A₀)`).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use rand::Rng;

use crate::engine::adapters::{
    AdapterConfig, AdapterError, AdapterSet, LoraInit, Mode, PEFT_PREFIX, svd, targets,
};
use crate::engine::data::Batch;
use crate::engine::model::CausalLm;
use crate::engine::model::ops::masked_nll_sum;
use crate::engine::rng;

/// γ of the paper's stable-output scaling (the authors' default).
pub const DEFAULT_GAMMA: f64 = 16.0;

/// Attaches LoRA to the modules `config` selects with LoRA-GA factors estimated from
/// `batches` (the token-mean loss over all of them). `config.init` is ignored.
pub fn attach<M: CausalLm>(
    model: &mut M,
    config: &AdapterConfig,
    batches: &[Batch],
    gamma: f64,
) -> Result<AdapterSet, AdapterError> {
    if batches.is_empty() {
        return Err(AdapterError::Invalid(
            "LoRA-GA needs at least one batch".into(),
        ));
    }
    if !(gamma.is_finite() && gamma > 0.0) {
        return Err(AdapterError::Invalid(
            "LoRA-GA gamma must be positive".into(),
        ));
    }
    let plain = AdapterConfig {
        init: LoraInit::Default,
        ..config.clone()
    };
    plain.validate()?;
    if plain.use_dora {
        return Err(AdapterError::Invalid(
            "PiSSA and LoRA-GA inits cannot be combined with DoRA".into(),
        ));
    }
    let paths: Vec<String> = model.linears().into_iter().map(|(p, _)| p).collect();
    let selected = targets::select(&paths, &model.output_modules(), &plain.target_modules)?;

    // 1. Gradients of the frozen weights: swap in Vars, run the batches, swap back.
    let mut originals = BTreeMap::new();
    let mut probes = BTreeMap::new();
    for (path, lin) in model.linears_mut() {
        if selected.contains(&path) {
            let w = lin.weight().clone();
            let var = Var::from_tensor(&w)?;
            lin.set_base_weight(var.as_tensor().clone());
            originals.insert(path.clone(), w);
            probes.insert(path, var);
        }
    }
    let grads = weight_grads(model, batches, &probes);
    for (path, lin) in model.linears_mut() {
        if let Some(w) = originals.remove(&path) {
            lin.set_base_weight(w);
        }
    }
    let grads = grads?;

    // 2. Plain LoRA, then overwrite A, B and the base with the gradient factors.
    let mut set = AdapterSet::attach(model, &plain)?;
    let scale = plain.scale();
    let r = plain.r;
    for (path, lin) in model.linears_mut() {
        let Some(g) = grads.get(&path) else {
            continue;
        };
        let (out_f, in_f) = g.dims2()?;
        let key = format!("{}{path}", PEFT_PREFIX);
        let flat: Vec<f64> = g.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let seed = rng::stream(plain.seed, &format!("lora_ga/{key}")).random::<u64>();
        let t = svd::truncated(&flat, out_f, in_f, 2 * r, seed);
        let k = t.s.len();
        let c = (out_f as f64).powf(0.25) / gamma.sqrt();
        let mut a = vec![0f32; r * in_f];
        let mut b = vec![0f32; out_f * r];
        for col in 0..r.min(k) {
            for i in 0..out_f {
                b[i * r + col] = (t.u[i * k + col] * c) as f32;
            }
        }
        for row in 0..r {
            let src = r + row;
            if src >= k {
                break;
            }
            for j in 0..in_f {
                a[row * in_f + j] = (t.vt[src * in_f + j] * c) as f32;
            }
        }
        let dev = lin.weight().device().clone();
        let lora = lin
            .lora()
            .ok_or_else(|| AdapterError::Invalid(format!("no LoRA attached to `{path}`")))?;
        let wd = lora.a.dtype();
        let a0 = Tensor::from_vec(a, (r, in_f), &dev)?.to_dtype(wd)?;
        let b0 = Tensor::from_vec(b, (out_f, r), &dev)?.to_dtype(wd)?;
        lora.a.set(&a0)?;
        lora.b.set(&b0)?;
        let base_dtype = lin.weight().dtype();
        let residual = (lin.weight().to_dtype(wd)? - (b0.matmul(&a0)? * scale)?)?;
        lin.set_base_weight(residual.to_dtype(base_dtype)?);
        set.set_initial(format!("{key}.lora_A.weight"), a0);
        set.set_initial(format!("{key}.lora_B.weight"), b0);
    }
    Ok(set)
}

/// dL/dW for every probed weight, L the token-mean masked NLL over `batches`.
fn weight_grads<M: CausalLm>(
    model: &M,
    batches: &[Batch],
    probes: &BTreeMap<String, Var>,
) -> Result<BTreeMap<String, Tensor>, AdapterError> {
    let denom = batches.iter().map(|b| b.num_targets).sum::<usize>().max(1) as f64;
    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    for batch in batches {
        let logits = model
            .forward(&batch.input_ids, &Mode::Eval)
            .map_err(|e| AdapterError::Invalid(format!("LoRA-GA forward: {e}")))?;
        let (b, t, v) = logits.dims3()?;
        let loss =
            (masked_nll_sum(&logits.reshape((b * t, v))?, &batch.labels, &batch.mask)? / denom)?;
        let store = loss.backward()?;
        for (path, var) in probes {
            let g = store
                .get(var)
                .ok_or_else(|| AdapterError::Invalid(format!("no gradient reached `{path}`")))?
                .to_dtype(DType::F32)?;
            let sum = match out.remove(path) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            out.insert(path.clone(), sum);
        }
    }
    Ok(out)
}
