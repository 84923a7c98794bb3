//! LISA through the training loop on the tiny model: within an interval only the drawn
//! layers (and the non-layer weights) move, the loss halves, a resumed run takes the same
//! steps, and its optimizer state is a fraction of full fine-tuning's.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Tensor};

use super::util::{run_steps, tiny_model};
use crate::engine::adapters::methods::{Method, attach};
use crate::engine::data::{ByteTokenizer, Example, Format, Loader, jsonl};
use crate::engine::model::tiny::TinySpec;
use crate::engine::trainer::lisa::{LisaConfig, draw, layer_of};
use crate::engine::trainer::{Event, TrainConfig, Trainer};

const DATA: &str = r#"{"prompt":"2+2=","completion":"4"}
{"prompt":"3+3=","completion":"6"}
{"prompt":"cat says ","completion":"meow"}
{"prompt":"dog says ","completion":"woof"}
"#;

fn spec() -> TinySpec {
    TinySpec {
        layers: 4,
        ..TinySpec::default()
    }
}

fn loader() -> Loader {
    let examples = jsonl::parse(DATA, Format::PromptCompletion)
        .unwrap()
        .iter()
        .map(|r| Example::from_record(r, &ByteTokenizer, 32))
        .collect();
    Loader::new(examples, 4, 1, 0).unwrap()
}

const LISA: LisaConfig = LisaConfig {
    layers: 1,
    interval: 5,
    num_layers: 4,
};

fn config(steps: u64, lisa: Option<LisaConfig>) -> TrainConfig {
    TrainConfig {
        checkpoint_every: Some(100),
        seed: 9,
        lisa,
        ..super::util::constant_lr(steps, 1e-2)
    }
}

fn snapshot(vars: &BTreeMap<String, candle_core::Var>) -> BTreeMap<String, Tensor> {
    vars.iter()
        .map(|(n, v)| (n.clone(), v.as_detached_tensor().copy().unwrap()))
        .collect()
}

fn changed(a: &Tensor, b: &Tensor) -> bool {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        > 0.0
}

#[test]
fn only_the_drawn_layers_move_within_an_interval_and_the_loss_halves() {
    let mut model = tiny_model(&spec(), 4, DType::F32);
    let set = attach(&mut model, &Method::Full, 7).unwrap();
    let mut trainer = Trainer::new(&model, &set, loader(), None, config(40, Some(LISA))).unwrap();
    let before = snapshot(set.vars());
    for _ in 0..LISA.interval {
        trainer.train_step().unwrap();
    }
    let drawn = draw(&LISA, 9, 0);
    let after = snapshot(set.vars());
    for (name, t) in &before {
        let moved = changed(t, &after[name]);
        match layer_of(name) {
            Some(l) if !drawn.contains(&l) => assert!(!moved, "{name} is frozen this interval"),
            Some(_) => {}
            None if name.contains("embed_tokens") || name.starts_with("lm_head") => {
                assert!(moved, "{name} always trains")
            }
            None => {}
        }
    }
    assert!(
        before
            .iter()
            .any(|(n, t)| layer_of(n).is_some_and(|l| drawn.contains(&l)) && changed(t, &after[n])),
        "the drawn layer {drawn:?} moved"
    );
    // The optimizer holds state for the drawn layer and the non-layer weights only.
    let lisa_bytes = trainer.optimizer_state_bytes();
    let mut full_model = tiny_model(&spec(), 4, DType::F32);
    let full_set = attach(&mut full_model, &Method::Full, 7).unwrap();
    let mut full = Trainer::new(&full_model, &full_set, loader(), None, config(1, None)).unwrap();
    full.train_step().unwrap();
    let full_bytes = full.optimizer_state_bytes();
    eprintln!("optimizer state: LISA (1 of 4 layers) {lisa_bytes} B, full {full_bytes} B");
    assert!(lisa_bytes < full_bytes, "{lisa_bytes} vs {full_bytes}");

    let mut losses = Vec::new();
    trainer
        .run(&AtomicBool::new(false), None, &mut |e| {
            if let Event::Step(m) = e {
                losses.push(m.loss);
            }
        })
        .unwrap();
    let first = losses[0];
    let last = losses[losses.len() - 1];
    eprintln!("LISA loss {first:.4} -> {last:.4}");
    assert!(last < 0.5 * first, "{first} -> {last}");
}

#[test]
fn a_resumed_lisa_run_takes_the_same_steps() {
    let run = |resume: Option<&std::path::Path>, stop: Option<u64>, root: &std::path::Path| {
        let mut model = tiny_model(&spec(), 4, DType::F32);
        let set = attach(&mut model, &Method::Full, 7).unwrap();
        let cfg = TrainConfig {
            checkpoint_every: Some(1),
            ..config(12, Some(LISA))
        };
        let mut trainer = Trainer::new(&model, &set, loader(), None, cfg).unwrap();
        run_steps(&mut trainer, resume, stop, root)
    };
    let full_dir = tempfile::tempdir().unwrap();
    let full = run(None, None, full_dir.path());
    // Mid-interval (step 3) and on a redraw boundary (step 5).
    for k in [3u64, 5] {
        let dir = tempfile::tempdir().unwrap();
        run(None, Some(k), dir.path());
        let resumed = run(
            Some(&dir.path().join(format!("step-{k}"))),
            None,
            dir.path(),
        );
        assert_eq!(resumed.first().map(|s| s.0), Some(k + 1));
        assert_eq!(full[k as usize..], resumed[..], "resumed at {k}");
    }
}
