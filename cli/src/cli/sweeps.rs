//! `tuna sweeps ...`: hyperparameter sweeps.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tuna_client::{ClientError, pb, spec_file};

use super::{Cli, CliError, EXIT_JOB_CANCELLED, EXIT_JOB_FAILED, Output, connect, output};

#[derive(Debug, Subcommand)]
pub enum SweepsCommand {
    /// Create a sweep from a spec file (TOML or JSON; see `examples/sweep.toml`).
    Create(CreateArgs),
    /// The sweep with its best trial and Pareto front.
    Get { id: String },
    /// List sweeps, newest first.
    List {
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// The sweep's trials (one row per run).
    Trials { id: String },
    /// A live table of the trials until the sweep ends. Exit code 0 when it SUCCEEDED,
    /// 3 when it FAILED, 4 when it was CANCELLED.
    Watch { id: String },
    /// Stop suggesting and cancel the running trials.
    Cancel { id: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The `tuna.v1.SweepSpec` as TOML (`.toml`) or JSON.
    file: PathBuf,
    /// Set the template's base model (overrides the file).
    #[arg(long)]
    model: Option<String>,
    /// Set the template's training file id (overrides the file).
    #[arg(long)]
    training_file: Option<String>,
    /// Set the template's validation file id (overrides the file).
    #[arg(long)]
    validation_file: Option<String>,
    /// Idempotency key: retrying with the same key returns the same sweep.
    #[arg(long)]
    request_id: Option<String>,
    /// Follow the sweep until it ends; the exit code is that of `tuna sweeps watch`.
    #[arg(long)]
    wait: bool,
}

fn sweep_state_name(s: pb::SweepState) -> String {
    s.as_str_name()
        .trim_start_matches("SWEEP_STATE_")
        .to_ascii_lowercase()
}

fn trial_json(t: &pb::Trial) -> Value {
    json!({
        "trial": t.trial,
        "run": t.run,
        "job_id": t.job_id,
        "job_state": output::state_name(t.job_state()),
        "params": serde_json::from_str::<Value>(&t.params_json).unwrap_or(Value::Null),
        "budget": (t.budget > 0.0).then_some(t.budget),
        "steps": t.steps,
        "last_value": t.last_value,
        "objective": t.objective,
        "cost": t.cost,
        "observed": t.observed,
        "failed": t.failed,
        "stopped_early": t.stopped_early,
    })
}

fn sweep_json(s: &pb::Sweep) -> Value {
    let spec = s.spec.clone().unwrap_or_default();
    let objective = spec.objective.clone().unwrap_or_default();
    json!({
        "id": s.id,
        "state": sweep_state_name(s.state()),
        "message": s.message,
        "algorithm": spec.algorithm.as_ref().map(|a| a.name.clone()),
        "objective": objective.metric,
        "direction": objective.direction().as_str_name().trim_start_matches("DIRECTION_").to_ascii_lowercase(),
        "max_trials": spec.max_trials,
        "parallelism": spec.parallelism,
        "trials_created": s.trials_created,
        "trials_running": s.trials_running,
        "trials_finished": s.trials_finished,
        "total_cost": s.total_cost,
        "best_trial": s.best_trial.as_ref().map(trial_json),
        "pareto_front": s.pareto_front.iter().map(trial_json).collect::<Vec<_>>(),
        "request_id": s.request_id,
    })
}

fn params_text(json: &str) -> String {
    match serde_json::from_str::<serde_json::Map<String, Value>>(json) {
        Ok(m) => m
            .iter()
            .map(|(k, v)| {
                let short = k.rsplit('.').next().unwrap_or(k);
                match v.as_f64() {
                    Some(x) if x != 0.0 && (x.abs() < 1e-2 || x.abs() >= 1e4) => {
                        format!("{short}={x:.2e}")
                    }
                    Some(x) => format!("{short}={}", (x * 1e4).round() / 1e4),
                    None => format!("{short}={}", v.as_str().unwrap_or_default()),
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => json.to_string(),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

fn trials_table(trials: &[pb::Trial]) -> String {
    let mut out = format!(
        "{:>5} {:>3} {:<10} {:>6} {:>10} {:>10} {:>9}  {:<36} {}\n",
        "TRIAL", "RUN", "STATE", "STEPS", "LAST", "OBJECTIVE", "COST", "JOB", "PARAMS"
    );
    for t in trials {
        let mut state = output::state_name(t.job_state());
        if t.stopped_early {
            state.push('*');
        }
        out.push_str(&format!(
            "{:>5} {:>3} {:<10} {:>6} {:>10} {:>10} {:>9}  {:<36} {}\n",
            t.trial,
            t.run,
            state,
            t.steps,
            opt(t.last_value),
            opt(t.objective),
            t.cost.map_or("-".into(), |c| format!("{c:.1}")),
            t.job_id,
            params_text(&t.params_json)
        ));
    }
    out
}

fn sweep_text(s: &pb::Sweep) -> String {
    let spec = s.spec.clone().unwrap_or_default();
    let objective = spec.objective.clone().unwrap_or_default();
    let mut out = format!(
        "{}  {}  {}  {} {}  trials {}/{} ({} running)  cost {:.1}\n",
        s.id,
        sweep_state_name(s.state()),
        spec.algorithm
            .as_ref()
            .map(|a| a.name.as_str())
            .unwrap_or(""),
        objective
            .direction()
            .as_str_name()
            .trim_start_matches("DIRECTION_")
            .to_ascii_lowercase(),
        objective.metric,
        s.trials_created,
        spec.max_trials.unwrap_or_default(),
        s.trials_running,
        s.total_cost,
    );
    if !s.message.is_empty() {
        out.push_str(&format!("  {}\n", super::output::clean(&s.message)));
    }
    if let Some(b) = &s.best_trial {
        out.push_str(&format!(
            "  best: trial {} run {} {} = {}  (job {})  {}\n",
            b.trial,
            b.run,
            objective.metric,
            opt(b.objective),
            b.job_id,
            params_text(&b.params_json)
        ));
    }
    if !s.pareto_front.is_empty() {
        let front: Vec<String> = s
            .pareto_front
            .iter()
            .map(|t| {
                format!(
                    "trial {} (cost {:.1}, {})",
                    t.trial,
                    t.cost.unwrap_or_default(),
                    opt(t.objective)
                )
            })
            .collect();
        out.push_str(&format!("  pareto front: {}\n", front.join(", ")));
    }
    out
}

fn print_sweep(out: Output, s: &pb::Sweep) {
    match out {
        Output::Json => output::print_json(&sweep_json(s)),
        Output::Text => print!("{}", sweep_text(s)),
    }
}

fn exit_for(s: &pb::Sweep) -> ExitCode {
    match s.state() {
        pb::SweepState::Failed => ExitCode::from(EXIT_JOB_FAILED),
        pb::SweepState::Cancelled => ExitCode::from(EXIT_JOB_CANCELLED),
        _ => ExitCode::SUCCESS,
    }
}

async fn watch(cli: &Cli, client: &tuna_client::Client, id: &str) -> Result<ExitCode, CliError> {
    let redraw = cli.output == Output::Text && std::io::stdout().is_terminal();
    let final_sweep = client
        .watch_sweep(id, |snap| {
            let Some(sweep) = &snap.sweep else { return };
            match cli.output {
                Output::Json => output::print_json(&json!({
                    "sweep": sweep_json(sweep),
                    "trials": snap.trials.iter().map(trial_json).collect::<Vec<_>>(),
                })),
                Output::Text => {
                    if redraw {
                        // Clear the screen and redraw: a live table.
                        print!("\x1b[2J\x1b[H");
                    }
                    print!("{}{}", sweep_text(sweep), trials_table(&snap.trials));
                    if !redraw {
                        println!();
                    }
                }
            }
        })
        .await?;
    Ok(exit_for(&final_sweep))
}

pub async fn run(cli: &Cli, cmd: &SweepsCommand) -> Result<ExitCode, CliError> {
    let client = connect(cli).await?;
    let rpc = |s: tonic::Status| CliError::Client(ClientError::from(s));
    match cmd {
        SweepsCommand::Create(args) => {
            let mut spec: pb::SweepSpec = spec_file::read(&args.file, "tuna.v1.SweepSpec")?;
            let template = spec.template.get_or_insert_with(Default::default);
            if let Some(m) = &args.model {
                template.base_model = m.clone();
            }
            if let Some(f) = &args.training_file {
                template.training_file = f.clone();
            }
            if let Some(f) = &args.validation_file {
                template.validation_file = f.clone();
            }
            let sweep = client
                .sweeps()
                .create_sweep(pb::CreateSweepRequest {
                    spec: Some(spec),
                    request_id: args.request_id.clone().unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if args.wait {
                if cli.output == Output::Text {
                    println!("created {}; following it until it ends", sweep.id);
                }
                return watch(cli, &client, &sweep.id).await;
            }
            print_sweep(cli.output, &sweep);
        }
        SweepsCommand::Get { id } => {
            let s = client
                .sweeps()
                .get_sweep(pb::GetSweepRequest { id: id.clone() })
                .await
                .map_err(rpc)?
                .into_inner();
            print_sweep(cli.output, &s);
        }
        SweepsCommand::List {
            page_size,
            page_token,
        } => {
            let resp = client
                .sweeps()
                .list_sweeps(pb::ListSweepsRequest {
                    page_size: *page_size,
                    page_token: page_token.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            match cli.output {
                Output::Json => output::print_json(&json!({
                    "sweeps": resp.sweeps.iter().map(sweep_json).collect::<Vec<_>>(),
                    "next_page_token": resp.next_page_token,
                })),
                Output::Text => {
                    for s in &resp.sweeps {
                        print!("{}", sweep_text(s));
                    }
                    if !resp.next_page_token.is_empty() {
                        println!("next page: --page-token {}", resp.next_page_token);
                    }
                }
            }
        }
        SweepsCommand::Trials { id } => {
            let trials = client
                .sweeps()
                .list_trials(pb::ListTrialsRequest {
                    sweep_id: id.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .trials;
            match cli.output {
                Output::Json => output::print_json(&json!({
                    "trials": trials.iter().map(trial_json).collect::<Vec<_>>(),
                })),
                Output::Text => print!("{}", trials_table(&trials)),
            }
        }
        SweepsCommand::Watch { id } => return watch(cli, &client, id).await,
        SweepsCommand::Cancel { id } => {
            let s = client
                .sweeps()
                .cancel_sweep(pb::CancelSweepRequest { id: id.clone() })
                .await
                .map_err(rpc)?
                .into_inner();
            print_sweep(cli.output, &s);
        }
    }
    Ok(ExitCode::SUCCESS)
}
