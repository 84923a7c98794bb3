//! Gradient tests: every adapter Var receives a gradient through the full model, LoRA
//! gradients match finite differences, and merged weights reproduce the adapter output.

use candle_core::{DType, Tensor};

use super::util::{lm_loss, max_abs_diff, perturb_b, random_ids, tiny_model};
use crate::engine::adapters::set::{merge_all, unmerge_all};
use crate::engine::adapters::{
    AdapterConfig, AdapterError, AdapterSet, LoraInit, Mode, TargetModules,
};
use crate::engine::model::tiny::TinySpec;

fn methods() -> Vec<(&'static str, AdapterConfig)> {
    let lora = AdapterConfig::lora(4, 8.0, TargetModules::all_linear());
    let rslora = AdapterConfig {
        use_rslora: true,
        ..lora.clone()
    };
    let dora = AdapterConfig {
        use_dora: true,
        ..lora.clone()
    };
    let dropout = AdapterConfig {
        lora_dropout: 0.1,
        ..lora.clone()
    };
    let head = AdapterConfig::lora(
        2,
        4.0,
        TargetModules::names(["q_proj", "down_proj", "lm_head"]),
    );
    vec![
        ("lora", lora),
        ("rslora", rslora),
        ("dora", dora),
        ("dropout", dropout),
        ("lm_head", head),
    ]
}

#[test]
fn every_adapter_var_gets_a_nonzero_gradient() {
    let spec = TinySpec::default();
    let ids = random_ids(2, 9, spec.vocab, 3);
    for (name, cfg) in methods() {
        let mut model = tiny_model(&spec, 5, DType::F32);
        let set = AdapterSet::attach(&mut model, &cfg).unwrap();
        perturb_b(&set, 9);
        let mode = Mode::Train { seed: 1, pass: 0 };
        let grads = lm_loss(&model, &ids, &mode).backward().unwrap();
        assert!(!set.vars().is_empty());
        for (key, var) in set.vars() {
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("{name}: no gradient for {key}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{name}: zero gradient for {key}");
        }
    }
}

#[test]
fn adapters_start_as_identity_and_use_peft_names_and_shapes() {
    let spec = TinySpec::default();
    let ids = random_ids(1, 7, spec.vocab, 4);
    let mut model = tiny_model(&spec, 5, DType::F32);
    let before = model.forward(&ids, &Mode::Eval).unwrap();
    let cfg = AdapterConfig {
        use_dora: true,
        ..AdapterConfig::lora(4, 8.0, TargetModules::names(["q_proj", "v_proj"]))
    };
    let set = AdapterSet::attach(&mut model, &cfg).unwrap();
    let after = model.forward(&ids, &Mode::Eval).unwrap();
    assert!(max_abs_diff(&before, &after) < 1e-5);
    let p = "base_model.model.model.layers.1.self_attn";
    let shape = |k: &str| set.vars()[k].dims().to_vec();
    assert_eq!(shape(&format!("{p}.q_proj.lora_A.weight")), vec![4, 32]);
    assert_eq!(shape(&format!("{p}.q_proj.lora_B.weight")), vec![32, 4]);
    assert_eq!(shape(&format!("{p}.v_proj.lora_B.weight")), vec![16, 4]);
    assert_eq!(
        shape(&format!("{p}.v_proj.lora_magnitude_vector")),
        vec![16]
    );
    assert_eq!(set.vars().len(), 2 * 2 * 3);
    let b = set.vars()[&format!("{p}.q_proj.lora_B.weight")].as_tensor();
    assert_eq!(
        b.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

#[test]
fn unknown_target_module_is_an_error_naming_it() {
    let mut model = tiny_model(&TinySpec::default(), 5, DType::F32);
    let cfg = AdapterConfig::lora(4, 8.0, TargetModules::names(["q_proj", "query"]));
    let err = AdapterSet::attach(&mut model, &cfg).unwrap_err();
    assert!(
        matches!(&err, AdapterError::UnknownTarget { target, .. } if target == "query"),
        "{err}"
    );
}

#[test]
fn same_seed_same_init_and_targets_do_not_shift_each_other() {
    let spec = TinySpec::default();
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let a = |targets: &[&str]| {
        let mut m = tiny_model(&spec, 5, DType::F32);
        let cfg = AdapterConfig::lora(4, 8.0, TargetModules::names(targets.iter().copied()));
        let set = AdapterSet::attach(&mut m, &cfg).unwrap();
        set.vars()[key].as_tensor().clone()
    };
    let x = a(&["q_proj"]);
    let y = a(&["q_proj", "k_proj", "up_proj"]);
    assert_eq!(max_abs_diff(&x, &y), 0.0);
    let bound = 1.0 / (32f64).sqrt();
    assert!(
        x.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
            <= bound
    );
}

/// Central differences in f64 on a few coordinates of lora_A and lora_B.
#[test]
fn lora_gradients_match_finite_differences() {
    let spec = TinySpec {
        vocab: 64,
        ..TinySpec::default()
    };
    let ids = random_ids(1, 6, spec.vocab, 8);
    for rslora in [false, true] {
        let mut model = tiny_model(&spec, 6, DType::F64);
        let cfg = AdapterConfig {
            use_rslora: rslora,
            ..AdapterConfig::lora(
                2,
                4.0,
                TargetModules::names(["q_proj", "v_proj", "down_proj"]),
            )
        };
        let set = AdapterSet::attach(&mut model, &cfg).unwrap();
        perturb_b(&set, 2);
        let loss_of = |m: &crate::engine::model::Llama| {
            lm_loss(m, &ids, &Mode::Eval).to_scalar::<f64>().unwrap()
        };
        let grads = lm_loss(&model, &ids, &Mode::Eval).backward().unwrap();
        for (key, var) in set.vars() {
            let analytic = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let orig = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            // The coordinate with the largest gradient plus one fixed one.
            let (imax, _) = analytic.iter().enumerate().fold((0, 0.0), |acc, (i, g)| {
                if g.abs() > acc.1 { (i, g.abs()) } else { acc }
            });
            for i in [imax, orig.len() / 2] {
                let eps = 1e-5;
                let eval = |delta: f64| {
                    let mut v = orig.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), var.device()).unwrap())
                        .unwrap();
                    loss_of(&model)
                };
                let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
                var.set(&Tensor::from_vec(orig.clone(), var.shape(), var.device()).unwrap())
                    .unwrap();
                let a = analytic[i];
                let rel = (a - numeric).abs() / a.abs().max(numeric.abs()).max(1e-8);
                assert!(
                    rel < 1e-2 || (a - numeric).abs() < 1e-9,
                    "{key}[{i}]: analytic {a}, numeric {numeric}, rel {rel}"
                );
            }
        }
    }
}

