"""The asyncio client."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from tuna._channel import DEFAULT_TIMEOUT, TLS, resolve
from tuna.aio._transport import AsyncTransport, open_channel
from tuna.aio.resources import AsyncArtifacts, AsyncFiles, AsyncJobs, AsyncModels, AsyncSweeps
from tuna.errors import Unavailable
from tuna.retry import RetryPolicy

__all__ = ["AsyncClient"]


class AsyncClient:
    """The asyncio twin of :class:`tuna.Client`: the same arguments and services, with
    coroutine methods and async iterators (``async for update in client.jobs.watch(id)``).

    >>> async with tuna.aio.AsyncClient("127.0.0.1:50051") as client:   # doctest: +SKIP
    ...     job = await client.jobs.get("job_0123...")

    Create it inside the event loop that uses it.
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
        self._transport = AsyncTransport(self._channel, self._connection)
        self.retry = retry or RetryPolicy()
        self.files = AsyncFiles(self)
        self.models = AsyncModels(self)
        self.jobs = AsyncJobs(self)
        self.artifacts = AsyncArtifacts(self)
        self.sweeps = AsyncSweeps(self)

    @property
    def target(self) -> str:
        """The ``host:port`` this client talks to."""
        return self._connection.target

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Waits until the channel is connected.

        Raises:
            Unavailable: the server could not be reached within ``timeout`` seconds.
        """
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise Unavailable(f"could not connect to {self.target} within {timeout} s") from None

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"tuna.aio.AsyncClient({self.target!r})"
