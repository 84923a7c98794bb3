//! gRPC services, one module each: validate the request, call the store, map errors once
//! (via [`ApiError`] into `tonic::Status`).

pub mod admin;
pub mod artifacts;
pub mod convert;
pub mod files;
pub mod fleet;
pub mod jobs;
pub mod merges;
pub mod models;
pub mod page_token;
pub mod sweeps;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};

use crate::blobs::{Blobs, FinishedBlob};
use crate::dataset::JsonlValidator;
use crate::domain::access::Caller;
use crate::domain::ids;
use crate::domain::spec::MethodKind;
use crate::error::ApiError;
use crate::metrics::ServiceMetrics;
use crate::store::{ArtifactRecord, FileRecord, JobRecord, Store, StoreError, SweepRecord};

/// Limits enforced at the API edge.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest file or artifact accepted, in bytes.
    pub max_upload_bytes: i64,
    /// Longest AcquireJob long-poll, in milliseconds.
    pub max_acquire_wait_ms: i64,
    /// How often waiters re-check the database when no notification arrives.
    pub poll_interval_ms: u64,
    /// Most file uploads streaming at once (workers' artifact uploads are not counted).
    pub max_concurrent_uploads: usize,
    /// An upload silent for this long is abandoned.
    pub upload_idle_timeout_ms: u64,
    /// Most file uploads one key streams at once.
    pub max_uploads_per_key: usize,
    /// Most QUEUED jobs per tenant (0: no limit).
    pub max_queued_jobs_per_tenant: u64,
    /// Most stored bytes (files and artifacts) per tenant (0: no limit).
    pub max_stored_bytes_per_tenant: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 10 * 1024 * 1024 * 1024,
            max_acquire_wait_ms: 60_000,
            poll_interval_ms: 1_000,
            max_concurrent_uploads: 64,
            upload_idle_timeout_ms: 30_000,
            max_uploads_per_key: 8,
            max_queued_jobs_per_tenant: 10_000,
            max_stored_bytes_per_tenant: 1 << 40,
        }
    }
}

/// What every service needs.
#[derive(Clone)]
pub struct ApiContext {
    pub store: Arc<dyn Store>,
    pub blobs: Blobs,
    pub limits: Limits,
    /// Upload slots ([`Limits::max_concurrent_uploads`]).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Uploads in progress per key ([`Limits::max_uploads_per_key`]).
    pub key_uploads: Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, usize>>>,
    pub metrics: ServiceMetrics,
    /// Flips to true when the server starts shutting down, so long-lived calls (watches,
    /// long-polls) end instead of holding the graceful shutdown open.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The authenticated caller the edge attached. Every service sits behind the edge stack, so
/// a call without one means a service was mounted without it: refuse rather than guess.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, ApiError> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ApiError::Unauthenticated("no authenticated caller".into()))
}

/// Another tenant's resource answers exactly as a missing one would.
fn not_found(kind: &'static str, id: &str) -> ApiError {
    ApiError::Store(StoreError::NotFound {
        kind,
        id: id.to_string(),
    })
}

impl ApiContext {
    /// The caller's job `id` (NOT_FOUND for another tenant's).
    pub async fn job(&self, caller: &Caller, id: &str) -> Result<JobRecord, ApiError> {
        let job = self.store.get_job(id).await?;
        if *job.tenant != *caller.tenant {
            return Err(not_found("job", id));
        }
        Ok(job)
    }

    /// The caller's file `id` (NOT_FOUND for another tenant's).
    pub async fn file(&self, caller: &Caller, id: &str) -> Result<FileRecord, ApiError> {
        let file = self.store.get_file(id).await?;
        if *file.tenant != *caller.tenant {
            return Err(not_found("file", id));
        }
        Ok(file)
    }

    /// The artifact `id` of one of the caller's jobs (NOT_FOUND otherwise).
    pub async fn artifact(&self, caller: &Caller, id: &str) -> Result<ArtifactRecord, ApiError> {
        let artifact = self.store.get_artifact(id).await?;
        match self.job(caller, &artifact.job_id).await {
            Ok(_) => Ok(artifact),
            Err(ApiError::Store(StoreError::NotFound { .. })) => Err(not_found("artifact", id)),
            Err(e) => Err(e),
        }
    }

    /// The caller's sweep `id` (NOT_FOUND for another tenant's).
    pub async fn sweep(&self, caller: &Caller, id: &str) -> Result<SweepRecord, ApiError> {
        let sweep = self.store.get_sweep(id).await?;
        if *sweep.tenant != *caller.tenant {
            return Err(not_found("sweep", id));
        }
        Ok(sweep)
    }
}

/// Checks a resource id's shape.
pub fn require_id(field: &str, prefix: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::field(field, "is required"));
    }
    if !ids::is_valid(prefix, id) {
        return Err(ApiError::field(
            field,
            format!("{id:?} is not a valid id (expected {prefix}_ followed by 32 hex digits)"),
        ));
    }
    Ok(())
}

