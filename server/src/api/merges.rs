//! Merge jobs' sources: checked at `CreateJob` (naming `spec.merge.sources[i]`), resolved to
//! their final adapters when a worker leases the merge, and the only other jobs' artifacts a
//! merge's lease may download.

use super::require_id;
use crate::domain::access::Caller;
use crate::domain::ids;
use crate::domain::spec::{JobSpec, Method, Task};
use crate::domain::{ArtifactKind, JobState};
use crate::error::ApiError;
use crate::store::{ArtifactRecord, JobRecord, Store, StoreError};

use super::ApiContext;

/// The adapter a succeeded job ended with: the newest ADAPTER artifact of its last attempt.
pub async fn final_adapter(
    store: &dyn Store,
    job: &JobRecord,
) -> Result<Option<ArtifactRecord>, StoreError> {
    let artifacts = store
        .list_artifacts(&job.id, Some(ArtifactKind::Adapter))
        .await?;
    Ok(artifacts
        .into_iter()
        .filter(|a| a.attempt == job.attempt)
        .max_by_key(|a| (a.step, a.created_at)))
}

/// Refuses a merge whose sources cannot be merged into one adapter on `spec.base_model`.
pub async fn check_sources(
    ctx: &ApiContext,
    caller: &Caller,
    spec: &JobSpec,
) -> Result<(), ApiError> {
    let Some(merge) = &spec.merge else {
        return Ok(());
    };
    for (i, id) in merge.sources.iter().enumerate() {
        let field = format!("spec.merge.sources[{i}]");
        require_id(&field, ids::JOB, id)?;
        let job = match ctx.job(caller, id).await {
            Ok(j) => j,
            Err(ApiError::Store(StoreError::NotFound { .. })) => {
                return Err(ApiError::field(&field, format!("job {id} does not exist")));
            }
            Err(e) => return Err(e),
        };
        if job.state != JobState::Succeeded {
            return Err(ApiError::field(
                &field,
                format!("job {id} is {}; only succeeded jobs merge", job.state),
            ));
        }
        let task = job.spec.task;
        match task {
            Task::CausalLm | Task::Preference | Task::Merge => {}
            Task::Classification => {
                return Err(ApiError::field(
                    &field,
                    format!(
                        "job {id} trained a classifier, whose head is not a LoRA delta; merges \
                         combine decoder adapters (causal_lm, preference, merge)"
                    ),
                ));
            }
        }
        match &job.spec.method {
            Method::Lora { .. } => {}
            other => {
                return Err(ApiError::field(
                    &field,
                    format!(
                        "job {id} trained {}; merges combine plain LoRA adapters (dora's \
                         magnitude, ia3's scales and virtual tokens are not deltas to add)",
                        other.kind()
                    ),
                ));
            }
        }
        if job.spec.base_model != spec.base_model {
            return Err(ApiError::field(
                &field,
                format!(
                    "job {id} fine-tuned {:?}, not spec.base_model {:?}; merged deltas must \
                     share their base",
                    job.spec.base_model, spec.base_model
                ),
            ));
        }
        if final_adapter(ctx.store.as_ref(), &job).await?.is_none() {
            return Err(ApiError::field(
                &field,
                format!("job {id} has no adapter left (it was deleted)"),
            ));
        }
    }
    Ok(())
}

/// The jobs whose adapters `job` merges: a merge job's sources, a lo-fi job's shards (in
/// shard order), none for other jobs.
pub async fn source_ids(store: &dyn Store, job: &JobRecord) -> Result<Vec<String>, StoreError> {
    if let Some(merge) = &job.spec.merge {
        return Ok(merge.sources.clone());
    }
    if job.spec.replicas > 1 && job.parent_job_id.is_none() {
        return Ok(store
            .list_shards(&job.id)
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect());
    }
    Ok(Vec::new())
}

/// Whether `artifact` is the final adapter of one of `merge_job`'s sources (what its lease
/// may download besides its own inputs).
pub async fn is_source_adapter(
    store: &dyn Store,
    merge_job: &JobRecord,
    artifact: &ArtifactRecord,
) -> Result<bool, StoreError> {
    if artifact.kind != ArtifactKind::Adapter
        || !source_ids(store, merge_job)
            .await?
            .contains(&artifact.job_id)
    {
        return Ok(false);
    }
    let source = match store.get_job(&artifact.job_id).await {
        Ok(j) => j,
        Err(StoreError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(source.tenant == merge_job.tenant
        && final_adapter(store, &source)
            .await?
            .is_some_and(|a| a.id == artifact.id))
}
