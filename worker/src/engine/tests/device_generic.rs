//! The device-generic path is the tested maths: on CUDA (and for bf16/f16) the engine skips
//! the fused CPU kernels and the hand-written backward and runs composed ops through candle's
//! autograd. Forcing that path on the CPU ([`Policy::Composed`]) must give the same loss and
//! the same gradient for every trainable tensor as the fused path, for every method and
//! objective the trainer runs; and a bf16 base (what CUDA trains on by default) must track
//! the f32 loss curve.

use candle_core::{DType, Device, Tensor};

use super::util::{perturb_b, rel_diff, tiny_model};
use crate::engine::adapters::methods::{Method, attach};
use crate::engine::adapters::{AdapterConfig, AdapterSet, Mode, TargetModules};
use crate::engine::data::classify::{ClassBatch, ClassExample};
use crate::engine::data::jsonl::PreferencePrompt;
use crate::engine::data::{
    Batch, Batchable, ByteTokenizer, Example, PairExample, Record, pairs_from_records,
};
use crate::engine::kernels::{Policy, with_policy};
use crate::engine::model::bert::{Bert, ClassifierHead, TinyBertSpec};
use crate::engine::model::tiny::TinySpec;
use crate::engine::model::{Llama, Weights};
use crate::engine::trainer::preference::PreferenceObjective;
use crate::engine::trainer::{
    CausalLmObjective, ClassificationObjective, Event, Objective, TrainConfig, Trainer,
};

/// Largest relative difference of loss and of any gradient between the two paths.
const TOLERANCE: f64 = 1e-5;

const TEXTS: [&str; 3] = [
    "the quick brown fox jumps",
    "over the lazy dog, again and again",
    "lorem ipsum",
];

fn examples() -> Vec<Example> {
    TEXTS
        .iter()
        .map(|t| {
            Example::from_record(
                &Record::Text {
                    text: t.to_string(),
                },
                &ByteTokenizer,
                24,
            )
        })
        .collect()
}

