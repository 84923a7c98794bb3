//! `tuna demo`: the whole service in one process on the embedded default. A control plane on
//! SQLite + a local blob folder, one in-process worker, a generated tiny model and dataset, one
//! LoRA job followed live, the adapter downloaded and verified, and a summary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tuna_client::{Client, ClientError, pb};
use tuna_config::Config;
use tuna_server::serve::ControlPlane;
use tuna_spec::metrics;

use super::{CliError, Output, progress, worker};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its database, blobs, model, datasets and adapter.
    #[arg(long, default_value = "tuna-data/demo")]
    data_dir: PathBuf,
    /// Optimizer steps of the demo job.
    #[arg(long, default_value_t = 60)]
    steps: i64,
}

/// Single-digit additions as prompt/completion records: every `stride`-th of the 100 pairs.
/// The validation set (stride 4) is drawn from the same task as the training set (stride 1),
/// so its loss shows how well the adapter learned the task.
fn write_dataset(path: &Path, stride: usize) -> std::io::Result<()> {
    let mut lines = String::new();
    for i in (0..100).step_by(stride) {
        let (a, b) = (i / 10, i % 10);
        lines.push_str(&format!(
            "{{\"prompt\":\"{a}+{b}=\",\"completion\":\"{}\"}}\n",
            a + b
        ));
    }
    std::fs::write(path, lines)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |e| CliError::Usage(format!("{}: {e}", path.display()))
}

pub async fn run(args: &DemoArgs) -> Result<ExitCode, CliError> {
    let quiet = tuna_config::Telemetry {
        log_filter: "warn".into(),
        ..Default::default()
    };
    let _telemetry = tuna_telemetry::init("tuna-demo", &quiet)?;
    let started = Instant::now();
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut config = Config::default();
    config.queue.data_dir = dir.clone();
    config.queue.lease_ms = 10_000;
    // The embedded server is never open, even for one process: a fresh admin key and worker
    // token per run, used by the demo's own client and worker.
    let secret = || {
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        format!("{}{}", a.simple(), b.simple())
    };
    config.api.api_key = secret();
    config.api.worker_token = secret();
    let plane = ControlPlane::open(&config).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(io(dir))?;
    let addr = listener.local_addr().map_err(io(dir))?;
    let url = format!("http://{addr}");
    let (stop, stopped) = watch::channel(false);
    let mut server_stop = stopped.clone();
    let server = tokio::spawn(plane.serve_on(listener, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));
    println!(
        "== control plane on {url} (SQLite + blobs under {})",
        dir.display()
    );

    let worker_args = worker::WorkerArgs::in_process(dir.join("worker-cache"));
    let mut agent_config = worker::agent_config(&url, &worker_args);
    agent_config.worker_token = Some(config.api.worker_token.clone());
    let agent = tuna_worker::agent::Agent::register(
        agent_config,
        std::sync::Arc::new(tuna_worker::runner::EngineRunner),
    )
    .await?;
    let agent_stop = stopped.clone();
    let agent_task = tokio::spawn(async move { agent.run(agent_stop).await });
    println!("== one in-process worker registered (cpu)");

    let result = demo_job(&url, &config.api.api_key, dir, args.steps).await;
    let _ = stop.send(true);
    let _ = agent_task.await;
    let _ = server.await;
    let summary = result?;
    println!();
    println!("== summary ({:.1} s)", started.elapsed().as_secs_f64());
    println!("   job              {}", summary.job_id);
    println!("   base eval loss   {:.4}", summary.base_eval);
    println!(
        "   final eval loss  {:.4}  ({:+.1}%)",
        summary.final_eval,
        100.0 * (summary.final_eval - summary.base_eval) / summary.base_eval
    );
    println!(
        "   adapter          {} (sha256 {} verified)",
        summary.adapter_dir.display(),
        summary.sha256
    );
    for f in &summary.files {
        println!("                    {f}");
    }
    Ok(if summary.final_eval < summary.base_eval {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: training did not lower the eval loss");
        ExitCode::FAILURE
    })
}

