//! The sweep controller: turns suggestions into trial jobs, trial metrics into reports and
//! observations, and stop decisions into STOP_EARLY directives.
//!
//! It is leader-only (a lease row in `leader_leases`, so exactly one replica drives sweeps on
//! PostgreSQL) and keeps no state the database does not have: every call it makes on a
//! sweep's search algorithm is appended to the sweep's event log in the same transaction as
//! its effects (trial rows, trial jobs, results), fenced by the log's length. A controller
//! that starts (or lost a race) rebuilds the algorithm by replaying the log, so a restart
//! neither loses nor duplicates a trial.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::domain::{JobState, SweepState};
use crate::search::{self, Decision, Event, Observation, Searcher};
use crate::store::{
    JobRecord, NewJob, NewTrial, Store, StoreError, SweepAdvance, SweepRecord, TrialProgress,
    TrialRecord, TrialResult, UpdateRecord,
};

use super::log;
use super::plan::{CostMetric, SweepPlan};

/// Lease name of the controller role.
pub const ROLE: &str = "sweep-controller";

/// Errors of one controller step; the step is retried on the next tick from the database.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("search algorithm: {0}")]
    Search(#[from] search::SearchError),
    /// The stored sweep cannot be driven (its spec or log no longer decodes or replays).
    #[error("{0}")]
    Broken(String),
}

/// A sweep's algorithm as rebuilt from its log, and how far into the log it is.
struct Driver {
    plan: SweepPlan,
    searcher: Box<dyn Searcher>,
    seq: i64,
}

/// Drives every running sweep; one per server process, acting only while it leads.
pub struct Controller {
    store: Arc<dyn Store>,
    holder: String,
    lease_ms: i64,
    drivers: HashMap<String, Driver>,
    /// Whether the last round led (to log changes of leadership once).
    leading: bool,
}

impl Controller {
    pub fn new(store: Arc<dyn Store>, tick: Duration) -> Self {
        Self {
            store,
            holder: crate::leader_holder(),
            // Several ticks, so a slow round does not hand leadership over.
            lease_ms: (tick.as_millis() as i64 * 10).max(10_000),
            drivers: HashMap::new(),
            leading: false,
        }
    }

    /// Runs a round every `tick` until `stopping` turns true, then gives up leadership so
    /// another replica (or this server restarted) takes over without waiting for the lease.
    pub async fn run_until(
        mut self,
        tick: Duration,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stopping.wait_for(|s| *s) => break,
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "sweep controller round failed");
            }
        }
        if let Err(e) = self.store.release_leadership(ROLE, &self.holder).await {
            tracing::warn!(error = %e, "could not release the sweep controller lease");
        }
    }

    /// One round over all running sweeps (if this process leads).
    pub async fn round(&mut self) -> Result<(), ControllerError> {
        let leads = self
            .store
            .acquire_leadership(ROLE, &self.holder, self.lease_ms)
            .await?;
        if leads != self.leading {
            self.leading = leads;
            tracing::info!(holder = %self.holder, leads, "sweep controller leadership changed");
        }
        if !leads {
            // Another replica leads; whatever we cached may be stale when we lead again.
            self.drivers.clear();
            return Ok(());
        }
        // lo-fi jobs whose shard failed end here too: like sweeps, leader-only work.
        if let Err(e) = crate::lofi::reconcile(self.store.as_ref()).await {
            tracing::warn!(error = %e, "lo-fi reconcile failed; retried next round");
        }
        let sweeps = self.store.list_running_sweeps().await?;
        self.drivers
            .retain(|id, _| sweeps.iter().any(|s| &s.id == id));
        for sweep in &sweeps {
            if let Err(e) = self.step(sweep).await {
                // The in-memory algorithm may be ahead of the database now: rebuild next time.
                self.drivers.remove(&sweep.id);
                match e {
                    ControllerError::Store(StoreError::SweepConflict { .. }) => {
                        tracing::info!(sweep = %sweep.id, "sweep advanced elsewhere; rebuilding")
                    }
                    ControllerError::Broken(why) => {
                        tracing::error!(sweep = %sweep.id, %why, "sweep cannot continue");
                        fail(&self.store, sweep, &why).await;
                    }
                    e => tracing::warn!(sweep = %sweep.id, error = %e, "sweep step failed"),
                }
            }
        }
        Ok(())
    }
}

/// Ends a sweep that cannot be driven any more.
async fn fail(store: &Arc<dyn Store>, sweep: &SweepRecord, why: &str) {
    {
        let step = SweepAdvance {
            sweep_id: sweep.id.clone(),
            expected_seq: sweep.last_seq,
            finish: Some((SweepState::Failed, why.to_string())),
            ..Default::default()
        };
        if let Err(e) = store.advance_sweep(&step).await {
            tracing::warn!(sweep = %sweep.id, error = %e, "could not mark the sweep failed");
        }
    }
}