fn causal_batch(device: &Device) -> Batch {
    let examples = examples();
    let refs: Vec<&Example> = examples.iter().collect();
    Example::collate(&refs, 0, 0.0, device).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// One training pass of `objective` under each policy; asserts loss and every gradient agree.
fn assert_paths_agree<O: Objective>(
    what: &str,
    objective: &O,
    batch: &<O::Example as Batchable>::Batch,
) {
    let mode = Mode::Train { seed: 3, pass: 0 };
    let run = |policy| {
        with_policy(policy, || {
            objective
                .loss_and_grads(batch, &mode, 1.0 / 7.0)
                .unwrap_or_else(|e| panic!("{what} ({policy:?}): {e}"))
        })
    };
    let fused = run(Policy::Fused);
    let composed = run(Policy::Composed);
    assert!(
        rel(composed.loss, fused.loss) <= TOLERANCE,
        "{what}: loss {} composed vs {} fused",
        composed.loss,
        fused.loss
    );
    let names: Vec<&String> = objective.vars().keys().collect();
    assert!(!names.is_empty(), "{what}: nothing trains");
    for name in names {
        let (f, c) = (&fused.grads.0[name], &composed.grads.0[name]);
        let d = rel_diff(c, f);
        assert!(
            d <= TOLERANCE,
            "{what}: gradient of {name} differs by {d:e}"
        );
        let norm = f
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(norm > 0.0, "{what}: zero gradient for {name}");
    }
}

/// Sets every trainable tensor to a seeded perturbation of itself, so no gradient vanishes
/// by symmetry (B = 0, IA3 = 1).
fn perturb(set: &AdapterSet) {
    use rand::Rng;
    perturb_b(set, 9);
    for (name, v) in set.vars() {
        let mut g = crate::engine::rng::stream(13, name);
        let noise: Vec<f64> = (0..v.elem_count())
            .map(|_| g.random_range(-0.05..0.05))
            .collect();
        let noise = Tensor::from_vec(noise, v.shape(), v.device())
            .unwrap()
            .to_dtype(v.dtype())
            .unwrap();
        v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
    }
}

fn lora_configs() -> Vec<(&'static str, AdapterConfig)> {
    let lora = AdapterConfig::lora(4, 8.0, TargetModules::all_linear());
    vec![
        ("lora", lora.clone()),
        (
            "rslora",
            AdapterConfig {
                use_rslora: true,
                ..AdapterConfig::lora(3, 5.0, TargetModules::names(["k_proj", "up_proj"]))
            },
        ),
        (
            "dora",
            AdapterConfig {
                use_dora: true,
                ..lora.clone()
            },
        ),
        (
            "lora+dropout",
            AdapterConfig {
                lora_dropout: 0.1,
                ..lora
            },
        ),
    ]
}

fn other_methods() -> Vec<Method> {
    vec![
        Method::Ia3 {
            target_modules: None,
            feedforward_modules: None,
        },
        Method::PromptTuning {
            num_virtual_tokens: 3,
        },
        Method::PrefixTuning {
            num_virtual_tokens: 2,
            layout: None,
        },
        Method::Full,
    ]
}

#[test]
fn composed_path_matches_the_fused_path_for_every_method() {
    let spec = TinySpec {
        tie_embeddings: true,
        ..TinySpec::default()
    };
    // f64 isolates the maths from rounding; f32 is what the CPU trains in.
    for dtype in [DType::F64, DType::F32] {
        let batch = causal_batch(&Device::Cpu);
        for (name, cfg) in lora_configs() {
            let mut model = tiny_model(&spec, 5, dtype);
            let set = AdapterSet::attach(&mut model, &cfg).unwrap();
            perturb(&set);
            let objective = CausalLmObjective {
                model: &model,
                adapters: &set,
            };
            assert_paths_agree(&format!("{name} {dtype:?}"), &objective, &batch);
        }
        for method in other_methods() {
            let mut model = tiny_model(&spec, 5, dtype);
            let set = attach(&mut model, &method, 1).unwrap();
            perturb(&set);
            let objective = CausalLmObjective {
                model: &model,
                adapters: &set,
            };
            assert_paths_agree(&format!("{} {dtype:?}", method.kind()), &objective, &batch);
        }
        // Preference tuning (DPO with its reference pass) over LoRA.
        let mut model = tiny_model(&spec, 5, dtype);
        let set = AdapterSet::attach(
            &mut model,
            &AdapterConfig::lora(4, 8.0, TargetModules::all_linear()),
        )
        .unwrap();
        perturb(&set);
        let records = vec![(
            1,
            Record::Preference {
                prompt: PreferencePrompt::Text("question: ".into()),
                chosen: "a good answer".into(),
                rejected: "bad".into(),
            },
        )];
        let pairs = pairs_from_records(&records, &ByteTokenizer, 32).unwrap();
        let refs: Vec<&PairExample> = pairs.iter().collect();
        let pair_batch = PairExample::collate(&refs, 0, 0.0, &Device::Cpu).unwrap();
        for loss in tuna_spec::PreferenceLoss::ALL {
            let objective = PreferenceObjective {
                model: &model,
                adapters: &set,
                params: tuna_spec::PreferenceParams {
                    loss: *loss,
                    beta: 0.2,
                    label_smoothing: 0.0,
                },
            };
            assert_paths_agree(&format!("{loss} {dtype:?}"), &objective, &pair_batch);
        }
    }
    // Classification (BERT encoder + head), with LoRA and with BitFit.
    let bspec = TinyBertSpec::default();
    let examples = [
        ClassExample {
            ids: vec![5, 9, 11, 3],
            label: 1,
        },
        ClassExample {
            ids: vec![7, 2],
            label: 0,
        },
    ];
    let refs: Vec<&ClassExample> = examples.iter().collect();
    let batch = ClassBatch::new(&refs, 0, &Device::Cpu).unwrap();
    for name in ["lora", "bitfit"] {
        let w = Weights::from_tensors(
            bspec.weights(1).unwrap().into_iter().collect(),
            DType::F32,
            &Device::Cpu,
        );
        let mut bert = Bert::load(bspec.config(), &w).unwrap();
        let set = if name == "lora" {
            AdapterSet::attach(
                &mut bert,
                &AdapterConfig::lora(4, 8.0, TargetModules::names(["query", "value"])),
            )
            .unwrap()
        } else {
            attach(&mut bert, &Method::BitFit, 0).unwrap()
        };
        perturb(&set);
        let head = ClassifierHead::new(bspec.hidden, 2, 2, &Device::Cpu).unwrap();
        let objective = ClassificationObjective::new(&bert, &set, &head);
        assert_paths_agree(&format!("classification {name}"), &objective, &batch);
    }
}

/// The losses of `steps` LoRA steps over a base in `dtype`.
fn lora_curve(dtype: DType, steps: u64) -> Vec<f64> {
    let spec = TinySpec::default();
    let mut model: Llama = tiny_model(&spec, 5, dtype);
    let set = AdapterSet::attach(
        &mut model,
        &AdapterConfig::lora(4, 8.0, TargetModules::all_linear()),
    )
    .unwrap();
    for (name, v) in set.vars() {
        assert_eq!(v.dtype(), DType::F32, "{name}: adapters train in f32");
    }
    let loader = crate::engine::data::Loader::new(examples(), 3, 1, 0).unwrap();
    let objective = CausalLmObjective {
        model: &model,
        adapters: &set,
    };
    let config = TrainConfig {
        seed: 4,
        ..super::util::constant_lr(steps, 1e-2)
    };
    let mut trainer = Trainer::with_objective(objective, loader, None, config).unwrap();
    let mut losses = Vec::new();
    let stop = std::sync::atomic::AtomicBool::new(false);
    trainer
        .run(&stop, None, &mut |e| {
            if let Event::Step(m) = e {
                losses.push(m.loss);
            }
        })
        .unwrap();
    losses
}

#[test]
fn a_bf16_base_with_f32_adapters_tracks_the_f32_loss_curve() {
    let f32_curve = lora_curve(DType::F32, 12);
    let bf16_curve = with_policy(Policy::Composed, || lora_curve(DType::BF16, 12));
    assert_eq!(f32_curve.len(), 12);
    for (step, (a, b)) in f32_curve.iter().zip(&bf16_curve).enumerate() {
        assert!(
            rel(*b, *a) <= 2e-2,
            "step {step}: bf16 loss {b} vs f32 {a} ({f32_curve:?} vs {bf16_curve:?})"
        );
    }
    assert!(
        bf16_curve[11] < bf16_curve[0],
        "bf16 training lowers the loss: {bf16_curve:?}"
    );
}

/// Attaches one method's adapters to a model.
type AttachFn = Box<dyn Fn(&mut Llama) -> AdapterSet>;

#[test]
fn gradient_checkpointing_gives_the_same_loss_and_gradients() {
    let spec = TinySpec {
        tie_embeddings: true,
        layers: 3,
        ..TinySpec::default()
    };
    let batch = causal_batch(&Device::Cpu);
    let mut cases: Vec<(String, AttachFn)> = Vec::new();
    for (name, cfg) in lora_configs() {
        cases.push((
            name.to_string(),
            Box::new(move |m: &mut Llama| AdapterSet::attach(m, &cfg).unwrap()),
        ));
    }
    for method in other_methods() {
        cases.push((
            method.kind().to_string(),
            Box::new(move |m: &mut Llama| attach(m, &method, 1).unwrap()),
        ));
    }
    for policy in [Policy::Fused, Policy::Composed] {
        for dtype in [DType::F64, DType::F32] {
            for (name, build) in &cases {
                let mut model = tiny_model(&spec, 5, dtype);
                let set = build(&mut model);
                perturb(&set);
                let what = format!("{name} {dtype:?} {policy:?}");
                let run = |model: &Llama| {
                    let objective = CausalLmObjective {
                        model,
                        adapters: &set,
                    };
                    let mode = Mode::Train { seed: 3, pass: 0 };
                    with_policy(policy, || objective.loss_and_grads(&batch, &mode, 0.25))
                        .unwrap_or_else(|e| panic!("{what}: {e}"))
                };
                let plain = run(&model);
                model.set_gradient_checkpointing(true);
                let checkpointed = run(&model);
                // The checkpointed pass reports no separate forward time: it really ran.
                assert!(checkpointed.forward.is_zero(), "{what}");
                assert!(
                    rel(checkpointed.loss, plain.loss) <= TOLERANCE,
                    "{what}: loss {} vs {}",
                    checkpointed.loss,
                    plain.loss
                );
                assert_eq!(checkpointed.grads.0.len(), set.vars().len(), "{what}");
                for (var, g) in &plain.grads.0 {
                    let d = rel_diff(&checkpointed.grads.0[var], g);
                    assert!(d <= TOLERANCE, "{what}: gradient of {var} differs by {d:e}");
                }
            }
        }
    }
}
