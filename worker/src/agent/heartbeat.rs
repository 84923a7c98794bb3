//! Lease renewal. Directives from the server become stop requests; a lease that cannot be
//! renewed before it expires stops the run, so a worker never trains on a job it no longer
//! owns.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tuna_proto::v1 as pb;

use super::conn::Conn;
use super::runner::{Control, Stop};

/// What the heartbeat task needs to know about the attempt.
pub struct Lease {
    pub job_id: String,
    pub token: String,
    pub interval: Duration,
    pub duration: Duration,
}

/// Turns a server directive (from a heartbeat or a metrics report) into a stop request.
pub fn apply(control: &Control, directive: pb::Directive) {
    match directive {
        pb::Directive::Cancel => control.request(Stop::Cancel),
        pb::Directive::Pause => control.request(Stop::Pause),
        pb::Directive::StopEarly => control.request(Stop::StopEarly),
        pb::Directive::Continue | pb::Directive::Unspecified => {}
    }
}

/// Renews the lease every `interval` until `done` flips; returns when the lease is lost.
pub async fn run(
    conn: Conn,
    lease: Lease,
    control: Arc<Control>,
    step: Arc<AtomicI64>,
    mut done: watch::Receiver<bool>,
) {
    let mut client = conn.worker();
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lease.interval) => {}
            _ = done.changed() => return,
        }
        let req = pb::HeartbeatRequest {
            job_id: lease.job_id.clone(),
            lease_token: lease.token.clone(),
            step: step.load(Ordering::Relaxed),
        };
        match client.heartbeat(req).await {
            Ok(reply) => {
                renewed = Instant::now();
                apply(&control, reply.into_inner().directive());
            }
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                tracing::warn!(job = %lease.job_id, "lease lost: {}", status.message());
                control.request(Stop::LeaseLost);
                return;
            }
            Err(status) => {
                // The server may be restarting: keep trying until the lease would have run out.
                if renewed.elapsed() >= lease.duration {
                    tracing::warn!(job = %lease.job_id, error = %status, "lease expired without a renewal; stopping");
                    control.request(Stop::LeaseLost);
                    return;
                }
                tracing::debug!(job = %lease.job_id, error = %status, "heartbeat failed; retrying");
            }
        }
    }
}
