//! Readiness through `grpc.health.v1`: every Tuna service reports NOT_SERVING while the
//! database or the blob store cannot be reached and SERVING again when both answer, so load
//! balancers and Kubernetes readiness probes stop sending calls that could only fail. The
//! overall (`""`) status stays SERVING while the process runs: that is liveness, and it costs
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::blobs::Blobs;
use crate::store::Store;

/// How long one probe may take before its dependency counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What is unreachable, if anything.
async fn probe(store: &dyn Store, blobs: &Blobs) -> Option<String> {
    let database = tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await;
    let blob_store = tokio::time::timeout(PROBE_TIMEOUT, blobs.ping()).await;
    let mut down = Vec::new();
    match database {
        Ok(Ok(())) => {}
        Ok(Err(e)) => down.push(format!("database: {e}")),
        Err(_) => down.push("database: no answer within 2 s".to_string()),
    }
    match blob_store {
        Ok(Ok(())) => {}
        Ok(Err(e)) => down.push(format!("blob store: {e}")),
        Err(_) => down.push("blob store: no answer within 2 s".to_string()),
    }
    (!down.is_empty()).then(|| down.join("; "))
}

/// Probes every `every` until shutdown begins, flipping `services` on each change.
pub async fn watch(
    store: Arc<dyn Store>,
    blobs: Blobs,
    reporter: HealthReporter,
    services: Vec<&'static str>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ready = true;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let down = probe(store.as_ref(), &blobs).await;
        // Shutdown owns the status once it has begun.
        if *shutdown.borrow() {
            return;
        }
        let now_ready = down.is_none();
        if now_ready == ready {
            continue;
        }
        ready = now_ready;
        let status = match &down {
            Some(why) => {
                tracing::warn!(reason = %why, "not ready: reporting NOT_SERVING");
                ServingStatus::NotServing
            }
            None => {
                tracing::info!("ready again: reporting SERVING");
                ServingStatus::Serving
            }
        };
        for service in &services {
            reporter.set_service_status(*service, status).await;
        }
    }
}
