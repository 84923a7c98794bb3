"""The asyncio transport: performs the effects of :mod:`tuna._effects` on a
``grpc.aio.Channel``; blocking local work runs in a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc
import grpc.aio

from tuna._channel import Connection
from tuna._effects import (
    DEFAULT,
    END,
    Blocking,
    CloseStream,
    Effect,
    Emit,
    NextMessage,
    OpenStream,
    Plan,
    Sleep,
    Stream,
    Stubs,
    Timeout,
    Unary,
    Upload,
)
from tuna._transfer import CHUNK_SIZE, UploadBody
from tuna.errors import from_rpc_error
from tuna.v1 import file_pb2

__all__ = ["AsyncTransport", "open_channel"]

T = TypeVar("T")


def open_channel(connection: Connection) -> grpc.aio.Channel:
    """An asyncio channel to the connection's target (TLS or plaintext)."""
    options = connection.channel_options()
    if connection.tls is None:
        return grpc.aio.insecure_channel(connection.target, options=options)
    return grpc.aio.secure_channel(connection.target, connection.tls.credentials(), options=options)


class AsyncTransport:
    """Runs plans with awaited calls."""

    def __init__(self, channel: grpc.aio.Channel, connection: Connection) -> None:
        self.stubs = Stubs.on(channel)
        self._metadata = connection.metadata
        self._timeout = connection.timeout

    async def run(self, plan: Plan[T]) -> T:
        """Runs a plan to its result."""
        open_streams: list[Any] = []
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    item = plan.throw(error) if error is not None else plan.send(value)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                if isinstance(item, Emit):
                    raise TypeError("a streaming plan must be run with iterate()")
                value, error = None, None
                try:
                    value = await self._perform(item, open_streams)
                except BaseException as e:  # thrown into the plan, which may clean up
                    error = e
        finally:
            for call in open_streams:
                call.cancel()
            plan.close()

    async def iterate(self, stream: Stream[T]) -> AsyncIterator[T]:
        """Runs a streaming plan, yielding what it emits. Closing the iterator (``aclose()``,
        or leaving an ``async for`` early and letting it be collected) cancels the plan's
        open calls."""
        open_streams: list[Any] = []
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    item = stream.throw(error) if error is not None else stream.send(value)
                except StopIteration:
                    return
                value, error = None, None
                if isinstance(item, Emit):
                    yield item.value
                    continue
                try:
                    value = await self._perform(item, open_streams)
                except BaseException as e:
                    error = e
        finally:
            for call in open_streams:
                call.cancel()
            stream.close()

    def _timeout_of(self, timeout: Timeout) -> float | None:
        return self._timeout if timeout is DEFAULT else timeout

    async def _perform(self, effect: Effect, open_streams: list[Any]) -> Any:
        if isinstance(effect, Unary):
            method = effect.rpc(self.stubs)
            try:
                return await method(
                    effect.request,
                    timeout=self._timeout_of(effect.timeout),
                    metadata=self._metadata,
                )
            except grpc.RpcError as e:
                raise from_rpc_error(e) from e
        if isinstance(effect, NextMessage):
            try:
                message = await effect.stream.read()
            except grpc.RpcError as e:
                open_streams.remove(effect.stream)
                raise from_rpc_error(e) from e
            if message is grpc.aio.EOF:
                open_streams.remove(effect.stream)
                return END
            return message
        if isinstance(effect, OpenStream):
            call = effect.rpc(self.stubs)(
                effect.request, timeout=effect.timeout, metadata=self._metadata
            )
            open_streams.append(call)
            return call
        if isinstance(effect, CloseStream):
            effect.stream.cancel()
            if effect.stream in open_streams:
                open_streams.remove(effect.stream)
            return None
        if isinstance(effect, Blocking):
            return await asyncio.to_thread(effect.fn)
        if isinstance(effect, Sleep):
            await asyncio.sleep(effect.seconds)
            return None
        if isinstance(effect, Upload):
            return await self._upload(effect)
        raise TypeError(f"unknown effect {effect!r}")

    async def _upload(self, effect: Upload) -> file_pb2.File:
        body = UploadBody(effect.path, effect.header, effect.progress)

        async def requests() -> AsyncIterator[file_pb2.UploadFileRequest]:
            try:
                yield body.first()
                f = await asyncio.to_thread(open, body.path, "rb")
                try:
                    while data := await asyncio.to_thread(f.read, CHUNK_SIZE):
                        yield body.chunk(data)
                        body.sent_chunk(len(data))
                finally:
                    f.close()
                body.done()
            except Exception as e:
                body.error = e
                raise

        try:
            return await self.stubs.files.Upload(requests(), metadata=self._metadata)  # type: ignore[no-any-return]
        except (grpc.RpcError, asyncio.CancelledError) as e:
            # grpc.aio cancels the call when the request iterator raises.
            if body.error is not None:
                raise body.error from None
            if isinstance(e, grpc.RpcError):
                raise from_rpc_error(e) from e
            raise
