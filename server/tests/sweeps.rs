//! Sweeps on a real PostgreSQL: spec validation at the gRPC edge, and the controller driving
//! trial jobs that a simulated worker runs through the real store (claim, metrics, heartbeat
//! directives, completion), including a controller restart and leader election.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;
use tuna_proto::v1 as pb;
use tuna_proto::v1::sweep_service_client::SweepServiceClient;
use tuna_server::api::Limits;
use tuna_server::config::Config;
use tuna_server::domain::{ArtifactKind, Directive, JobState, Outcome, SweepState};
use tuna_server::store::{
    Fence, ManualClock, MetricInput, NewArtifact, Store, SweepRecord, WorkerRecord,
};
use tuna_server::sweeps::{Controller, SweepPlan};

use support::grpc::Harness;
use support::{DATASET_ID, MODEL_NAME};

fn param(name: &str, scale: &str, min: f64, max: f64) -> pb::Parameter {
    pb::Parameter {
        name: name.into(),
        scale: scale.into(),
        min,
        max,
        ..Default::default()
    }
}

fn spec(algorithm: &str, variant: &str, trials: i32, parallelism: i32) -> pb::SweepSpec {
    pb::SweepSpec {
        parameters: vec![
            param("hyperparameters.learning_rate", "log", 1e-4, 1e-1),
            param("method.lora.r", "linear", 2.0, 16.0),
        ],
        objective: Some(pb::Objective {
            metric: "loss".into(),
            direction: 0,
        }),
        cost_metric: "steps".into(),
        algorithm: Some(pb::Algorithm {
            name: algorithm.into(),
            asha: Some(pb::AshaOptions {
                eta: Some(2.0),
                min_resource: Some(2.0),
                max_resource: Some(8.0),
                grace: Some(2),
                variant: variant.into(),
            }),
            ..Default::default()
        }),
        max_trials: Some(trials),
        max_total_cost: 0.0,
        parallelism: Some(parallelism),
        template: Some(pb::JobSpec {
            base_model: MODEL_NAME.into(),
            training_file: DATASET_ID.into(),
            method: Some(pb::Method {
                r#type: "lora".into(),
                ..Default::default()
            }),
            hyperparameters: Some(pb::Hyperparameters {
                max_steps: Some(8),
                ..Default::default()
            }),
            ..Default::default()
        }),
        seed: 7,
        final_merge: None,
    }
}

fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[sqlx::test(migrations = false)]
async fn bad_sweep_specs_are_invalid_argument_naming_the_field(pool: sqlx::PgPool) {
    let store = tuna_server::store::postgres::PgStore::from_pool(
        pool,
        support::policy(),
        Arc::new(tuna_server::store::SystemClock),
    )
    .await
    .unwrap();
    let h = Harness::start(Arc::new(store), Limits::default(), Config::default()).await;
    let mut client = SweepServiceClient::new(h.channel.clone());
    type Edit = fn(&mut pb::SweepSpec);
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("empty space", |s| s.parameters.clear(), "spec.parameters"),
        (
            "final merge of one trial",
            |s| {
                s.final_merge = Some(pb::FinalMerge {
                    top_k: 1,
                    ..Default::default()
                })
            },
            "spec.final_merge.top_k",
        ),
        (
            "final merge of dora trials",
            |s| {
                s.final_merge = Some(pb::FinalMerge::default());
                s.template.as_mut().unwrap().method.as_mut().unwrap().r#type = "dora".into();
            },
            "spec.final_merge",
        ),
        (
            "final merge by an unknown method",
            |s| {
                s.final_merge = Some(pb::FinalMerge {
                    method: "soup".into(),
                    ..Default::default()
                })
            },
            "spec.final_merge.method",
        ),
        (
            "min > max",
            |s| {
                s.parameters[0].min = 0.5;
                s.parameters[0].max = 0.01;
            },
            "spec.parameters[0].min",
        ),
        (
            "log with min <= 0",
            |s| s.parameters[0].min = 0.0,
            "spec.parameters[0].min",
        ),
        (
            "unknown objective metric",
            |s| s.objective.as_mut().unwrap().metric = "bleu".into(),
            "spec.objective.metric",
        ),
        (
            "parallelism 0",
            |s| s.parallelism = Some(0),
            "spec.parallelism",
        ),
        (
            "unknown parameter",
            |s| s.parameters[1].name = "method.lora.rank".into(),
            "spec.parameters[1].name",
        ),
        (
            "bound outside the job's range",
            |s| s.parameters[0].max = 3.0,
            "spec.parameters[0].max",
        ),
        (
            "eval metric without validation file",
            |s| s.objective.as_mut().unwrap().metric = "eval_loss".into(),
            "spec.objective.metric",
        ),
        (
            "template without training file",
            |s| s.template.as_mut().unwrap().training_file.clear(),
            "spec.template.training_file",
        ),
        (
            "asha without min_resource",
            |s| {
                s.algorithm
                    .as_mut()
                    .unwrap()
                    .asha
                    .as_mut()
                    .unwrap()
                    .min_resource = None;
            },
            "spec.algorithm.asha.min_resource",
        ),
        (
            "promotion with carbs",
            |s| {
                s.algorithm.as_mut().unwrap().asha.as_mut().unwrap().variant = "promotion".into();
            },
            "spec.algorithm.asha.variant",
        ),
        (
            "max_trials 0",
            |s| s.max_trials = Some(0),
            "spec.max_trials",
        ),
    ];
    for (what, edit, field) in cases {
        let mut s = spec("carbs", "", 4, 2);
        edit(&mut s);
        let err = client
            .create_sweep(pb::CreateSweepRequest {
                spec: Some(s),
                request_id: String::new(),
            })
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        let fields = bad_fields(&err);
        assert!(
            fields.iter().any(|f| f == field),
            "{what}: expected {field} in {fields:?} ({})",
            err.message()
        );
    }
    // Nothing was stored.
    let listed = client
        .list_sweeps(pb::ListSweepsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.sweeps.is_empty());
    // A valid spec is accepted, with defaults filled in, and a retry is idempotent.
    let req = pb::CreateSweepRequest {
        spec: Some(spec("carbs", "", 4, 2)),
        request_id: "sweep-1".into(),
    };
    let a = client.create_sweep(req.clone()).await.unwrap().into_inner();
    let b = client.create_sweep(req).await.unwrap().into_inner();
    assert_eq!(a.id, b.id);
    assert_eq!(a.state, pb::SweepState::Running as i32);
    let alg = a.spec.unwrap().algorithm.unwrap();
    assert_eq!(alg.carbs.unwrap().num_random_samples, Some(4));
    h.stop().await;
}

/// A worker simulated through the store: each call runs every claimable job one step.
struct SimWorker {
    store: Arc<dyn Store>,
    worker: WorkerRecord,
    /// job id -> (lease token, current step, learning rate)
    running: BTreeMap<String, (String, i64, f64)>,
}

/// The simulated training loss: best near lr = 3e-3, improving with steps.
fn loss(lr: f64, step: i64) -> f64 {
    (lr.log10() + 2.5).powi(2) + 1.0 / step as f64
}

impl SimWorker {
    async fn new(store: &Arc<dyn Store>) -> Self {
        Self {
            store: store.clone(),
            worker: support::worker(store, "sim").await,
            running: BTreeMap::new(),
        }
    }

    /// Claims what it can (up to `slots` at once), then advances each held job one step,
    /// honouring heartbeat directives; returns the jobs that ended this call.
    async fn tick(&mut self, slots: usize) -> Vec<String> {
        while self.running.len() < slots {
            let Some(lease) = self.store.claim_job(&self.worker).await.unwrap() else {
                break;
            };
            let start = lease.resume_from.as_ref().map_or(0, |a| a.step);
            let lr = lease.job.spec.hyperparameters.learning_rate;
            self.running
                .insert(lease.job.id.clone(), (lease.lease_token, start, lr));
        }
        let mut ended = Vec::new();
        for (id, (token, step, lr)) in self.running.iter_mut() {
            let fence = Fence {
                job_id: id,
                lease_token: token,
            };
            let job = self.store.get_job(id).await.unwrap();
            let max = job.spec.hyperparameters.max_steps.unwrap();
            let reply = self.store.heartbeat(fence).await.unwrap();
            if reply.directive == Directive::StopEarly {
                self.store
                    .complete_job(fence, Outcome::Succeeded)
                    .await
                    .unwrap();
                ended.push(id.clone());
                continue;
            }
            *step += 1;
            let values = BTreeMap::from([("loss".to_string(), loss(*lr, *step))]);
            self.store
                .record_metrics(
                    fence,
                    &[MetricInput {
                        step: *step,
                        values,
                        time: None,
                    }],
                )
                .await
                .unwrap();
            if job.spec.hyperparameters.checkpoint_every > 0
                && *step % job.spec.hyperparameters.checkpoint_every == 0
            {
                self.store
                    .insert_artifact(
                        fence,
                        &NewArtifact {
                            id: tuna_server::domain::ids::new_id("art"),
                            kind: ArtifactKind::Checkpoint,
                            step: *step,
                            name: "checkpoint.tar".into(),
                            size_bytes: 1,
                            sha256: "2".repeat(64),
                            blob_key: format!("artifacts/{id}/{step}"),
                        },
                    )
                    .await
                    .unwrap();
            }
            if *step >= max {
                self.store
                    .complete_job(fence, Outcome::Succeeded)
                    .await
                    .unwrap();
                ended.push(id.clone());
            }
        }
        for id in &ended {
            self.running.remove(id);
        }
        ended
    }
}

