//! `tuna train`: run the training engine locally on a model folder and a JSONL file, without a
//! server (the same engine and job semantics a worker uses), with a progress bar.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tuna_client::pb;
use tuna_spec::JobSpec;
use tuna_spec::metrics;
use tuna_worker::agent::device::WorkerDevice;
use tuna_worker::agent::{Control, JobInputs, JobRunner, Progress, Reporter, RunOutcome};
use tuna_worker::runner::EngineRunner;

use super::CliError;

#[derive(Debug, Clone, Args)]
#[command(allow_negative_numbers = true)]
pub struct TrainArgs {
    /// HF model folder (config.json, safetensors, tokenizer.json) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Training data (JSONL: text, prompt/completion or chat).
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    validation: Option<PathBuf>,
    /// lora or dora.
    #[arg(long, default_value = "lora")]
    method: String,
    #[arg(long, default_value_t = 8)]
    r: i32,
    #[arg(long)]
    alpha: Option<f64>,
    /// Comma-separated module names, or all-linear.
    #[arg(long, value_delimiter = ',', default_value = "all-linear")]
    target_modules: Vec<String>,
    #[arg(long, default_value_t = 2e-4)]
    learning_rate: f64,
    #[arg(long)]
    max_steps: Option<i64>,
    #[arg(long, default_value_t = 1)]
    epochs: i32,
    #[arg(long, default_value_t = 8)]
    batch_size: i32,
    #[arg(long, default_value_t = 512)]
    max_seq_len: i32,
    #[arg(long, default_value_t = 0)]
    eval_every: i64,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Where the adapter (HF PEFT layout) is written.
    #[arg(long, default_value = "adapter")]
    out: PathBuf,
    /// cpu, cuda or cuda:N (cuda needs a binary built with deploy/cuda/build.sh).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The base weights' dtype: auto (bf16 on cuda, f32 on cpu), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Recompute decoder layers in backward: less memory for long sequences.
    #[arg(long)]
    gradient_checkpointing: bool,
}

/// Prints progress; checkpoints are not kept in a local run.
struct Bar {
    bar: Option<ProgressBar>,
}

