//! `search`: the sweep algorithms on the offline suite of docs/search-notes.md §4.3, in the simulator,
//! against random search and (when installed) the Python anchors: Optuna TPE, Optuna GP and the
//! original CARBS (`carbs-py`). Prints median regret with IQR at
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
//! outside the timed part; `--install-optuna false` or `--no-optuna` to avoid it). The GP
//! sampler and `carbs-py` run only where that Python has torch/scipy and `carbs`; otherwise
//! the bench prints why and shows them as `unavailable`. Anchors are not on the clock.
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
use optuna::Sampler;
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
    /// Only these of our methods (comma-separated names as in the table, e.g. `carbs,random`).
    #[arg(long)]
    pub methods: Option<String>,
    /// Run our methods at W = 1 only (the anchors' setting), for quick comparisons.
    #[arg(long)]
    pub w1_only: bool,
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
    /// Known optimum of the `--problem-cmd` problem, so its table shows regret instead of
    /// the best objective.
    #[arg(long, requires = "problem_cmd", allow_hyphen_values = true)]
    pub problem_optimum: Option<f64>,
    /// Skip every Python anchor (Optuna and the original CARBS) even when installed.
    #[arg(long)]
    pub no_optuna: bool,
    /// Seeds per anchor study (default: `--seeds`); the GP sampler and the original CARBS
    /// take seconds per suggestion, far longer than our methods.
    #[arg(long)]
    pub anchor_seeds: Option<u64>,
    /// Which Python anchors to run (comma-separated: tpe, gp, carbs-py); `tpe` includes
    /// TPE + SuccessiveHalving on problems with a fidelity.
    #[arg(long, default_value = "tpe,gp,carbs-py")]
    pub anchors: String,
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
    // 6. The whole run (our methods) within 5 minutes.
    println!(
        "target wall time (anchors excluded): {elapsed:.1}s (< 300s) {}",
        verdict(elapsed < 300.0)
    );
}

/// Our method on `p`: CARBS, or the bandit (CARBS for any real rest) where a categorical
/// parameter rules CARBS out.
fn ours(p: &dyn Problem) -> Method {
    if p.space().is_flat_real() {
        Method::Carbs
    } else {
        Method::BanditCarbs
    }
}

/// Regret of CARBS's search centre (its starting point), where the problem has a known truth.
fn centre_regret(p: &dyn Problem) -> Option<f64> {
    if p.pareto_metric().is_some() || !p.space().is_flat_real() {
        return None;
    }
    let space = Method::carbs_space(p).ok()?;
    let centre = space.from_basic(&space.to_basic(&Default::default()));
    Some(p.truth(&centre)? - p.optimum()?)
}

