//! `search`: the sweep algorithms on the offline suite of docs/search-notes.md §4.3, in the simulator,
//! against random search and (when installed) Optuna TPE. Prints median regret with IQR at
//! budgets {5, 10, 20, 50} × one full evaluation, writes one SVG per problem, and ends with
//! one summary line per problem.
//!
//! Definitions (see `sim.rs`): budget = cumulative cost of finished runs in units of one
//! full-fidelity evaluation; regret = noise-free full-fidelity objective of the recommended
//! configuration minus the optimum; on `chinchilla` it is the mean Pareto regret over log cost
//! instead. A sweep stops at the largest budget or at `--max-runs` runs, whichever comes first;
//! later budgets then carry its final regret forward. Every (problem, method, W) cell runs seed
//! 0 twice and fails the benchmark if the two traces hash differently. Optuna runs at W = 1
//! only. On problems without a categorical parameter the summary's `carbs` is CARBS; on the
//! categorical table it is the bandit (hierarchical UCB, CARBS for any real rest), since CARBS
//! itself searches real parameters only. The summary's `asha` is ASHA as published (promotion:
//! pause at a rung, resume from the checkpoint when promoted); `asha-stop` in the table is its
//! stopping variant. Methods that need a fidelity (both ASHAs, Hyperband, CARBS + stopping,
//! TPE + SuccessiveHalving) are `n/a` on problems without one.
//!
//! Optuna comes from `$TUNA_BENCH_PYTHON`, `target/anchor-venv` or `python3`; when none can
//! import it, the bench installs the pinned release into `target/anchor-venv` first (once,
//! outside the timed part; `--install-optuna false` or `--no-optuna` to avoid it).
//!
//! Debugging: `TUNA_BENCH_TRACE=1` prints every completed run of seed 0 at W = 1 to stderr.

mod methods;
mod optuna;
mod plot;
mod problems;
mod sim;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tuna_server::search::Space;

use methods::Method;
use problems::{External, Problem};
use sim::Limits;

/// Options of the `search` benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// Seeds per (problem, method, workers).
    #[arg(long, default_value_t = 10)]
    pub seeds: u64,
    /// Largest budget, in full evaluations.
    #[arg(long, default_value_t = 50.0)]
    pub budget: f64,
    /// Cap on runs per sweep (bounds methods that only make cheap runs).
    #[arg(long, default_value_t = 300)]
    pub max_runs: usize,
    /// Only these problems (comma-separated names).
    #[arg(long)]
    pub problems: Option<String>,
    /// Folder for the SVG plots.
    #[arg(long, default_value = "target/search-bench")]
    pub out: PathBuf,
    /// External problem: run CMD per evaluation, parameters as JSON on stdin,
    /// `{"objective":..,"cost":..,"failed":bool}` on stdout.
    #[arg(long)]
    pub problem_cmd: Option<String>,
    /// Search space (JSON list of parameter definitions) for `--problem-cmd`.
    #[arg(long, requires = "problem_cmd")]
    pub problem_space: Option<PathBuf>,
    /// Skip Optuna even when it is installed.
    #[arg(long)]
    pub no_optuna: bool,
    /// Whether to install Optuna (pinned, from PyPI) into `target/anchor-venv` when no Python
    /// on hand can import it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub install_optuna: bool,
}

pub const BUDGETS: [f64; 4] = [5.0, 10.0, 20.0, 50.0];
const PLOT_BUDGETS: [f64; 7] = [1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 50.0];
const WORKERS: [usize; 2] = [1, 4];

/// One sweep's result: (problem, method, workers, seed), its regret curve, its trace hash.
type Outcome = ((usize, Method, usize, u64), Vec<(f64, f64)>, u64);

/// Regret curves of one (problem, method, workers) cell, one per seed.
pub struct Cell {
    pub problem: usize,
    pub method: Method,
    pub workers: usize,
    pub curves: Vec<Vec<(f64, f64)>>,
}

impl Cell {
    /// Median and quartiles over seeds at budget `b`.
    pub fn stats(&self, b: f64) -> (f64, f64, f64) {
        let mut v: Vec<f64> = self.curves.iter().map(|c| sim::regret_at(c, b)).collect();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            let pos = p * (v.len().max(1) - 1) as f64;
            let (i, j) = (pos.floor() as usize, pos.ceil() as usize);
            match (v.get(i), v.get(j)) {
                (Some(a), Some(b)) if a.is_finite() && b.is_finite() => {
                    a + (pos - i as f64) * (b - a)
                }
                (Some(a), _) if a.is_infinite() => *a,
                (_, Some(b)) => *b,
                _ => f64::NAN,
            }
        };
        (q(0.5), q(0.25), q(0.75))
    }
}