impl Controller {
    /// The driver for `sweep`, rebuilt from the log unless the cached one is current.
    async fn driver(
        &mut self,
        sweep: &SweepRecord,
        trials: &[TrialRecord],
    ) -> Result<(), ControllerError> {
        if self
            .drivers
            .get(&sweep.id)
            .is_some_and(|d| d.seq == sweep.last_seq)
        {
            return Ok(());
        }
        let plan = SweepPlan::decode(&sweep.spec)
            .map_err(|e| ControllerError::Broken(format!("stored spec is invalid: {e}")))?;
        let mut searcher = plan.searcher()?;
        let rows = self.store.list_sweep_events(&sweep.id).await?;
        let events = rows
            .iter()
            .map(|r| log::decode(&r.kind, &r.payload))
            .collect::<Result<Vec<Event>, String>>()
            .map_err(|e| ControllerError::Broken(format!("event log: {e}")))?;
        let suggested = search::replay(&mut searcher, &events)
            .map_err(|e| ControllerError::Broken(format!("replaying the event log: {e}")))?;
        // The replayed suggestions must be exactly the stored runs, in order.
        let matches = suggested.len() == trials.len()
            && suggested.iter().all(|s| {
                trials.iter().any(|t| {
                    t.trial == s.trial as i64
                        && t.resume == s.resume
                        && serde_json::to_string(&s.params).ok().as_deref()
                            == Some(t.params.as_str())
                })
            });
        if !matches {
            return Err(ControllerError::Broken(format!(
                "replaying {} events gave {} suggestions that do not match the {} stored runs \
                 (was the search algorithm changed under a running sweep?)",
                events.len(),
                suggested.len(),
                trials.len()
            )));
        }
        tracing::info!(sweep = %sweep.id, events = events.len(), "sweep algorithm rebuilt from its log");
        self.drivers.insert(
            sweep.id.clone(),
            Driver {
                plan,
                searcher,
                seq: sweep.last_seq,
            },
        );
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(sweep = %sweep.id))]
    async fn step(&mut self, sweep: &SweepRecord) -> Result<(), ControllerError> {
        let trials = self.store.list_trials(&sweep.id).await?;
        self.driver(sweep, &trials).await?;
        let store = self.store.clone();
        let Some(driver) = self.drivers.get_mut(&sweep.id) else {
            return Ok(());
        };
        let sign = if driver.plan.maximize { -1.0 } else { 1.0 };
        let mut events = Vec::new();
        let mut adv = SweepAdvance {
            sweep_id: sweep.id.clone(),
            expected_seq: driver.seq,
            ..Default::default()
        };
        let mut stop_now: Vec<String> = Vec::new();
        let mut active = 0usize;
        let mut newly_observed = 0usize;

        // 1. Feed reports and results of unfinished runs.
        for t in trials.iter().filter(|t| !t.observed) {
            let Some(job_id) = &t.job_id else { continue };
            let job = store.get_job(job_id).await?;
            let mut p = TrialProgress {
                trial: t.trial,
                run: t.run,
                reported_seq: t.reported_seq,
                steps: t.steps,
                last_value: t.last_value,
                stop_requested: false,
            };
            let mut stop = false;
            loop {
                let updates = store.list_updates(job_id, p.reported_seq, 500).await?;
                let Some(last) = updates.last() else { break };
                p.reported_seq = last.seq();
                for u in &updates {
                    let UpdateRecord::Metrics(m) = u else {
                        continue;
                    };
                    p.steps = p.steps.max(m.step);
                    let Some(v) = m.values.get(&driver.plan.metric) else {
                        continue;
                    };
                    p.last_value = Some(*v);
                    let (trial, step, value) = (t.trial as u64, m.step as f64, sign * v);
                    events.push(Event::Report { trial, step, value });
                    if driver.searcher.should_stop(trial, step, value) == Decision::Stop {
                        stop = true;
                    }
                }
            }
            // A decision about a run that already ended is moot: it was not stopped early.
            p.stop_requested = stop && !job.state.is_terminal();
            let changed = p.reported_seq != t.reported_seq;
            if job.state.is_terminal() {
                let obs = observation(&driver.plan, &job, &p, sign);
                driver.searcher.observe(t.trial as u64, &obs)?;
                adv.results.push(TrialResult {
                    trial: t.trial,
                    run: t.run,
                    objective: (!obs.failed).then_some(sign * obs.objective),
                    cost: obs.cost,
                    failed: obs.failed,
                });
                events.push(Event::Observe(t.trial as u64, obs));
                newly_observed += 1;
            } else {
                active += 1;
                if (stop || t.stop_requested) && job.state == JobState::Running {
                    stop_now.push(job_id.clone());
                }
            }
            if changed {
                adv.progress.push(p);
            }
        }

        // 2. Suggest new runs while there is room.
        let plan = &driver.plan;
        let mut created = trials
            .iter()
            .filter(|t| t.run == 0 && t.job_id.is_some())
            .count() as u32;
        let total_cost: f64 = trials.iter().filter_map(|t| t.cost).sum::<f64>()
            + adv.results.iter().map(|r| r.cost).sum::<f64>();
        let within_cost = plan.max_total_cost.is_none_or(|cap| total_cost < cap);
        let capacity = (plan.parallelism as usize).saturating_sub(active);
        let mut exhausted = false;
        if capacity > 0 && within_cost {
            // Once max_trials exist, only promotions remain; ask for at most one per new result
            // so a finished sweep does not keep appending dropped suggestions.
            let n = if created < plan.max_trials {
                if plan.promotes() {
                    capacity
                } else {
                    capacity.min((plan.max_trials - created) as usize)
                }
            } else if plan.promotes() {
                capacity.min(newly_observed)
            } else {
                0
            };
            if n > 0 {
                let suggestions = driver.searcher.suggest(n)?;
                events.push(Event::Suggest(n));
                exhausted = suggestions.is_empty();
                for s in suggestions {
                    let params = serde_json::to_string(&s.params)
                        .map_err(|e| ControllerError::Broken(format!("params: {e}")))?;
                    // A promotion continues the trial's latest run (which finished before the
                    // algorithm could promote it, so it is among the stored runs).
                    let previous = trials
                        .iter()
                        .filter(|t| t.trial == s.trial as i64)
                        .max_by_key(|t| t.run);
                    let run = match (s.resume, previous) {
                        (true, Some(p)) => p.run + 1,
                        _ => 0,
                    };
                    let keep = s.resume || created < plan.max_trials;
                    let job = if keep {
                        let spec = plan.job_spec(&s.params, s.budget).map_err(|e| {
                            ControllerError::Broken(format!(
                                "trial {} params {params} give an invalid job: {e}",
                                s.trial
                            ))
                        })?;
                        if !s.resume {
                            created += 1;
                        }
                        active += 1;
                        Some(NewJob {
                            tenant: sweep.tenant.clone(),
                            spec,
                            request_id: Some(format!("{}-t{}-r{run}", sweep.id, s.trial)),
                            sweep_id: Some(sweep.id.clone()),
                            resume_from_job: if s.resume {
                                previous.and_then(|t| t.job_id.clone())
                            } else {
                                None
                            },
                            trace_context: tuna_telemetry::propagation::current_traceparent(),
                        })
                    } else {
                        None
                    };
                    adv.new_trials.push(NewTrial {
                        trial: s.trial as i64,
                        run,
                        params,
                        budget: s.budget,
                        resume: s.resume,
                        job,
                    });
                }
            }
        }

        // 3. Finished?
        if active == 0 {
            let reason = if !within_cost {
                Some(format!(
                    "max_total_cost reached ({total_cost:.1} of {:.1})",
                    plan.max_total_cost.unwrap_or_default()
                ))
            } else if created >= plan.max_trials && (!plan.promotes() || newly_observed == 0) {
                Some(format!("all {} trials finished", plan.max_trials))
            } else if exhausted {
                Some("the search algorithm has no more suggestions".to_string())
            } else {
                None
            };
            if let Some(reason) = reason {
                let (state, mut message) = verdict(&trials, &adv, plan, reason);
                if state == SweepState::Succeeded {
                    message.push_str(&final_merge(&store, sweep, &trials, &adv, plan).await?);
                }
                adv.finish = Some((state, message));
            }
        }

        if events.is_empty() && adv.progress.is_empty() && adv.finish.is_none() {
            return request_stops(&store, &stop_now).await;
        }
        adv.events = events.iter().map(log::encode).collect();
        let next = adv.expected_seq + adv.events.len() as i64;
        let jobs = store.advance_sweep(&adv).await?;
        driver.seq = next;
        for j in &jobs {
            tracing::info!(sweep = %sweep.id, job = %j.id, "trial job created");
        }
        if let Some((state, message)) = &adv.finish {
            tracing::info!(sweep = %sweep.id, %state, %message, "sweep finished");
        }
        // Stop decisions are durable (stop_requested) before they are sent, so a crash here
        // only delays them to the next round.
        for p in adv.progress.iter().filter(|p| p.stop_requested) {
            if let Some(job) = trials
                .iter()
                .find(|t| t.trial == p.trial && t.run == p.run)
                .and_then(|t| t.job_id.clone())
                && !stop_now.contains(&job)
            {
                stop_now.push(job);
            }
        }
        request_stops(&store, &stop_now).await
    }
}

