"""Plan building blocks shared by the services: paging and verified downloads."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from tuna._effects import (
    END,
    Blocking,
    Effect,
    Emit,
    NextMessage,
    OpenStream,
    Plan,
    RpcSelector,
    Stream,
    Timeout,
    Unary,
)
from tuna._transfer import VerifiedDownload

__all__ = ["paged", "fetch_verified", "drain"]

T = TypeVar("T")


def paged(
    rpc: RpcSelector,
    request: Callable[[str], Message],
    items: Callable[[Any], Iterable[Any]],
    convert: Callable[[Any], T],
    timeout: Timeout,
) -> Stream[T]:
    """Every item of a paged listing, page after page until ``next_page_token`` is empty.

    ``request(token)`` builds the request of one page, ``items(response)`` picks its items.
    """
    token = ""
    while True:
        response = yield Unary(rpc, request(token), timeout)
        for item in items(response):
            yield Emit(convert(item))
        token = response.next_page_token
        if not token:
            return


def fetch_verified(
    rpc: RpcSelector,
    request: Message,
    directory: Path,
    meta_field: str,
    expected_sha256: str | None = None,
) -> Plan[tuple[Any, Path]]:
    """Streams a download into a temporary file in ``directory`` and verifies it.

    Returns:
        The stream's metadata message and the verified temporary file, which the caller
        moves or removes.
    """
    sink = VerifiedDownload(directory, meta_field, expected_sha256)
    try:
        stream = yield OpenStream(rpc, request)
        while (message := (yield NextMessage(stream))) is not END:
            yield Blocking(partial(sink.feed, message))
        result: tuple[Any, Path] = sink.finish()
    except BaseException:
        sink.abort()
        raise
    return result


def drain(stream: Stream[Any]) -> Plan[None]:
    """Runs a streaming plan for its effects only, dropping what it emits (for example a watch
    that is followed only to learn when it ends). Results and errors of the effects are
    passed through to ``stream``."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            item = stream.throw(error) if error is not None else stream.send(value)
        except StopIteration:
            return
        value, error = None, None
        if isinstance(item, Emit):
            continue
        effect: Effect = item
        try:
            value = yield effect
        except GeneratorExit:
            stream.close()
            raise
        except BaseException as e:  # handed to the stream, which decides
            error = e
