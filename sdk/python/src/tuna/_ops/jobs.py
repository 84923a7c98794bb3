"""JobService plans: create, get, list, cancel/pause/resume, events, checkpoints, and the
reconnecting watch and wait."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from functools import partial

from tuna._effects import (
    DEFAULT,
    END,
    Blocking,
    Emit,
    NextMessage,
    OpenStream,
    Plan,
    Sleep,
    Stream,
    Timeout,
    Unary,
)
from tuna._ops.common import drain, paged
from tuna._watch import JobCursor
from tuna.enums import JobState
from tuna.errors import TunaError, Unavailable
from tuna.retry import Backoff, RetryPolicy
from tuna.spec_file import JobSpecLike, load_spec
from tuna.types import Artifact, JobEvent, JobUpdate
from tuna.v1 import job_pb2

_log = logging.getLogger("tuna")

__all__ = [
    "create",
    "create_from_spec",
    "get",
    "list_jobs",
    "cancel",
    "pause",
    "resume",
    "delete",
    "events",
    "checkpoints",
    "watch",
    "wait",
]


def create(spec: job_pb2.JobSpec, request_id: str | None, timeout: Timeout) -> Plan[job_pb2.Job]:
    request = job_pb2.CreateJobRequest(spec=spec, request_id=request_id or "")
    job: job_pb2.Job = yield Unary(lambda s: s.jobs.CreateJob, request, timeout)
    return job


def create_from_spec(
    spec: JobSpecLike, request_id: str | None, timeout: Timeout
) -> Plan[job_pb2.Job]:
    message = yield Blocking(partial(load_spec, spec, job_pb2.JobSpec))
    job: job_pb2.Job = yield from create(message, request_id, timeout)
    return job


def get(job_id: str, timeout: Timeout) -> Plan[job_pb2.Job]:
    job: job_pb2.Job = yield Unary(
        lambda s: s.jobs.GetJob, job_pb2.GetJobRequest(id=job_id), timeout
    )
    return job


def list_jobs(
    states: Iterable[JobState | str | int],
    labels: Mapping[str, str],
    sweep_id: str | None,
    page_size: int,
    timeout: Timeout,
) -> Stream[job_pb2.Job]:
    state_values = [JobState.coerce(s).value for s in states]
    label_filter = dict(labels)
    return paged(
        lambda s: s.jobs.ListJobs,
        lambda token: job_pb2.ListJobsRequest(
            page_size=page_size,
            page_token=token,
            states=state_values,
            labels=label_filter,
            sweep_id=sweep_id or "",
        ),
        lambda response: response.jobs,
        lambda job: job,
        timeout,
    )


def cancel(job_id: str, timeout: Timeout) -> Plan[job_pb2.Job]:
    request = job_pb2.CancelJobRequest(id=job_id)
    job: job_pb2.Job = yield Unary(lambda s: s.jobs.CancelJob, request, timeout)
    return job


def pause(job_id: str, timeout: Timeout) -> Plan[job_pb2.Job]:
    request = job_pb2.PauseJobRequest(id=job_id)
    job: job_pb2.Job = yield Unary(lambda s: s.jobs.PauseJob, request, timeout)
    return job


def resume(job_id: str, timeout: Timeout) -> Plan[job_pb2.Job]:
    request = job_pb2.ResumeJobRequest(id=job_id)
    job: job_pb2.Job = yield Unary(lambda s: s.jobs.ResumeJob, request, timeout)
    return job


def delete(job_id: str, timeout: Timeout) -> Plan[None]:
    request = job_pb2.DeleteJobRequest(id=job_id)
    yield Unary(lambda s: s.jobs.DeleteJob, request, timeout)
    return None


def events(job_id: str, page_size: int, timeout: Timeout) -> Stream[JobEvent]:
    return paged(
        lambda s: s.jobs.ListJobEvents,
        lambda token: job_pb2.ListJobEventsRequest(
            job_id=job_id, page_size=page_size, page_token=token
        ),
        lambda response: response.events,
        JobEvent.from_proto,
        timeout,
    )


def checkpoints(job_id: str, timeout: Timeout) -> Plan[list[Artifact]]:
    request = job_pb2.ListCheckpointsRequest(job_id=job_id)
    response = yield Unary(lambda s: s.jobs.ListCheckpoints, request, timeout)
    return [Artifact.from_proto(a) for a in response.checkpoints]


def watch(
    job_id: str, after_seq: int, policy: RetryPolicy, deadline: float | None = None
) -> Stream[JobUpdate]:
    """Every update with ``seq > after_seq``, live, until the job ended and its last update
    was delivered. A stream lost to a retryable error is reopened after the last ``seq``
    delivered (see :mod:`tuna.retry`); ``deadline`` (monotonic seconds) bounds the whole
    watch with :class:`TimeoutError`."""
    cursor = JobCursor(job_id, after_seq)
    backoff = Backoff(policy, deadline)
    while True:
        try:
            stream = yield OpenStream(
                lambda s: s.jobs.WatchJob, cursor.request(), backoff.remaining()
            )
            while (message := (yield NextMessage(stream))) is not END:
                backoff.progressed()
                update = cursor.accept(message)
                if update is not None:
                    yield Emit(update)
            if cursor.terminal:
                return
            # The stream ended without a terminal event in it: the job ended before this
            # (re)connection, or the server broke off early. Only the job can tell.
            left = backoff.remaining()
            job = yield Unary(
                lambda s: s.jobs.GetJob,
                job_pb2.GetJobRequest(id=job_id),
                DEFAULT if left is None else left,
            )
            if cursor.finished(job):
                return
            error: TunaError = Unavailable(
                f"the watch of {job_id} ended at seq {cursor.after_seq} before the job finished"
            )
        except TunaError as e:
            error = e
        delay = backoff.next_delay(error)
        _log.info(
            "watch of %s interrupted (%s); reconnecting after seq %d in %.2f s",
            job_id,
            error,
            cursor.after_seq,
            delay,
        )
        yield Sleep(delay)


def wait(job_id: str, timeout: float | None, policy: RetryPolicy) -> Plan[job_pb2.Job]:
    """The job once it is terminal (watching from its current ``last_seq``, so nothing is
    replayed).

    Raises:
        TimeoutError: it was not terminal after ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        job = yield from get(job_id, DEFAULT if timeout is None else timeout)
        if not JobState(job.state).is_terminal:
            yield from drain(watch(job_id, job.last_seq, policy, deadline))
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            job = yield from get(job_id, DEFAULT if left is None else left)
    except TimeoutError as e:
        raise TimeoutError(f"job {job_id} did not finish within {timeout} s") from e
    return job