/// Sends (idempotently) the durable stop decisions to the runs' workers.
async fn request_stops(store: &Arc<dyn Store>, jobs: &[String]) -> Result<(), ControllerError> {
    {
        for id in jobs {
            match store
                .request_stop_early(id, "stopped early by the sweep's ASHA rule")
                .await
            {
                Ok(_) | Err(StoreError::InvalidTransition { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// What a finished run tells the algorithm (in its minimizing sign convention).
fn observation(plan: &SweepPlan, job: &JobRecord, p: &TrialProgress, sign: f64) -> Observation {
    let cost = match plan.cost {
        CostMetric::Steps => p.steps as f64,
        CostMetric::TrainSeconds => match (job.started_at, job.finished_at) {
            (Some(s), Some(f)) => (f - s).max(0) as f64 / 1000.0,
            _ => 0.0,
        },
    };
    // A run without a finite metric failed as far as the search is concerned: USER failures
    // are the hyperparameters' fault, and SYSTEM failures were already retried by the queue
    // up to max_attempts before the job failed for good.
    let failed = match job.state {
        JobState::Succeeded => p.last_value.is_none_or(|v| !v.is_finite()),
        _ => true,
    };
    Observation {
        objective: if failed {
            0.0
        } else {
            sign * p.last_value.unwrap_or(f64::NAN)
        },
        cost,
        failed,
        resource: Some(p.steps as f64),
        reports: Vec::new(),
    }
}

/// Creates the merge job of a succeeding sweep's best trials when its spec asks for one
/// (idempotently: a retried round finds the job its first try created); returns what to add
/// to the sweep's message.
async fn final_merge(
    store: &Arc<dyn Store>,
    sweep: &SweepRecord,
    trials: &[TrialRecord],
    adv: &SweepAdvance,
    plan: &SweepPlan,
) -> Result<String, ControllerError> {
    let spec = <tuna_proto::v1::SweepSpec as prost::Message>::decode(&sweep.spec[..])
        .map_err(|e| ControllerError::Broken(format!("stored sweep spec: {e}")))?;
    let fm = match super::final_merge::parse(&spec) {
        Ok(Some(fm)) => fm,
        Ok(None) => return Ok(String::new()),
        Err(v) => return Ok(format!("; no final merge: {}: {}", v.field, v.description)),
    };
    let mut runs = Vec::new();
    for t in trials {
        let result = adv
            .results
            .iter()
            .find(|r| r.trial == t.trial && r.run == t.run);
        let (objective, failed) = match result {
            Some(r) => (r.objective, r.failed),
            None => (t.objective, t.failed),
        };
        if let (Some(job), Some(v), false) = (&t.job_id, objective, failed) {
            runs.push((t.trial, job.clone(), v));
        }
    }
    let sources = super::final_merge::top_k(&runs, fm.top_k.max(2) as usize, plan.maximize);
    if sources.len() < 2 {
        return Ok(format!(
            "; no final merge: {} trial(s) succeeded, a merge needs 2",
            sources.len()
        ));
    }
    let template = spec.template.clone().unwrap_or_default();
    let job_spec = super::final_merge::merge_spec(&template, &fm, &sources, &sweep.id);
    let spec = crate::domain::spec::JobSpec::from_proto(Some(&job_spec))
        .map_err(|v| ControllerError::Broken(format!("final merge spec: {:?}", v.first())))?;
    let (job, _) = store
        .create_job(NewJob {
            tenant: sweep.tenant.clone(),
            spec,
            request_id: Some(format!("{}-final-merge", sweep.id)),
            sweep_id: None,
            resume_from_job: None,
            trace_context: tuna_telemetry::propagation::current_traceparent(),
        })
        .await?;
    tracing::info!(sweep = %sweep.id, job = %job.id, "final merge job created");
    Ok(format!(
        "; merging the best {} trials in job {} ({})",
        sources.len(),
        job.id,
        fm.method
    ))
}

/// SUCCEEDED with the best trial when any run gave a value, FAILED when none did.
fn verdict(
    trials: &[TrialRecord],
    adv: &SweepAdvance,
    plan: &SweepPlan,
    reason: String,
) -> (SweepState, String) {
    let mut values: BTreeMap<(i64, i32), f64> = BTreeMap::new();
    for t in trials {
        if let (Some(v), false) = (t.objective, t.failed) {
            values.insert((t.trial, t.run), v);
        }
    }
    for r in &adv.results {
        if let (Some(v), false) = (r.objective, r.failed) {
            values.insert((r.trial, r.run), v);
        }
    }
    match super::ranking::best(values, plan.maximize) {
        Some(((trial, _), v)) => (
            SweepState::Succeeded,
            format!("{reason}; best trial {trial}: {} = {v:.6}", plan.metric),
        ),
        None => (
            SweepState::Failed,
            format!("{reason}; no trial produced {}", plan.metric),
        ),
    }
}
