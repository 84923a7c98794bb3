"""Typed, immutable views of the API's resources.

Each class is built from its protobuf message with ``from_proto``: enums become
:mod:`tuna.enums` members, timestamps timezone-aware :class:`~datetime.datetime` objects
(``None`` when unset), optional numbers ``None`` when absent. Jobs are in :mod:`tuna.job`
(they carry methods bound to a client).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tuna.enums import (
    ArtifactKind,
    DatasetFormat,
    FailureKind,
    FilePurpose,
    JobState,
    ModelFormat,
    SweepState,
)
from tuna.v1 import file_pb2, job_pb2, model_pb2, sweep_pb2

__all__ = [
    "File",
    "ModelFile",
    "Model",
    "Failure",
    "JobEvent",
    "MetricPoint",
    "JobUpdate",
    "Artifact",
    "Trial",
    "Sweep",
    "SweepSnapshot",
    "timestamp",
    "update_from_proto",
    "id_of",
    "model_name",
]


def timestamp(message: Message, name: str) -> datetime | None:
    """The ``google.protobuf.Timestamp`` field ``name`` of ``message`` as an aware UTC
    datetime, or ``None`` when unset."""
    if not message.HasField(name):
        return None
    ts: Timestamp = getattr(message, name)
    return ts.ToDatetime(tzinfo=UTC)


def _optional(message: Message, name: str) -> Any:
    """The value of a proto3 ``optional`` field, or ``None`` when unset."""
    return getattr(message, name) if message.HasField(name) else None


@dataclass(frozen=True)
class File:
    """An uploaded dataset or model file."""

    id: str
    name: str
    purpose: FilePurpose
    size_bytes: int
    sha256: str
    #: For DATASET files: the line format the server validated.
    format: DatasetFormat
    #: For DATASET files: the number of records.
    line_count: int
    created_at: datetime | None

    @classmethod
    def from_proto(cls, m: file_pb2.File) -> File:
        return cls(
            id=m.id,
            name=m.name,
            purpose=FilePurpose(m.purpose),
            size_bytes=m.size_bytes,
            sha256=m.sha256,
            format=DatasetFormat(m.format),
            line_count=m.line_count,
            created_at=timestamp(m, "created_at"),
        )


@dataclass(frozen=True)
class ModelFile:
    """One file of a registered model, by its path inside the model folder."""

    path: str
    file_id: str
    sha256: str
    size_bytes: int

    @classmethod
    def from_proto(cls, m: model_pb2.ModelFile) -> ModelFile:
        return cls(path=m.path, file_id=m.file_id, sha256=m.sha256, size_bytes=m.size_bytes)


@dataclass(frozen=True)
class Model:
    """A registered base model; jobs name it as ``model=``."""

    name: str
    format: ModelFormat
    files: tuple[ModelFile, ...]
    created_at: datetime | None

    @classmethod
    def from_proto(cls, m: model_pb2.Model) -> Model:
        return cls(
            name=m.name,
            format=ModelFormat(m.format),
            files=tuple(ModelFile.from_proto(f) for f in m.files),
            created_at=timestamp(m, "created_at"),
        )


@dataclass(frozen=True)
class Failure:
    """Why a job failed (or why its last attempt did, while a retry is pending)."""

    kind: FailureKind
    message: str

    @classmethod
    def from_proto(cls, m: job_pb2.Failure) -> Failure:
        return cls(kind=FailureKind(m.kind), message=m.message)


@dataclass(frozen=True)
class JobEvent:
    """An entry of a job's event log: ``created``, ``claimed``, ``state_changed``, ..."""

    seq: int
    kind: str
    #: The job's state after this event.
    state: JobState
    message: str
    attempt: int
    time: datetime | None

    @classmethod
    def from_proto(cls, m: job_pb2.JobEvent) -> JobEvent:
        return cls(
            seq=m.seq,
            kind=m.kind,
            state=JobState(m.state),
            message=m.message,
            attempt=m.attempt,
            time=timestamp(m, "time"),
        )


@dataclass(frozen=True)
class MetricPoint:
    """The metrics of one training step (``loss``, ``lr``, ``grad_norm``, ``eval_loss``, ...)."""

    seq: int
    step: int
    attempt: int
    values: Mapping[str, float]
    time: datetime | None

    @classmethod
    def from_proto(cls, m: job_pb2.MetricPoint) -> MetricPoint:
        return cls(
            seq=m.seq,
            step=m.step,
            attempt=m.attempt,
            values=dict(m.values),
            time=timestamp(m, "time"),
        )


#: One entry of a job's history as :meth:`tuna.Client.jobs.watch` yields it. ``seq`` is per
#: job, strictly increasing and gap-free across events and metric points together.
JobUpdate = JobEvent | MetricPoint


