"""Jobs: the data of a ``tuna.v1.Job`` plus methods bound to the client that fetched it.

:class:`Job` comes from :class:`tuna.Client`, :class:`AsyncJob` (the same data, coroutine
methods) from :class:`tuna.aio.AsyncClient`. Both are snapshots: ``refresh()`` fetches the
job again, ``wait()`` returns the terminal job.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tuna.enums import ArtifactKind, JobState
from tuna.types import Artifact, Failure, JobEvent, JobUpdate, timestamp
from tuna.v1 import job_pb2

if TYPE_CHECKING:
    from tuna.aio.resources import AsyncJobs
    from tuna.resources import Jobs

__all__ = ["JobData", "Job", "AsyncJob"]

J = TypeVar("J", bound="JobData")


@dataclass(frozen=True)
class JobData:
    """A fine-tuning job as the server last reported it."""

    id: str
    state: JobState
    #: The stored ``tuna.v1.JobSpec``, every default filled in by the server.
    spec: job_pb2.JobSpec = field(repr=False)
    #: Times the job was claimed by a worker (the current attempt while RUNNING).
    attempt: int
    max_attempts: int
    created_at: datetime | None
    updated_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    #: Earliest time the job can be claimed again (after a SYSTEM failure backoff).
    run_after: datetime | None
    #: The last failure, if any (also set while a retry is pending).
    failure: Failure | None
    #: The sweep that created this job as a trial, if any.
    sweep_id: str
    #: Highest ``seq`` of the job's events and metric points so far.
    last_seq: int
    request_id: str
    #: A lo-fi shard's job (``spec.replicas > 1``) and which shard it is; ``""`` and 0 otherwise.
    parent_job_id: str = ""
    shard_index: int = 0

    @property
    def is_terminal(self) -> bool:
        """SUCCEEDED, FAILED or CANCELLED."""
        return self.state.is_terminal

    @property
    def succeeded(self) -> bool:
        """Whether the job SUCCEEDED."""
        return self.state is JobState.SUCCEEDED

    @property
    def model(self) -> str:
        """The base model (``spec.base_model``)."""
        return self.spec.base_model

    @property
    def labels(self) -> Mapping[str, str]:
        """The job's labels."""
        return dict(self.spec.labels)

    @classmethod
    def _fields_of(cls, m: job_pb2.Job) -> dict[str, Any]:
        return dict(
            id=m.id,
            state=JobState(m.state),
            spec=m.spec,
            attempt=m.attempt,
            max_attempts=m.max_attempts,
            created_at=timestamp(m, "created_at"),
            updated_at=timestamp(m, "updated_at"),
            started_at=timestamp(m, "started_at"),
            finished_at=timestamp(m, "finished_at"),
            run_after=timestamp(m, "run_after"),
            failure=Failure.from_proto(m.failure) if m.HasField("failure") else None,
            sweep_id=m.sweep_id,
            last_seq=m.last_seq,
            request_id=m.request_id,
            parent_job_id=m.parent_job_id,
            shard_index=m.shard_index,
        )


@dataclass(frozen=True)
class Job(JobData):
    """A job with blocking methods (see :class:`tuna.resources.Jobs` for their details)."""

    _jobs: Jobs | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: job_pb2.Job, jobs: Jobs | None = None) -> Job:
        """Wraps a ``tuna.v1.Job``; without ``jobs`` the methods are unavailable."""
        return cls(**cls._fields_of(m), _jobs=jobs)

    @property
    def _api(self) -> Jobs:
        if self._jobs is None:
            raise RuntimeError("this Job is not bound to a client")
        return self._jobs

    def refresh(self) -> Job:
        """The job as it is now."""
        return self._api.get(self.id)

    def watch(self, *, after_seq: int = 0) -> Iterator[JobUpdate]:
        """Its events and metric points, live and reconnecting, until it ends."""
        return self._api.watch(self.id, after_seq=after_seq)

    def wait(self, timeout: float | None = None) -> Job:
        """The terminal job; :class:`TimeoutError` after ``timeout`` seconds."""
        return self._api.wait(self.id, timeout=timeout)

    def cancel(self) -> Job:
        """Cancels it (RUNNING jobs go through CANCELLING)."""
        return self._api.cancel(self.id)

    def pause(self) -> Job:
        """Pauses it (RUNNING jobs checkpoint first, through PAUSING)."""
        return self._api.pause(self.id)

    def resume(self) -> Job:
        """Resumes a paused (or pausing) job."""
        return self._api.resume(self.id)

    def events(self) -> Iterator[JobEvent]:
        """Its event log, oldest first."""
        return self._api.events(self.id)

    def checkpoints(self) -> list[Artifact]:
        """Its checkpoints, oldest first."""
        return self._api.checkpoints(self.id)

    def artifacts(self, kind: ArtifactKind | str | None = None) -> list[Artifact]:
        """Its artifacts (of ``kind``), oldest first."""
        return self._api.client.artifacts.list(self.id, kind=kind)

    def download(
        self, dest: str | os.PathLike[str], kind: ArtifactKind | str = ArtifactKind.ADAPTER
    ) -> Path:
        """Downloads and unpacks its newest artifact of ``kind`` (the adapter) into ``dest``."""
        return self._api.client.artifacts.download(self.id, dest, kind=kind)


@dataclass(frozen=True)
class AsyncJob(JobData):
    """A job with coroutine methods (see :class:`tuna.aio.resources.AsyncJobs`)."""

    _jobs: AsyncJobs | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: job_pb2.Job, jobs: AsyncJobs | None = None) -> AsyncJob:
        """Wraps a ``tuna.v1.Job``; without ``jobs`` the methods are unavailable."""
        return cls(**cls._fields_of(m), _jobs=jobs)

    @property
    def _api(self) -> AsyncJobs:
        if self._jobs is None:
            raise RuntimeError("this AsyncJob is not bound to a client")
        return self._jobs

    async def refresh(self) -> AsyncJob:
        """The job as it is now."""
        return await self._api.get(self.id)

    def watch(self, *, after_seq: int = 0) -> AsyncIterator[JobUpdate]:
        """Its events and metric points, live and reconnecting, until it ends."""
        return self._api.watch(self.id, after_seq=after_seq)

    async def wait(self, timeout: float | None = None) -> AsyncJob:
        """The terminal job; :class:`TimeoutError` after ``timeout`` seconds."""
        return await self._api.wait(self.id, timeout=timeout)

    async def cancel(self) -> AsyncJob:
        """Cancels it."""
        return await self._api.cancel(self.id)

    async def pause(self) -> AsyncJob:
        """Pauses it."""
        return await self._api.pause(self.id)

    async def resume(self) -> AsyncJob:
        """Resumes it."""
        return await self._api.resume(self.id)

    def events(self) -> AsyncIterator[JobEvent]:
        """Its event log, oldest first."""
        return self._api.events(self.id)

    async def checkpoints(self) -> list[Artifact]:
        """Its checkpoints, oldest first."""
        return await self._api.checkpoints(self.id)

    async def artifacts(self, kind: ArtifactKind | str | None = None) -> list[Artifact]:
        """Its artifacts (of ``kind``), oldest first."""
        return await self._api.client.artifacts.list(self.id, kind=kind)

    async def download(
        self, dest: str | os.PathLike[str], kind: ArtifactKind | str = ArtifactKind.ADAPTER
    ) -> Path:
        """Downloads and unpacks its newest artifact of ``kind`` into ``dest``."""
        return await self._api.client.artifacts.download(self.id, dest, kind=kind)
