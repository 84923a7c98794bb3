"""The blocking client."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from tuna._channel import DEFAULT_TIMEOUT, TLS, resolve
from tuna._sync import SyncTransport, open_channel
from tuna.errors import Unavailable
from tuna.resources import Artifacts, Files, Jobs, Models, Sweeps
from tuna.retry import RetryPolicy

__all__ = ["Client"]


class Client:
    """A connection to a Tuna control plane.

    >>> with tuna.Client("127.0.0.1:50051") as client:          # doctest: +SKIP
    ...     job = client.jobs.get("job_0123...")

    Args:
        target: ``host:port`` or a URL (``http://host:port``, ``https://host:port``);
            default ``$TUNA_SERVER``, else ``127.0.0.1:50051``.
        api_key: sent as ``authorization: Bearer <key>``; default ``$TUNA_API_KEY``.
        tls: ``True`` (system roots), a :class:`tuna.TLS`, or ``False``; ``None`` means TLS
            exactly for ``https://`` targets.
        timeout: deadline of each unary call in seconds (``None``: none). Watches, uploads
            and downloads are not bounded by it.
        retry: how watches reconnect (see :class:`tuna.RetryPolicy`).
        options: extra gRPC channel options, as ``(name, value)`` pairs.

    Attributes:
        files: datasets and model files (:class:`tuna.resources.Files`).
        models: the model registry (:class:`tuna.resources.Models`).
        jobs: fine-tuning jobs (:class:`tuna.resources.Jobs`).
        artifacts: adapters and checkpoints (:class:`tuna.resources.Artifacts`).
        sweeps: hyperparameter sweeps (:class:`tuna.resources.Sweeps`).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        tls: bool | TLS | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._connection = resolve(target, api_key, tls, timeout, options)
        self._channel = open_channel(self._connection)
        self._transport = SyncTransport(self._channel, self._connection)
        self.retry = retry or RetryPolicy()
        self.files = Files(self)
        self.models = Models(self)
        self.jobs = Jobs(self)
        self.artifacts = Artifacts(self)
        self.sweeps = Sweeps(self)

    @property
    def target(self) -> str:
        """The ``host:port`` this client talks to."""
        return self._connection.target

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel is connected.

        Raises:
            Unavailable: the server could not be reached within ``timeout`` seconds.
        """
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unavailable(f"could not connect to {self.target} within {timeout} s") from None

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"tuna.Client({self.target!r})"