def update_from_proto(m: job_pb2.JobUpdate) -> JobUpdate:
    """The typed entry of a ``tuna.v1.JobUpdate`` (its ``seq`` is the update's)."""
    kind = m.WhichOneof("kind")
    update: JobUpdate
    if kind == "event":
        update = JobEvent.from_proto(m.event)
    elif kind == "metrics":
        update = MetricPoint.from_proto(m.metrics)
    else:
        # A kind this SDK does not know (from a newer server): it keeps its place in the
        # sequence, as an event of kind "unknown", so seq stays gap-free for the caller.
        return JobEvent(
            seq=m.seq,
            kind="unknown",
            state=JobState.UNSPECIFIED,
            message="",
            attempt=0,
            time=None,
        )
    return update if update.seq == m.seq else replace(update, seq=m.seq)


@dataclass(frozen=True)
class Artifact:
    """Something a worker produced: an adapter (HF PEFT layout), a checkpoint or merged
    weights, stored as one tar archive."""

    id: str
    job_id: str
    attempt: int
    kind: ArtifactKind
    step: int
    name: str
    size_bytes: int
    sha256: str
    created_at: datetime | None

    @classmethod
    def from_proto(cls, m: job_pb2.Artifact) -> Artifact:
        return cls(
            id=m.id,
            job_id=m.job_id,
            attempt=m.attempt,
            kind=ArtifactKind(m.kind),
            step=m.step,
            name=m.name,
            size_bytes=m.size_bytes,
            sha256=m.sha256,
            created_at=timestamp(m, "created_at"),
        )


@dataclass(frozen=True)
class Trial:
    """One run of a sweep trial (an ASHA promotion is a new run of the same trial)."""

    trial: int
    run: int
    job_id: str
    job_state: JobState
    #: The searched parameters, e.g. ``{"hyperparameters.learning_rate": 0.001}``.
    params: Mapping[str, Any]
    #: Steps this run is allowed (an ASHA rung); 0 = the template's budget.
    budget: float
    observed: bool
    objective: float | None
    cost: float | None
    failed: bool
    stopped_early: bool
    steps: int
    last_value: float | None

    @classmethod
    def from_proto(cls, m: sweep_pb2.Trial) -> Trial:
        try:
            params = json.loads(m.params_json) if m.params_json else {}
        except ValueError:
            params = {}
        return cls(
            trial=m.trial,
            run=m.run,
            job_id=m.job_id,
            job_state=JobState(m.job_state),
            params=params if isinstance(params, dict) else {},
            budget=m.budget,
            observed=m.observed,
            objective=_optional(m, "objective"),
            cost=_optional(m, "cost"),
            failed=m.failed,
            stopped_early=m.stopped_early,
            steps=m.steps,
            last_value=_optional(m, "last_value"),
        )


@dataclass(frozen=True)
class Sweep:
    """A hyperparameter sweep with its best trial and Pareto front (cost vs objective)."""

    id: str
    state: SweepState
    #: The stored ``tuna.v1.SweepSpec`` (defaults filled in by the server).
    spec: sweep_pb2.SweepSpec = field(repr=False)
    #: Why the sweep ended, or what it waits on.
    message: str
    trials_created: int
    trials_finished: int
    trials_running: int
    total_cost: float
    best_trial: Trial | None
    pareto_front: tuple[Trial, ...]
    created_at: datetime | None
    updated_at: datetime | None
    finished_at: datetime | None
    request_id: str

    @property
    def is_terminal(self) -> bool:
        """Whether the sweep ended (SUCCEEDED, FAILED or CANCELLED)."""
        return self.state.is_terminal

    @classmethod
    def from_proto(cls, m: sweep_pb2.Sweep) -> Sweep:
        return cls(
            id=m.id,
            state=SweepState(m.state),
            spec=m.spec,
            message=m.message,
            trials_created=m.trials_created,
            trials_finished=m.trials_finished,
            trials_running=m.trials_running,
            total_cost=m.total_cost,
            best_trial=Trial.from_proto(m.best_trial) if m.HasField("best_trial") else None,
            pareto_front=tuple(Trial.from_proto(t) for t in m.pareto_front),
            created_at=timestamp(m, "created_at"),
            updated_at=timestamp(m, "updated_at"),
            finished_at=timestamp(m, "finished_at"),
            request_id=m.request_id,
        )


@dataclass(frozen=True)
class SweepSnapshot:
    """What :meth:`tuna.Client.sweeps.watch` yields: the sweep and all its trials, now."""

    sweep: Sweep
    trials: tuple[Trial, ...]

    @classmethod
    def from_proto(cls, m: sweep_pb2.SweepSnapshot) -> SweepSnapshot:
        return cls(
            sweep=Sweep.from_proto(m.sweep), trials=tuple(Trial.from_proto(t) for t in m.trials)
        )


def id_of(value: str | Any) -> str:
    """The id of a resource given as an id string or as an object with an ``id`` (a
    :class:`File`, :class:`Artifact`, job or :class:`Sweep`)."""
    if isinstance(value, str):
        return value
    found = getattr(value, "id", None)
    if not isinstance(found, str):
        raise TypeError(f"expected an id or a resource with an id, got {type(value).__name__}")
    return found


def model_name(value: str | Model) -> str:
    """The name of a model given as a name or a :class:`Model`."""
    return value.name if isinstance(value, Model) else value