/// A job may only name dataset files that exist and whose validated format its task can
/// train, so a typo or a mismatch fails at submission rather than minutes later on a worker.
pub async fn require_dataset(
    ctx: &ApiContext,
    caller: &Caller,
    field: &str,
    id: &str,
    task: crate::domain::spec::Task,
) -> Result<(), ApiError> {
    require_id(field, ids::FILE, id)?;
    match ctx.file(caller, id).await {
        Ok(f) if f.purpose == crate::domain::FilePurpose::Dataset => {
            let format = f
                .format
                .map(convert::dataset_format)
                .unwrap_or(tuna_proto::v1::DatasetFormat::Unspecified);
            task.accepts(format).map_err(|reason| {
                ApiError::field(field, format!("file {id} {reason} (task {task})"))
            })
        }
        Ok(f) => Err(ApiError::field(
            field,
            format!("file {id} is a {} file, not a dataset", f.purpose),
        )),
        Err(ApiError::Store(StoreError::NotFound { .. })) => {
            Err(ApiError::field(field, format!("file {id} does not exist")))
        }
        Err(e) => Err(e),
    }
}

/// A method the registered model cannot train is refused here, naming `field`: BitFit
/// trains bias parameters, and Llama-family checkpoints usually have none. Decided from the
/// model's file headers; when they cannot tell, the worker decides.
pub async fn require_method_fits_model(
    ctx: &ApiContext,
    caller: &Caller,
    field: &str,
    model_name: &str,
    method: MethodKind,
) -> Result<(), ApiError> {
    match method {
        MethodKind::Bitfit => {}
        MethodKind::Lora
        | MethodKind::Dora
        | MethodKind::Ia3
        | MethodKind::PromptTuning
        | MethodKind::PrefixTuning
        | MethodKind::Full
        | MethodKind::Lisa => return Ok(()),
    }
    let model = match ctx.store.get_model(&caller.tenant, model_name).await {
        Ok(m) => m,
        Err(crate::store::StoreError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    match crate::model_facts::has_bias_parameters(&ctx.blobs, &model).await {
        Ok(Some(false)) => Err(ApiError::field(
            field,
            format!(
                "bitfit trains bias parameters and model {model_name:?} has none; \
                 choose lora, dora, ia3, prompt_tuning, prefix_tuning or full"
            ),
        )),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(model = model_name, error = %e, "cannot read the model's headers");
            Ok(())
        }
    }
}

/// Bidirectional overrides and isolates, and zero-width characters: invisible, they make a
/// name display as something else (`evil\u{202e}txt.exe` shows as `evilexe.txt`).
fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
    )
}

/// Checks a file or artifact name: 1..=255 chars, no path separators, control characters or
/// bidi and zero-width characters.
pub fn require_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = (1..=255).contains(&name.len())
        && !name.contains(['/', '\\'])
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c.is_control() || is_deceptive(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            "must be 1..=255 characters without path separators, control, bidi or zero-width \
             characters",
        ))
    }
}

/// Checks a declared SHA-256: 64 lowercase hex digits.
pub fn require_sha256(field: &str, sha: &str) -> Result<(), ApiError> {
    if sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ApiError::field(field, "must be 64 lowercase hex digits"))
    }
}

/// Checks a declared size against the upload limit.
pub fn require_size(field: &str, size: i64, limits: &Limits) -> Result<(), ApiError> {
    if size < 0 {
        return Err(ApiError::field(field, format!("must be >= 0, got {size}")));
    }
    if size > limits.max_upload_bytes {
        return Err(ApiError::field(
            field,
            format!(
                "{size} bytes exceeds the maximum upload size of {} bytes",
                limits.max_upload_bytes
            ),
        ));
    }
    Ok(())
}

/// One upload's place in the server-wide and the per-key count; freed when dropped.
pub struct UploadSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    key: Arc<str>,
    per_key: Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, usize>>>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut map = self.per_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// A slot for one upload, or RESOURCE_EXHAUSTED naming the limit (server-wide, then per key).
/// Held until the upload ends, so idle or slow streams cannot pile up temporary blobs and open
/// files, and one key cannot take every slot.
pub fn upload_slot(ctx: &ApiContext, caller: &Caller) -> Result<UploadSlot, ApiError> {
    let permit = ctx.uploads.clone().try_acquire_owned().map_err(|_| {
        ApiError::Exhausted(format!(
            "{} uploads are already in progress (api.max_concurrent_uploads); retry later",
            ctx.limits.max_concurrent_uploads
        ))
    })?;
    let mut map = ctx.key_uploads.lock().unwrap_or_else(|p| p.into_inner());
    let n = map.entry(caller.key_id.clone()).or_insert(0);
    if *n >= ctx.limits.max_uploads_per_key {
        return Err(ApiError::Exhausted(format!(
            "this API key already has {} uploads in progress (api.max_uploads_per_key); retry \
             when one ends",
            *n
        )));
    }
    *n += 1;
    Ok(UploadSlot {
        _permit: permit,
        key: caller.key_id.clone(),
        per_key: ctx.key_uploads.clone(),
    })
}

