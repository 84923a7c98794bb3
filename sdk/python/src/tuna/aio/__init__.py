"""The asyncio client: ``tuna.aio.AsyncClient``, with the same surface as
:class:`tuna.Client` (coroutines and async iterators instead of blocking calls)."""

from tuna.aio.client import AsyncClient
from tuna.aio.resources import AsyncArtifacts, AsyncFiles, AsyncJobs, AsyncModels, AsyncSweeps
from tuna.job import AsyncJob

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "AsyncFiles",
    "AsyncModels",
    "AsyncJobs",
    "AsyncArtifacts",
    "AsyncSweeps",
]
