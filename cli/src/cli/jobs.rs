//! `tuna jobs ...`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tuna_client::{ClientError, pb};

use super::{
    Cli, CliError, EXIT_JOB_CANCELLED, EXIT_JOB_FAILED, Output, connect, output, progress,
};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Create a fine-tuning job.
    Create(Box<CreateArgs>),
    Get {
        id: String,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in these states (queued, running, succeeded, failed, cancelling,
        /// cancelled, pausing, paused); repeatable.
        #[arg(long = "state")]
        states: Vec<String>,
        /// Only jobs with this label (key=value); repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Only the trial jobs of this sweep.
        #[arg(long)]
        sweep: Option<String>,
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    Cancel {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Delete a finished job with its history, checkpoints and artifacts.
    Delete {
        id: String,
    },
    /// Follow a job's events and metrics until it ends. Exit code 0 when it SUCCEEDED,
    /// 3 when it FAILED, 4 when it was CANCELLED.
    Watch {
        id: String,
        /// Resume after this sequence number.
        #[arg(long, default_value_t = 0)]
        after_seq: i64,
    },
    /// Print a job's event log.
    Events {
        id: String,
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct CreateArgs {
    /// Base model (registered name or file id).
    #[arg(long)]
    model: String,
    /// Training file id (every task but merge).
    #[arg(long, default_value = "")]
    training_file: String,
    #[arg(long, default_value = "")]
    validation_file: String,
    /// lora, dora, ia3, prompt_tuning, bitfit, full or lisa.
    #[arg(long, default_value = "lora")]
    method: String,
    /// causal_lm (default), classification (a BERT-family model and `{"text","label"}` data),
    /// preference (chosen/rejected pairs; see --preference-loss) or merge (the LoRA adapters
    /// of finished jobs merged into one; see --merge-source).
    #[arg(long, default_value = "")]
    task: String,
    /// With --task merge: a succeeded job to merge; repeat for each (2..=16).
    #[arg(long = "merge-source")]
    merge_sources: Vec<String>,
    /// With --task merge: average (default), model_stock, task_arithmetic or ties.
    #[arg(long, default_value = "")]
    merge_method: String,
    /// With --merge-method task_arithmetic or ties: one weight per source, in order.
    #[arg(long = "merge-weight")]
    merge_weights: Vec<f64>,
    /// With --task merge: the output adapter's rank (0: the sum of the sources' ranks).
    #[arg(long, default_value_t = 0)]
    merge_rank: i32,
    /// With --merge-method ties: the share of each delta's entries kept (default 0.2).
    #[arg(long)]
    merge_density: Option<f64>,
    /// lo-fi data parallelism: train N shards of the data on any N workers (each from the
    /// same init), then average their LoRA adapters into this job's (default 1).
    #[arg(long, default_value_t = 0)]
    replicas: i32,
    /// With --task preference: dpo (default), ipo or orpo.
    #[arg(long, default_value = "")]
    preference_loss: String,
    /// With --task preference: DPO/IPO's beta or ORPO's lambda (default 0.1).
    #[arg(long)]
    beta: Option<f64>,
    /// With --preference-loss dpo: share of labels assumed flipped (default 0).
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Also upload the model with the trained weights merged in (artifact kind merged), an HF
    /// folder transformers loads directly.
    #[arg(long)]
    export_merged: bool,
    /// With --export-merged: f32 (default) or bf16.
    #[arg(long, default_value = "")]
    merged_dtype: String,
    #[arg(long)]
    r: Option<i32>,
    #[arg(long)]
    alpha: Option<f64>,
    #[arg(long)]
    dropout: Option<f64>,
    /// Target modules (comma-separated) or all-linear.
    #[arg(long, value_delimiter = ',')]
    target_modules: Vec<String>,
    #[arg(long)]
    learning_rate: Option<f64>,
    /// adamw (default), lion, adafactor, dog, dadapt_adam or mezo.
    #[arg(long, default_value = "")]
    optimizer: String,
    /// Let a learning-rate-free optimizer choose the step size (dog unless --optimizer
    /// dadapt_adam); leave --learning-rate unset.
    #[arg(long)]
    auto_learning_rate: bool,
    /// cosine (default), linear, constant, cosine_with_min_lr, wsd or inverse_sqrt.
    #[arg(long, default_value = "")]
    schedule: String,
    #[arg(long)]
    warmup_steps: Option<i64>,
    /// Weight of prompt tokens in the loss, 0 (default, completion only) to 1.
    #[arg(long)]
    prompt_loss_weight: Option<f64>,
    #[arg(long)]
    epochs: Option<i32>,
    #[arg(long)]
    max_steps: Option<i64>,
    #[arg(long)]
    batch_size: Option<i32>,
    #[arg(long)]
    seed: Option<i64>,
    #[arg(long)]
    eval_every: Option<i64>,
    /// Checkpoint every N steps (0 = never; default 100); a resumed attempt continues from
    /// the newest.
    #[arg(long)]
    checkpoint_every: Option<i64>,
    /// Recompute decoder layers in backward (less memory for long sequences; causal_lm).
    #[arg(long)]
    gradient_checkpointing: bool,
    #[arg(long, default_value_t = 0)]
    priority: i32,
    #[arg(long, default_value_t = 0)]
    max_attempts: i32,
    /// cpu, cuda or any.
    #[arg(long, default_value = "")]
    device: String,
    /// The base weights' dtype on the worker: auto (bf16 on cuda, f32 on cpu), f32, bf16, f16.
    #[arg(long, default_value = "")]
    dtype: String,
    /// key=value; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Idempotency key: retrying with the same key returns the same job.
    #[arg(long)]
    request_id: Option<String>,
    /// Follow the job until it ends; the exit code is that of `tuna jobs watch`.
    #[arg(long)]
    wait: bool,
    /// Read the whole JobSpec from a JSON or TOML file instead (the flags above are then
    /// ignored); see `examples/job.json`.
    #[arg(long)]
    spec_file: Option<PathBuf>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn parse_state(s: &str) -> Result<i32, CliError> {
    let name = format!("JOB_STATE_{}", s.to_ascii_uppercase());
    pb::JobState::from_str_name(&name)
        .map(|s| s as i32)
        .ok_or_else(|| CliError::Usage(format!("unknown job state {s:?}")))
}

fn spec_from_args(a: &CreateArgs) -> pb::JobSpec {
    let lora = ["lora", "dora"]
        .contains(&a.method.as_str())
        .then(|| pb::LoraParams {
            r: a.r,
            alpha: a.alpha,
            dropout: a.dropout,
            target_modules: a.target_modules.clone(),
            ..Default::default()
        });
    pb::JobSpec {
        base_model: a.model.clone(),
        training_file: a.training_file.clone(),
        validation_file: a.validation_file.clone(),
        // A merge's output is a LoRA adapter of rank --merge-rank: it names no method.
        method: (a.task != "merge").then(|| pb::Method {
            r#type: a.method.clone(),
            lora,
            ..Default::default()
        }),
        merge: (a.task == "merge" || !a.merge_sources.is_empty()).then(|| pb::Merge {
            sources: a.merge_sources.clone(),
            method: a.merge_method.clone(),
            weights: a.merge_weights.clone(),
            rank: a.merge_rank,
            density: a.merge_density,
        }),
        hyperparameters: Some(pb::Hyperparameters {
            learning_rate: a.learning_rate,
            optimizer: a.optimizer.clone(),
            auto_learning_rate: a.auto_learning_rate,
            schedule: a.schedule.clone(),
            warmup_steps: a.warmup_steps,
            prompt_loss_weight: a.prompt_loss_weight,
            epochs: a.epochs,
            max_steps: a.max_steps,
            batch_size: a.batch_size,
            seed: a.seed,
            eval_every: a.eval_every,
            checkpoint_every: a.checkpoint_every,
            gradient_checkpointing: a.gradient_checkpointing,
            ..Default::default()
        }),
        resources: Some(pb::Resources {
            device: a.device.clone(),
            min_memory_bytes: 0,
            dtype: a.dtype.clone(),
        }),
        priority: a.priority,
        max_attempts: a.max_attempts,
        labels: a.labels.iter().cloned().collect::<HashMap<_, _>>(),
        task: a.task.clone(),
        replicas: a.replicas,
        export_merged: a.export_merged,
        merged_dtype: a.merged_dtype.clone(),
        preference: (a.task == "preference"
            || !a.preference_loss.is_empty()
            || a.beta.is_some()
            || a.label_smoothing.is_some())
        .then(|| pb::Preference {
            loss: a.preference_loss.clone(),
            beta: a.beta,
            label_smoothing: a.label_smoothing,
        }),
    }
}

async fn watch(
    cli: &Cli,
    client: &tuna_client::Client,
    id: &str,
    after_seq: i64,
) -> Result<ExitCode, CliError> {
    let out = cli.output;
    let spec = client.get_job(id).await?.spec.unwrap_or_default();
    let total = spec
        .hyperparameters
        .and_then(|h| h.max_steps)
        .map(|s| s.max(0) as u64);
    let mut view = progress::View::new(out, total);
    let job = client.watch_job(id, after_seq, |u| view.update(u)).await;
    view.finish();
    let job = job?;
    if out == Output::Text {
        output::job(Output::Text, &job);
    }
    Ok(match job.state() {
        pb::JobState::Succeeded => ExitCode::SUCCESS,
        pb::JobState::Cancelled => ExitCode::from(EXIT_JOB_CANCELLED),
        _ => ExitCode::from(EXIT_JOB_FAILED),
    })
}

pub async fn run(cli: &Cli, cmd: &JobsCommand) -> Result<ExitCode, CliError> {
    let client = connect(cli).await?;
    let rpc = |s: tonic::Status| CliError::Client(ClientError::from(s));
    match cmd {
        JobsCommand::Create(args) => {
            let spec = match &args.spec_file {
                Some(path) => read_spec(path)?,
                None => spec_from_args(args),
            };
            let job = client.create_job(spec, args.request_id.clone()).await?;
            if args.wait {
                if cli.output == Output::Text {
                    println!("created {}; following it until it ends", job.id);
                }
                return watch(cli, &client, &job.id, 0).await;
            }
            output::job(cli.output, &job);
        }
        JobsCommand::Get { id } => output::job(cli.output, &client.get_job(id).await?),
        JobsCommand::List {
            states,
            labels,
            sweep,
            page_size,
            page_token,
        } => {
            let states = states
                .iter()
                .map(|s| parse_state(s))
                .collect::<Result<Vec<_>, _>>()?;
            let resp = client
                .jobs()
                .list_jobs(pb::ListJobsRequest {
                    page_size: *page_size,
                    page_token: page_token.clone(),
                    states,
                    labels: labels.iter().cloned().collect(),
                    sweep_id: sweep.clone().unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            match cli.output {
                Output::Json => output::print_json(&serde_json::json!({
                    "jobs": resp.jobs.iter().map(output::job_json).collect::<Vec<_>>(),
                    "next_page_token": resp.next_page_token,
                })),
                Output::Text => {
                    for j in &resp.jobs {
                        output::job(Output::Text, j);
                    }
                    if !resp.next_page_token.is_empty() {
                        println!("next page: --page-token {}", resp.next_page_token);
                    }
                }
            }
        }
        JobsCommand::Cancel { id } => {
            let req = pb::CancelJobRequest { id: id.clone() };
            output::job(
                cli.output,
                &client
                    .jobs()
                    .cancel_job(req)
                    .await
                    .map_err(rpc)?
                    .into_inner(),
            );
        }
        JobsCommand::Pause { id } => {
            let req = pb::PauseJobRequest { id: id.clone() };
            output::job(
                cli.output,
                &client
                    .jobs()
                    .pause_job(req)
                    .await
                    .map_err(rpc)?
                    .into_inner(),
            );
        }
        JobsCommand::Resume { id } => {
            let req = pb::ResumeJobRequest { id: id.clone() };
            output::job(
                cli.output,
                &client
                    .jobs()
                    .resume_job(req)
                    .await
                    .map_err(rpc)?
                    .into_inner(),
            );
        }
        JobsCommand::Delete { id } => {
            client
                .jobs()
                .delete_job(pb::DeleteJobRequest { id: id.clone() })
                .await
                .map_err(rpc)?;
            match cli.output {
                Output::Json => output::print_json(&serde_json::json!({ "deleted": id })),
                Output::Text => println!("deleted {id}"),
            }
        }
        JobsCommand::Watch { id, after_seq } => return watch(cli, &client, id, *after_seq).await,
        JobsCommand::Events {
            id,
            page_size,
            page_token,
        } => {
            let resp = client
                .jobs()
                .list_job_events(pb::ListJobEventsRequest {
                    job_id: id.clone(),
                    page_size: *page_size,
                    page_token: page_token.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            for e in resp.events {
                let u = pb::JobUpdate {
                    seq: e.seq,
                    kind: Some(pb::job_update::Kind::Event(e)),
                };
                output::update(cli.output, &u);
            }
            if !resp.next_page_token.is_empty() && cli.output == Output::Text {
                println!("next page: --page-token {}", resp.next_page_token);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a JobSpec from JSON: the same field names as the proto (snake_case).
/// The whole JobSpec from a JSON or TOML file (protobuf JSON mapping, unknown fields refused).
fn read_spec(path: &std::path::Path) -> Result<pb::JobSpec, CliError> {
    Ok(tuna_client::spec_file::read(path, "tuna.v1.JobSpec")?)
}