/// RESOURCE_EXHAUSTED when the caller's tenant would pass a quota by adding `jobs` queued jobs
/// and `bytes` stored bytes. Checked before the work; two racing calls may both pass, so a
/// tenant can overshoot by what is in flight at once (the limits are capacity guards, not
/// billing).
pub async fn require_quota(
    ctx: &ApiContext,
    caller: &Caller,
    jobs: u64,
    bytes: i64,
) -> Result<(), ApiError> {
    let (max_jobs, max_bytes) = (
        ctx.limits.max_queued_jobs_per_tenant,
        ctx.limits.max_stored_bytes_per_tenant,
    );
    if (jobs == 0 || max_jobs == 0) && (bytes == 0 || max_bytes == 0) {
        return Ok(());
    }
    let usage = ctx.store.tenant_usage(&caller.tenant).await?;
    if jobs > 0 && max_jobs > 0 && usage.queued_jobs.saturating_add(jobs) > max_jobs {
        return Err(ApiError::Exhausted(format!(
            "tenant {} has {} queued jobs, the most allowed (api.max_queued_jobs_per_tenant); \
             wait for some to start or cancel some",
            caller.tenant, usage.queued_jobs
        )));
    }
    if bytes > 0 && max_bytes > 0 && usage.stored_bytes.saturating_add(bytes) > max_bytes {
        return Err(ApiError::Exhausted(format!(
            "tenant {} stores {} bytes; {bytes} more would pass {max_bytes} \
             (api.max_stored_bytes_per_tenant); delete files or jobs first",
            caller.tenant, usage.stored_bytes
        )));
    }
    Ok(())
}

/// The next message of an upload stream, or DEADLINE_EXCEEDED after `idle` of silence.
pub async fn next_within<S: Stream + Unpin>(
    stream: &mut S,
    idle: Duration,
) -> Result<Option<S::Item>, ApiError> {
    tokio::time::timeout(idle, stream.next())
        .await
        .map_err(|_| {
            ApiError::Idle(format!(
                "the upload sent nothing for {} ms (api.upload_idle_timeout_ms); abandoned",
                idle.as_millis()
            ))
        })
}

/// What [`receive_blob`] stored.
pub struct Received {
    pub blob: FinishedBlob,
    /// A dataset's format and line count, when a validator was given.
    pub dataset: Option<(crate::domain::DatasetFormat, u64)>,
}

/// Streams chunks into the blob `key`, enforcing the declared size, the digest and (for
/// datasets) every JSONL line before the blob becomes visible; on any error nothing is left.
pub async fn receive_blob<S>(
    blobs: &Blobs,
    key: &str,
    mut chunks: S,
    declared_size: i64,
    declared_sha256: &str,
    mut validator: Option<JsonlValidator>,
    idle: Duration,
) -> Result<Received, ApiError>
where
    S: Stream<Item = Result<Vec<u8>, ApiError>> + Unpin,
{
    let declared = u64::try_from(declared_size).unwrap_or(0);
    let mut writer = blobs.begin(key).await?;
    let checked: Result<_, ApiError> = async {
        while let Some(chunk) = next_within(&mut chunks, idle).await? {
            let chunk = chunk?;
            if writer.size() + chunk.len() as u64 > declared {
                return Err(ApiError::field(
                    "header.size_bytes",
                    format!("received more than the declared {declared} bytes"),
                ));
            }
            if let Some(v) = validator.as_mut() {
                v.feed(&chunk)?;
            }
            writer.write(&chunk).await?;
        }
        if writer.size() != declared {
            return Err(ApiError::field(
                "header.size_bytes",
                format!(
                    "declared {declared} bytes but the stream ended after {}",
                    writer.size()
                ),
            ));
        }
        let actual = writer.sha256();
        if actual != declared_sha256 {
            return Err(ApiError::DigestMismatch {
                declared: declared_sha256.to_string(),
                actual,
            });
        }
        Ok(validator.map(JsonlValidator::finish).transpose()?)
    }
    .await;
    match checked {
        Ok(dataset) => Ok(Received {
            blob: writer.finish().await?,
            dataset,
        }),
        Err(e) => {
            writer.abort().await;
            Err(e)
        }
    }
}

/// Re-slices a byte stream into chunks of at most [`tuna_proto::CHUNK_SIZE`].
pub fn rechunk<S, E>(body: S) -> impl Stream<Item = Result<Vec<u8>, E>> + Send
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    body.flat_map(|r| {
        let items: Vec<Result<Vec<u8>, E>> = match r {
            Ok(bytes) => bytes
                .chunks(tuna_proto::CHUNK_SIZE)
                .map(|c| Ok(c.to_vec()))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(items)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_refuse_bidi_and_invisible_characters() {
        for bad in [
            "evil\u{202e}txt.exe",
            "a\u{2066}b",
            "zero\u{200b}width",
            "\u{feff}bom",
            "esc\u{1b}[31m",
            "a/b",
            "..",
        ] {
            assert!(require_name("name", bad).is_err(), "{bad:?}");
        }
        for ok in [
            "train.jsonl",
            "données é.jsonl",
            "日本語.txt",
            "model-00001.safetensors",
        ] {
            assert!(require_name("name", ok).is_ok(), "{ok:?}");
        }
    }
}