async fn create(store: &Arc<dyn Store>, spec: pb::SweepSpec) -> SweepRecord {
    let plan = SweepPlan::from_proto(Some(&spec)).unwrap();
    use prost::Message;
    store
        .create_sweep("default", &plan.proto.encode_to_vec(), None)
        .await
        .unwrap()
        .0
}

/// Runs controller rounds and worker ticks until the sweep ends; swaps in a fresh controller
/// (a restarted server) after `restart_at` rounds. Returns the rounds it took.
async fn drive(
    store: &Arc<dyn Store>,
    clock: &ManualClock,
    sweep_id: &str,
    parallelism: usize,
    restart_at: usize,
) -> usize {
    let tick = Duration::from_millis(100);
    let mut controller = Controller::new(store.clone(), tick);
    let mut worker = SimWorker::new(store).await;
    for round in 0..400 {
        if round == restart_at {
            // A new process: its lease holder differs, so it waits for the old lease to lapse.
            controller = Controller::new(store.clone(), tick);
            controller.round().await.unwrap();
            let before = store.list_trials(sweep_id).await.unwrap().len();
            worker.tick(0).await;
            assert_eq!(
                store.list_trials(sweep_id).await.unwrap().len(),
                before,
                "a controller acted while another one's lease was live"
            );
            clock.advance(60_000);
        }
        controller.round().await.unwrap();
        let sweep = store.get_sweep(sweep_id).await.unwrap();
        if sweep.state != SweepState::Running {
            return round;
        }
        let active = store
            .list_jobs(
                &tuna_server::store::JobFilter {
                    sweep_id: Some(sweep_id.into()),
                    states: vec![JobState::Queued, JobState::Running],
                    ..Default::default()
                },
                None,
                100,
            )
            .await
            .unwrap();
        assert!(
            active.len() <= parallelism,
            "{} trial jobs active with parallelism {parallelism}",
            active.len()
        );
        worker.tick(parallelism).await;
        clock.advance(1_000);
    }
    panic!("the sweep did not finish");
}

fn assert_no_duplicates(trials: &[tuna_server::store::TrialRecord]) {
    let runs: BTreeSet<(i64, i32)> = trials.iter().map(|t| (t.trial, t.run)).collect();
    assert_eq!(runs.len(), trials.len(), "duplicate runs: {trials:?}");
    let jobs: BTreeSet<&String> = trials.iter().filter_map(|t| t.job_id.as_ref()).collect();
    assert_eq!(
        jobs.len(),
        trials.iter().filter(|t| t.job_id.is_some()).count()
    );
}