struct Summary {
    job_id: String,
    base_eval: f64,
    final_eval: f64,
    adapter_dir: PathBuf,
    sha256: String,
    files: Vec<String>,
}

async fn demo_job(url: &str, api_key: &str, dir: &Path, steps: i64) -> Result<Summary, CliError> {
    let client = Client::connect(url, Some(api_key)).await?;
    let model_dir = dir.join("models/tiny-llama");
    super::models::make_tiny(&model_dir, 7)?;
    let name = "tiny-llama";
    let model = match client
        .models()
        .get_model(pb::GetModelRequest { name: name.into() })
        .await
    {
        Ok(m) => m.into_inner(),
        Err(_) => client.register_model(name, &model_dir).await?,
    };
    println!(
        "== tiny Llama model generated and registered as {:?} ({} files)",
        model.name,
        model.files.len()
    );
    let train = dir.join("train.jsonl");
    let valid = dir.join("validation.jsonl");
    write_dataset(&train, 1).map_err(io(&train))?;
    write_dataset(&valid, 4).map_err(io(&valid))?;
    let train = client
        .upload_file(
            &train,
            pb::FilePurpose::Dataset,
            pb::DatasetFormat::Unspecified,
        )
        .await?;
    let valid = client
        .upload_file(
            &valid,
            pb::FilePurpose::Dataset,
            pb::DatasetFormat::Unspecified,
        )
        .await?;
    println!(
        "== datasets uploaded: {} ({} records), {} ({} records)",
        train.id, train.line_count, valid.id, valid.line_count
    );
    let spec = pb::JobSpec {
        base_model: name.into(),
        training_file: train.id.clone(),
        validation_file: valid.id.clone(),
        method: Some(pb::Method {
            r#type: "lora".into(),
            lora: Some(pb::LoraParams {
                r: Some(8),
                alpha: Some(16.0),
                target_modules: vec!["all-linear".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        hyperparameters: Some(pb::Hyperparameters {
            learning_rate: Some(0.01),
            max_steps: Some(steps),
            batch_size: Some(8),
            warmup_steps: Some(5),
            eval_every: Some(10),
            checkpoint_every: Some(20),
            seed: Some(42),
            ..Default::default()
        }),
        ..Default::default()
    };
    let job = client.create_job(spec, None).await?;
    println!("== LoRA job {} submitted; following it", job.id);
    let mut view = progress::View::new(Output::Text, Some(steps as u64));
    let mut evals: Vec<(i64, f64)> = Vec::new();
    let job = client
        .watch_job(&job.id, 0, |u| {
            if let Some(pb::job_update::Kind::Metrics(m)) = &u.kind
                && let Some(v) = m.values.get(metrics::EVAL_LOSS)
            {
                evals.push((m.step, *v));
            }
            view.update(u);
        })
        .await;
    view.finish();
    let job = job?;
    if job.state() != pb::JobState::Succeeded {
        let why = job
            .failure
            .as_ref()
            .map(|f| f.message.clone())
            .unwrap_or_default();
        return Err(CliError::Usage(format!(
            "job {} ended {:?}: {why}",
            job.id,
            job.state()
        )));
    }
    let artifacts = client
        .list_artifacts(&job.id, pb::ArtifactKind::Adapter)
        .await?;
    let adapter = artifacts
        .last()
        .ok_or_else(|| CliError::Client(ClientError::Protocol("the job has no adapter".into())))?;
    let adapter_dir = dir.join("adapters").join(&job.id);
    client.download_artifact_into(adapter, &adapter_dir).await?;
    let mut files: Vec<String> = std::fs::read_dir(&adapter_dir)
        .map_err(io(&adapter_dir))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    files.sort();
    let base_eval = evals.first().map(|e| e.1).unwrap_or(f64::NAN);
    let final_eval = evals.last().map(|e| e.1).unwrap_or(f64::NAN);
    Ok(Summary {
        job_id: job.id,
        base_eval,
        final_eval,
        adapter_dir,
        sha256: adapter.sha256.clone(),
        files,
    })
}
