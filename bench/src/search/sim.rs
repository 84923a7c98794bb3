//! Discrete-event simulator of the control plane: W workers, job duration = cost, reports at
//! the problem's report points, `should_stop` at each, promotions resume from the resource
//! already reached. It calls `suggest` / `observe` / `should_stop` as the controller would.

use std::collections::BTreeMap;

use tuna_server::search::rng::hash_words;
use tuna_server::search::{Decision, Observation, Params, Searcher, Suggestion, Value};

use super::problems::{Problem, params_key};

/// Limits of one simulated sweep.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub workers: usize,
    /// Total cost, in full-evaluation units.
    pub budget: f64,
    /// Cap on runs (each suggestion is one run), to bound very cheap methods.
    pub max_runs: usize,
}

/// One completed (or stopped, or failed) run.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Cumulative cost of finished runs so far, in units.
    pub spent: f64,
    pub params: Params,
    pub resource: f64,
    pub value: Option<f64>,
    pub cost: f64,
}

/// Everything a sweep produced, in completion order, and a hash of it.
#[derive(Debug, Clone)]
pub struct Trace {
    pub completions: Vec<Completion>,
    pub hash: u64,
}

struct Job {
    s: Suggestion,
    start_r: f64,
    start_cost: f64,
    /// (resource, value, cumulative cost) events still to come.
    events: Vec<(f64, Option<f64>, f64)>,
    next: usize,
    started_at: f64,
    reports: Vec<(f64, f64)>,
}

/// Run one sweep of `method` on `problem`.
pub fn simulate(problem: &dyn Problem, method: &mut dyn Searcher, seed: u64, lim: Limits) -> Trace {
    let fid = problem.fidelity();
    let unit = problem.unit_cost();
    let max_r = fid.as_ref().map(|f| f.spec.max).unwrap_or(1.0);
    let mut reached: BTreeMap<u64, f64> = BTreeMap::new(); // trial → resource reached
    let mut replicate: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut workers: Vec<Option<Job>> = (0..lim.workers).map(|_| None).collect();
    let mut now = 0.0;
    let mut spent = 0.0;
    let mut runs = 0usize;
    let mut out = Vec::new();
    let mut hash = hash_words(&[seed]);

    let mut start = |s: Suggestion, now: f64, reached: &BTreeMap<u64, f64>| -> Job {
        let target = s
            .budget
            .or_else(|| {
                let f = fid.as_ref()?;
                s.params.get(f.name).and_then(Value::as_f64)
            })
            .unwrap_or(max_r)
            .min(max_r);
        let start_r = if s.resume {
            reached.get(&s.trial).copied().unwrap_or(0.0)
        } else {
            0.0
        };
        let key = params_key(&s.params);
        let rep = replicate.entry((key, target.to_bits())).or_insert(0);
        *rep += 1;
        let mut points: Vec<f64> = fid
            .as_ref()
            .map(|f| {
                f.reports
                    .iter()
                    .copied()
                    .filter(|&r| r > start_r * (1.0 + 1e-9) && r < target * (1.0 - 1e-9))
                    .collect()
            })
            .unwrap_or_default();
        points.push(target);
        let start_cost = if start_r > 0.0 {
            problem.evaluate(&s.params, start_r, 0).cost
        } else {
            0.0
        };
        let events = points
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                let e = problem.evaluate(
                    &s.params,
                    r,
                    hash_words(&[seed, key, *rep, r.to_bits(), i as u64]),
                );
                (r, e.value, e.cost)
            })
            .collect();
        Job {
            s,
            start_r,
            start_cost,
            events,
            next: 0,
            started_at: now,
            reports: Vec::new(),
        }
    };

    let mut pending: Vec<Suggestion> = method.suggest(lim.workers).unwrap_or_default();
    for w in workers.iter_mut() {
        if runs < lim.max_runs
            && let Some(s) = (!pending.is_empty()).then(|| pending.remove(0))
        {
            runs += 1;
            *w = Some(start(s, now, &reached));
        }
    }
    loop {
        // The worker whose next event comes first (ties: lowest index).
        let mut first: Option<(f64, usize)> = None;
        for (i, w) in workers.iter().enumerate() {
            if let Some(j) = w {
                let (_, _, c) = j.events[j.next];
                let t = j.started_at + (c - j.start_cost) / unit;
                if first.is_none_or(|(b, _)| t < b) {
                    first = Some((t, i));
                }
            }
        }
        let Some((t, i)) = first else { break };
        now = t;
        let Some(job) = workers[i].as_mut() else {
            break;
        };
        let (r, value, cost) = job.events[job.next];
        job.next += 1;
        let last = job.next == job.events.len();
        let mut done = last;
        if let Some(v) = value {
            job.reports.push((r, v));
            if !last && method.should_stop(job.s.trial, r, v) == Decision::Stop {
                done = true;
            }
        } else {
            done = true;
        }
        if !done {
            continue;
        }
        let Some(job) = workers[i].take() else { break };
        let run_cost = (cost - job.start_cost) / unit;
        spent += run_cost;
        let obs = Observation {
            objective: value.unwrap_or(f64::NAN),
            cost: run_cost,
            failed: value.is_none(),
            resource: Some(r),
            reports: job.reports.clone(),
        };
        let _ = method.observe(job.s.trial, &obs);
        reached.insert(job.s.trial, r);
        hash = hash_words(&[
            hash,
            job.s.trial,
            params_key(&job.s.params),
            r.to_bits(),
            value.unwrap_or(f64::NAN).to_bits(),
            job.start_r.to_bits(),
        ]);
        out.push(Completion {
            spent,
            params: job.s.params,
            resource: r,
            value,
            cost: run_cost,
        });
        if spent >= lim.budget {
            break;
        }
        if runs < lim.max_runs {
            if pending.is_empty() {
                pending = method.suggest(1).unwrap_or_default();
            }
            if !pending.is_empty() {
                runs += 1;
                let s = pending.remove(0);
                workers[i] = Some(start(s, now, &reached));
            }
        }
    }
    Trace {
        completions: out,
        hash,
    }
}

