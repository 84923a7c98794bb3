//! The hand-written LoRA backward ([`crate::engine::model::LossTape`]) against candle's
//! autograd: the same loss and the same gradient for every adapter parameter, and a
//! refusal (so the trainer falls back to autograd) for everything it does not cover.

use candle_core::{DType, Device, Tensor};

use super::util::{perturb_b, random_ids, rel_diff, tiny_model};
use crate::engine::adapters::{AdapterConfig, AdapterSet, Mode, TargetModules, methods};
use crate::engine::model::tiny::TinySpec;

/// Inputs, labels and a mask with some zeros (as padding and prompt masking give).
fn batch(spec: &TinySpec, b: usize, t: usize) -> (Tensor, Tensor, Tensor) {
    let ids = random_ids(b, t + 1, spec.vocab, 11);
    let input = ids.narrow(1, 0, t).unwrap().contiguous().unwrap();
    let labels = ids.narrow(1, 1, t).unwrap().flatten_all().unwrap();
    let mask: Vec<f32> = (0..b * t)
        .map(|i| if i % 7 == 2 || i % t == 0 { 0.0 } else { 1.0 })
        .collect();
    let mask = Tensor::from_vec(mask, b * t, &Device::Cpu).unwrap();
    (input, labels, mask)
}

#[test]
fn tape_loss_and_gradients_match_autograd() {
    let gqa = TinySpec::default();
    let tied = TinySpec {
        tie_embeddings: true,
        kv_heads: 4,
        layers: 3,
        ..TinySpec::default()
    };
    let configs = [
        AdapterConfig::lora(4, 8.0, TargetModules::all_linear()),
        // Some linears stay frozen; rsLoRA changes only the scale.
        AdapterConfig {
            use_rslora: true,
            ..AdapterConfig::lora(
                3,
                5.0,
                TargetModules::names(["k_proj", "o_proj", "up_proj"]),
            )
        },
    ];
    for (dtype, tol) in [(DType::F64, 1e-9), (DType::F32, 1e-4)] {
        for spec in [&gqa, &tied] {
            for cfg in &configs {
                let mut model = tiny_model(spec, 5, dtype);
                let set = AdapterSet::attach(&mut model, cfg).unwrap();
                perturb_b(&set, 9);
                let (input, labels, mask) = batch(spec, 3, 10);
                let mode = Mode::Train { seed: 1, pass: 0 };
                let scale = 1.0 / 17.0;
                let tape = model
                    .loss_tape(&input, &labels, &mask, &mode)
                    .unwrap()
                    .expect("plain LoRA runs on the tape");
                let nll = tape.nll_sum;
                let grads = tape.backward(scale).unwrap();

                let auto = model
                    .masked_nll_sum_flat(&input, &labels, &mask, &mode)
                    .unwrap();
                let auto_nll = auto
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert!(
                    (nll - auto_nll).abs() <= tol * auto_nll.abs(),
                    "{dtype:?}: loss {nll} vs autograd {auto_nll}"
                );
                let store = (auto * scale).unwrap().backward().unwrap();
                assert_eq!(grads.len(), set.vars().len());
                for (name, var) in set.vars() {
                    let want = store.get(var).unwrap();
                    let got = grads
                        .get(name)
                        .unwrap_or_else(|| panic!("no gradient for {name}"));
                    assert_eq!(got.dims(), want.dims(), "{name}");
                    let d = rel_diff(got, want);
                    assert!(d <= tol, "{dtype:?} {name}: relative difference {d}");
                }
            }
        }
    }
}

#[test]
fn tape_declines_what_it_cannot_differentiate() {
    let spec = TinySpec::default();
    let (input, labels, mask) = batch(&spec, 2, 6);
    let train = Mode::Train { seed: 1, pass: 0 };
    let lora = AdapterConfig::lora(4, 8.0, TargetModules::all_linear());
    let declined = [
        (
            "dora",
            AdapterConfig {
                use_dora: true,
                ..lora.clone()
            },
        ),
        (
            "dropout",
            AdapterConfig {
                lora_dropout: 0.1,
                ..lora.clone()
            },
        ),
        (
            "lm_head",
            AdapterConfig::lora(2, 4.0, TargetModules::names(["q_proj", "lm_head"])),
        ),
    ];
    for (name, cfg) in declined {
        let mut model = tiny_model(&spec, 5, DType::F32);
        AdapterSet::attach(&mut model, &cfg).unwrap();
        let tape = model.loss_tape(&input, &labels, &mask, &train).unwrap();
        assert!(tape.is_none(), "{name} must fall back to autograd");
        if name == "dropout" {
            // Without dropout in this pass (evaluation) the tape applies again.
            let eval = model
                .loss_tape(&input, &labels, &mask, &Mode::Eval)
                .unwrap();
            assert!(eval.is_some());
        }
    }
    for (name, method) in [
        (
            "ia3",
            methods::Method::Ia3 {
                target_modules: None,
                feedforward_modules: None,
            },
        ),
        (
            "prompt",
            methods::Method::PromptTuning {
                num_virtual_tokens: 3,
            },
        ),
        ("full", methods::Method::Full),
    ] {
        let mut model = tiny_model(&spec, 5, DType::F32);
        methods::attach(&mut model, &method, 1).unwrap();
        let tape = model.loss_tape(&input, &labels, &mask, &train).unwrap();
        assert!(tape.is_none(), "{name} must fall back to autograd");
    }
}
