import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tuna.v1 import file_pb2 as _file_pb2
from tuna.v1 import job_pb2 as _job_pb2
from tuna.v1 import model_pb2 as _model_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Directive(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTIVE_UNSPECIFIED: _ClassVar[Directive]
    DIRECTIVE_CONTINUE: _ClassVar[Directive]
    DIRECTIVE_CANCEL: _ClassVar[Directive]
    DIRECTIVE_PAUSE: _ClassVar[Directive]
    DIRECTIVE_STOP_EARLY: _ClassVar[Directive]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCEEDED: _ClassVar[Outcome]
    OUTCOME_CANCELLED: _ClassVar[Outcome]
    OUTCOME_PAUSED: _ClassVar[Outcome]
    OUTCOME_RELEASED: _ClassVar[Outcome]
DIRECTIVE_UNSPECIFIED: Directive
DIRECTIVE_CONTINUE: Directive
DIRECTIVE_CANCEL: Directive
DIRECTIVE_PAUSE: Directive
DIRECTIVE_STOP_EARLY: Directive
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCEEDED: Outcome
OUTCOME_CANCELLED: Outcome
OUTCOME_PAUSED: Outcome
OUTCOME_RELEASED: Outcome

class DownloadInputRequest(_message.Message):
    __slots__ = ("job_id", "lease_token", "file_id", "artifact_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    file_id: str
    artifact_id: str
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., file_id: _Optional[str] = ..., artifact_id: _Optional[str] = ...) -> None: ...

class DownloadInputResponse(_message.Message):
    __slots__ = ("file", "artifact", "chunk")
    FILE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    file: _file_pb2.File
    artifact: _job_pb2.Artifact
    chunk: bytes
    def __init__(self, file: _Optional[_Union[_file_pb2.File, _Mapping]] = ..., artifact: _Optional[_Union[_job_pb2.Artifact, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class WorkerCapabilities(_message.Message):
    __slots__ = ("device", "memory_bytes", "free_disk_bytes", "cached_models", "device_name", "free_memory_bytes")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHED_MODELS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    FREE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    device: str
    memory_bytes: int
    free_disk_bytes: int
    cached_models: _containers.RepeatedScalarFieldContainer[str]
    device_name: str
    free_memory_bytes: int
    def __init__(self, device: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., free_disk_bytes: _Optional[int] = ..., cached_models: _Optional[_Iterable[str]] = ..., device_name: _Optional[str] = ..., free_memory_bytes: _Optional[int] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("name", "capabilities")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    capabilities: WorkerCapabilities
    def __init__(self, name: _Optional[str] = ..., capabilities: _Optional[_Union[WorkerCapabilities, _Mapping]] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("worker_id", "lease_duration_ms", "heartbeat_interval_ms")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    lease_duration_ms: int
    heartbeat_interval_ms: int
    def __init__(self, worker_id: _Optional[str] = ..., lease_duration_ms: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class AcquireJobRequest(_message.Message):
    __slots__ = ("worker_id", "wait_ms")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    wait_ms: int
    def __init__(self, worker_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class AcquireJobResponse(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("job_id", "attempt", "lease_token", "expires_at", "spec", "resume_from", "model", "training_file", "validation_file", "trace_parent", "merge_sources", "shard")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FILE_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FILE_FIELD_NUMBER: _ClassVar[int]
    TRACE_PARENT_FIELD_NUMBER: _ClassVar[int]
    MERGE_SOURCES_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    lease_token: str
    expires_at: _timestamp_pb2.Timestamp
    spec: _job_pb2.JobSpec
    resume_from: _job_pb2.Artifact
    model: _model_pb2.Model
    training_file: _file_pb2.File
    validation_file: _file_pb2.File
    trace_parent: str
    merge_sources: _containers.RepeatedCompositeFieldContainer[_job_pb2.Artifact]
    shard: Shard
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., lease_token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spec: _Optional[_Union[_job_pb2.JobSpec, _Mapping]] = ..., resume_from: _Optional[_Union[_job_pb2.Artifact, _Mapping]] = ..., model: _Optional[_Union[_model_pb2.Model, _Mapping]] = ..., training_file: _Optional[_Union[_file_pb2.File, _Mapping]] = ..., validation_file: _Optional[_Union[_file_pb2.File, _Mapping]] = ..., trace_parent: _Optional[str] = ..., merge_sources: _Optional[_Iterable[_Union[_job_pb2.Artifact, _Mapping]]] = ..., shard: _Optional[_Union[Shard, _Mapping]] = ...) -> None: ...

class Shard(_message.Message):
    __slots__ = ("index", "count")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    index: int
    count: int
    def __init__(self, index: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("job_id", "lease_token", "step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    step: int
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("directive", "lease_expires_at")
    DIRECTIVE_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    directive: Directive
    lease_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, directive: _Optional[_Union[Directive, str]] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportMetricsRequest(_message.Message):
    __slots__ = ("job_id", "lease_token", "points")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    points: _containers.RepeatedCompositeFieldContainer[_job_pb2.MetricPoint]
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., points: _Optional[_Iterable[_Union[_job_pb2.MetricPoint, _Mapping]]] = ...) -> None: ...

class ReportMetricsResponse(_message.Message):
    __slots__ = ("last_seq", "directive")
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    DIRECTIVE_FIELD_NUMBER: _ClassVar[int]
    last_seq: int
    directive: Directive
    def __init__(self, last_seq: _Optional[int] = ..., directive: _Optional[_Union[Directive, str]] = ...) -> None: ...

class UploadArtifactHeader(_message.Message):
    __slots__ = ("job_id", "lease_token", "kind", "step", "name", "size_bytes", "sha256")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    kind: _job_pb2.ArtifactKind
    step: int
    name: str
    size_bytes: int
    sha256: str
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., kind: _Optional[_Union[_job_pb2.ArtifactKind, str]] = ..., step: _Optional[int] = ..., name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadArtifactRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadArtifactHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadArtifactHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class CompleteJobRequest(_message.Message):
    __slots__ = ("job_id", "lease_token", "outcome")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    outcome: Outcome
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ...) -> None: ...

class CompleteJobResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: _job_pb2.JobState
    def __init__(self, state: _Optional[_Union[_job_pb2.JobState, str]] = ...) -> None: ...

class FailJobRequest(_message.Message):
    __slots__ = ("job_id", "lease_token", "kind", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    kind: _job_pb2.FailureKind
    message: str
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., kind: _Optional[_Union[_job_pb2.FailureKind, str]] = ..., message: _Optional[str] = ...) -> None: ...

class FailJobResponse(_message.Message):
    __slots__ = ("state", "will_retry", "run_after")
    STATE_FIELD_NUMBER: _ClassVar[int]
    WILL_RETRY_FIELD_NUMBER: _ClassVar[int]
    RUN_AFTER_FIELD_NUMBER: _ClassVar[int]
    state: _job_pb2.JobState
    will_retry: bool
    run_after: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[_job_pb2.JobState, str]] = ..., will_retry: _Optional[bool] = ..., run_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("page_size", "seen_within_ms")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEEN_WITHIN_MS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    seen_within_ms: int
    def __init__(self, page_size: _Optional[int] = ..., seen_within_ms: _Optional[int] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("id", "name", "device", "memory_bytes", "current_job_id", "registered_at", "last_seen_at", "device_name", "free_memory_bytes")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CURRENT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    FREE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    device: str
    memory_bytes: int
    current_job_id: str
    registered_at: _timestamp_pb2.Timestamp
    last_seen_at: _timestamp_pb2.Timestamp
    device_name: str
    free_memory_bytes: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., device: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., current_job_id: _Optional[str] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., device_name: _Optional[str] = ..., free_memory_bytes: _Optional[int] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...
