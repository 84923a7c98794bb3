"""The API's enums as Python :class:`enum.IntEnum` classes.

Each member's value is the protobuf number, so ``JobState.RUNNING == job_pb2.JOB_STATE_RUNNING``.
Arguments that take an enum also accept its lowercase name (``"running"``,
``"prompt-completion"``) or the protobuf number.
"""

from __future__ import annotations

import enum
from typing import Any, Self

from tuna.v1 import file_pb2, job_pb2, model_pb2, sweep_pb2

__all__ = [
    "JobState",
    "FailureKind",
    "FilePurpose",
    "DatasetFormat",
    "ModelFormat",
    "ArtifactKind",
    "SweepState",
    "Direction",
]


class _ProtoEnum(enum.IntEnum):
    """An enum mirroring a protobuf enum; unknown numbers (from a newer server) map to
    ``UNSPECIFIED`` instead of failing."""

    @classmethod
    def _missing_(cls, value: object) -> Self:
        return cls(0)

    @classmethod
    def coerce(cls, value: Self | str | int) -> Self:
        """The member for a member, a name (case-insensitive, ``-`` or ``_``) or a number.

        Raises:
            ValueError: for a name or number that is not a member's.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            key = value.strip().upper().replace("-", "_")
            try:
                return cls[key]
            except KeyError:
                names = ", ".join(m.name.lower() for m in cls if m.value != 0)
                raise ValueError(
                    f"unknown {cls.__name__} {value!r}; expected one of {names}"
                ) from None
        if isinstance(value, int) and not isinstance(value, bool):
            if value not in cls._value2member_map_:
                raise ValueError(f"unknown {cls.__name__} number {value}")
            return cls(value)
        raise TypeError(f"{cls.__name__} expected, got {type(value).__name__}")

    @property
    def proto_value(self) -> Any:
        """The protobuf number, for the generated messages' constructors (their stubs type
        enum fields as the protobuf enum wrapper, which a plain ``int`` is at runtime)."""
        return self.value

    def __str__(self) -> str:
        return self.name.lower()


class JobState(_ProtoEnum):
    """A job's lifecycle state (see ``proto/tuna/v1/job.proto``)."""

    UNSPECIFIED = job_pb2.JOB_STATE_UNSPECIFIED
    QUEUED = job_pb2.JOB_STATE_QUEUED
    RUNNING = job_pb2.JOB_STATE_RUNNING
    SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
    FAILED = job_pb2.JOB_STATE_FAILED
    CANCELLING = job_pb2.JOB_STATE_CANCELLING
    CANCELLED = job_pb2.JOB_STATE_CANCELLED
    PAUSING = job_pb2.JOB_STATE_PAUSING
    PAUSED = job_pb2.JOB_STATE_PAUSED

    @property
    def is_terminal(self) -> bool:
        """SUCCEEDED, FAILED or CANCELLED: the job will not change again."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class FailureKind(_ProtoEnum):
    """Who is to blame for a failure: USER failures are final, SYSTEM ones are retried."""

    UNSPECIFIED = job_pb2.FAILURE_KIND_UNSPECIFIED
    USER = job_pb2.FAILURE_KIND_USER
    SYSTEM = job_pb2.FAILURE_KIND_SYSTEM


class FilePurpose(_ProtoEnum):
    """What an uploaded file is for."""

    UNSPECIFIED = file_pb2.FILE_PURPOSE_UNSPECIFIED
    DATASET = file_pb2.FILE_PURPOSE_DATASET
    MODEL = file_pb2.FILE_PURPOSE_MODEL


class DatasetFormat(_ProtoEnum):
    """The line format of a dataset; UNSPECIFIED lets the server detect it from line 1."""

    UNSPECIFIED = file_pb2.DATASET_FORMAT_UNSPECIFIED
    TEXT = file_pb2.DATASET_FORMAT_TEXT
    PROMPT_COMPLETION = file_pb2.DATASET_FORMAT_PROMPT_COMPLETION
    CHAT = file_pb2.DATASET_FORMAT_CHAT
    CLASSIFICATION = file_pb2.DATASET_FORMAT_CLASSIFICATION
    PREFERENCE = file_pb2.DATASET_FORMAT_PREFERENCE


class ModelFormat(_ProtoEnum):
    """How a registered model's files are laid out."""

    UNSPECIFIED = model_pb2.MODEL_FORMAT_UNSPECIFIED
    HF = model_pb2.MODEL_FORMAT_HF
    GGUF = model_pb2.MODEL_FORMAT_GGUF


class ArtifactKind(_ProtoEnum):
    """What a job produced: the final adapter, a resumable checkpoint or merged weights."""

    UNSPECIFIED = job_pb2.ARTIFACT_KIND_UNSPECIFIED
    ADAPTER = job_pb2.ARTIFACT_KIND_ADAPTER
    CHECKPOINT = job_pb2.ARTIFACT_KIND_CHECKPOINT
    MERGED = job_pb2.ARTIFACT_KIND_MERGED


class SweepState(_ProtoEnum):
    """A sweep's lifecycle state."""

    UNSPECIFIED = sweep_pb2.SWEEP_STATE_UNSPECIFIED
    RUNNING = sweep_pb2.SWEEP_STATE_RUNNING
    SUCCEEDED = sweep_pb2.SWEEP_STATE_SUCCEEDED
    FAILED = sweep_pb2.SWEEP_STATE_FAILED
    CANCELLED = sweep_pb2.SWEEP_STATE_CANCELLED

    @property
    def is_terminal(self) -> bool:
        """Anything but RUNNING (and UNSPECIFIED)."""
        return self in (SweepState.SUCCEEDED, SweepState.FAILED, SweepState.CANCELLED)


class Direction(_ProtoEnum):
    """Whether a sweep minimizes (the default) or maximizes its objective."""

    UNSPECIFIED = sweep_pb2.DIRECTION_UNSPECIFIED
    MINIMIZE = sweep_pb2.DIRECTION_MINIMIZE
    MAXIMIZE = sweep_pb2.DIRECTION_MAXIMIZE
