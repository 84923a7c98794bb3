//! lo-fi jobs (`spec.replicas > 1`, docs/design.md §3.10): what happens to a lo-fi job's
//! shards when the job is cancelled, paused or resumed, and to the job when a shard fails.
//!
//! The rest needs no coordinator: the shards are inserted with the job, each is an ordinary
//! job (leases, retries, checkpoints, resume), and the job itself becomes claimable for its
//! merge step when the last shard succeeds (the claim's `shards_done!` condition).

use crate::domain::FailureKind;
use crate::domain::transitions::Action;
use crate::store::{JobRecord, Store, StoreError};

/// Applies a user action taken on a lo-fi job to its shards. A shard that already ended (or
/// is already where the action leads) is left alone.
pub async fn propagate(
    store: &dyn Store,
    job: &JobRecord,
    action: Action,
) -> Result<(), StoreError> {
    for shard in store.list_shards(&job.id).await? {
        let done = match action {
            Action::Cancel => store.cancel_job(&shard.id).await,
            Action::Pause => store.pause_job(&shard.id).await,
            Action::Resume => store.resume_job(&shard.id).await,
        };
        match done {
            Ok(_) | Err(StoreError::InvalidTransition { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Ends every waiting lo-fi job one of whose shards failed for good or was cancelled: its
/// other shards are cancelled and the job fails, naming the shard. Leader-only (it runs in
/// the sweep controller's rounds); idempotent, so a round cut short is finished by the next.
pub async fn reconcile(store: &dyn Store) -> Result<u64, StoreError> {
    let mut ended = 0;
    for job in store.list_stalled_lofi().await? {
        let shards = store.list_shards(&job.id).await?;
        let Some(broken) = shards.iter().find(|s| {
            matches!(
                s.state,
                crate::domain::JobState::Failed | crate::domain::JobState::Cancelled
            )
        }) else {
            continue;
        };
        let index = broken.shard_index.unwrap_or_default();
        let (kind, message) = match &broken.failure {
            Some((kind, why)) if broken.state == crate::domain::JobState::Failed => (
                *kind,
                format!("shard {index} ({}) failed: {why}", broken.id),
            ),
            _ => (
                FailureKind::User,
                format!("shard {index} ({}) was cancelled", broken.id),
            ),
        };
        propagate(store, &job, Action::Cancel).await?;
        store.fail_waiting_job(&job.id, kind, &message).await?;
        tracing::warn!(job = %job.id, %message, "lo-fi job failed");
        ended += 1;
    }
    Ok(ended)
}
