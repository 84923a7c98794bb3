"""The SDK's operations, written once for both clients.

Every operation (``jobs.create``, ``models.register``, a reconnecting watch, ...) is a
*plan*: a generator that yields the effects it needs (a unary call, an upload, the next
message of a stream, a blocking file operation, a sleep) and receives their results. The
sync transport (:mod:`tuna._sync`) performs the effects with blocking calls, the asyncio
transport (:mod:`tuna.aio._transport`) awaits them; the plans themselves (:mod:`tuna._ops`)
never do I/O, so the two clients cannot drift apart.

A failed effect is thrown into the plan at its ``yield`` as a :class:`tuna.TunaError`, so
plans handle errors (and clean up) with ordinary ``try``/``except``/``finally``. A plan that
produces many values (a watch, a paged listing) yields :class:`Emit` for each; the transport
hands those to the caller's ``for`` (or ``async for``) loop.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from tuna._transfer import ProgressFn
from tuna.v1 import (
    artifact_pb2_grpc,
    file_pb2,
    file_pb2_grpc,
    job_pb2_grpc,
    model_pb2_grpc,
    sweep_pb2_grpc,
)

__all__ = [
    "Stubs",
    "Default",
    "DEFAULT",
    "Timeout",
    "Unary",
    "Upload",
    "OpenStream",
    "NextMessage",
    "CloseStream",
    "Blocking",
    "Sleep",
    "Emit",
    "END",
    "Effect",
    "Plan",
    "Stream",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Stubs:
    """The generated service stubs on one channel (sync or asyncio)."""

    files: file_pb2_grpc.FileServiceStub
    models: model_pb2_grpc.ModelServiceStub
    jobs: job_pb2_grpc.JobServiceStub
    artifacts: artifact_pb2_grpc.ArtifactServiceStub
    sweeps: sweep_pb2_grpc.SweepServiceStub

    @classmethod
    def on(cls, channel: Any) -> Stubs:
        """Stubs on a ``grpc.Channel`` or ``grpc.aio.Channel``."""
        return cls(
            files=file_pb2_grpc.FileServiceStub(channel),
            models=model_pb2_grpc.ModelServiceStub(channel),
            jobs=job_pb2_grpc.JobServiceStub(channel),
            artifacts=artifact_pb2_grpc.ArtifactServiceStub(channel),
            sweeps=sweep_pb2_grpc.SweepServiceStub(channel),
        )


class Default(enum.Enum):
    """The type of :data:`DEFAULT`."""

    DEFAULT = "DEFAULT"


#: "The client's default timeout" (``None`` means no deadline).
DEFAULT = Default.DEFAULT
#: A call's timeout argument: seconds, ``None`` (no deadline) or the client's default.
Timeout = float | None | Default

#: Picks one RPC of the stubs, e.g. ``lambda s: s.jobs.GetJob``.
RpcSelector = Callable[[Stubs], Any]


@dataclass(frozen=True)
class Unary:
    """A unary call; the result is the response message."""

    rpc: RpcSelector
    request: Message
    timeout: Timeout = DEFAULT


@dataclass(frozen=True)
class Upload:
    """``FileService.Upload``: the header, then ``path``'s content in chunks; the result is
    the ``tuna.v1.File``. ``progress`` is called after each chunk."""

    path: Path
    header: file_pb2.UploadFileHeader
    progress: ProgressFn | None = None


@dataclass(frozen=True)
class OpenStream:
    """Starts a server-streaming call; the result is a handle for :class:`NextMessage`."""

    rpc: RpcSelector
    request: Message
    timeout: float | None = None


@dataclass(frozen=True)
class NextMessage:
    """The next message of an open stream, or :data:`END` once the server ended it."""

    stream: Any


@dataclass(frozen=True)
class CloseStream:
    """Cancels a stream (a no-op for one that ended). Streams still open when a plan ends or
    is abandoned are cancelled by the transport."""

    stream: Any


@dataclass(frozen=True)
class Blocking:
    """A blocking local operation (hashing, file system work); the result is its return value.
    The asyncio transport runs it in a worker thread."""

    fn: Callable[[], Any]


@dataclass(frozen=True)
class Sleep:
    """Waits ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class Emit(Generic[T]):
    """A value for the caller of a streaming plan (a watch update, a listed item)."""

    value: T


class _End(enum.Enum):
    END = "END"


#: The result of :class:`NextMessage` at the end of a stream.
END = _End.END

Effect = Unary | Upload | OpenStream | NextMessage | CloseStream | Blocking | Sleep
#: An operation with one result of type ``T``.
Plan = Generator[Effect, Any, T]
#: An operation producing values of type ``T`` (run with the transport's ``iterate``).
Stream = Generator[Effect | Emit[T], Any, None]
