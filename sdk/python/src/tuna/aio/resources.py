"""The services of :class:`tuna.aio.AsyncClient`: the same methods as :mod:`tuna.resources`
(see there for arguments and errors), as coroutines and async iterators. Both run the same
plans (:mod:`tuna._ops`), so they behave identically."""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tuna._effects import DEFAULT, Timeout
from tuna._ops import artifacts as artifact_ops
from tuna._ops import files as file_ops
from tuna._ops import jobs as job_ops
from tuna._ops import models as model_ops
from tuna._ops import sweeps as sweep_ops
from tuna._transfer import ProgressFn
from tuna.enums import ArtifactKind, DatasetFormat, FilePurpose, JobState
from tuna.job import AsyncJob
from tuna.retry import RetryPolicy
from tuna.spec import (
    DEFAULT_METHOD,
    Hyperparameters,
    Merge,
    MethodLike,
    Preference,
    Resources,
    build_job_spec,
    build_merge_spec,
)
from tuna.spec_file import JobSpecLike, SweepSpecLike
from tuna.types import (
    Artifact,
    File,
    JobEvent,
    JobUpdate,
    Model,
    Sweep,
    SweepSnapshot,
    Trial,
    id_of,
    model_name,
)
from tuna.v1 import job_pb2

if TYPE_CHECKING:
    from tuna.aio.client import AsyncClient

__all__ = ["AsyncFiles", "AsyncModels", "AsyncJobs", "AsyncArtifacts", "AsyncSweeps"]

PathLike = str | os.PathLike[str]


class _AsyncService:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self._transport = client._transport