impl Reporter for Bar {
    fn progress(&mut self, p: Progress) {
        let get = |k: &str| p.values.get(k).copied();
        match &self.bar {
            Some(bar) => {
                if let Some(t) = get(metrics::TOTAL_STEPS) {
                    bar.set_length(t as u64);
                }
                bar.set_position(p.step.max(0) as u64);
                if let Some(l) = get(metrics::LOSS) {
                    bar.set_message(format!(
                        "loss {l:.4}  tok/s {:.0}",
                        get(metrics::TOKENS_PER_S).unwrap_or(0.0)
                    ));
                }
                if let Some(e) = get(metrics::EVAL_LOSS) {
                    bar.println(format!("step {}: eval loss {e:.4}", p.step));
                }
            }
            None => {
                let mut values: Vec<_> = p.values.iter().collect();
                values.sort_by(|a, b| a.0.cmp(b.0));
                let text: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v:.5}")).collect();
                println!("step {:<6} {}", p.step, text.join(" "));
            }
        }
    }

    fn checkpoint(&mut self, _step: i64, dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

pub fn run(a: &TrainArgs) -> Result<ExitCode, CliError> {
    let usage = |e: std::io::Error| CliError::Usage(e.to_string());
    let work = tempfile_dir()?;
    let (model_dir, format) = if a.model.extension().is_some_and(|e| e == "gguf") {
        let dir = work.join("model");
        std::fs::create_dir_all(&dir).map_err(usage)?;
        let name = a.model.file_name().unwrap_or_default();
        std::fs::copy(&a.model, dir.join(name)).map_err(usage)?;
        (dir, pb::ModelFormat::Gguf)
    } else {
        (a.model.clone(), pb::ModelFormat::Hf)
    };
    // The spec names files by id; a local run's data is named by its file name.
    let file_name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().chars().take(200).collect::<String>())
            .unwrap_or_else(|| "local".into())
    };
    let opened = WorkerDevice::open(&a.device).map_err(|e| CliError::Usage(e.to_string()))?;
    let spec = pb::JobSpec {
        resources: Some(pb::Resources {
            device: opened.kind.kind().to_string(),
            dtype: a.dtype.clone(),
            ..Default::default()
        }),
        base_model: a.model.display().to_string(),
        training_file: file_name(&a.data),
        validation_file: a.validation.as_deref().map(file_name).unwrap_or_default(),
        method: Some(pb::Method {
            r#type: a.method.clone(),
            lora: Some(pb::LoraParams {
                r: Some(a.r),
                alpha: a.alpha,
                target_modules: a.target_modules.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        hyperparameters: Some(pb::Hyperparameters {
            learning_rate: Some(a.learning_rate),
            max_steps: a.max_steps,
            epochs: Some(a.epochs),
            batch_size: Some(a.batch_size),
            max_seq_len: Some(a.max_seq_len),
            eval_every: Some(a.eval_every),
            seed: Some(a.seed),
            checkpoint_every: Some(0),
            gradient_checkpointing: a.gradient_checkpointing,
            ..Default::default()
        }),
        ..Default::default()
    };
    let spec = JobSpec::from_proto(Some(&spec)).map_err(|v| {
        let described: Vec<String> = v
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect();
        CliError::Usage(described.join("; "))
    })?;
    let training_format = dataset_format(&a.data)?;
    let validation_format = match &a.validation {
        Some(v) => dataset_format(v)?,
        None => pb::DatasetFormat::Unspecified,
    };
    let inputs = JobInputs {
        job_id: "local".into(),
        attempt: 1,
        spec,
        model_dir,
        model_format: format,
        training_file: Some(a.data.clone()),
        training_format,
        validation_file: a.validation.clone(),
        validation_format,
        resume_from: None,
        merge_sources: Vec::new(),
        part: tuna_worker::agent::Part::Whole,
        work_dir: work.clone(),
        device: opened.device,
    };
    let bar = std::io::stdout().is_terminal().then(|| {
        let bar = ProgressBar::new(0);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
        {
            bar.set_style(style);
        }
        bar
    });
    let mut reporter = Bar { bar };
    let outcome = EngineRunner.run(&inputs, &Control::new(), &mut reporter);
    if let Some(b) = &reporter.bar {
        b.finish_and_clear();
    }
    let result = match outcome {
        Ok(RunOutcome::Finished {
            step, adapter_dir, ..
        }) => {
            copy_dir(&adapter_dir, &a.out).map_err(usage)?;
            println!(
                "trained {step} steps; adapter written to {}",
                a.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(other) => Err(CliError::Usage(format!("training stopped: {other:?}"))),
        Err(e) => Err(CliError::Usage(e.to_string())),
    };
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The format of a local dataset, by the same rule the server applies to its first line (the
/// engine then checks every line against it, naming a bad one).
fn dataset_format(path: &Path) -> Result<pb::DatasetFormat, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let (n, first) = text
        .lines()
        .enumerate()
        .find(|(_, l)| !l.trim().is_empty())
        .ok_or_else(|| CliError::Usage(format!("{}: the dataset is empty", path.display())))?;
    let value: serde_json::Value = serde_json::from_str(first).map_err(|e| {
        CliError::Usage(format!(
            "{}: line {}: invalid JSON: {e}",
            path.display(),
            n + 1
        ))
    })?;
    value
        .as_object()
        .and_then(tuna_spec::dataset::detect)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{}: line {}: no known format (\"text\", \"prompt\"+\"completion\", \"messages\" \
                 or \"text\"+\"label\")",
                path.display(),
                n + 1
            ))
        })
}

fn tempfile_dir() -> Result<PathBuf, CliError> {
    let dir = std::env::temp_dir().join(format!("tuna-train-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(dir)
}
