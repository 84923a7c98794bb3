//! `train`: LoRA training throughput of the Tuna engine against PyTorch + HF PEFT on the
//! same shapes (issue 3). LoRA r=16 on all seven projections, f32, AdamW, random-weight
//! Llama models; shapes `tiny` and `smollm135` from `torch_peft_lora_bench.py` (copied
//! next to this file). Both sides run on 2 threads: candle follows `RAYON_NUM_THREADS`
//! (run the bench with `RAYON_NUM_THREADS=2`; it cannot be set from inside safely), the
//! anchor gets `OMP_NUM_THREADS=2`/`MKL_NUM_THREADS=2`.
//!
//! Wiring (for `main.rs`): `mod train;`, a subcommand `Train(train::TrainArgs)`, and
//! `Bench::Train(a) => train::run(a)`; `bench/Cargo.toml` needs `tuna-worker.workspace = true`.
//! The last lines are exactly `train <shape>: tuna <X> tok/s, pytorch <Y|unavailable>
//! tok/s, ratio <X/Y|n/a>`.

use std::path::PathBuf;
use std::process::Command;

use tuna_worker::engine::bench;

/// Options of the `train` benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Shapes to run (comma-separated: tiny, smollm135).
    #[arg(long, default_value = "tiny,smollm135")]
    pub shapes: String,
    /// Timed steps per shape (after one warm-up step), for both sides.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// The PyTorch + PEFT anchor script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/src/train/torch_peft_lora_bench.py"))]
    pub anchor: PathBuf,
    /// Skip the PyTorch anchor even when torch and peft are installed.
    #[arg(long)]
    pub no_pytorch: bool,
}

fn pytorch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, peft"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Tokens/s of the anchor for `shape`, or the reason it is unavailable.
fn pytorch_tok_s(args: &TrainArgs, shape: &str) -> Result<f64, String> {
    let out = Command::new("python3")
        .arg(&args.anchor)
        .args([shape, &args.steps.to_string()])
        .env("OMP_NUM_THREADS", "2")
        .env("MKL_NUM_THREADS", "2")
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "anchor failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("anchor output {line:?}: {e}"))?;
    json.get("tokens_per_s")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| format!("anchor output has no tokens_per_s: {line}"))
}

pub fn run(args: TrainArgs) -> Result<(), String> {
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    println!(
        "train: candle threads (RAYON_NUM_THREADS) = {threads}; LoRA r=16, 7 projections, f32"
    );
    let torch = !args.no_pytorch && pytorch_available();
    if !torch {
        println!(
            "train: PyTorch anchor unavailable (python3 -c \"import torch, peft\" fails or --no-pytorch)"
        );
    }
    let mut lines = Vec::new();
    for name in args
        .shapes
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let shape = bench::shape(name).ok_or_else(|| format!("unknown shape `{name}`"))?;
        let r = bench::run(&shape, 1, args.steps).map_err(|e| e.to_string())?;
        println!(
            "train {name}: batch {}x{}, {} trainable params, step {:.3}s = forward {:.3}s + backward {:.3}s + optimizer {:.3}s, loss {:.3}",
            shape.batch,
            shape.seq,
            r.trainable_params,
            r.step_s,
            r.forward_s,
            r.backward_s,
            r.optimizer_s,
            r.last_loss
        );
        let py = if torch {
            match pytorch_tok_s(&args, name) {
                Ok(v) => Some(v),
                Err(e) => {
                    println!("train {name}: {e}");
                    None
                }
            }
        } else {
            None
        };
        lines.push(bench::summary_line(name, r.tokens_per_sec, py));
    }
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
