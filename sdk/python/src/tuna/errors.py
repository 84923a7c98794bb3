"""Errors raised by the SDK.

Every failed call raises a subclass of :class:`TunaError`: one class per gRPC status code
(:class:`InvalidArgument`, :class:`NotFound`, ...), plus a few raised by the SDK itself
(:class:`IntegrityError` for a download whose bytes do not match the declared digest,
:class:`UnpackError` for a refused artifact archive, :class:`ProtocolError` for a server
reply that breaks the API contract).

A server error carries what the server attached to it:

* ``field_violations``: the ``google.rpc.BadRequest`` details of an ``INVALID_ARGUMENT``
  (for example ``FieldViolation("spec.hyperparameters.learning_rate", "must be > 0 ...")``);
* ``reason``/``domain``: a ``google.rpc.ErrorInfo``, such as ``LEASE_LOST``;
* ``correlation_id``: the id under which the server logged an internal error
  (``x-tuna-correlation-id``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

import grpc

from tuna._rpc import status_pb2

__all__ = [
    "FieldViolation",
    "TunaError",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "IntegrityError",
    "UnpackError",
    "ProtocolError",
    "from_rpc_error",
    "error_class",
]

#: Trailer carrying the serialized ``google.rpc.Status``.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: Metadata key of the correlation id the server logs an internal error under.
CORRELATION_ID_KEY = "x-tuna-correlation-id"
_CORRELATION_IN_MESSAGE = re.compile(r"correlation id (err_[0-9a-f]+)")
_BAD_REQUEST = "google.rpc.BadRequest"
_ERROR_INFO = "google.rpc.ErrorInfo"


class FieldViolation(NamedTuple):
    """One invalid field of a request, as named by the server."""

    field: str
    description: str


class TunaError(Exception):
    """Base of every error the SDK raises.

    Attributes:
        code: the gRPC status code, or ``None`` for an error detected by the SDK itself
            (then the class says what it is).
        message: the server's (or the SDK's) message.
        field_violations: the fields the server refused, in its order (empty if none).
        reason: ``ErrorInfo.reason`` when the server sent one (for example ``LEASE_LOST``).
        domain: ``ErrorInfo.domain`` alongside ``reason``.
        correlation_id: the id the server logged an internal error under, if any.
    """

    #: The status code this class stands for (``None`` on SDK-side errors).
    grpc_code: grpc.StatusCode | None = None

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        field_violations: Iterable[FieldViolation] = (),
        reason: str | None = None,
        domain: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code: grpc.StatusCode | None = code if code is not None else self.grpc_code
        self.message = message
        self.field_violations: list[FieldViolation] = list(field_violations)
        self.reason = reason
        self.domain = domain
        self.correlation_id = correlation_id

    @property
    def fields(self) -> list[str]:
        """The names of the refused fields (``[v.field for v in field_violations]``)."""
        return [v.field for v in self.field_violations]

    def __str__(self) -> str:
        prefix = f"{self.code.name}: " if self.code is not None else ""
        return f"{prefix}{self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


# One class per status code (OK excepted). Written out, not generated in a loop, so type
# checkers and readers see each name.
class Cancelled(TunaError):
    """The call was cancelled (``CANCELLED``)."""

    grpc_code = grpc.StatusCode.CANCELLED


class Unknown(TunaError):
    """``UNKNOWN``: an error the server did not classify."""

    grpc_code = grpc.StatusCode.UNKNOWN


class InvalidArgument(TunaError):
    """``INVALID_ARGUMENT``: the request is invalid; ``field_violations`` names the fields."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(TunaError, TimeoutError):
    """``DEADLINE_EXCEEDED``: the call ran past its timeout (also a :class:`TimeoutError`)."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(TunaError):
    """``NOT_FOUND``: no such job, file, model, sweep or artifact."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TunaError):
    """``ALREADY_EXISTS``: the name is taken, or a ``request_id`` was reused with another
    request."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(TunaError):
    """``PERMISSION_DENIED``."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(TunaError):
    """``RESOURCE_EXHAUSTED``: a limit was reached (message size, concurrency)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(TunaError):
    """``FAILED_PRECONDITION``: not allowed in the resource's current state (for example
    resuming a job that is not paused, or deleting a file a job uses)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(TunaError):
    """``ABORTED``: a concurrency conflict; retrying may succeed."""

    grpc_code = grpc.StatusCode.ABORTED


