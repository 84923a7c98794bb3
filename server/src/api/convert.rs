//! Store records to proto messages, and proto enums to domain enums.

use tuna_proto::ts_from_ms;
use tuna_proto::v1 as pb;

use crate::domain::{ArtifactKind, DatasetFormat, FailureKind, FilePurpose, JobState, ModelFormat};
use crate::error::ApiError;
use crate::store::{
    ArtifactRecord, EventRecord, FileRecord, JobRecord, MetricRecord, ModelRecord, UpdateRecord,
};

pub fn job_state(s: JobState) -> pb::JobState {
    match s {
        JobState::Queued => pb::JobState::Queued,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelling => pb::JobState::Cancelling,
        JobState::Cancelled => pb::JobState::Cancelled,
        JobState::Pausing => pb::JobState::Pausing,
        JobState::Paused => pb::JobState::Paused,
    }
}

/// Parses a proto job state; UNSPECIFIED and unknown values are INVALID_ARGUMENT.
pub fn job_state_from(field: &str, v: i32) -> Result<JobState, ApiError> {
    let state = match pb::JobState::try_from(v) {
        Ok(pb::JobState::Queued) => JobState::Queued,
        Ok(pb::JobState::Running) => JobState::Running,
        Ok(pb::JobState::Succeeded) => JobState::Succeeded,
        Ok(pb::JobState::Failed) => JobState::Failed,
        Ok(pb::JobState::Cancelling) => JobState::Cancelling,
        Ok(pb::JobState::Cancelled) => JobState::Cancelled,
        Ok(pb::JobState::Pausing) => JobState::Pausing,
        Ok(pb::JobState::Paused) => JobState::Paused,
        _ => return Err(ApiError::field(field, format!("unknown job state {v}"))),
    };
    Ok(state)
}

pub fn failure_kind(k: FailureKind) -> pb::FailureKind {
    match k {
        FailureKind::User => pb::FailureKind::User,
        FailureKind::System => pb::FailureKind::System,
    }
}

pub fn artifact_kind(k: ArtifactKind) -> pb::ArtifactKind {
    match k {
        ArtifactKind::Adapter => pb::ArtifactKind::Adapter,
        ArtifactKind::Checkpoint => pb::ArtifactKind::Checkpoint,
        ArtifactKind::Merged => pb::ArtifactKind::Merged,
    }
}

/// Parses an artifact kind; `allow_unspecified` maps UNSPECIFIED to `None` (list filters).
pub fn artifact_kind_from(
    field: &str,
    v: i32,
    allow_unspecified: bool,
) -> Result<Option<ArtifactKind>, ApiError> {
    match pb::ArtifactKind::try_from(v) {
        Ok(pb::ArtifactKind::Adapter) => Ok(Some(ArtifactKind::Adapter)),
        Ok(pb::ArtifactKind::Checkpoint) => Ok(Some(ArtifactKind::Checkpoint)),
        Ok(pb::ArtifactKind::Merged) => Ok(Some(ArtifactKind::Merged)),
        Ok(pb::ArtifactKind::Unspecified) if allow_unspecified => Ok(None),
        _ => Err(ApiError::field(
            field,
            format!("must be ADAPTER, CHECKPOINT or MERGED, got {v}"),
        )),
    }
}

pub fn file_purpose(p: FilePurpose) -> pb::FilePurpose {
    match p {
        FilePurpose::Dataset => pb::FilePurpose::Dataset,
        FilePurpose::Model => pb::FilePurpose::Model,
    }
}

pub fn file_purpose_from(
    field: &str,
    v: i32,
    allow_unspecified: bool,
) -> Result<Option<FilePurpose>, ApiError> {
    match pb::FilePurpose::try_from(v) {
        Ok(pb::FilePurpose::Dataset) => Ok(Some(FilePurpose::Dataset)),
        Ok(pb::FilePurpose::Model) => Ok(Some(FilePurpose::Model)),
        Ok(pb::FilePurpose::Unspecified) if allow_unspecified => Ok(None),
        _ => Err(ApiError::field(
            field,
            format!("must be DATASET or MODEL, got {v}"),
        )),
    }
}

pub fn dataset_format(f: DatasetFormat) -> pb::DatasetFormat {
    match f {
        DatasetFormat::Text => pb::DatasetFormat::Text,
        DatasetFormat::PromptCompletion => pb::DatasetFormat::PromptCompletion,
        DatasetFormat::Chat => pb::DatasetFormat::Chat,
        DatasetFormat::Classification => pb::DatasetFormat::Classification,
        DatasetFormat::Preference => pb::DatasetFormat::Preference,
    }
}