/// Smallest budget (on a 0.05-unit grid) at which `cell`'s median regret is at most `level`.
fn budget_to_reach(cell: &Cell, level: f64, max_budget: f64) -> Option<f64> {
    let steps = (max_budget / 0.05).round() as usize;
    (1..=steps)
        .map(|i| i as f64 * 0.05)
        .find(|&b| cell.stats(b).0 <= level)
}

/// One explicit line per acceptance target (W = 1 medians over seeds).
fn targets(
    suite: &[Box<dyn Problem>],
    cells: &[Cell],
    optuna_ok: bool,
    max_budget: f64,
    elapsed: f64,
) {
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let find = |name: &str, m: Method| {
        let pi = suite.iter().position(|p| p.name() == name)?;
        cells
            .iter()
            .find(|c| c.problem == pi && c.method == m && c.workers == 1)
    };
    let med = |name: &str, m: Method, b: f64| find(name, m).map(|c| c.stats(b).0);
    // 1. CARBS beats random at budgets 20 and 50 on MF-Branin and MF-Hartmann6.
    for name in ["mf-branin", "mf-hartmann6"] {
        for b in [20.0, 50.0] {
            if let (Some(c), Some(r)) = (med(name, Method::Carbs, b), med(name, Method::Random, b))
            {
                println!(
                    "target carbs<random {name} B={b}: carbs {} random {} {}",
                    fmt(c),
                    fmt(r),
                    verdict(c < r)
                );
            }
        }
    }
    // 2. CARBS's Pareto regret area below random's on the Chinchilla-style problem.
    for b in [20.0, 50.0] {
        if let (Some(c), Some(r)) = (
            med("chinchilla", Method::Carbs, b),
            med("chinchilla", Method::Random, b),
        ) {
            println!(
                "target carbs<random chinchilla pareto-area B={b}: carbs {} random {} {}",
                fmt(c),
                fmt(r),
                verdict(c < r)
            );
        }
    }
    // 3. ASHA reaches random-at-full-fidelity's regret (at the largest budget) with at most a
    //    third of random's cost: cost ratio = (first budget where ASHA's median regret is at
    //    most random's median regret at B_max) / B_max.
    if let (Some(a), Some(r)) = (
        find("lora-sim", Method::Asha),
        med("lora-sim", Method::Random, max_budget),
    ) {
        let reach = budget_to_reach(a, r, max_budget);
        let ratio = reach.map_or(f64::INFINITY, |b| b / max_budget);
        println!(
            "target asha-lora-sim cost ratio: {} (≤ 0.333; random's regret {} at B={max_budget}, asha reaches it at B={}) {}",
            fmt(ratio),
            fmt(r),
            reach.map_or("never".to_string(), fmt),
            verdict(ratio <= 1.0 / 3.0 + 1e-9)
        );
    }
    // 4. CARBS (the bandit on the categorical table) at most Optuna TPE at budget 20.
    if optuna_ok {
        let mut wins = Vec::new();
        let mut total = 0;
        for p in suite {
            let ours = if p.fidelity().is_none() && !p.space().is_flat_real() {
                Method::BanditCarbs
            } else {
                Method::Carbs
            };
            if let (Some(c), Some(t)) = (
                med(p.name(), ours, 20.0),
                med(p.name(), Method::OptunaTpe, 20.0),
            ) {
                total += 1;
                if c <= t {
                    wins.push(p.name());
                }
            }
        }
        println!(
            "target carbs<=optuna-tpe B=20: {} of {total} problems ({}) (≥ 3) {}",
            wins.len(),
            wins.join(", "),
            verdict(wins.len() >= 3)
        );
    } else {
        println!("target carbs<=optuna-tpe B=20: optuna unavailable");
    }
    // 5. The categorical bandit beats random on the categorical table.
    for b in [20.0, 50.0] {
        if let (Some(c), Some(r)) = (
            med("categorical", Method::BanditCarbs, b),
            med("categorical", Method::Random, b),
        ) {
            println!(
                "target bandit<random categorical B={b}: bandit-ucb {} random {} {}",
                fmt(c),
                fmt(r),
                verdict(c < r)
            );
        }
    }
    // 6. The whole run within 2 minutes.
    println!(
        "target wall time: {elapsed:.1}s (< 120s) {}",
        verdict(elapsed < 120.0)
    );
}

