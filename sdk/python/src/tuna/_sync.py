"""The blocking transport: performs the effects of :mod:`tuna._effects` on a ``grpc.Channel``."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import Any, TypeVar

import grpc

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
from tuna._transfer import UploadBody, read_chunks
from tuna.errors import from_rpc_error
from tuna.v1 import file_pb2

__all__ = ["SyncTransport", "open_channel"]

T = TypeVar("T")
R = TypeVar("R")


def open_channel(connection: Connection) -> grpc.Channel:
    """A blocking channel to the connection's target (TLS or plaintext)."""
    options = connection.channel_options()
    if connection.tls is None:
        return grpc.insecure_channel(connection.target, options=options)
    return grpc.secure_channel(connection.target, connection.tls.credentials(), options=options)


class SyncTransport:
    """Runs plans with blocking calls."""

    def __init__(self, channel: grpc.Channel, connection: Connection) -> None:
        self.stubs = Stubs.on(channel)
        self._metadata = connection.metadata
        self._timeout = connection.timeout

    def run(self, plan: Plan[T]) -> T:
        """Runs a plan to its result."""
        driver = self._drive(plan)
        try:
            next(driver)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        driver.close()
        raise TypeError("a streaming plan must be run with iterate()")

    def iterate(self, stream: Stream[T]) -> Iterator[T]:
        """Runs a streaming plan, yielding what it emits. Abandoning the iterator cancels the
        plan's open calls."""
        yield from self._drive(stream)

    def _drive(self, plan: Generator[Any, Any, R]) -> Generator[Any, None, R]:
        open_streams: list[Any] = []
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    item = plan.throw(error) if error is not None else plan.send(value)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                value, error = None, None
                if isinstance(item, Emit):
                    yield item.value
                    continue
                try:
                    value = self._perform(item, open_streams)
                except BaseException as e:  # thrown into the plan, which may clean up
                    error = e
        finally:
            for call in open_streams:
                call.cancel()
            plan.close()

    def _timeout_of(self, timeout: Timeout) -> float | None:
        return self._timeout if timeout is DEFAULT else timeout

    def _perform(self, effect: Effect, open_streams: list[Any]) -> Any:
        if isinstance(effect, Unary):
            method = effect.rpc(self.stubs)
            try:
                return method(
                    effect.request,
                    timeout=self._timeout_of(effect.timeout),
                    metadata=self._metadata,
                )
            except grpc.RpcError as e:
                raise from_rpc_error(e) from e
        if isinstance(effect, NextMessage):
            try:
                return next(effect.stream)
            except StopIteration:
                open_streams.remove(effect.stream)
                return END
            except grpc.RpcError as e:
                open_streams.remove(effect.stream)
                raise from_rpc_error(e) from e
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
            return effect.fn()
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
            return None
        if isinstance(effect, Upload):
            return self._upload(effect)
        raise TypeError(f"unknown effect {effect!r}")

    def _upload(self, effect: Upload) -> file_pb2.File:
        body = UploadBody(effect.path, effect.header, effect.progress)

        def requests() -> Iterator[file_pb2.UploadFileRequest]:
            try:
                yield body.first()
                with open(body.path, "rb") as f:
                    for data in read_chunks(f):
                        yield body.chunk(data)
                        body.sent_chunk(len(data))
                body.done()
            except Exception as e:
                body.error = e
                raise

        try:
            return self.stubs.files.Upload(requests(), metadata=self._metadata)  # type: ignore[no-any-return]
        except grpc.RpcError as e:
            if body.error is not None:
                raise body.error from None
            raise from_rpc_error(e) from e
