"""How watches reconnect: :class:`RetryPolicy` (public) and the per-watch :class:`Backoff`.

A watch (``jobs.watch``, ``jobs.wait``, ``sweeps.watch``, ``sweeps.wait``) that loses its stream
to a retryable status (``UNAVAILABLE`` by default: the server restarted, the connection
dropped) reopens it after an exponentially growing, jittered delay. A streak of failures
may last at most ``max_elapsed`` seconds; any message received ends the streak.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from tuna.errors import TunaError

__all__ = ["RetryPolicy", "Backoff"]


@dataclass(frozen=True)
class RetryPolicy:
    """When and how fast a watch reconnects.

    Args:
        initial_backoff: delay before the first reconnect, in seconds.
        max_backoff: cap of the delay.
        multiplier: growth of the delay per consecutive failure.
        max_elapsed: longest streak of failures, in seconds, before the last error is raised.
        retry_on: the status codes worth reconnecting on.
        jitter: each delay is drawn uniformly from ``[delay * (1 - jitter), delay]``.
    """

    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    max_elapsed: float = 120.0
    retry_on: frozenset[grpc.StatusCode] = field(
        default_factory=lambda: frozenset({grpc.StatusCode.UNAVAILABLE})
    )
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if self.max_elapsed < 0:
            raise ValueError("max_elapsed must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be in [0, 1]")

    def delay(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        """The delay after ``failures`` earlier consecutive failures (0 for the first)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** min(failures, 64))
        return base * (1 - self.jitter * rng())


class Backoff:
    """One watch's failure streak under a :class:`RetryPolicy`, with an optional overall
    deadline (``time.monotonic()`` seconds)."""

    def __init__(
        self,
        policy: RetryPolicy,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.deadline = deadline
        self._clock = clock
        self._failures = 0
        self._since: float | None = None

    def remaining(self) -> float | None:
        """Seconds left before the deadline (``None`` without one).

        Raises:
            TimeoutError: once the deadline passed.
        """
        if self.deadline is None:
            return None
        left = self.deadline - self._clock()
        if left <= 0:
            raise TimeoutError("the deadline passed")
        return left

    def progressed(self) -> None:
        """A message arrived: the failure streak is over."""
        self._failures = 0
        self._since = None

    def next_delay(self, error: TunaError) -> float:
        """The delay before reconnecting after ``error``.

        Raises:
            TimeoutError: when the deadline passed.
            TunaError: ``error`` itself, when its code is not retryable or the streak ran out
                of time.
        """
        self.remaining()
        if error.code not in self.policy.retry_on:
            raise error
        now = self._clock()
        if self._since is None:
            self._since = now
        if now - self._since >= self.policy.max_elapsed:
            raise error
        delay = self.policy.delay(self._failures)
        self._failures += 1
        left = self.remaining()
        return delay if left is None else min(delay, left)