class OutOfRange(TunaError):
    """``OUT_OF_RANGE``."""

    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(TunaError):
    """``UNIMPLEMENTED``: the server does not have this method."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(TunaError):
    """``INTERNAL``: a server bug or an unexpected failure; ``correlation_id`` ties it to the
    server's log."""

    grpc_code = grpc.StatusCode.INTERNAL


class Unavailable(TunaError):
    """``UNAVAILABLE``: the server is unreachable or shutting down; retrying may succeed."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class DataLoss(TunaError):
    """``DATA_LOSS``: bytes did not hash to the declared sha256."""

    grpc_code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(TunaError):
    """``UNAUTHENTICATED``: a missing or wrong API key."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class IntegrityError(DataLoss):
    """A download whose size or sha256 differs from what the server declared. Nothing was
    kept."""


class UnpackError(TunaError):
    """An artifact archive was refused (an unsafe entry, too many or too large files, or a
    target folder that is not fresh). Nothing was written into the target."""


class ProtocolError(TunaError):
    """The server sent something the API contract rules out (for example a download that does
    not start with its metadata)."""


_BY_CODE: dict[grpc.StatusCode, type[TunaError]] = {
    cls.grpc_code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
    if cls.grpc_code is not None
}


def error_class(code: grpc.StatusCode) -> type[TunaError]:
    """The exception class of a status code (:class:`TunaError` for ``OK``)."""
    return _BY_CODE.get(code, TunaError)


def _metadata_items(metadata: Any) -> list[tuple[str, str | bytes]]:
    """Normalizes sync (tuple of ``_Metadatum``) and asyncio (``grpc.aio.Metadata``) metadata."""
    if not metadata:
        return []
    return [(str(k).lower(), v) for k, v in metadata]


def _decode_details(raw: bytes) -> tuple[list[FieldViolation], str | None, str | None]:
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except Exception:  # a malformed trailer must not hide the error itself
        return [], None, None
    violations: list[FieldViolation] = []
    reason = domain = None
    for any_msg in status.details:
        type_name = any_msg.type_url.rsplit("/", 1)[-1]
        try:
            if type_name == _BAD_REQUEST:
                bad = status_pb2.BadRequest.FromString(any_msg.value)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
            elif type_name == _ERROR_INFO:
                info = status_pb2.ErrorInfo.FromString(any_msg.value)
                reason, domain = info.reason or None, info.domain or None
        except Exception:
            continue
    return violations, reason, domain


def from_rpc_error(error: grpc.RpcError) -> TunaError:
    """Converts a failed call (sync or asyncio) into the matching :class:`TunaError`."""
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(error)
    items: list[tuple[str, str | bytes]] = []
    for name in ("trailing_metadata", "initial_metadata"):
        fn = getattr(error, name, None)
        try:
            items.extend(_metadata_items(fn() if callable(fn) else None))
        except Exception:
            continue
    violations: list[FieldViolation] = []
    reason = domain = correlation_id = None
    for key, value in items:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes) and not violations:
            violations, reason, domain = _decode_details(value)
        elif key == CORRELATION_ID_KEY and correlation_id is None:
            correlation_id = value.decode() if isinstance(value, bytes) else value
    if correlation_id is None:
        found = _CORRELATION_IN_MESSAGE.search(message)
        correlation_id = found.group(1) if found else None
    return error_class(code)(
        message,
        code=code,
        field_violations=violations,
        reason=reason,
        domain=domain,
        correlation_id=correlation_id,
    )