class AsyncFiles(_AsyncService):
    """Datasets and model files; see :class:`tuna.resources.Files`."""

    async def upload(
        self,
        path: PathLike,
        *,
        purpose: FilePurpose | str = FilePurpose.DATASET,
        format: DatasetFormat | str | None = None,
        name: str | None = None,
        progress: ProgressFn | None = None,
    ) -> File:
        """Uploads a file (digest first, then 1 MiB chunks read in a worker thread)."""
        return await self._transport.run(
            file_ops.upload(path, purpose=purpose, format=format, name=name, progress=progress)
        )

    async def get(self, file_id: str | File, *, timeout: Timeout = DEFAULT) -> File:
        """One file's metadata."""
        return await self._transport.run(file_ops.get(id_of(file_id), timeout))

    def list(
        self,
        *,
        purpose: FilePurpose | str | None = None,
        page_size: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> AsyncIterator[File]:
        """Every file (of ``purpose``), a page at a time."""
        return self._transport.iterate(file_ops.list_files(purpose, page_size, timeout))

    async def delete(self, file_id: str | File, *, timeout: Timeout = DEFAULT) -> None:
        """Deletes a file."""
        await self._transport.run(file_ops.delete(id_of(file_id), timeout))

    async def download(self, file_id: str | File, dest: PathLike) -> Path:
        """Downloads a file, verified, to ``dest``."""
        return await self._transport.run(file_ops.download(id_of(file_id), dest))


class AsyncModels(_AsyncService):
    """The model registry; see :class:`tuna.resources.Models`."""

    async def register(
        self,
        name: str,
        path: PathLike,
        *,
        progress: ProgressFn | None = None,
        timeout: Timeout = DEFAULT,
    ) -> Model:
        """Uploads a model folder (or ``.gguf`` file) and registers it under ``name``."""
        return await self._transport.run(model_ops.register(name, path, progress, timeout))

    async def get(self, name: str | Model, *, timeout: Timeout = DEFAULT) -> Model:
        """One registered model."""
        return await self._transport.run(model_ops.get(model_name(name), timeout))

    async def list(self, *, timeout: Timeout = DEFAULT) -> builtins.list[Model]:
        """Every registered model."""
        return await self._transport.run(model_ops.list_models(timeout))

    async def delete(self, name: str | Model, *, timeout: Timeout = DEFAULT) -> None:
        """Unregisters a model (its files stay)."""
        await self._transport.run(model_ops.delete(model_name(name), timeout))


class AsyncJobs(_AsyncService):
    """Fine-tuning jobs; see :class:`tuna.resources.Jobs`."""

    def _job(self, message: job_pb2.Job) -> AsyncJob:
        return AsyncJob.from_proto(message, self)

    async def create(
        self,
        *,
        model: str | Model,
        training_file: str | File,
        validation_file: str | File | None = None,
        method: MethodLike = DEFAULT_METHOD,
        hyperparameters: Hyperparameters | None = None,
        resources: Resources | None = None,
        task: str | None = None,
        preference: Preference | None = None,
        export_merged: Literal["f32", "bf16"] | None = None,
        replicas: int | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> AsyncJob:
        """Creates a job (state QUEUED)."""
        spec = build_job_spec(
            model=model_name(model),
            training_file=id_of(training_file),
            validation_file=id_of(validation_file) if validation_file is not None else None,
            method=method,
            hyperparameters=hyperparameters,
            resources=resources,
            task=task,
            preference=preference,
            export_merged=export_merged,
            replicas=replicas,
            priority=priority,
            max_attempts=max_attempts,
            labels=labels,
        )
        return self._job(await self._transport.run(job_ops.create(spec, request_id, timeout)))

    async def merge(
        self,
        *,
        model: str | Model,
        merge: Merge,
        validation_file: str | File | None = None,
        export_merged: Literal["f32", "bf16"] | None = None,
        hyperparameters: Hyperparameters | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> AsyncJob:
        """Creates a merge job (``task="merge"``): the LoRA adapters of ``merge.sources``
        merged into one on a worker (see :class:`~tuna.Merge`). With a validation file it
        reports the merged adapter's ``eval_loss``; ``export_merged`` also uploads the merged
        model.

        Raises:
            InvalidArgument: e.g. ``spec.merge.sources[1]`` when that job is not a succeeded
                LoRA job on ``model``.
        """
        spec = build_merge_spec(
            model=model_name(model),
            merge=merge,
            validation_file=id_of(validation_file) if validation_file is not None else None,
            export_merged=export_merged,
            hyperparameters=hyperparameters,
            priority=priority,
            max_attempts=max_attempts,
            labels=labels,
        )
        return self._job(await self._transport.run(job_ops.create(spec, request_id, timeout)))

    async def create_from_spec(
        self,
        spec: JobSpecLike,
        *,
        request_id: str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> AsyncJob:
        """Creates a job from a whole ``tuna.v1.JobSpec`` (message, dict or file)."""
        return self._job(
            await self._transport.run(job_ops.create_from_spec(spec, request_id, timeout))
        )

    async def get(self, job_id: str | AsyncJob, *, timeout: Timeout = DEFAULT) -> AsyncJob:
        """The job as it is now."""
        return self._job(await self._transport.run(job_ops.get(id_of(job_id), timeout)))

    async def list(
        self,
        *,
        states: Iterable[JobState | str] = (),
        labels: Mapping[str, str] | None = None,
        sweep_id: str | None = None,
        page_size: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> AsyncIterator[AsyncJob]:
        """Jobs newest first, a page at a time (an async generator)."""
        pages = job_ops.list_jobs(states, labels or {}, sweep_id, page_size, timeout)
        async for message in self._transport.iterate(pages):
            yield self._job(message)

    async def cancel(self, job_id: str | AsyncJob, *, timeout: Timeout = DEFAULT) -> AsyncJob:
        """Cancels a job."""
        return self._job(await self._transport.run(job_ops.cancel(id_of(job_id), timeout)))

    async def pause(self, job_id: str | AsyncJob, *, timeout: Timeout = DEFAULT) -> AsyncJob:
        """Pauses a job."""
        return self._job(await self._transport.run(job_ops.pause(id_of(job_id), timeout)))

    async def delete(self, job_id: str | AsyncJob, *, timeout: Timeout = DEFAULT) -> None:
        """Deletes a finished job with its history and artifacts."""
        await self._transport.run(job_ops.delete(id_of(job_id), timeout))

    async def resume(self, job_id: str | AsyncJob, *, timeout: Timeout = DEFAULT) -> AsyncJob:
        """Resumes a paused job."""
        return self._job(await self._transport.run(job_ops.resume(id_of(job_id), timeout)))

    def events(
        self, job_id: str | AsyncJob, *, page_size: int = 0, timeout: Timeout = DEFAULT
    ) -> AsyncIterator[JobEvent]:
        """The job's event log, oldest first."""
        return self._transport.iterate(job_ops.events(id_of(job_id), page_size, timeout))

    async def checkpoints(
        self, job_id: str | AsyncJob, *, timeout: Timeout = DEFAULT
    ) -> builtins.list[Artifact]:
        """The job's checkpoints, oldest first."""
        return await self._transport.run(job_ops.checkpoints(id_of(job_id), timeout))

    def watch(
        self, job_id: str | AsyncJob, *, after_seq: int = 0, retry: RetryPolicy | None = None
    ) -> AsyncIterator[JobUpdate]:
        """The job's updates after ``after_seq``, live, reconnecting without gaps or
        duplicates, until the job ended."""
        policy = retry or self.client.retry
        return self._transport.iterate(job_ops.watch(id_of(job_id), after_seq, policy))

    async def wait(
        self,
        job_id: str | AsyncJob,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> AsyncJob:
        """The terminal job; :class:`TimeoutError` after ``timeout`` seconds."""
        policy = retry or self.client.retry
        return self._job(await self._transport.run(job_ops.wait(id_of(job_id), timeout, policy)))


class AsyncArtifacts(_AsyncService):
    """Adapters and checkpoints; see :class:`tuna.resources.Artifacts`."""

    async def list(
        self,
        job_id: str | AsyncJob,
        *,
        kind: ArtifactKind | str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[Artifact]:
        """A job's artifacts (of ``kind``), oldest first."""
        return await self._transport.run(artifact_ops.list_artifacts(id_of(job_id), kind, timeout))

    async def get(self, artifact_id: str, *, timeout: Timeout = DEFAULT) -> Artifact:
        """One artifact's metadata."""
        return await self._transport.run(artifact_ops.get(artifact_id, timeout))

    async def download(
        self,
        ref: str | AsyncJob | Artifact,
        dest: PathLike,
        *,
        kind: ArtifactKind | str = ArtifactKind.ADAPTER,
        timeout: Timeout = DEFAULT,
    ) -> Path:
        """Downloads an artifact (or a job's newest of ``kind``), verifies it and unpacks it
        safely into ``dest``."""
        reference = ref if isinstance(ref, (str, Artifact)) else id_of(ref)
        return await self._transport.run(artifact_ops.download(reference, dest, kind, timeout))


class AsyncSweeps(_AsyncService):
    """Hyperparameter sweeps; see :class:`tuna.resources.Sweeps`."""

    async def create(
        self,
        spec: SweepSpecLike,
        *,
        model: str | Model | None = None,
        training_file: str | File | None = None,
        validation_file: str | File | None = None,
        request_id: str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> Sweep:
        """Starts a sweep from a SweepSpec (message, dict or TOML/JSON file)."""
        return await self._transport.run(
            sweep_ops.create(
                spec,
                model=model_name(model) if model is not None else None,
                training_file=id_of(training_file) if training_file is not None else None,
                validation_file=id_of(validation_file) if validation_file is not None else None,
                request_id=request_id,
                timeout=timeout,
            )
        )

    async def get(self, sweep_id: str | Sweep, *, timeout: Timeout = DEFAULT) -> Sweep:
        """The sweep with its best trial and Pareto front."""
        return await self._transport.run(sweep_ops.get(id_of(sweep_id), timeout))

    def list(self, *, page_size: int = 0, timeout: Timeout = DEFAULT) -> AsyncIterator[Sweep]:
        """Sweeps newest first."""
        return self._transport.iterate(sweep_ops.list_sweeps(page_size, timeout))

    async def trials(
        self, sweep_id: str | Sweep, *, timeout: Timeout = DEFAULT
    ) -> builtins.list[Trial]:
        """The sweep's trials in suggestion order."""
        return await self._transport.run(sweep_ops.trials(id_of(sweep_id), timeout))

    async def cancel(self, sweep_id: str | Sweep, *, timeout: Timeout = DEFAULT) -> Sweep:
        """Cancels the sweep and its running trials."""
        return await self._transport.run(sweep_ops.cancel(id_of(sweep_id), timeout))

    async def best_trial(
        self, sweep_id: str | Sweep, *, timeout: Timeout = DEFAULT
    ) -> Trial | None:
        """The best finished trial so far."""
        return (await self.get(sweep_id, timeout=timeout)).best_trial

    def watch(
        self, sweep_id: str | Sweep, *, retry: RetryPolicy | None = None
    ) -> AsyncIterator[SweepSnapshot]:
        """Snapshots of the sweep and its trials until it ended (reconnecting)."""
        policy = retry or self.client.retry
        return self._transport.iterate(sweep_ops.watch(id_of(sweep_id), policy))

    async def wait(
        self,
        sweep_id: str | Sweep,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Sweep:
        """The ended sweep; :class:`TimeoutError` after ``timeout`` seconds."""
        policy = retry or self.client.retry
        return await self._transport.run(sweep_ops.wait(id_of(sweep_id), timeout, policy))