#[test]
fn merged_weights_reproduce_adapter_output_and_unmerge_restores() {
    let spec = TinySpec::default();
    let ids = random_ids(2, 7, spec.vocab, 10);
    for dora in [false, true] {
        let mut model = tiny_model(&spec, 7, DType::F32);
        let base = model.forward(&ids, &Mode::Eval).unwrap();
        let cfg = AdapterConfig {
            use_dora: dora,
            ..AdapterConfig::lora(4, 8.0, TargetModules::all_linear())
        };
        let set = AdapterSet::attach(&mut model, &cfg).unwrap();
        perturb_b(&set, 3);
        if dora {
            // Move the magnitudes away from ‖W‖ so the DoRA rescaling matters.
            for (k, v) in set.vars() {
                if k.ends_with("lora_magnitude_vector") {
                    v.set(&(v.as_tensor() * 1.1).unwrap()).unwrap();
                }
            }
        }
        let adapted = model.forward(&ids, &Mode::Eval).unwrap();
        assert!(
            max_abs_diff(&base, &adapted) > 1e-3,
            "adapter changes the output"
        );
        merge_all(&mut model).unwrap();
        let merged = model.forward(&ids, &Mode::Eval).unwrap();
        let d = max_abs_diff(&adapted, &merged);
        assert!(d < 1e-4, "dora={dora}: merged differs by {d}");
        unmerge_all(&mut model);
        let again = model.forward(&ids, &Mode::Eval).unwrap();
        assert_eq!(max_abs_diff(&adapted, &again), 0.0);
    }
}

#[test]
fn pissa_keeps_the_output_and_moves_the_principal_part_into_the_adapter() {
    let spec = TinySpec::default();
    let ids = random_ids(1, 8, spec.vocab, 14);
    let mut model = tiny_model(&spec, 5, DType::F32);
    let before = model.forward(&ids, &Mode::Eval).unwrap();
    let cfg = AdapterConfig {
        init: LoraInit::Pissa,
        ..AdapterConfig::lora(4, 8.0, TargetModules::names(["q_proj", "down_proj"]))
    };
    let set = AdapterSet::attach(&mut model, &cfg).unwrap();
    let after = model.forward(&ids, &Mode::Eval).unwrap();
    let d = max_abs_diff(&before, &after);
    assert!(d < 1e-4, "PiSSA init changed the output by {d}");
    assert_eq!(set.initial().len(), set.vars().len());
    for (k, v) in set.vars() {
        let n = v
            .as_tensor()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0, "{k} is zero");
    }
    let dora = AdapterConfig {
        use_dora: true,
        ..cfg
    };
    assert!(AdapterSet::attach(&mut tiny_model(&spec, 5, DType::F32), &dora).is_err());
}