#[sqlx::test(migrations = false)]
async fn asha_stopping_sweep_survives_a_controller_restart_without_duplicates(pool: sqlx::PgPool) {
    let (store, clock) = support::pg_store(pool).await;
    let sweep = create(&store, spec("random", "stopping", 8, 2)).await;
    drive(&store, &clock, &sweep.id, 2, 9).await;

    let done = store.get_sweep(&sweep.id).await.unwrap();
    assert_eq!(done.state, SweepState::Succeeded, "{}", done.message);
    assert!(done.message.contains("best trial"), "{}", done.message);
    let trials = store.list_trials(&sweep.id).await.unwrap();
    assert_no_duplicates(&trials);
    let first_runs: Vec<_> = trials.iter().filter(|t| t.run == 0).collect();
    assert_eq!(first_runs.len(), 8, "{trials:?}");
    assert!(trials.iter().all(|t| t.observed && t.job_id.is_some()));
    let stopped: Vec<_> = trials
        .iter()
        .filter(|t| t.stop_requested && t.steps < 8)
        .collect();
    assert!(
        !stopped.is_empty(),
        "no trial was stopped early: {trials:?}"
    );
    // Every trial job exists once and is finished.
    for t in &trials {
        let job = store.get_job(t.job_id.as_ref().unwrap()).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.sweep_id.as_deref(), Some(sweep.id.as_str()));
    }
    // The best trial is the one with the lowest final loss.
    let best = trials
        .iter()
        .filter_map(|t| t.objective.map(|o| (o, t.trial)))
        .fold(f64::INFINITY, |m, (o, _)| m.min(o));
    assert!(
        done.message.contains(&format!("{best:.6}")),
        "{}",
        done.message
    );
}