/// Regret of the recommendation after each completion: the (params, resource) group with the
/// best mean observed value, shrunk toward the mean of all observations by one pseudo-count
/// (so one lucky noisy draw does not outrank a replicated configuration), scored noise-free
/// at full fidelity. For the cost-aware problem,
/// the Pareto regret area (mean gap to L*(C) over log cost) instead.
pub fn regret_curve(problem: &dyn Problem, trace: &Trace) -> Vec<(f64, f64)> {
    let opt = problem.optimum();
    let mut groups: BTreeMap<(u64, u64), (f64, u64, f64)> = BTreeMap::new();
    let mut best: Option<(f64, f64)> = None; // (mean observed, truth)
    let mut runs: Vec<(f64, f64, f64)> = Vec::new(); // (cost units, observed, truth)
    let (mut total, mut count) = (0.0, 0.0);
    let mut out = Vec::new();
    for c in &trace.completions {
        let Some(v) = c.value else {
            if let Some((_, t)) = best {
                out.push((c.spent, regret_of(problem, t, opt, &runs)));
            }
            continue;
        };
        let truth = problem.truth(&c.params).unwrap_or(v);
        runs.push((c.cost, v, truth));
        let g = groups
            .entry((params_key(&c.params), c.resource.to_bits()))
            .or_insert((0.0, 0, truth));
        g.0 += v;
        g.1 += 1;
        total += v;
        count += 1.0;
        let prior = total / count;
        best = groups
            .values()
            .map(|(s, n, t)| ((s + prior) / (*n as f64 + 1.0), *t))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((_, t)) = best {
            out.push((c.spent, regret_of(problem, t, opt, &runs)));
        }
    }
    out
}

fn regret_of(problem: &dyn Problem, truth: f64, opt: Option<f64>, runs: &[(f64, f64, f64)]) -> f64 {
    if let Some(reference) = problem.pareto_metric() {
        let mut area = 0.0;
        for &(c, l_star) in &reference.grid {
            let front = runs
                .iter()
                .filter(|r| r.0 <= c * (1.0 + 1e-9))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|r| r.2)
                .unwrap_or(reference.empty_loss);
            area += front - l_star;
        }
        return area / reference.grid.len() as f64;
    }
    match opt {
        Some(o) => truth - o,
        None => truth,
    }
}

/// The curve's value at budget `b` (the last point at or below it; +∞ before the first).
pub fn regret_at(curve: &[(f64, f64)], b: f64) -> f64 {
    curve
        .iter()
        .take_while(|(s, _)| *s <= b + 1e-9)
        .last()
        .map(|p| p.1)
        .unwrap_or(f64::INFINITY)
}
