//! One conformance suite for the `Store` contract, run against PostgreSQL (each test in its
//! own database via `#[sqlx::test]`) and SQLite (a fresh file per test). Test names state the
//! invariant they check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod cases {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Arc;

    use tuna_server::domain::{ArtifactKind, Directive, FailureKind, JobState, Outcome};
    use tuna_server::store::{
        Fence, FileRecord, JobFilter, ManualClock, MetricInput, NewArtifact, Store, StoreError,
        UpdateRecord,
    };

    use super::support::{new_job, policy, worker};

    type S = Arc<dyn Store>;
    type C = Arc<ManualClock>;

    fn fence<'a>(job: &'a str, token: &'a str) -> Fence<'a> {
        Fence {
            job_id: job,
            lease_token: token,
        }
    }

    fn metric(step: i64, loss: f64) -> MetricInput {
        MetricInput {
            step,
            values: BTreeMap::from([("loss".to_string(), loss)]),
            time: None,
        }
    }

    pub async fn concurrent_acquirers_never_get_the_same_job(store: S, _clock: C) {
        const JOBS: usize = 500;
        const CLAIMERS: usize = 8;
        for i in 0..JOBS {
            store.create_job(new_job((i % 7) as i32, 3)).await.unwrap();
        }
        let mut handles = Vec::new();
        for c in 0..CLAIMERS {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let w = worker(&store, &format!("w{c}")).await;
                let mut mine = Vec::new();
                while let Some(lease) = store.claim_job(&w).await.unwrap() {
                    assert_eq!(lease.job.attempt, 1);
                    mine.push(lease.job.id.clone());
                    let f = fence(&lease.job.id, &lease.lease_token);
                    store.complete_job(f, Outcome::Succeeded).await.unwrap();
                }
                mine
            }));
        }
        let mut all = Vec::new();
        let mut busy_claimers = 0;
        for h in handles {
            let mine = h.await.unwrap();
            busy_claimers += usize::from(!mine.is_empty());
            all.extend(mine);
        }
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), JOBS, "every job claimed exactly once");
        assert_eq!(unique.len(), JOBS, "no job claimed twice");
        assert!(busy_claimers > 1, "claims were spread over claimers");
        let filter = JobFilter {
            states: vec![JobState::Succeeded],
            ..Default::default()
        };
        assert_eq!(
            store.list_jobs(&filter, None, 1000).await.unwrap().len(),
            JOBS
        );
    }

    /// An ASHA promotion with a WSD schedule resumes from the last checkpoint of the previous
    /// run's stable phase (its decay is redone at the longer budget); with a schedule whose
    /// every step depends on the total it resumes from the previous run's latest checkpoint.
    pub async fn a_wsd_promotion_resumes_from_the_previous_runs_stable_phase(store: S, _clock: C) {
        use tuna_server::domain::spec::JobSpec;
        use tuna_server::store::NewJob;
        let spec = |schedule: &str, steps: i64| {
            let mut p = super::support::proto_spec(0, 3);
            p.hyperparameters = Some(tuna_proto::v1::Hyperparameters {
                schedule: schedule.into(),
                max_steps: Some(steps),
                checkpoint_every: Some(steps),
                decay_fraction: (schedule == "wsd").then_some(0.25),
                ..Default::default()
            });
            JobSpec::from_proto(Some(&p)).unwrap()
        };
        let w = worker(&store, "w").await;
        for (schedule, want) in [("wsd", 6), ("cosine", 8)] {
            // The rung run: 8 steps, checkpoints at 6 (WSD's stable end) and 8.
            let (first, _) = store
                .create_job(NewJob {
                    spec: spec(schedule, 8),
                    ..super::support::new_job(0, 3)
                })
                .await
                .unwrap();
            let lease = store.claim_job(&w).await.unwrap().unwrap();
            assert_eq!(lease.job.id, first.id);
            let f = fence(&lease.job.id, &lease.lease_token);
            for step in [6, 8] {
                store
                    .insert_artifact(
                        f,
                        &NewArtifact {
                            id: format!("art_{schedule:0>8}{step:0>24}"),
                            kind: ArtifactKind::Checkpoint,
                            step,
                            name: format!("step-{step}"),
                            size_bytes: 1,
                            sha256: "0".repeat(64),
                            blob_key: format!("artifacts/{schedule}/{step}"),
                        },
                    )
                    .await
                    .unwrap();
            }
            store.complete_job(f, Outcome::Succeeded).await.unwrap();
            // The promotion: 16 steps, continuing the rung run.
            store
                .create_job(NewJob {
                    spec: spec(schedule, 16),
                    resume_from_job: Some(first.id.clone()),
                    ..super::support::new_job(0, 3)
                })
                .await
                .unwrap();
            let lease = store.claim_job(&w).await.unwrap().unwrap();
            let from = lease.resume_from.expect("a checkpoint to resume from");
            assert_eq!(from.job_id, first.id);
            assert_eq!(from.step, want, "{schedule}");
            let f = fence(&lease.job.id, &lease.lease_token);
            store.complete_job(f, Outcome::Succeeded).await.unwrap();
        }
    }

    pub async fn expired_lease_is_reclaimed_with_attempt_plus_one(store: S, clock: C) {
        let (job, _) = store.create_job(new_job(0, 3)).await.unwrap();
        let w1 = worker(&store, "w1").await;
        let w2 = worker(&store, "w2").await;
        let first = store.claim_job(&w1).await.unwrap().unwrap();
        assert_eq!(
            (first.job.id.as_str(), first.job.attempt),
            (job.id.as_str(), 1)
        );
        assert!(
            store.claim_job(&w2).await.unwrap().is_none(),
            "a live lease is not reclaimed"
        );
        clock.advance(policy().lease_ms + 1);
        let second = store.claim_job(&w2).await.unwrap().unwrap();
        assert_eq!(second.job.id, job.id);
        assert_eq!(second.job.attempt, 2);
        assert_ne!(second.lease_token, first.lease_token);
        assert_eq!(second.job.worker_id.as_deref(), Some(w2.id.as_str()));
        let events = store.list_events(&job.id, 0, 100).await.unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.kind == "lease_expired" && e.attempt == 1)
        );
    }

    pub async fn stale_lease_token_writes_are_rejected_and_change_nothing(store: S, clock: C) {
        store.create_job(new_job(0, 3)).await.unwrap();
        let w = worker(&store, "w").await;
        let old = store.claim_job(&w).await.unwrap().unwrap();
        let id = old.job.id.clone();
        store
            .record_metrics(fence(&id, &old.lease_token), &[metric(1, 2.0)])
            .await
            .unwrap();
        clock.advance(policy().lease_ms + 1);
        let new = store.claim_job(&w).await.unwrap().unwrap();
        let before = store.get_job(&id).await.unwrap();
        let updates_before = store.list_updates(&id, 0, 1000).await.unwrap();

        let stale = fence(&id, &old.lease_token);
        let lost = |r: Result<(), StoreError>| {
            assert!(matches!(r, Err(StoreError::LeaseLost { .. })), "{r:?}");
        };
        lost(store.heartbeat(stale).await.map(drop));
        lost(
            store
                .record_metrics(stale, &[metric(2, 1.0)])
                .await
                .map(drop),
        );
        lost(
            store
                .complete_job(stale, Outcome::Succeeded)
                .await
                .map(drop),
        );
        lost(
            store
                .fail_job(stale, FailureKind::User, "late")
                .await
                .map(drop),
        );
        let artifact = NewArtifact {
            id: "art_00000000000000000000000000000001".into(),
            kind: ArtifactKind::Checkpoint,
            step: 2,
            name: "ckpt".into(),
            size_bytes: 1,
            sha256: "0".repeat(64),
            blob_key: "artifacts/x".into(),
        };
        lost(store.insert_artifact(stale, &artifact).await.map(drop));
        lost(store.heartbeat(fence(&id, "not-a-token")).await.map(drop));

        assert_eq!(
            store.get_job(&id).await.unwrap(),
            before,
            "stale writes changed the job"
        );
        assert_eq!(
            store.list_updates(&id, 0, 1000).await.unwrap(),
            updates_before
        );
        assert!(store.list_artifacts(&id, None).await.unwrap().is_empty());
        // The current holder still owns the job.
        store.heartbeat(fence(&id, &new.lease_token)).await.unwrap();
    }

    pub async fn cancelled_running_job_tells_its_worker_cancel_on_next_heartbeat(
        store: S,
        _clock: C,
    ) {
        store.create_job(new_job(0, 3)).await.unwrap();
        let w = worker(&store, "w").await;
        let lease = store.claim_job(&w).await.unwrap().unwrap();
        let f = fence(&lease.job.id, &lease.lease_token);
        assert_eq!(
            store.heartbeat(f).await.unwrap().directive,
            Directive::Continue
        );
        let job = store.cancel_job(&lease.job.id).await.unwrap();
        assert_eq!(job.state, JobState::Cancelling);
        assert_eq!(
            store.heartbeat(f).await.unwrap().directive,
            Directive::Cancel
        );
        assert_eq!(
            store.complete_job(f, Outcome::Cancelled).await.unwrap(),
            JobState::Cancelled
        );
        let job = store.get_job(&lease.job.id).await.unwrap();
        assert_eq!(job.state, JobState::Cancelled);
        assert!(job.finished_at.is_some());
        assert!(matches!(
            store.resume_job(&job.id).await,
            Err(StoreError::InvalidTransition { .. })
        ));
    }

    pub async fn cancel_of_a_queued_job_is_immediate_and_final(store: S, _clock: C) {
        let (job, _) = store.create_job(new_job(0, 3)).await.unwrap();
        assert_eq!(
            store.cancel_job(&job.id).await.unwrap().state,
            JobState::Cancelled
        );
        assert_eq!(
            store.cancel_job(&job.id).await.unwrap().state,
            JobState::Cancelled
        );
        store.create_job(new_job(0, 3)).await.unwrap();
        let mut counts = store.count_jobs().await.unwrap();
        counts.sort_by_key(|(s, _, _)| s.as_str());
        assert_eq!(
            counts,
            vec![
                (JobState::Cancelled, "any".to_string(), 1),
                (JobState::Queued, "any".to_string(), 1)
            ]
        );
        let w = worker(&store, "w").await;
        let next = store.claim_job(&w).await.unwrap().unwrap();
        assert_ne!(next.job.id, job.id, "a cancelled job is never claimed");
        assert!(store.claim_job(&w).await.unwrap().is_none());
    }

    pub async fn same_request_id_twice_yields_one_job(store: S, _clock: C) {
        let mut a = new_job(0, 3);
        a.request_id = Some("req-1".into());
        let (first, created) = store.create_job(a.clone()).await.unwrap();
        assert!(created);
        let (second, created) = store.create_job(a.clone()).await.unwrap();
        assert!(!created);
        assert_eq!(first.id, second.id);

        let mut handles = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            let mut j = new_job(0, 3);
            j.request_id = Some("req-2".into());
            handles.push(tokio::spawn(async move {
                store.create_job(j).await.unwrap().0.id
            }));
        }
        let mut ids = HashSet::new();
        for h in handles {
            ids.insert(h.await.unwrap());
        }
        assert_eq!(
            ids.len(),
            1,
            "concurrent creates with one request_id made {ids:?}"
        );

        let mut different = new_job(5, 3);
        different.request_id = Some("req-1".into());
        assert!(matches!(
            store.create_job(different).await,
            Err(StoreError::IdempotencyConflict { .. })
        ));
        let all = store
            .list_jobs(&JobFilter::default(), None, 100)
            .await
            .unwrap();
        assert_eq!(all.len(), 2);
    }

    pub async fn system_failures_retry_with_growing_run_after_up_to_max_attempts(
        store: S,
        clock: C,
    ) {
        let (job, _) = store.create_job(new_job(0, 3)).await.unwrap();
        let w = worker(&store, "w").await;
        let mut delays = Vec::new();
        for attempt in 1..=3 {
            let lease = store.claim_job(&w).await.unwrap().unwrap();
            assert_eq!(lease.job.attempt, attempt);
            let now = clock.now_ms_for_test();
            let reply = store
                .fail_job(
                    fence(&job.id, &lease.lease_token),
                    FailureKind::System,
                    "worker OOM",
                )
                .await
                .unwrap();
            if attempt < 3 {
                assert!(reply.will_retry);
                assert_eq!(reply.state, JobState::Queued);
                let delay = reply.run_after - now;
                assert!(delay > 0);
                delays.push(delay);
                assert!(
                    store.claim_job(&w).await.unwrap().is_none(),
                    "claimed before run_after"
                );
                // The only worker is the one that failed: it may retry once no other worker
                // took the job within retry_elsewhere_ms.
                clock.advance(delay);
                assert!(store.claim_job(&w).await.unwrap().is_none());
                clock.advance(policy().retry_elsewhere_ms);
            } else {
                assert!(!reply.will_retry);
                assert_eq!(reply.state, JobState::Failed);
            }
        }
        assert!(delays[1] > delays[0], "backoff grows: {delays:?}");
        let job = store.get_job(&job.id).await.unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.failure.as_ref().map(|f| f.0), Some(FailureKind::System));
        assert!(store.claim_job(&w).await.unwrap().is_none());
    }

    pub async fn a_system_failure_is_retried_on_another_worker_first(store: S, clock: C) {
        let (job, _) = store.create_job(new_job(0, 3)).await.unwrap();
        let a = worker(&store, "a").await;
        let b = worker(&store, "b").await;
        let fail = |token: String| {
            let store = store.clone();
            let id = job.id.clone();
            async move {
                store
                    .fail_job(
                        fence(&id, &token),
                        FailureKind::System,
                        "CUDA out of memory",
                    )
                    .await
                    .unwrap()
            }
        };
        let first = store.claim_job(&a).await.unwrap().unwrap();
        let reply = fail(first.lease_token).await;
        clock.advance(reply.run_after - clock.now_ms_for_test());
        assert!(
            store.claim_job(&a).await.unwrap().is_none(),
            "the worker that failed does not get the retry first"
        );
        let second = store.claim_job(&b).await.unwrap().unwrap();
        assert_eq!(second.job.attempt, 2);
        let reply = fail(second.lease_token).await;
        clock.advance(reply.run_after - clock.now_ms_for_test());
        assert!(store.claim_job(&b).await.unwrap().is_none());
        let third = store.claim_job(&a).await.unwrap().unwrap();
        assert_eq!(third.job.attempt, 3);
        store
            .complete_job(fence(&job.id, &third.lease_token), Outcome::Succeeded)
            .await
            .unwrap();
        // Another job is not affected by this one's history.
        let (other, _) = store.create_job(new_job(0, 3)).await.unwrap();
        let lease = store.claim_job(&b).await.unwrap().unwrap();
        assert_eq!(lease.job.id, other.id);
    }

    pub async fn user_failures_do_not_retry(store: S, _clock: C) {
        let (job, _) = store.create_job(new_job(0, 5)).await.unwrap();
        let w = worker(&store, "w").await;
        let lease = store.claim_job(&w).await.unwrap().unwrap();
        let reply = store
            .fail_job(
                fence(&job.id, &lease.lease_token),
                FailureKind::User,
                "line 3: bad",
            )
            .await
            .unwrap();
        assert_eq!((reply.state, reply.will_retry), (JobState::Failed, false));
        let job = store.get_job(&job.id).await.unwrap();
        assert_eq!(job.attempt, 1);
        assert_eq!(
            job.failure,
            Some((FailureKind::User, "line 3: bad".to_string()))
        );
        assert!(store.claim_job(&w).await.unwrap().is_none());
    }

    pub async fn pause_checkpoints_then_resume_continues_from_the_checkpoint(store: S, _clock: C) {
        let (job, _) = store.create_job(new_job(0, 3)).await.unwrap();
        let w = worker(&store, "w").await;
        let lease = store.claim_job(&w).await.unwrap().unwrap();
        assert!(lease.resume_from.is_none());
        let f = fence(&job.id, &lease.lease_token);
        assert_eq!(
            store.pause_job(&job.id).await.unwrap().state,
            JobState::Pausing
        );
        assert_eq!(
            store.heartbeat(f).await.unwrap().directive,
            Directive::Pause
        );
        let ckpt = store
            .insert_artifact(
                f,
                &NewArtifact {
                    id: "art_00000000000000000000000000000002".into(),
                    kind: ArtifactKind::Checkpoint,
                    step: 40,
                    name: "checkpoint-40.tar".into(),
                    size_bytes: 10,
                    sha256: "a".repeat(64),
                    blob_key: "artifacts/ckpt".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            store.complete_job(f, Outcome::Paused).await.unwrap(),
            JobState::Paused
        );
        assert!(
            store.claim_job(&w).await.unwrap().is_none(),
            "paused jobs are not claimed"
        );
        assert_eq!(
            store.resume_job(&job.id).await.unwrap().state,
            JobState::Queued
        );
        let again = store.claim_job(&w).await.unwrap().unwrap();
        assert_eq!(again.job.attempt, 2);
        assert_eq!(again.resume_from.map(|a| a.id), Some(ckpt.id));
    }

    pub async fn higher_priority_then_older_jobs_are_claimed_first(store: S, clock: C) {
        let mut expected = Vec::new();
        for p in [0, 5, 5, -3, 9] {
            let (j, _) = store.create_job(new_job(p, 3)).await.unwrap();
            expected.push((p, j.created_at, j.id));
            clock.advance(1);
        }
        expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let w = worker(&store, "w").await;
        let mut got = Vec::new();
        while let Some(l) = store.claim_job(&w).await.unwrap() {
            got.push(l.job.id);
        }
        let expected: Vec<_> = expected.into_iter().map(|e| e.2).collect();
        assert_eq!(got, expected);
    }

    pub async fn job_history_seq_is_contiguous_across_events_and_metrics(store: S, _clock: C) {
        let (job, _) = store.create_job(new_job(0, 3)).await.unwrap();
        let w = worker(&store, "w").await;
        let lease = store.claim_job(&w).await.unwrap().unwrap();
        let f = fence(&job.id, &lease.lease_token);
        let points: Vec<_> = (1..=25).map(|s| metric(s, 10.0 / s as f64)).collect();
        let last = store.record_metrics(f, &points).await.unwrap().last_seq;
        store.complete_job(f, Outcome::Succeeded).await.unwrap();
        let all = store.list_updates(&job.id, 0, 1000).await.unwrap();
        let seqs: Vec<i64> = all.iter().map(UpdateRecord::seq).collect();
        assert_eq!(seqs, (1..=all.len() as i64).collect::<Vec<_>>());
        assert_eq!(
            store.get_job(&job.id).await.unwrap().last_seq,
            all.len() as i64
        );
        let metrics = all
            .iter()
            .filter(|u| matches!(u, UpdateRecord::Metrics(_)))
            .count();
        assert_eq!(metrics, 25);
        assert!(last < all.len() as i64);
        // Paging through with small windows yields the same history.
        let mut after = 0;
        let mut paged = Vec::new();
        loop {
            let page = store.list_updates(&job.id, after, 4).await.unwrap();
            let Some(l) = page.last() else { break };
            after = l.seq();
            paged.extend(page);
        }
        assert_eq!(paged, all);
    }

    pub async fn reaper_requeues_expired_leases_and_finishes_cancelling_ones(store: S, clock: C) {
        let (a, _) = store.create_job(new_job(1, 3)).await.unwrap();
        let (b, _) = store.create_job(new_job(0, 1)).await.unwrap();
        let (c, _) = store.create_job(new_job(-1, 3)).await.unwrap();
        let w = worker(&store, "w").await;
        for _ in 0..3 {
            store.claim_job(&w).await.unwrap().unwrap();
        }
        store.cancel_job(&c.id).await.unwrap();
        assert_eq!(
            store.reap_expired().await.unwrap(),
            0,
            "live leases are left alone"
        );
        clock.advance(policy().lease_ms + 1);
        assert_eq!(store.reap_expired().await.unwrap(), 3);
        assert_eq!(store.get_job(&a.id).await.unwrap().state, JobState::Queued);
        let b = store.get_job(&b.id).await.unwrap();
        assert_eq!(b.state, JobState::Failed, "attempts exhausted");
        assert_eq!(b.failure.map(|f| f.0), Some(FailureKind::System));
        assert_eq!(
            store.get_job(&c.id).await.unwrap().state,
            JobState::Cancelled
        );
        let again = store.claim_job(&w).await.unwrap().unwrap();
        assert_eq!((again.job.id, again.job.attempt), (a.id, 2));
    }

    pub async fn files_used_by_active_jobs_cannot_be_deleted(store: S, clock: C) {
        let file = FileRecord {
            tenant: "default".into(),
            id: "file_00000000000000000000000000000001".into(),
            name: "train.jsonl".into(),
            purpose: tuna_server::domain::FilePurpose::Dataset,
            format: Some(tuna_server::domain::DatasetFormat::Text),
            size_bytes: 10,
            sha256: "b".repeat(64),
            line_count: 1,
            blob_key: "files/x".into(),
            created_at: clock.now_ms_for_test(),
        };
        store.insert_file(&file).await.unwrap();
        let (job, _) = store.create_job(new_job(0, 3)).await.unwrap();
        assert!(matches!(
            store.delete_file(&file.id).await,
            Err(StoreError::FileInUse { .. })
        ));
        assert_eq!(store.get_file(&file.id).await.unwrap(), file);
        store.cancel_job(&job.id).await.unwrap();
        assert_eq!(store.delete_file(&file.id).await.unwrap(), file);
        assert!(matches!(
            store.get_file(&file.id).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    pub async fn label_filters_and_keyset_pages_cover_every_job_once(store: S, clock: C) {
        let mut labelled = HashSet::new();
        for i in 0..9 {
            let mut j = new_job(0, 3);
            if i % 2 == 0 {
                j.spec.labels.insert("team".into(), "nlp".into());
            }
            let (job, _) = store.create_job(j).await.unwrap();
            if i % 2 == 0 {
                labelled.insert(job.id);
            }
            if i % 3 == 0 {
                clock.advance(1); // some jobs share a created_at
            }
        }
        let filter = JobFilter {
            labels: BTreeMap::from([("team".to_string(), "nlp".to_string())]),
            ..Default::default()
        };
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.list_jobs(&filter, cursor.as_ref(), 2).await.unwrap();
            let Some(last) = page.last() else { break };
            cursor = Some(tuna_server::store::Cursor {
                created_at: last.created_at,
                id: last.id.clone(),
            });
            seen.extend(page.into_iter().map(|j| j.id));
        }
        assert_eq!(seen.len(), labelled.len());
        assert_eq!(seen.into_iter().collect::<HashSet<_>>(), labelled);
    }

    pub async fn model_registry_keeps_its_files_and_refuses_in_use_deletes(store: S, clock: C) {
        use tuna_server::domain::{FilePurpose, ModelFormat};
        let file = |id: &str, name: &str| FileRecord {
            tenant: "default".into(),
            id: id.into(),
            name: name.into(),
            purpose: FilePurpose::Model,
            format: None,
            size_bytes: 3,
            sha256: "c".repeat(64),
            line_count: 0,
            blob_key: format!("files/{id}"),
            created_at: clock.now_ms_for_test(),
        };
        let cfg = file("file_0000000000000000000000000000000a", "config.json");
        let weights = file("file_0000000000000000000000000000000b", "model.safetensors");
        store.insert_file(&cfg).await.unwrap();
        store.insert_file(&weights).await.unwrap();
        let pairs = vec![
            ("model.safetensors".to_string(), weights.id.clone()),
            ("config.json".to_string(), cfg.id.clone()),
        ];
        // A missing file aborts the whole registration.
        let mut broken = pairs.clone();
        broken.push((
            "tokenizer.json".into(),
            "file_0000000000000000000000000000000c".into(),
        ));
        assert!(matches!(
            store
                .insert_model("default", "tiny", ModelFormat::Hf, &broken)
                .await,
            Err(StoreError::NotFound { kind: "file", .. })
        ));
        assert!(matches!(
            store.get_model("default", "tiny").await,
            Err(StoreError::NotFound { .. })
        ));

        let model = store
            .insert_model("default", "tiny", ModelFormat::Hf, &pairs)
            .await
            .unwrap();
        let paths: Vec<_> = model.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["config.json", "model.safetensors"]);
        assert_eq!(model.files[1].file, weights);
        assert!(matches!(
            store
                .insert_model("default", "tiny", ModelFormat::Hf, &pairs)
                .await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert!(matches!(
            store.delete_file(&weights.id).await,
            Err(StoreError::InUse { .. })
        ));

        let mut job = new_job(0, 3);
        job.spec.base_model = "tiny".into();
        let (job, _) = store.create_job(job).await.unwrap();
        assert!(matches!(
            store.delete_model("default", "tiny").await,
            Err(StoreError::InUse { .. })
        ));
        store.cancel_job(&job.id).await.unwrap();
        store.delete_model("default", "tiny").await.unwrap();
        assert_eq!(store.list_models("default").await.unwrap(), vec![]);
        store.delete_file(&weights.id).await.unwrap();
    }

    pub async fn a_system_failure_while_pausing_pauses_instead_of_retrying(store: S, _clock: C) {
        let (job, _) = store.create_job(new_job(0, 3)).await.unwrap();
        let w = worker(&store, "w").await;
        let lease = store.claim_job(&w).await.unwrap().unwrap();
        store.pause_job(&job.id).await.unwrap();
        let reply = store
            .fail_job(
                fence(&job.id, &lease.lease_token),
                FailureKind::System,
                "disk full",
            )
            .await
            .unwrap();
        assert_eq!((reply.state, reply.will_retry), (JobState::Paused, false));
        assert!(store.claim_job(&w).await.unwrap().is_none());
        assert_eq!(
            store.resume_job(&job.id).await.unwrap().state,
            JobState::Queued
        );
    }

    pub async fn stop_early_reaches_the_worker_through_heartbeats_and_metrics_reports(
        store: S,
        _clock: C,
    ) {
        let (job, _) = store.create_job(new_job(0, 3)).await.unwrap();
        assert!(matches!(
            store.request_stop_early(&job.id, "rung 1").await,
            Err(StoreError::InvalidTransition { .. })
        ));
        let w = worker(&store, "w").await;
        let lease = store.claim_job(&w).await.unwrap().unwrap();
        let f = fence(&job.id, &lease.lease_token);
        assert_eq!(
            store.heartbeat(f).await.unwrap().directive,
            Directive::Continue
        );
        let reply = store.record_metrics(f, &[metric(4, 1.5)]).await.unwrap();
        assert_eq!(reply.directive, Directive::Continue);
        store
            .request_stop_early(&job.id, "ASHA rung 1")
            .await
            .unwrap();
        store
            .request_stop_early(&job.id, "ASHA rung 1")
            .await
            .unwrap();
        assert_eq!(
            store.heartbeat(f).await.unwrap().directive,
            Directive::StopEarly
        );
        let reply = store.record_metrics(f, &[metric(5, 1.0)]).await.unwrap();
        assert_eq!(reply.directive, Directive::StopEarly);
        // Cancel outranks stopping early.
        store.cancel_job(&job.id).await.unwrap();
        assert_eq!(
            store.heartbeat(f).await.unwrap().directive,
            Directive::Cancel
        );
        let reply = store.record_metrics(f, &[metric(6, 1.0)]).await.unwrap();
        assert_eq!(reply.directive, Directive::Cancel);
        let events = store.list_events(&job.id, 0, 100).await.unwrap();
        let stops = events
            .iter()
            .filter(|e| e.kind == "stop_early_requested")
            .count();
        assert_eq!(stops, 1, "idempotent");
    }

    pub async fn the_fleet_lists_workers_by_last_sighting_with_their_current_job(
        store: S,
        clock: C,
    ) {
        let idle = worker(&store, "idle").await;
        clock.advance(1_000);
        let busy = worker(&store, "busy").await;
        let (job, _) = store.create_job(new_job(0, 3)).await.unwrap();
        let lease = store.claim_job(&busy).await.unwrap().unwrap();
        assert_eq!(lease.job.id, job.id);
        clock.advance(5_000);
        // A heartbeat counts as a sighting: the busy worker does not long-poll.
        store
            .heartbeat(fence(&job.id, &lease.lease_token))
            .await
            .unwrap();
        let all = store.list_workers(None, 100).await.unwrap();
        let ids: Vec<&str> = all.iter().map(|w| w.worker.id.as_str()).collect();
        assert_eq!(ids, [busy.id.as_str(), idle.id.as_str()]);
        assert_eq!(all[0].current_job_id.as_deref(), Some(job.id.as_str()));
        assert_eq!(all[1].current_job_id, None);
        assert_eq!(all[0].last_seen_at, clock.now_ms_for_test());
        // Only recent sightings, and the limit.
        let recent = store.list_workers(Some(3_000), 100).await.unwrap();
        assert_eq!(recent.len(), 1);
        assert_eq!(store.list_workers(None, 1).await.unwrap().len(), 1);
        // Finishing the job leaves the worker idle.
        store
            .complete_job(fence(&job.id, &lease.lease_token), Outcome::Succeeded)
            .await
            .unwrap();
        let all = store.list_workers(None, 100).await.unwrap();
        assert_eq!(all[0].current_job_id, None);
    }

    pub async fn deleting_a_finished_job_removes_its_rows_and_old_history_is_pruned_in_batches(
        store: S,
        clock: C,
    ) {
        let w = worker(&store, "w").await;
        let mut finished = Vec::new();
        for i in 0..3 {
            let (job, _) = store.create_job(new_job(0, 3)).await.unwrap();
            let lease = store.claim_job(&w).await.unwrap().unwrap();
            let f = fence(&job.id, &lease.lease_token);
            store.record_metrics(f, &[metric(1, 2.0)]).await.unwrap();
            store
                .insert_artifact(
                    f,
                    &NewArtifact {
                        id: format!("art_0000000000000000000000000000010{i}"),
                        kind: ArtifactKind::Adapter,
                        step: 1,
                        name: "adapter".into(),
                        size_bytes: 1,
                        sha256: "0".repeat(64),
                        blob_key: format!("artifacts/{}/a", job.id),
                    },
                )
                .await
                .unwrap();
            if i == 0 {
                // A running job cannot be deleted.
                assert!(matches!(
                    store.delete_job(&job.id).await,
                    Err(StoreError::InvalidTransition { .. })
                ));
            }
            store.complete_job(f, Outcome::Succeeded).await.unwrap();
            finished.push(job.id);
            clock.advance(10_000);
        }
        let keys: Vec<String> = finished
            .iter()
            .map(|id| format!("artifacts/{id}/a"))
            .collect();
        let known = store
            .known_blob_keys(&[keys[0].clone(), "files/nobody".into()])
            .await
            .unwrap();
        assert_eq!(known, HashSet::from([keys[0].clone()]));

        assert_eq!(
            store.delete_job(&finished[0]).await.unwrap(),
            [keys[0].clone()]
        );
        assert!(matches!(
            store.get_job(&finished[0]).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(
            store
                .list_artifacts(&finished[0], None)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.known_blob_keys(&keys[..1]).await.unwrap().is_empty());
        assert!(matches!(
            store.delete_job(&finished[0]).await,
            Err(StoreError::NotFound { .. })
        ));

        // History of jobs finished before the cut-off goes, one job per batch here; the job
        // rows, their states and their artifacts stay.
        let cut = tuna_server::store::Clock::now_ms(clock.as_ref()) - 15_000;
        let first = store.prune_job_history(cut, 1).await.unwrap();
        assert!(first > 0);
        assert_eq!(store.prune_job_history(cut, 1).await.unwrap(), 0);
        assert!(
            store
                .list_updates(&finished[1], 0, 100)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            !store
                .list_updates(&finished[2], 0, 100)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.get_job(&finished[1]).await.unwrap().state,
            JobState::Succeeded
        );
        assert_eq!(
            store
                .list_artifacts(&finished[1], None)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    pub async fn a_lofi_job_is_claimed_only_after_every_shard_succeeded_and_a_failed_shard_fails_it(
        store: S,
        _clock: C,
    ) {
        let lofi = |replicas| {
            let mut job = new_job(0, 1);
            job.spec.replicas = replicas;
            job
        };
        let (parent, _) = store.create_job(lofi(3)).await.unwrap();
        let shards = store.list_shards(&parent.id).await.unwrap();
        let index: Vec<Option<i32>> = shards.iter().map(|s| s.shard_index).collect();
        assert_eq!(index, [Some(0), Some(1), Some(2)]);
        assert!(
            shards
                .iter()
                .all(|s| s.parent_job_id.as_deref() == Some(parent.id.as_str()))
        );
        assert_eq!(parent.parent_job_id, None);
        let w = worker(&store, "w").await;
        let mut leases = Vec::new();
        while let Some(lease) = store.claim_job(&w).await.unwrap() {
            leases.push(lease);
        }
        let claimed: HashSet<String> = leases.iter().map(|l| l.job.id.clone()).collect();
        let expected: HashSet<String> = shards.iter().map(|s| s.id.clone()).collect();
        assert_eq!(claimed, expected, "the shards, never the lo-fi job itself");
        for lease in &leases[..2] {
            let f = fence(&lease.job.id, &lease.lease_token);
            store.complete_job(f, Outcome::Succeeded).await.unwrap();
        }
        assert!(
            store.claim_job(&w).await.unwrap().is_none(),
            "one shard still runs"
        );
        let f = fence(&leases[2].job.id, &leases[2].lease_token);
        store.complete_job(f, Outcome::Succeeded).await.unwrap();
        let merge = store.claim_job(&w).await.unwrap().expect("the merge step");
        assert_eq!(merge.job.id, parent.id);
        // A shard is deleted only with its lo-fi job.
        assert!(matches!(
            store.delete_job(&shards[0].id).await,
            Err(StoreError::InUse { .. })
        ));

        // A shard that fails for good fails its lo-fi job, whose other shard is cancelled.
        let (doomed, _) = store.create_job(lofi(2)).await.unwrap();
        assert!(tuna_server::lofi::reconcile(store.as_ref()).await.unwrap() == 0);
        let a = store.claim_job(&w).await.unwrap().unwrap();
        let b = store.claim_job(&w).await.unwrap().unwrap();
        store
            .fail_job(
                fence(&a.job.id, &a.lease_token),
                FailureKind::User,
                "bad line 3",
            )
            .await
            .unwrap();
        assert_eq!(
            tuna_server::lofi::reconcile(store.as_ref()).await.unwrap(),
            1
        );
        let failed = store.get_job(&doomed.id).await.unwrap();
        assert_eq!(failed.state, JobState::Failed);
        let (kind, message) = failed.failure.clone().unwrap();
        assert_eq!(kind, FailureKind::User);
        assert!(
            message.contains(&a.job.id) && message.contains("bad line 3"),
            "{message}"
        );
        assert_eq!(
            store.get_job(&b.job.id).await.unwrap().state,
            JobState::Cancelling
        );
        assert_eq!(
            tuna_server::lofi::reconcile(store.as_ref()).await.unwrap(),
            0
        );
        // Once every shard ended, the lo-fi job deletes with its shards.
        store
            .complete_job(fence(&b.job.id, &b.lease_token), Outcome::Cancelled)
            .await
            .unwrap();
        store.delete_job(&doomed.id).await.unwrap();
        assert!(store.list_shards(&doomed.id).await.unwrap().is_empty());
        assert!(matches!(
            store.get_job(&a.job.id).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    /// Lets cases read the manual clock without importing the trait everywhere.
    trait NowForTest {
        fn now_ms_for_test(&self) -> i64;
    }

    impl NowForTest for ManualClock {
        fn now_ms_for_test(&self) -> i64 {
            tuna_server::store::Clock::now_ms(self)
        }
    }
}

macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[sqlx::test(migrations = false)]
                async fn $case(pool: sqlx::PgPool) {
                    let (store, clock) = super::support::pg_store(pool).await;
                    super::cases::$case(store, clock).await;
                }
            )+
        }

        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let (store, clock) = super::support::sqlite_store(&dir).await;
                    super::cases::$case(store, clock).await;
                }
            )+
        }
    };
}

conformance!(
    concurrent_acquirers_never_get_the_same_job,
    a_wsd_promotion_resumes_from_the_previous_runs_stable_phase,
    expired_lease_is_reclaimed_with_attempt_plus_one,
    stale_lease_token_writes_are_rejected_and_change_nothing,
    cancelled_running_job_tells_its_worker_cancel_on_next_heartbeat,
    cancel_of_a_queued_job_is_immediate_and_final,
    same_request_id_twice_yields_one_job,
    system_failures_retry_with_growing_run_after_up_to_max_attempts,
    a_system_failure_is_retried_on_another_worker_first,
    user_failures_do_not_retry,
    pause_checkpoints_then_resume_continues_from_the_checkpoint,
    higher_priority_then_older_jobs_are_claimed_first,
    job_history_seq_is_contiguous_across_events_and_metrics,
    reaper_requeues_expired_leases_and_finishes_cancelling_ones,
    files_used_by_active_jobs_cannot_be_deleted,
    label_filters_and_keyset_pages_cover_every_job_once,
    model_registry_keeps_its_files_and_refuses_in_use_deletes,
    stop_early_reaches_the_worker_through_heartbeats_and_metrics_reports,
    a_system_failure_while_pausing_pauses_instead_of_retrying,
    the_fleet_lists_workers_by_last_sighting_with_their_current_job,
    deleting_a_finished_job_removes_its_rows_and_old_history_is_pruned_in_batches,
    a_lofi_job_is_claimed_only_after_every_shard_succeeded_and_a_failed_shard_fails_it,
);

/// PostgreSQL only: a change committed through one replica wakes waiters of another replica
/// through LISTEN/NOTIFY, well before the polling fallback would.
#[sqlx::test(migrations = false)]
async fn notify_from_another_replica_wakes_waiting_acquirers(pool: sqlx::PgPool) {
    use std::time::Duration;
    let (a, _) = support::pg_store(pool.clone()).await;
    let (b, _) = support::pg_store(pool).await;
    // Let replica A's LISTEN connection come up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let notified = a.notifier().queue().notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let mut watch = a.notifier().subscribe_jobs();
    let (job, _) = b.create_job(support::new_job(0, 3)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), notified)
        .await
        .expect("replica A was not woken by replica B's insert");
    let woke = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if &*watch.recv().await.unwrap() == job.id.as_str() {
                return;
            }
        }
    })
    .await;
    assert!(
        woke.is_ok(),
        "replica A's watchers were not told about job {}",
        job.id
    );
}
