//! Batched, bounded metric reporting: training pushes points without waiting; this task sends
//! them in batches and keeps a bounded backlog while the server is unreachable. Each reply
//! carries the job's directive, so a stop reaches training within one report interval rather
//! than one heartbeat interval.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tuna_proto::v1 as pb;

use super::conn::Conn;
use super::heartbeat;
use super::runner::{Control, Progress};

/// Points kept while the server is unreachable; the oldest are dropped beyond this.
pub const BACKLOG: usize = 10_000;
const BATCH: usize = 500;

/// Sends points from `rx` until it closes and the backlog is flushed (or the lease is lost).
/// Returns the number of points dropped.
pub async fn run(
    conn: Conn,
    job_id: String,
    token: String,
    mut rx: mpsc::Receiver<Progress>,
    every: Duration,
    control: Arc<Control>,
) -> u64 {
    let mut client = conn.worker();
    let mut backlog: VecDeque<pb::MetricPoint> = VecDeque::new();
    let mut dropped = 0u64;
    let mut open = true;
    // One ticker for the whole run: a fresh sleep per loop would never fire while points
    // keep arriving faster than `every`, and nothing would be sent until the end.
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while open || !backlog.is_empty() {
        if open {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => {
                        if backlog.len() == BACKLOG {
                            backlog.pop_front();
                            dropped += 1;
                        }
                        backlog.push_back(pb::MetricPoint {
                            step: p.step,
                            values: p.values.into_iter().collect(),
                            time: Some(now()),
                            ..Default::default()
                        });
                        if backlog.len() < BATCH {
                            continue;
                        }
                    }
                    None => open = false,
                },
                _ = tick.tick() => {}
            }
        }
        while !backlog.is_empty() {
            let n = backlog.len().min(BATCH);
            let points: Vec<_> = backlog.iter().take(n).cloned().collect();
            let req = pb::ReportMetricsRequest {
                job_id: job_id.clone(),
                lease_token: token.clone(),
                points,
            };
            match client.report_metrics(req).await {
                Ok(reply) => {
                    backlog.drain(..n);
                    heartbeat::apply(&control, reply.into_inner().directive());
                }
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                    // Not our job any more: nothing we hold may be written.
                    return dropped + backlog.len() as u64;
                }
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    tracing::warn!(job = %job_id, "metrics refused: {}", s.message());
                    dropped += n as u64;
                    backlog.drain(..n);
                }
                Err(s) => {
                    tracing::debug!(job = %job_id, error = %s, "metrics not sent; will retry");
                    if !open {
                        tokio::time::sleep(every).await;
                    }
                    break;
                }
            }
        }
    }
    dropped
}

fn now() -> tuna_proto::Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    tuna_proto::ts_from_ms(ms)
}