fn load_space(path: &PathBuf) -> Result<Space, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let params = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Space::new(params).map_err(|e| e.to_string())
}

fn fmt(r: f64) -> String {
    if r.is_infinite() {
        "inf".into()
    } else if r == 0.0 || (r.abs() >= 1e-3 && r.abs() < 1e4) {
        format!("{r:.4}")
    } else {
        format!("{r:.2e}")
    }
}

pub fn run(args: SearchArgs) -> Result<(), String> {
    // Before the clock starts: a one-off Optuna install is not the benchmark's time.
    let python = if args.no_optuna || args.problem_cmd.is_some() {
        None
    } else {
        optuna::python(args.install_optuna)
            .map_err(|e| println!("optuna: unavailable: {e}"))
            .ok()
    };
    let started = Instant::now();
    let mut suite: Vec<Box<dyn Problem>> = match &args.problem_cmd {
        Some(cmd) => {
            let path = args
                .problem_space
                .as_ref()
                .ok_or("--problem-cmd needs --problem-space FILE.json")?;
            vec![Box::new(External {
                cmd: cmd.clone(),
                space: load_space(path)?,
                unit: 1.0,
            })]
        }
        None => problems::suite(),
    };
    if let Some(only) = &args.problems {
        let names: Vec<&str> = only.split(',').collect();
        suite.retain(|p| names.contains(&p.name()));
    }
    if suite.is_empty() {
        return Err("no problem selected".into());
    }
    // Tasks: (problem, method, workers, seed) for every applicable method.
    let mut tasks = Vec::new();
    for (pi, p) in suite.iter().enumerate() {
        for m in Method::ALL {
            if !m.applies(p.as_ref()) {
                continue;
            }
            for w in WORKERS {
                for seed in 0..args.seeds {
                    tasks.push((pi, m, w, seed));
                }
            }
        }
    }
    let lim = |w: usize| Limits {
        workers: w,
        budget: args.budget,
        max_runs: args.max_runs,
    };
    let results: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(pi, m, w, seed)) = tasks.get(i) else {
                        break;
                    };
                    let p = suite[pi].as_ref();
                    match m.build(p, seed) {
                        Ok(mut searcher) => {
                            let trace = sim::simulate(p, searcher.as_mut(), seed, lim(w));
                            // Determinism gate: seed 0 runs twice and must hash the same.
                            if seed == 0 {
                                let again = m
                                    .build(p, seed)
                                    .map(|mut s| sim::simulate(p, s.as_mut(), seed, lim(w)).hash);
                                if again != Ok(trace.hash) {
                                    let msg =
                                        format!("{} {} W={w}: trace differs", p.name(), m.name());
                                    errors.lock().map(|mut e| e.push(msg)).ok();
                                }
                            }
                            let curve = sim::regret_curve(p, &trace);
                            if std::env::var_os("TUNA_BENCH_TRACE").is_some() && seed == 0 && w == 1 {
                                for c in &trace.completions {
                                    eprintln!(
                                        "trace {} {} spent {:.3} cost {:.4} r {:.3} value {:?} {:?}",
                                        p.name(), m.name(), c.spent, c.cost, c.resource, c.value, c.params
                                    );
                                }
                            }
                            results
                                .lock()
                                .map(|mut r| r.push(((pi, m, w, seed), curve, trace.hash)))
                                .ok();
                        }
                        Err(e) => {
                            errors
                                .lock()
                                .map(|mut v| v.push(format!("{}: {e}", m.name())))
                                .ok();
                        }
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().map_err(|e| e.to_string())?;
    let errors = errors.into_inner().map_err(|e| e.to_string())?;
    let ours_s = started.elapsed().as_secs_f64();

    // Optuna (W = 1 only), through one long-lived Python process.
    let optuna_ok = python.is_some();
    if let Some(python) = &python {
        let mut studies = Vec::new();
        for (pi, p) in suite.iter().enumerate() {
            for (m, pruner) in [(Method::OptunaTpe, false), (Method::OptunaTpeSh, true)] {
                if pruner && p.fidelity().is_none() {
                    continue;
                }
                for seed in 0..args.seeds {
                    studies.push((pi, m, pruner, seed));
                }
            }
        }
        let found = Mutex::new(Vec::new());
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let Some(mut client) = optuna::Client::start(python) else {
                        return;
                    };
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(pi, m, pruner, seed)) = studies.get(i) else {
                            break;
                        };
                        let p = suite[pi].as_ref();
                        let max_r = p.fidelity().map(|f| f.spec.max).unwrap_or(1.0);
                        let space = p.space();
                        let Some(mut study) =
                            optuna::Study::new(&mut client, i as u64, &space, seed, pruner, max_r)
                        else {
                            continue;
                        };
                        let trace = sim::simulate(p, &mut study, seed, lim(1));
                        let curve = sim::regret_curve(p, &trace);
                        found
                            .lock()
                            .map(|mut r| r.push(((pi, m, 1, seed), curve, trace.hash)))
                            .ok();
                    }
                });
            }
        });
        results.extend(found.into_inner().map_err(|e| e.to_string())?);
    }
    results.sort_by(|a, b| {
        (a.0.0, a.0.1.order(), a.0.2, a.0.3).cmp(&(b.0.0, b.0.1.order(), b.0.2, b.0.3))
    });
    let mut cells: Vec<Cell> = Vec::new();
    for ((pi, m, w, _), curve, _) in results {
        match cells.last_mut() {
            Some(c) if c.problem == pi && c.method == m && c.workers == w => c.curves.push(curve),
            _ => cells.push(Cell {
                problem: pi,
                method: m,
                workers: w,
                curves: vec![curve],
            }),
        }
    }

    // Table.
    println!(
        "search: {} seeds, budgets in full evaluations, median regret [IQR] (chinchilla: mean Pareto regret over log cost; external: best objective)",
        args.seeds
    );
    for (pi, p) in suite.iter().enumerate() {
        println!("\n{}", p.name());
        print!("  {:<12} {:>2}", "method", "W");
        for b in BUDGETS {
            print!("  {:>27}", format!("B={b}"));
        }
        println!();
        for c in cells.iter().filter(|c| c.problem == pi) {
            print!("  {:<12} {:>2}", c.method.name(), c.workers);
            for b in BUDGETS {
                let (m, lo, hi) = c.stats(b);
                print!("  {:>27}", format!("{} [{}, {}]", fmt(m), fmt(lo), fmt(hi)));
            }
            println!();
        }
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    for (pi, p) in suite.iter().enumerate() {
        let path = args.out.join(format!("{}.svg", p.name()));
        let series: Vec<(String, Vec<(f64, f64)>)> = cells
            .iter()
            .filter(|c| c.problem == pi && c.workers == 1)
            .map(|c| {
                let pts = PLOT_BUDGETS
                    .iter()
                    .filter(|&&b| b <= args.budget)
                    .map(|&b| (b, c.stats(b).0))
                    .filter(|(_, r)| r.is_finite())
                    .collect();
                (c.method.name().to_string(), pts)
            })
            .collect();
        plot::regret_plot(&path, p.name(), &series)?;
        println!("\nplot: {}", path.display());
    }
    for e in &errors {
        println!("error: {e}");
    }
    if errors.is_empty() {
        println!(
            "determinism: seed 0 traces bit-identical on rerun for every method, problem and W"
        );
    }
    println!(
        "time: {:.1}s ours ({} sweeps on {threads} threads), {:.1}s total",
        ours_s,
        tasks.len(),
        started.elapsed().as_secs_f64()
    );
    let cell = |pi: usize, m: Method| {
        cells
            .iter()
            .find(|c| c.problem == pi && c.method == m && c.workers == 1)
    };
    for (pi, p) in suite.iter().enumerate() {
        let r = |m: Method| cell(pi, m).map_or("n/a".to_string(), |c| fmt(c.stats(20.0).0));
        let carbs = if p.fidelity().is_none() && !p.space().is_flat_real() {
            r(Method::BanditCarbs)
        } else {
            r(Method::Carbs)
        };
        let optuna = if optuna_ok {
            r(Method::OptunaTpe)
        } else {
            "unavailable".to_string()
        };
        println!(
            "search {}: carbs {} random {} asha {} optuna {} (median regret at budget 20)",
            p.name(),
            carbs,
            r(Method::Random),
            r(Method::Asha),
            optuna
        );
    }
    targets(
        &suite,
        &cells,
        optuna_ok,
        args.budget,
        started.elapsed().as_secs_f64(),
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{} error(s)", errors.len()))
    }
}
