"""Tuna's Python SDK: a typed client for the Tuna fine-tuning service (``tuna.v1`` gRPC API).

>>> import tuna                                                          # doctest: +SKIP
>>> with tuna.Client("127.0.0.1:50051") as client:
...     data = client.files.upload("train.jsonl")
...     job = client.jobs.create(
...         model="tiny-llama",
...         training_file=data,
...         method=tuna.LoRA(r=8),
...         hyperparameters=tuna.Hyperparameters(learning_rate=5e-3, max_steps=30),
...     )
...     for update in job.watch():
...         print(update.seq, update)
...     client.artifacts.download(job.id, "./adapter")

The asyncio client is :class:`tuna.aio.AsyncClient`; errors are :class:`tuna.TunaError`
subclasses (:mod:`tuna.errors`); the generated protobuf modules are in :mod:`tuna.v1`.
"""

from tuna._channel import TLS
from tuna.client import Client
from tuna.enums import (
    ArtifactKind,
    DatasetFormat,
    Direction,
    FailureKind,
    FilePurpose,
    JobState,
    ModelFormat,
    SweepState,
)
from tuna.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    IntegrityError,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    TunaError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    UnpackError,
)
from tuna.job import AsyncJob, Job
from tuna.retry import RetryPolicy
from tuna.spec import (
    IA3,
    BitFit,
    DoRA,
    Full,
    LISA,
    Hyperparameters,
    LoRA,
    Merge,
    Method,
    Preference,
    PrefixTuning,
    PromptTuning,
    Resources,
)
from tuna.types import (
    Artifact,
    Failure,
    File,
    JobEvent,
    JobUpdate,
    MetricPoint,
    Model,
    ModelFile,
    Sweep,
    SweepSnapshot,
    Trial,
)
from tuna.v1.sweep_pb2 import SweepSpec

__version__ = "0.1.0"

__all__ = [
    "Client",
    "TLS",
    "RetryPolicy",
    # job specs
    "LoRA",
    "DoRA",
    "IA3",
    "PromptTuning",
    "BitFit",
    "Full",
    "LISA",
    "Method",
    "Hyperparameters",
    "Merge",
    "Preference",
    "PrefixTuning",
    "Resources",
    "SweepSpec",
    # resources
    "File",
    "Model",
    "ModelFile",
    "Job",
    "AsyncJob",
    "Failure",
    "JobEvent",
    "MetricPoint",
    "JobUpdate",
    "Artifact",
    "Sweep",
    "SweepSnapshot",
    "Trial",
    # enums
    "JobState",
    "FailureKind",
    "FilePurpose",
    "DatasetFormat",
    "ModelFormat",
    "ArtifactKind",
    "SweepState",
    "Direction",
    # errors
    "TunaError",
    "FieldViolation",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "IntegrityError",
    "UnpackError",
    "ProtocolError",
]
