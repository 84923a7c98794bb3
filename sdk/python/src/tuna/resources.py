"""The services of :class:`tuna.Client`: ``client.files``, ``.models``, ``.jobs``,
``.artifacts`` and ``.sweeps``.

Every method raises a :class:`tuna.TunaError` subclass when the server refuses the call
(:class:`tuna.InvalidArgument` with ``field_violations``, :class:`tuna.NotFound`, ...).
``timeout`` is the deadline of one call in seconds (default: the client's); streams
(watches, uploads, downloads) have none unless stated.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterable, Iterator, Mapping
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
from tuna.job import Job
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
    from tuna.client import Client

__all__ = ["Files", "Models", "Jobs", "Artifacts", "Sweeps"]

PathLike = str | os.PathLike[str]


class _Service:
    def __init__(self, client: Client) -> None:
        self.client = client
        self._transport = client._transport


class Files(_Service):
    """Datasets and model files (``FileService``)."""

    def upload(
        self,
        path: PathLike,
        *,
        purpose: FilePurpose | str = FilePurpose.DATASET,
        format: DatasetFormat | str | None = None,
        name: str | None = None,
        progress: ProgressFn | None = None,
    ) -> File:
        """Uploads a file: hashes it, then streams a header (name, size, sha256) and the
        content in 1 MiB chunks. The server verifies size and digest and validates every
        line of a dataset; on any error nothing is stored.

        Args:
            path: the file.
            purpose: ``dataset`` (JSONL) or ``model`` (stored as-is).
            format: a dataset's line format (``text``, ``prompt-completion``, ``chat``,
                ``classification``); ``None`` lets the server detect it from line 1.
            name: the stored name (default: the file's name).
            progress: called as ``progress(bytes_sent, total_bytes)`` after every chunk.

        Raises:
            InvalidArgument: a bad line (the message names its number) or header.
            DataLoss: the bytes did not hash to the digest (the file changed meanwhile).
        """
        return self._transport.run(
            file_ops.upload(path, purpose=purpose, format=format, name=name, progress=progress)
        )

    def get(self, file_id: str | File, *, timeout: Timeout = DEFAULT) -> File:
        """One file's metadata."""
        return self._transport.run(file_ops.get(id_of(file_id), timeout))

    def list(
        self,
        *,
        purpose: FilePurpose | str | None = None,
        page_size: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> Iterator[File]:
        """Every file (of ``purpose``), fetching pages of ``page_size`` (0 = server default)
        as the iterator advances."""
        return self._transport.iterate(file_ops.list_files(purpose, page_size, timeout))

    def delete(self, file_id: str | File, *, timeout: Timeout = DEFAULT) -> None:
        """Deletes a file.

        Raises:
            FailedPrecondition: a queued or running job or a registered model uses it.
        """
        self._transport.run(file_ops.delete(id_of(file_id), timeout))

    def download(self, file_id: str | File, dest: PathLike) -> Path:
        """Downloads a file to ``dest`` (a path, or an existing folder to put the file's name
        in), verified against the server's size and sha256 and written atomically.

        Returns:
            The path written.

        Raises:
            IntegrityError: the bytes do not match; nothing is left behind.
        """
        return self._transport.run(file_ops.download(id_of(file_id), dest))


class Models(_Service):
    """The base-model registry (``ModelService``)."""

    def register(
        self,
        name: str,
        path: PathLike,
        *,
        progress: ProgressFn | None = None,
        timeout: Timeout = DEFAULT,
    ) -> Model:
        """Uploads a model and registers it under ``name`` for ``jobs.create(model=...)``.

        Args:
            name: 1..=128 chars of ``[a-z0-9._-]``.
            path: a Hugging Face folder (``config.json``, ``*.safetensors``,
                ``tokenizer.json``, ...) or one ``.gguf`` file.
            progress: ``progress(bytes_sent, total_bytes)`` over all files.

        Raises:
            AlreadyExists: the name is taken.
            InvalidArgument: the files are not a loadable model.
        """
        return self._transport.run(model_ops.register(name, path, progress, timeout))

    def get(self, name: str | Model, *, timeout: Timeout = DEFAULT) -> Model:
        """One registered model."""
        return self._transport.run(model_ops.get(model_name(name), timeout))

    def list(self, *, timeout: Timeout = DEFAULT) -> builtins.list[Model]:
        """Every registered model."""
        return self._transport.run(model_ops.list_models(timeout))

    def delete(self, name: str | Model, *, timeout: Timeout = DEFAULT) -> None:
        """Unregisters a model (its files stay).

        Raises:
            FailedPrecondition: a queued or running job uses it.
        """
        self._transport.run(model_ops.delete(model_name(name), timeout))


class Jobs(_Service):
    """Fine-tuning jobs (``JobService``)."""

    def _job(self, message: job_pb2.Job) -> Job:
        return Job.from_proto(message, self)

    def create(
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
    ) -> Job:
        """Creates a job (state QUEUED).

        Args:
            model: a registered model (name) or a model file id.
            training_file: the training dataset (a :class:`File` or its id).
            validation_file: the validation dataset, for ``eval_*`` metrics.
            method: :class:`~tuna.LoRA` (default), :class:`~tuna.DoRA`, :class:`~tuna.IA3`,
                :class:`~tuna.PromptTuning`, :class:`~tuna.PrefixTuning`, :class:`~tuna.BitFit`, :class:`~tuna.Full`, or a
                method name with the server's defaults.
            hyperparameters: see :class:`~tuna.Hyperparameters`; unset fields take the
                server's defaults.
            resources: device and memory the worker needs.
            task: ``causal_lm`` (default), ``classification`` or ``preference``.
            preference: the loss of a preference job (:class:`~tuna.Preference`; DPO with
                beta 0.1 when left out).
            export_merged: also upload the model with the trained weights merged in, in this
                dtype (artifact kind ``merged``; decoder jobs whose method folds into the
                weights).
            replicas: lo-fi data parallelism: N shards of the data train on any workers from
                the same init, then their LoRA adapters are averaged into this job's (default
                1; method LoRA, decoder tasks).
            priority: -1000..=1000, higher first (default 0).
            max_attempts: 1..=100 (default 3).
            labels: free-form ``key: value`` labels, for ``list(labels=...)``.
            request_id: an idempotency key: a retried call with the same key returns the
                job the first created.

        Raises:
            InvalidArgument: ``field_violations`` names each bad field, e.g.
                ``spec.hyperparameters.learning_rate``.
            AlreadyExists: ``request_id`` was used with a different spec.
        """
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
        return self._job(self._transport.run(job_ops.create(spec, request_id, timeout)))

    def merge(
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
    ) -> Job:
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
        return self._job(self._transport.run(job_ops.create(spec, request_id, timeout)))

    def create_from_spec(
        self,
        spec: JobSpecLike,
        *,
        request_id: str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> Job:
        """Creates a job from a whole ``tuna.v1.JobSpec``: the message, a dict in protobuf's
        JSON form, or a TOML/JSON file (like ``tuna jobs create --spec-file``)."""
        return self._job(self._transport.run(job_ops.create_from_spec(spec, request_id, timeout)))

    def get(self, job_id: str | Job, *, timeout: Timeout = DEFAULT) -> Job:
        """The job as it is now."""
        return self._job(self._transport.run(job_ops.get(id_of(job_id), timeout)))

    def list(
        self,
        *,
        states: Iterable[JobState | str] = (),
        labels: Mapping[str, str] | None = None,
        sweep_id: str | None = None,
        page_size: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> Iterator[Job]:
        """Jobs newest first, fetched a page at a time as the iterator advances.

        Args:
            states: only jobs in these states.
            labels: only jobs carrying all of these labels (at most 16).
            sweep_id: only the trials of this sweep.
            page_size: jobs per page, at most 1000 (0 = server default).
        """
        pages = job_ops.list_jobs(states, labels or {}, sweep_id, page_size, timeout)
        return (self._job(m) for m in self._transport.iterate(pages))

    def cancel(self, job_id: str | Job, *, timeout: Timeout = DEFAULT) -> Job:
        """Cancels a job: QUEUED/PAUSED ones at once, RUNNING ones through CANCELLING.

        Raises:
            FailedPrecondition: the job already ended otherwise.
        """
        return self._job(self._transport.run(job_ops.cancel(id_of(job_id), timeout)))

    def pause(self, job_id: str | Job, *, timeout: Timeout = DEFAULT) -> Job:
        """Pauses a job: QUEUED ones at once, RUNNING ones checkpoint first (PAUSING)."""
        return self._job(self._transport.run(job_ops.pause(id_of(job_id), timeout)))

    def delete(self, job_id: str | Job, *, timeout: Timeout = DEFAULT) -> None:
        """Deletes a finished job with its events, metrics, checkpoints and artifacts.

        Raises:
            FailedPrecondition: the job has not finished, or it is a sweep trial.
        """
        self._transport.run(job_ops.delete(id_of(job_id), timeout))

    def resume(self, job_id: str | Job, *, timeout: Timeout = DEFAULT) -> Job:
        """Resumes a PAUSED job (queued again, resuming from its latest checkpoint) or a
        PAUSING one (running again)."""
        return self._job(self._transport.run(job_ops.resume(id_of(job_id), timeout)))

    def events(
        self, job_id: str | Job, *, page_size: int = 0, timeout: Timeout = DEFAULT
    ) -> Iterator[JobEvent]:
        """The job's event log, oldest first, a page at a time."""
        return self._transport.iterate(job_ops.events(id_of(job_id), page_size, timeout))

    def checkpoints(
        self, job_id: str | Job, *, timeout: Timeout = DEFAULT
    ) -> builtins.list[Artifact]:
        """The job's checkpoints, oldest first (the newest is where a new attempt resumes)."""
        return self._transport.run(job_ops.checkpoints(id_of(job_id), timeout))

    def watch(
        self, job_id: str | Job, *, after_seq: int = 0, retry: RetryPolicy | None = None
    ) -> Iterator[JobUpdate]:
        """The job's events and metric points with ``seq > after_seq``: the history first,
        then live, until the job ended and its final event was delivered.

        A stream lost to a retryable error (``UNAVAILABLE``: a restarting server, a dropped
        connection) is reopened after the last ``seq`` delivered, with backoff, for at most
        ``retry.max_elapsed`` seconds per outage (default: the client's policy), so the
        ``seq`` of the updates stays gap-free without duplicates.
        """
        policy = retry or self.client.retry
        return self._transport.iterate(job_ops.watch(id_of(job_id), after_seq, policy))

    def wait(
        self,
        job_id: str | Job,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Job:
        """Blocks until the job is terminal and returns it (reconnecting like :meth:`watch`).

        Raises:
            TimeoutError: the job did not end within ``timeout`` seconds.
        """
        policy = retry or self.client.retry
        return self._job(self._transport.run(job_ops.wait(id_of(job_id), timeout, policy)))


class Artifacts(_Service):
    """Adapters, checkpoints and merged models (``ArtifactService``)."""

    def list(
        self,
        job_id: str | Job,
        *,
        kind: ArtifactKind | str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[Artifact]:
        """A job's artifacts (of ``kind``), oldest first."""
        return self._transport.run(artifact_ops.list_artifacts(id_of(job_id), kind, timeout))

    def get(self, artifact_id: str, *, timeout: Timeout = DEFAULT) -> Artifact:
        """One artifact's metadata."""
        return self._transport.run(artifact_ops.get(artifact_id, timeout))

    def download(
        self,
        ref: str | Job | Artifact,
        dest: PathLike,
        *,
        kind: ArtifactKind | str = ArtifactKind.ADAPTER,
        timeout: Timeout = DEFAULT,
    ) -> Path:
        """Downloads an artifact and unpacks it into the folder ``dest``.

        ``ref`` is an artifact (or its id) or a job (or its id: then its newest artifact of
        ``kind``, the adapter by default). The archive is streamed to a temporary file,
        checked against the size and sha256 the server declared, and unpacked with
        :func:`tuna.pack.unpack`: flat regular files only, into a ``dest`` that does not
        exist or is empty, all or nothing.

        Returns:
            ``dest``.

        Raises:
            NotFound: no such artifact, or the job has none of ``kind``.
            IntegrityError: the bytes do not match.
            UnpackError: the archive was refused or ``dest`` is not fresh.
        """
        reference = ref if isinstance(ref, (str, Artifact)) else id_of(ref)
        return self._transport.run(artifact_ops.download(reference, dest, kind, timeout))


class Sweeps(_Service):
    """Hyperparameter sweeps (``SweepService``): each trial is a job."""

    def create(
        self,
        spec: SweepSpecLike,
        *,
        model: str | Model | None = None,
        training_file: str | File | None = None,
        validation_file: str | File | None = None,
        request_id: str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> Sweep:
        """Starts a sweep.

        Args:
            spec: a ``tuna.v1.SweepSpec``, a dict in its JSON form, or a TOML/JSON file path
                (see ``examples/sweep.toml``).
            model, training_file, validation_file: replace the template's (like the CLI's
                flags).
            request_id: an idempotency key.

        Raises:
            ValueError: the spec file or dict does not parse (the message names the field).
            InvalidArgument: the server refused the spec (``field_violations`` names e.g.
                ``spec.parameters[0].min``).
        """
        return self._transport.run(
            sweep_ops.create(
                spec,
                model=model_name(model) if model is not None else None,
                training_file=id_of(training_file) if training_file is not None else None,
                validation_file=id_of(validation_file) if validation_file is not None else None,
                request_id=request_id,
                timeout=timeout,
            )
        )

    def get(self, sweep_id: str | Sweep, *, timeout: Timeout = DEFAULT) -> Sweep:
        """The sweep with its best trial and Pareto front."""
        return self._transport.run(sweep_ops.get(id_of(sweep_id), timeout))

    def list(self, *, page_size: int = 0, timeout: Timeout = DEFAULT) -> Iterator[Sweep]:
        """Sweeps newest first, a page at a time."""
        return self._transport.iterate(sweep_ops.list_sweeps(page_size, timeout))

    def trials(self, sweep_id: str | Sweep, *, timeout: Timeout = DEFAULT) -> builtins.list[Trial]:
        """The sweep's trials in suggestion order (one entry per run)."""
        return self._transport.run(sweep_ops.trials(id_of(sweep_id), timeout))

    def cancel(self, sweep_id: str | Sweep, *, timeout: Timeout = DEFAULT) -> Sweep:
        """Stops suggesting and cancels the trials still queued or running."""
        return self._transport.run(sweep_ops.cancel(id_of(sweep_id), timeout))

    def best_trial(self, sweep_id: str | Sweep, *, timeout: Timeout = DEFAULT) -> Trial | None:
        """The best finished trial so far (``None`` before any finished)."""
        return self.get(sweep_id, timeout=timeout).best_trial

    def watch(
        self, sweep_id: str | Sweep, *, retry: RetryPolicy | None = None
    ) -> Iterator[SweepSnapshot]:
        """The sweep and its trials now, then after every change, until the sweep ended;
        reconnects like :meth:`Jobs.watch`."""
        policy = retry or self.client.retry
        return self._transport.iterate(sweep_ops.watch(id_of(sweep_id), policy))

    def wait(
        self,
        sweep_id: str | Sweep,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Sweep:
        """Blocks until the sweep ended and returns it.

        Raises:
            TimeoutError: it was still running after ``timeout`` seconds.
        """
        policy = retry or self.client.retry
        return self._transport.run(sweep_ops.wait(id_of(sweep_id), timeout, policy))
