//! `train`: LoRA training throughput of the Tuna engine against PyTorch + HF PEFT on the
//! same shapes (issue 3). LoRA r=16 on all seven projections, f32, AdamW, random-weight
//! Llama models; shapes `tiny` and `smollm135` from `torch_peft_lora_bench.py` (copied
//! next to this file). Both sides run on 2 threads: candle follows `RAYON_NUM_THREADS`
//! (run the bench with `RAYON_NUM_THREADS=2`; it cannot be set from inside safely), the
//! anchor gets `OMP_NUM_THREADS=2`/`MKL_NUM_THREADS=2`. The anchor runs on
//! `$TUNA_BENCH_PYTHON`, else `python3`.
//!
//! Timings on a shared 2-core machine drift by ±15% from minute to minute, so each shape
//! runs in rounds (Tuna and the anchor, alternating which goes first) and the summary
//! compares the medians.
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
    /// Timed steps per shape and round (after two warm-up steps), for both sides.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Rounds per shape: each round runs Tuna and the anchor (alternating who goes first),
    /// and the summary takes the median round of each, so a slow minute of a shared
    /// machine hits both sides.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The PyTorch + PEFT anchor script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/src/train/torch_peft_lora_bench.py"))]
    pub anchor: PathBuf,
    /// Skip the PyTorch anchor even when torch and peft are installed.
    #[arg(long)]
    pub no_pytorch: bool,
}

/// The Python that runs the anchor: `$TUNA_BENCH_PYTHON` if set, else `python3` on PATH.
fn python() -> PathBuf {
    std::env::var_os("TUNA_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn pytorch_available() -> bool {
    Command::new(python())
        .args(["-c", "import torch, peft"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Tokens/s of the anchor for `shape`, or the reason it is unavailable.
fn pytorch_tok_s(args: &TrainArgs, shape: &str) -> Result<f64, String> {
    let out = Command::new(python())
        .arg(&args.anchor)
        .args([shape, &args.steps.to_string()])
        .env("OMP_NUM_THREADS", "2")
        .env("MKL_NUM_THREADS", "2")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python().display()))?;
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

/// One anchor run of `shape`, printed and (when it worked) recorded in `theirs`.
fn run_anchor(args: &TrainArgs, shape: &str, round: usize, theirs: &mut Vec<f64>) {
    match pytorch_tok_s(args, shape) {
        Ok(v) => {
            println!("train {shape} round {round}: pytorch {v:.1} tok/s");
            theirs.push(v);
        }
        Err(e) => println!("train {shape} round {round}: {e}"),
    }
}

/// The median of `xs` (the mean of the middle two for an even count); `None` when empty.
fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(xs[n / 2]),
        _ => Some((xs[n / 2 - 1] + xs[n / 2]) / 2.0),
    }
}

pub fn run(args: TrainArgs) -> Result<(), String> {
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    println!(
        "train: candle threads (RAYON_NUM_THREADS) = {threads}; LoRA r=16, 7 projections, f32; {} rounds of {} steps, medians",
        args.rounds.max(1),
        args.steps
    );
    let torch = !args.no_pytorch && pytorch_available();
    if !torch {
        println!(
            "train: PyTorch anchor unavailable (`{} -c \"import torch, peft\"` fails, or --no-pytorch)",
            python().display()
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
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 1..=args.rounds.max(1) {
            // Alternate who goes first, so a machine that speeds up or slows down over
            // the run does not favour one side.
            let anchor_first = round % 2 == 0;
            if torch && anchor_first {
                run_anchor(&args, name, round, &mut theirs);
            }
            let r = bench::run(&shape, 2, args.steps).map_err(|e| e.to_string())?;
            println!(
                "train {name} round {round}: batch {}x{}, {} trainable params, step {:.3}s = forward {:.3}s + backward {:.3}s + optimizer {:.3}s, loss {:.3}, {:.1} tok/s",
                shape.batch,
                shape.seq,
                r.trainable_params,
                r.step_s,
                r.forward_s,
                r.backward_s,
                r.optimizer_s,
                r.last_loss,
                r.tokens_per_sec
            );
            ours.push(r.tokens_per_sec);
            if torch && !anchor_first {
                run_anchor(&args, name, round, &mut theirs);
            }
        }
        let tuna = median(ours).unwrap_or(0.0);
        lines.push(bench::summary_line(name, tuna, median(theirs)));
    }
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