/// The search-quality targets (issue 18), over the whole selected suite at W = 1.
fn issue_targets(suite: &[Box<dyn Problem>], cells: &[Cell], ran: &[Method]) {
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let med = |pi: usize, m: Method, b: f64| {
        cells
            .iter()
            .find(|c| c.problem == pi && c.method == m && c.workers == 1)
            .map(|c| c.stats(b).0)
    };
    let mut losses = Vec::new();
    for b in [20.0, 50.0] {
        for (pi, p) in suite.iter().enumerate() {
            if let (Some(c), Some(r)) = (med(pi, ours(p.as_ref()), b), med(pi, Method::Random, b))
                && c > r
            {
                losses.push(format!("{} B={b} ({} > {})", p.name(), fmt(c), fmt(r)));
            }
        }
    }
    println!(
        "target carbs<=random every problem, B=20 and B=50: {} {}",
        if losses.is_empty() {
            "no loss".to_string()
        } else {
            losses.join(", ")
        },
        verdict(losses.is_empty())
    );
    for (m, share) in [
        (Method::OptunaTpe, 0.8),
        (Method::OptunaGp, 0.5),
        (Method::CarbsPy, 0.8),
    ] {
        if !ran.contains(&m) {
            println!("target carbs<={} B=50: unavailable", m.name());
            continue;
        }
        let (mut wins, mut total, mut lost) = (0, 0, Vec::new());
        for (pi, p) in suite.iter().enumerate() {
            if let (Some(c), Some(a)) = (med(pi, ours(p.as_ref()), 50.0), med(pi, m, 50.0)) {
                total += 1;
                if c <= a {
                    wins += 1;
                } else {
                    lost.push(p.name());
                }
            }
        }
        let ok = total > 0 && wins as f64 >= share * total as f64 - 1e-9;
        println!(
            "target carbs<={} B=50: {wins} of {total} problems (≥ {:.0}%; lost: {}) {}",
            m.name(),
            share * 100.0,
            lost.join(", "),
            verdict(ok)
        );
    }
    let mut stuck = Vec::new();
    for (pi, p) in suite.iter().enumerate() {
        if let (Some(c0), Some(c)) = (centre_regret(p.as_ref()), med(pi, Method::Carbs, 50.0))
            && c0 > 1e-9
            && c >= c0 - 1e-12
        {
            stuck.push(p.name());
        }
    }
    println!(
        "target carbs leaves a non-optimal centre (median at B=50 below the centre's regret): {} {}",
        if stuck.is_empty() {
            "every problem".to_string()
        } else {
            format!("stuck on {}", stuck.join(", "))
        },
        verdict(stuck.is_empty())
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
    let python = if args.no_optuna {
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
                optimum: args.problem_optimum,
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
            let chosen = args
                .methods
                .as_ref()
                .is_none_or(|only| only.split(',').any(|n| n.trim() == m.name()));
            if !chosen || !m.applies(p.as_ref()) {
                continue;
            }
            for w in WORKERS {
                if args.w1_only && w != 1 {
                    continue;
                }
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

    // The Python anchors (W = 1 only), each thread through one long-lived Python process.
    let wanted: Vec<&str> = args.anchors.split(',').map(str::trim).collect();
    let mut samplers: Vec<(Method, Sampler, bool)> = Vec::new();
    if let Some(python) = &python {
        if wanted.contains(&"tpe") {
            samplers.push((Method::OptunaTpe, Sampler::Tpe, false));
            samplers.push((Method::OptunaTpeSh, Sampler::Tpe, true));
        }
        let caps = optuna::Client::start(python).map(|mut c| c.probe());
        let why = |r: Option<&Result<(), String>>| match r {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(e.clone()),
            None => Some("the anchor Python did not start".to_string()),
        };
        for (name, m, sampler, cap) in [
            (
                "gp",
                Method::OptunaGp,
                Sampler::Gp,
                caps.as_ref().map(|c| &c.gp),
            ),
            (
                "carbs-py",
                Method::CarbsPy,
                Sampler::Carbs,
                caps.as_ref().map(|c| &c.carbs),
            ),
        ] {
            if !wanted.contains(&name) {
                continue;
            }
            match why(cap) {
                None => samplers.push((m, sampler, false)),
                Some(e) => println!("{}: skipped: {e}", m.name()),
            }
        }
    }
    let optuna_ok = samplers.iter().any(|s| s.0 == Method::OptunaTpe);
    let anchors_started = Instant::now();
    if let Some(python) = &python {
        let mut studies = Vec::new();
        for (pi, p) in suite.iter().enumerate() {
            for &(m, sampler, pruner) in &samplers {
                if (pruner && p.fidelity().is_none()) || !m.applies(p.as_ref()) {
                    continue;
                }
                for seed in 0..args.anchor_seeds.unwrap_or(args.seeds) {
                    studies.push((pi, m, sampler, pruner, seed));
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
                        let Some(&(pi, m, sampler, pruner, seed)) = studies.get(i) else {
                            break;
                        };
                        let p = suite[pi].as_ref();
                        let max_r = p.fidelity().map(|f| f.spec.max).unwrap_or(1.0);
                        // The original CARBS searches what CARBS-rs searches (centres, fidelity).
                        let space = if m == Method::CarbsPy {
                            match Method::carbs_space(p) {
                                Ok(s) => s,
                                Err(_) => continue,
                            }
                        } else {
                            p.space()
                        };
                        let Some(mut study) = optuna::Study::new(
                            &mut client,
                            i as u64,
                            &space,
                            sampler,
                            seed,
                            pruner,
                            max_r,
                        ) else {
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
    let anchors_s = anchors_started.elapsed().as_secs_f64();
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
        "search: {} seeds ({} for the Python anchors), budgets in full evaluations, median regret [IQR] (chinchilla: mean Pareto regret over log cost; external: best objective)",
        args.seeds,
        args.anchor_seeds.unwrap_or(args.seeds)
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
        "time: {:.1}s ours ({} sweeps on {threads} threads), {anchors_s:.1}s anchors (not counted), {:.1}s total",
        ours_s,
        tasks.len(),
        started.elapsed().as_secs_f64()
    );
    let ran: Vec<Method> = samplers.iter().map(|s| s.0).collect();
    targets(&suite, &cells, optuna_ok, args.budget, ours_s);
    issue_targets(&suite, &cells, &ran);
    let cell = |pi: usize, m: Method| {
        cells
            .iter()
            .find(|c| c.problem == pi && c.method == m && c.workers == 1)
    };
    for (pi, p) in suite.iter().enumerate() {
        let r = |m: Method| match cell(pi, m) {
            Some(c) => fmt(c.stats(50.0).0),
            None if matches!(m, Method::OptunaTpe | Method::OptunaGp | Method::CarbsPy)
                && !ran.contains(&m) =>
            {
                "unavailable".to_string()
            }
            None => "n/a".to_string(),
        };
        println!(
            "search {}: carbs {} random {} tpe {} gp {} carbs-py {} (median regret at budget 50)",
            p.name(),
            r(ours(p.as_ref())),
            r(Method::Random),
            r(Method::OptunaTpe),
            r(Method::OptunaGp),
            r(Method::CarbsPy),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{} error(s)", errors.len()))
    }
}
