"""The reconnecting watch, driven by a scripted transport (no server): resumption after the
last seq, duplicates dropped, which errors are retried and for how long."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

import tuna
from tuna._effects import END, Emit, NextMessage, OpenStream, Sleep, Stream, Unary
from tuna._ops import jobs as job_ops
from tuna.v1 import job_pb2

FAST = tuna.RetryPolicy(initial_backoff=0.001, max_backoff=0.002, max_elapsed=5.0)


def metric(seq: int) -> job_pb2.JobUpdate:
    return job_pb2.JobUpdate(seq=seq, metrics=job_pb2.MetricPoint(seq=seq, step=seq))


def event(seq: int, state: int) -> job_pb2.JobUpdate:
    return job_pb2.JobUpdate(seq=seq, event=job_pb2.JobEvent(seq=seq, kind="x", state=state))


class Script:
    """Plays one scripted stream per OpenStream: each is a list of messages, optionally
    ending in an exception instead of the end of the stream."""

    def __init__(self, streams: list[list[Any]], get_job: job_pb2.Job | None = None):
        self.streams = streams
        self.get_job = get_job
        self.opened: list[int] = []  # after_seq of each (re)connection
        self.sleeps: list[float] = []
        self.sleep: Callable[[float], None] = lambda s: None

    def handle(self, effect: Any) -> Any:
        if isinstance(effect, OpenStream):
            self.opened.append(effect.request.after_seq)
            if not self.streams:
                raise tuna.Unavailable("no more scripted streams")
            return iter(self.streams.pop(0))
        if isinstance(effect, NextMessage):
            item = next(effect.stream, END)
            if isinstance(item, BaseException):
                raise item
            return item
        if isinstance(effect, Sleep):
            self.sleeps.append(effect.seconds)
            self.sleep(effect.seconds)
            return None
        if isinstance(effect, Unary):
            assert self.get_job is not None, f"unexpected call {effect}"
            return self.get_job
        raise AssertionError(f"unexpected effect {effect}")


def run(stream: Stream[Any], script: Script) -> list[Any]:
    emitted: list[Any] = []
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            item = stream.throw(error) if error is not None else stream.send(value)
        except StopIteration:
            return emitted
        value, error = None, None
        if isinstance(item, Emit):
            emitted.append(item.value)
            continue
        try:
            value = script.handle(item)
        except BaseException as e:
            error = e


SUCCEEDED = tuna.JobState.SUCCEEDED.value


def test_reconnects_after_the_last_seq_and_drops_duplicates() -> None:
    script = Script(
        [
            [metric(1), metric(2), metric(3), tuna.Unavailable("connection reset")],
            # The server replays 2 and 3 (it should not, but a client must not repeat them).
            [metric(2), metric(3), metric(4), tuna.Unavailable("again")],
            [metric(5), event(6, SUCCEEDED)],
        ]
    )
    updates = run(job_ops.watch("job_1", 0, FAST), script)
    assert [u.seq for u in updates] == [1, 2, 3, 4, 5, 6]
    assert script.opened == [0, 3, 4]
    assert len(script.sleeps) == 2
    assert isinstance(updates[-1], tuna.JobEvent) and updates[-1].state is tuna.JobState.SUCCEEDED


def test_resumes_from_the_given_after_seq() -> None:
    script = Script([[metric(8), event(9, SUCCEEDED)]])
    updates = run(job_ops.watch("job_1", 7, FAST), script)
    assert [u.seq for u in updates] == [8, 9]
    assert script.opened == [7]


def test_an_early_clean_end_asks_the_job_and_resumes_if_it_is_not_over() -> None:
    running = job_pb2.Job(id="job_1", state=tuna.JobState.RUNNING.value, last_seq=3)
    script = Script([[metric(1), metric(2)], [metric(3), event(4, SUCCEEDED)]], get_job=running)
    updates = run(job_ops.watch("job_1", 0, FAST), script)
    assert [u.seq for u in updates] == [1, 2, 3, 4]
    assert script.opened == [0, 2]


def test_a_clean_end_of_a_finished_job_ends_the_watch() -> None:
    done = job_pb2.Job(id="job_1", state=SUCCEEDED, last_seq=5)
    script = Script([[]], get_job=done)
    assert run(job_ops.watch("job_1", 5, FAST), script) == []
    assert script.opened == [5]


def test_non_retryable_errors_are_raised_at_once() -> None:
    script = Script([[metric(1), tuna.NotFound("no such job")]])
    with pytest.raises(tuna.NotFound):
        run(job_ops.watch("job_1", 0, FAST), script)
    assert script.sleeps == []


def test_retrying_stops_after_max_elapsed() -> None:
    policy = tuna.RetryPolicy(initial_backoff=0.01, max_backoff=0.01, max_elapsed=0.2)
    script = Script([[tuna.Unavailable("down")] for _ in range(1000)])
    script.sleep = time.sleep
    started = time.monotonic()
    with pytest.raises(tuna.Unavailable):
        run(job_ops.watch("job_1", 0, policy), script)
    assert 0.2 <= time.monotonic() - started < 2
    assert 5 <= len(script.opened) < 1000


def test_a_message_ends_the_failure_streak() -> None:
    # Each outage lasts less than max_elapsed, so the watch survives many of them.
    policy = tuna.RetryPolicy(initial_backoff=0.02, max_backoff=0.02, max_elapsed=0.05, jitter=0)
    streams: list[list[Any]] = [[metric(i), tuna.Unavailable("blip")] for i in range(1, 6)]
    streams.append([event(6, SUCCEEDED)])
    script = Script(streams)
    script.sleep = time.sleep
    updates = run(job_ops.watch("job_1", 0, policy), script)
    assert [u.seq for u in updates] == [1, 2, 3, 4, 5, 6]


def test_retry_policy_backoff_grows_and_is_capped() -> None:
    policy = tuna.RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.0)
    assert [policy.delay(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    jittered = tuna.RetryPolicy(initial_backoff=1.0, max_backoff=1.0, jitter=0.5)
    assert jittered.delay(0, rng=lambda: 1.0) == pytest.approx(0.5)
    assert jittered.delay(0, rng=lambda: 0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        tuna.RetryPolicy(initial_backoff=2.0, max_backoff=1.0)
    assert grpc.StatusCode.UNAVAILABLE in tuna.RetryPolicy().retry_on