pub fn dataset_format_from(field: &str, v: i32) -> Result<Option<DatasetFormat>, ApiError> {
    match pb::DatasetFormat::try_from(v) {
        Ok(pb::DatasetFormat::Unspecified) => Ok(None),
        Ok(pb::DatasetFormat::Text) => Ok(Some(DatasetFormat::Text)),
        Ok(pb::DatasetFormat::PromptCompletion) => Ok(Some(DatasetFormat::PromptCompletion)),
        Ok(pb::DatasetFormat::Chat) => Ok(Some(DatasetFormat::Chat)),
        Ok(pb::DatasetFormat::Classification) => Ok(Some(DatasetFormat::Classification)),
        Ok(pb::DatasetFormat::Preference) => Ok(Some(DatasetFormat::Preference)),
        Err(_) => Err(ApiError::field(
            field,
            format!("unknown dataset format {v}"),
        )),
    }
}

pub fn job(j: &JobRecord) -> pb::Job {
    pb::Job {
        id: j.id.clone(),
        state: job_state(j.state) as i32,
        spec: Some(j.spec.to_proto()),
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        created_at: Some(ts_from_ms(j.created_at)),
        updated_at: Some(ts_from_ms(j.updated_at)),
        started_at: j.started_at.map(ts_from_ms),
        finished_at: j.finished_at.map(ts_from_ms),
        run_after: Some(ts_from_ms(j.run_after)),
        failure: j.failure.as_ref().map(|(kind, message)| pb::Failure {
            kind: failure_kind(*kind) as i32,
            message: message.clone(),
        }),
        sweep_id: j.sweep_id.clone().unwrap_or_default(),
        last_seq: j.last_seq,
        request_id: j.request_id.clone().unwrap_or_default(),
        parent_job_id: j.parent_job_id.clone().unwrap_or_default(),
        shard_index: j.shard_index.unwrap_or_default(),
    }
}

pub fn event(e: &EventRecord) -> pb::JobEvent {
    pb::JobEvent {
        seq: e.seq,
        kind: e.kind.clone(),
        state: job_state(e.state) as i32,
        message: e.message.clone(),
        attempt: e.attempt,
        time: Some(ts_from_ms(e.created_at)),
    }
}

pub fn metrics(m: &MetricRecord) -> pb::MetricPoint {
    pb::MetricPoint {
        seq: m.seq,
        step: m.step,
        attempt: m.attempt,
        values: m.values.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        time: Some(ts_from_ms(m.created_at)),
    }
}

pub fn update(u: &UpdateRecord) -> pb::JobUpdate {
    pb::JobUpdate {
        seq: u.seq(),
        kind: Some(match u {
            UpdateRecord::Event(e) => pb::job_update::Kind::Event(event(e)),
            UpdateRecord::Metrics(m) => pb::job_update::Kind::Metrics(metrics(m)),
        }),
    }
}

pub fn artifact(a: &ArtifactRecord) -> pb::Artifact {
    pb::Artifact {
        id: a.id.clone(),
        job_id: a.job_id.clone(),
        attempt: a.attempt,
        kind: artifact_kind(a.kind) as i32,
        step: a.step,
        name: a.name.clone(),
        size_bytes: a.size_bytes,
        sha256: a.sha256.clone(),
        created_at: Some(ts_from_ms(a.created_at)),
    }
}

pub fn file(f: &FileRecord) -> pb::File {
    pb::File {
        id: f.id.clone(),
        name: f.name.clone(),
        purpose: file_purpose(f.purpose) as i32,
        size_bytes: f.size_bytes,
        sha256: f.sha256.clone(),
        format: f
            .format
            .map(dataset_format)
            .unwrap_or(pb::DatasetFormat::Unspecified) as i32,
        line_count: f.line_count,
        created_at: Some(ts_from_ms(f.created_at)),
    }
}

pub fn model_format(f: ModelFormat) -> pb::ModelFormat {
    match f {
        ModelFormat::Hf => pb::ModelFormat::Hf,
        ModelFormat::Gguf => pb::ModelFormat::Gguf,
    }
}

pub fn model(m: &ModelRecord) -> pb::Model {
    pb::Model {
        name: m.name.clone(),
        format: model_format(m.format) as i32,
        files: m
            .files
            .iter()
            .map(|f| pb::ModelFile {
                path: f.path.clone(),
                file_id: f.file.id.clone(),
                sha256: f.file.sha256.clone(),
                size_bytes: f.file.size_bytes,
            })
            .collect(),
        created_at: Some(ts_from_ms(m.created_at)),
    }
}
