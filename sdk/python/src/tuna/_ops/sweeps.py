"""SweepService plans: create (from a dict, message or TOML/JSON file), get, list, trials,
cancel, the reconnecting watch and wait."""

from __future__ import annotations

import logging
import time
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
from tuna.errors import TunaError, Unavailable
from tuna.retry import Backoff, RetryPolicy
from tuna.spec_file import SweepSpecLike, load_spec, with_template_files
from tuna.types import Sweep, SweepSnapshot, Trial
from tuna.v1 import sweep_pb2

_log = logging.getLogger("tuna")

__all__ = ["create", "get", "list_sweeps", "trials", "cancel", "watch", "wait"]


def create(
    spec: SweepSpecLike,
    *,
    model: str | None,
    training_file: str | None,
    validation_file: str | None,
    request_id: str | None,
    timeout: Timeout,
) -> Plan[Sweep]:
    loaded = yield Blocking(partial(load_spec, spec, sweep_pb2.SweepSpec))
    message = with_template_files(
        loaded,
        model=model,
        training_file=training_file,
        validation_file=validation_file,
    )
    request = sweep_pb2.CreateSweepRequest(spec=message, request_id=request_id or "")
    response = yield Unary(lambda s: s.sweeps.CreateSweep, request, timeout)
    return Sweep.from_proto(response)


def get(sweep_id: str, timeout: Timeout) -> Plan[Sweep]:
    request = sweep_pb2.GetSweepRequest(id=sweep_id)
    response = yield Unary(lambda s: s.sweeps.GetSweep, request, timeout)
    return Sweep.from_proto(response)


def list_sweeps(page_size: int, timeout: Timeout) -> Stream[Sweep]:
    return paged(
        lambda s: s.sweeps.ListSweeps,
        lambda token: sweep_pb2.ListSweepsRequest(page_size=page_size, page_token=token),
        lambda response: response.sweeps,
        Sweep.from_proto,
        timeout,
    )


def trials(sweep_id: str, timeout: Timeout) -> Plan[list[Trial]]:
    request = sweep_pb2.ListTrialsRequest(sweep_id=sweep_id)
    response = yield Unary(lambda s: s.sweeps.ListTrials, request, timeout)
    return [Trial.from_proto(t) for t in response.trials]


def cancel(sweep_id: str, timeout: Timeout) -> Plan[Sweep]:
    request = sweep_pb2.CancelSweepRequest(id=sweep_id)
    response = yield Unary(lambda s: s.sweeps.CancelSweep, request, timeout)
    return Sweep.from_proto(response)


def watch(
    sweep_id: str, policy: RetryPolicy, deadline: float | None = None
) -> Stream[SweepSnapshot]:
    """The sweep and its trials now, then after every change, until the sweep ended. Each
    snapshot is complete, so a stream lost to a retryable error is simply reopened."""
    backoff = Backoff(policy, deadline)
    while True:
        last: SweepSnapshot | None = None
        try:
            request = sweep_pb2.WatchSweepRequest(id=sweep_id)
            stream = yield OpenStream(lambda s: s.sweeps.WatchSweep, request, backoff.remaining())
            while (message := (yield NextMessage(stream))) is not END:
                backoff.progressed()
                last = SweepSnapshot.from_proto(message)
                yield Emit(last)
            if last is not None and last.sweep.is_terminal:
                return
            left = backoff.remaining()
            current = yield from get(sweep_id, DEFAULT if left is None else left)
            if current.is_terminal:
                return
            error: TunaError = Unavailable(
                f"the watch of {sweep_id} ended before the sweep finished"
            )
        except TunaError as e:
            error = e
        delay = backoff.next_delay(error)
        _log.info("watch of %s interrupted (%s); reconnecting in %.2f s", sweep_id, error, delay)
        yield Sleep(delay)


def wait(sweep_id: str, timeout: float | None, policy: RetryPolicy) -> Plan[Sweep]:
    """The sweep once it ended.

    Raises:
        TimeoutError: it was still running after ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        yield from drain(watch(sweep_id, policy, deadline))
        left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        sweep = yield from get(sweep_id, DEFAULT if left is None else left)
    except TimeoutError as e:
        raise TimeoutError(f"sweep {sweep_id} did not finish within {timeout} s") from e
    return sweep