#[sqlx::test(migrations = false)]
async fn asha_promotions_resume_the_previous_runs_checkpoint(pool: sqlx::PgPool) {
    let (store, clock) = support::pg_store(pool).await;
    let sweep = create(&store, spec("asha", "promotion", 6, 2)).await;
    drive(&store, &clock, &sweep.id, 2, usize::MAX).await;
    let done = store.get_sweep(&sweep.id).await.unwrap();
    assert_eq!(done.state, SweepState::Succeeded, "{}", done.message);
    let trials = store.list_trials(&sweep.id).await.unwrap();
    assert_no_duplicates(&trials);
    let promoted: Vec<_> = trials.iter().filter(|t| t.run > 0).collect();
    assert!(!promoted.is_empty(), "nothing was promoted: {trials:?}");
    for p in promoted {
        assert!(p.resume);
        let prev = trials
            .iter()
            .find(|t| t.trial == p.trial && t.run == p.run - 1)
            .unwrap();
        // The promoted run started at the previous run's last step, not from scratch.
        let job = store.get_job(p.job_id.as_ref().unwrap()).await.unwrap();
        assert_eq!(
            job.spec.hyperparameters.max_steps,
            p.budget.map(|b| b as i64)
        );
        assert!(
            p.steps > prev.steps && prev.steps == prev.budget.unwrap() as i64,
            "run {p:?} after {prev:?}"
        );
        let events = store.list_events(&job.id, 0, 100).await.unwrap();
        assert!(events.iter().any(|e| e.kind == "claimed"));
    }
    // Every new trial's first run stopped at the first rung (2 steps).
    assert!(
        trials
            .iter()
            .filter(|t| t.run == 0 && t.job_id.is_some())
            .all(|t| t.budget == Some(2.0) && t.steps == 2),
        "{trials:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn only_the_leader_drives_sweeps(pool: sqlx::PgPool) {
    let (store, clock) = support::pg_store(pool).await;
    let sweep = create(&store, spec("random", "stopping", 4, 2)).await;
    let tick = Duration::from_millis(100);
    let mut a = Controller::new(store.clone(), tick);
    let mut b = Controller::new(store.clone(), tick);
    a.round().await.unwrap();
    let after_a = store.list_trials(&sweep.id).await.unwrap().len();
    assert_eq!(after_a, 2);
    b.round().await.unwrap();
    b.round().await.unwrap();
    assert_eq!(store.list_trials(&sweep.id).await.unwrap().len(), after_a);
    // Once a's lease lapses, b takes over and continues from the log (no duplicate trials).
    clock.advance(60_000);
    let mut w = SimWorker::new(&store).await;
    for _ in 0..10 {
        w.tick(2).await;
    }
    b.round().await.unwrap();
    let trials = store.list_trials(&sweep.id).await.unwrap();
    assert_no_duplicates(&trials);
    assert_eq!(trials.len(), 4, "{trials:?}");
    assert!(trials.iter().filter(|t| t.run == 0).count() == 4);
}

#[sqlx::test(migrations = false)]
async fn cancelling_a_sweep_cancels_its_trial_jobs(pool: sqlx::PgPool) {
    let (store, _clock) = support::pg_store(pool.clone()).await;
    let h = Harness::start(store.clone(), Limits::default(), Config::default()).await;
    let mut client = SweepServiceClient::new(h.channel.clone());
    let created = client
        .create_sweep(pb::CreateSweepRequest {
            spec: Some(spec("random", "stopping", 4, 2)),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // The server's own controller creates the first two trial jobs.
    let mut trials = Vec::new();
    for _ in 0..100 {
        trials = client
            .list_trials(pb::ListTrialsRequest {
                sweep_id: created.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .trials;
        if trials.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(trials.len(), 2);
    let cancelled = client
        .cancel_sweep(pb::CancelSweepRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, pb::SweepState::Cancelled as i32);
    for t in &trials {
        let job = store.get_job(&t.job_id).await.unwrap();
        assert_eq!(job.state, JobState::Cancelled);
    }
    // Cancelling again is a no-op; unknown and malformed ids are NOT_FOUND / INVALID_ARGUMENT.
    client
        .cancel_sweep(pb::CancelSweepRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap();
    let missing = client
        .get_sweep(pb::GetSweepRequest {
            id: tuna_server::domain::ids::new_id("swp"),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let bad = client
        .get_sweep(pb::GetSweepRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test]
async fn the_embedded_sqlite_store_drives_a_sweep_too() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = support::sqlite_store(&dir).await;
    let sweep = create(&store, spec("carbs", "stopping", 5, 2)).await;
    drive(&store, &clock, &sweep.id, 2, 6).await;
    let done = store.get_sweep(&sweep.id).await.unwrap();
    assert_eq!(done.state, SweepState::Succeeded, "{}", done.message);
    let trials = store.list_trials(&sweep.id).await.unwrap();
    assert_no_duplicates(&trials);
    assert_eq!(trials.iter().filter(|t| t.run == 0).count(), 5);
}

#[sqlx::test(migrations = false)]
async fn a_succeeding_sweep_with_a_final_merge_queues_a_merge_of_its_best_trials(
    pool: sqlx::PgPool,
) {
    let (store, clock) = support::pg_store(pool).await;
    let mut s = spec("carbs", "stopping", 5, 2);
    s.final_merge = Some(pb::FinalMerge {
        top_k: 3,
        ..Default::default()
    });
    let sweep = create(&store, s).await;
    drive(&store, &clock, &sweep.id, 2, 1000).await;
    let done = store.get_sweep(&sweep.id).await.unwrap();
    assert_eq!(done.state, SweepState::Succeeded, "{}", done.message);
    let id = done
        .message
        .split("merging the best 3 trials in job ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no merge job in {:?}", done.message));
    let merge = store.get_job(id).await.unwrap();
    let m = merge.spec.merge.clone().unwrap();
    assert_eq!(m.method, tuna_spec::MergeMethod::ModelStock);
    assert_eq!(
        merge.spec.labels.get("final_merge_of"),
        Some(&sweep.id),
        "labelled with its sweep"
    );
    // The three best observed trials (loss is minimised), best first.
    let mut observed: Vec<(f64, String)> = store
        .list_trials(&sweep.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| !t.failed)
        .filter_map(|t| Some((t.objective?, t.job_id?)))
        .collect();
    observed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let best: Vec<String> = observed.into_iter().take(3).map(|(_, j)| j).collect();
    assert_eq!(m.sources, best);
}

#[sqlx::test(migrations = false)]
async fn a_stopping_controller_hands_leadership_over_at_once(pool: sqlx::PgPool) {
    let (store, _clock) = support::pg_store(pool).await;
    let sweep = create(&store, spec("random", "stopping", 4, 2)).await;
    let tick = Duration::from_millis(20);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let a = tokio::spawn(Controller::new(store.clone(), tick).run_until(tick, stopping));
    for _ in 0..100 {
        if store.list_trials(&sweep.id).await.unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    a.await.unwrap();
    // No clock advance: b leads right away because a released its lease.
    let mut w = SimWorker::new(&store).await;
    for _ in 0..10 {
        w.tick(2).await;
    }
    let mut b = Controller::new(store.clone(), tick);
    b.round().await.unwrap();
    let trials = store.list_trials(&sweep.id).await.unwrap();
    assert_eq!(trials.len(), 4, "b continued the sweep: {trials:?}");
    assert_no_duplicates(&trials);
}
