//! Shared helpers of the server's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tuna_proto::v1 as pb;
use tuna_server::domain::spec::JobSpec;
use tuna_server::store::postgres::PgStore;
use tuna_server::store::sqlite::SqliteStore;
use tuna_server::store::{ManualClock, NewJob, QueuePolicy, Store, WorkerRecord};

/// Start of the manual clock (an arbitrary fixed instant).
pub const T0: i64 = 1_800_000_000_000;

pub fn policy() -> QueuePolicy {
    QueuePolicy {
        lease_ms: 10_000,
        backoff_base_ms: 1_000,
        backoff_max_ms: 60_000,
        retry_elsewhere_ms: 30_000,
    }
}

pub async fn pg_store(pool: sqlx::PgPool) -> (Arc<dyn Store>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let store = PgStore::from_pool(pool, policy(), clock.clone())
        .await
        .unwrap();
    (Arc::new(store), clock)
}

pub async fn sqlite_store(dir: &tempfile::TempDir) -> (Arc<dyn Store>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let url = format!("sqlite://{}", dir.path().join("tuna.db").display());
    let store = SqliteStore::connect(&url, policy(), clock.clone())
        .await
        .unwrap();
    (Arc::new(store), clock)
}

/// The training file id `proto_spec` names.
pub const DATASET_ID: &str = "file_00000000000000000000000000000001";

/// The registered base model `proto_spec` names (registered by the gRPC harness).
pub const MODEL_NAME: &str = "tiny-llama";
pub const MODEL_CONFIG_ID: &str = "file_00000000000000000000000000000002";
pub const MODEL_WEIGHTS_ID: &str = "file_00000000000000000000000000000003";

/// A valid proto spec.
pub fn proto_spec(priority: i32, max_attempts: i32) -> pb::JobSpec {
    pb::JobSpec {
        base_model: MODEL_NAME.into(),
        training_file: DATASET_ID.into(),
        method: Some(pb::Method {
            r#type: "lora".into(),
            ..Default::default()
        }),
        priority,
        max_attempts,
        ..Default::default()
    }
}

pub fn new_job(priority: i32, max_attempts: i32) -> NewJob {
    NewJob {
        tenant: "default".into(),
        spec: JobSpec::from_proto(Some(&proto_spec(priority, max_attempts))).unwrap(),
        request_id: None,
        sweep_id: None,
        resume_from_job: None,
        trace_context: None,
    }
}

pub async fn worker(store: &Arc<dyn Store>, name: &str) -> WorkerRecord {
    store
        .register_worker("test-key", name, "cpu", 16 << 30, "{}")
        .await
        .unwrap()
}
pub mod grpc;
