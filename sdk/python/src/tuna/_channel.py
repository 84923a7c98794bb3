"""Where and how to connect: target, TLS, API key and channel options, resolved once and
shared by :class:`tuna.Client` and :class:`tuna.aio.AsyncClient`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["TLS", "Connection", "DEFAULT_TARGET", "DEFAULT_TIMEOUT", "resolve"]

#: The server a client talks to without ``target`` or ``TUNA_SERVER``.
DEFAULT_TARGET = "127.0.0.1:50051"
#: Default deadline of unary calls, in seconds (streams have none unless given).
DEFAULT_TIMEOUT = 30.0

_USER_AGENT = "tuna-sdk-python"
# Reconnect quickly after a server restart: gRPC's default backoff grows to two minutes.
_DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.primary_user_agent", _USER_AGENT),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
)


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


@dataclass(frozen=True)
class TLS:
    """TLS settings; ``tls=True`` is ``TLS()`` (the system's root certificates).

    Args:
        ca_file: PEM root certificates to trust instead of the system's.
        cert_file: PEM client certificate chain (mutual TLS), with ``key_file``.
        key_file: PEM private key of ``cert_file``.
        server_name: the name to check the server's certificate against, when it differs
            from the target's host.
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS: cert_file and key_file go together")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials (reads the files)."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )


@dataclass(frozen=True)
class Connection:
    """Everything a channel and its calls need."""

    target: str
    tls: TLS | None
    options: tuple[tuple[str, Any], ...]
    metadata: tuple[tuple[str, str], ...]
    timeout: float | None

    def channel_options(self) -> list[tuple[str, Any]]:
        """The options to create the channel with (TLS name override included)."""
        options = list(self.options)
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options


def _split_scheme(target: str) -> tuple[str | None, str]:
    for scheme in ("http", "https"):
        prefix = f"{scheme}://"
        if target.lower().startswith(prefix):
            return scheme, target[len(prefix) :].rstrip("/")
    return None, target


def resolve(
    target: str | None,
    api_key: str | None,
    tls: bool | TLS | None,
    timeout: float | None,
    options: Sequence[tuple[str, Any]] = (),
) -> Connection:
    """Resolves a client's arguments, with ``TUNA_SERVER`` and ``TUNA_API_KEY`` as defaults.

    ``target`` is ``host:port`` or a URL like the CLI's (``http://host:port``,
    ``https://host:port``); ``https://`` turns TLS on unless ``tls`` says otherwise.

    Raises:
        ValueError: for an empty target, a scheme that contradicts ``tls``, or an API key
            that cannot travel in a header.
    """
    raw = target or os.environ.get("TUNA_SERVER") or DEFAULT_TARGET
    scheme, address = _split_scheme(raw.strip())
    if not address:
        raise ValueError(f"invalid server address {raw!r}")
    if scheme == "http" and tls not in (None, False):
        raise ValueError(f"{raw!r} is a plaintext URL but tls was requested")
    if scheme == "https" and tls is False:
        raise ValueError(f"{raw!r} is an https URL but tls=False")
    use: TLS | None
    if isinstance(tls, TLS):
        use = tls
    elif tls is True or (tls is None and scheme == "https"):
        use = TLS()
    else:
        use = None
    key = api_key if api_key is not None else os.environ.get("TUNA_API_KEY")
    metadata: tuple[tuple[str, str], ...] = ()
    if key:
        if not key.isascii() or not key.isprintable() or key != key.strip():
            raise ValueError("the API key has characters that cannot travel in a header")
        metadata = (("authorization", f"Bearer {key}"),)
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be > 0 (or None for no deadline)")
    return Connection(
        target=address,
        tls=use,
        options=_DEFAULT_OPTIONS + tuple(options),
        metadata=metadata,
        timeout=timeout,
    )
