"""Error mapping and connection settings, without a server."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2

import tuna
from tuna._channel import resolve
from tuna._rpc import status_pb2
from tuna.errors import from_rpc_error


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: Any = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing

    def initial_metadata(self) -> Any:
        return ()


def packed(message: Any, name: str) -> any_pb2.Any:
    return any_pb2.Any(type_url=f"type.googleapis.com/{name}", value=message.SerializeToString())


def test_bad_request_details_become_field_violations() -> None:
    bad = status_pb2.BadRequest(
        field_violations=[
            status_pb2.BadRequest.FieldViolation(
                field="spec.hyperparameters.learning_rate", description="must be > 0"
            ),
            status_pb2.BadRequest.FieldViolation(
                field="spec.method.lora.r", description="1..=1024"
            ),
        ]
    )
    status = status_pb2.Status(
        code=3, message="invalid", details=[packed(bad, "google.rpc.BadRequest")]
    )
    error = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid request",
            (("grpc-status-details-bin", status.SerializeToString()),),
        )
    )
    assert type(error) is tuna.InvalidArgument
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "invalid request"
    assert error.field_violations == [
        ("spec.hyperparameters.learning_rate", "must be > 0"),
        ("spec.method.lora.r", "1..=1024"),
    ]
    assert error.fields == ["spec.hyperparameters.learning_rate", "spec.method.lora.r"]
    assert str(error) == "INVALID_ARGUMENT: invalid request"


def test_error_info_and_correlation_id() -> None:
    info = status_pb2.ErrorInfo(reason="LEASE_LOST", domain="tuna.dev")
    status = status_pb2.Status(code=9, details=[packed(info, "google.rpc.ErrorInfo")])
    error = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "lease lost",
            (("grpc-status-details-bin", status.SerializeToString()),),
        )
    )
    assert isinstance(error, tuna.FailedPrecondition)
    assert (error.reason, error.domain) == ("LEASE_LOST", "tuna.dev")
    internal = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.INTERNAL,
            "internal error (correlation id err_00000000000000ab)",
            (("x-tuna-correlation-id", "err_00000000000000ab"),),
        )
    )
    assert isinstance(internal, tuna.Internal)
    assert internal.correlation_id == "err_00000000000000ab"
    # Without the metadata, the id in the message is used.
    from_message = from_rpc_error(
        FakeRpcError(grpc.StatusCode.INTERNAL, "internal error (correlation id err_12ab)")
    )
    assert from_message.correlation_id == "err_12ab"


def test_a_malformed_details_trailer_does_not_hide_the_error() -> None:
    error = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.INVALID_ARGUMENT, "bad", (("grpc-status-details-bin", b"\xff\xff"),)
        )
    )
    assert isinstance(error, tuna.InvalidArgument) and error.field_violations == []


@pytest.mark.parametrize(
    "code, cls",
    [
        (grpc.StatusCode.CANCELLED, tuna.Cancelled),
        (grpc.StatusCode.UNKNOWN, tuna.Unknown),
        (grpc.StatusCode.INVALID_ARGUMENT, tuna.InvalidArgument),
        (grpc.StatusCode.DEADLINE_EXCEEDED, tuna.DeadlineExceeded),
        (grpc.StatusCode.NOT_FOUND, tuna.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, tuna.AlreadyExists),
        (grpc.StatusCode.PERMISSION_DENIED, tuna.PermissionDenied),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, tuna.ResourceExhausted),
        (grpc.StatusCode.FAILED_PRECONDITION, tuna.FailedPrecondition),
        (grpc.StatusCode.ABORTED, tuna.Aborted),
        (grpc.StatusCode.OUT_OF_RANGE, tuna.OutOfRange),
        (grpc.StatusCode.UNIMPLEMENTED, tuna.Unimplemented),
        (grpc.StatusCode.INTERNAL, tuna.Internal),
        (grpc.StatusCode.UNAVAILABLE, tuna.Unavailable),
        (grpc.StatusCode.DATA_LOSS, tuna.DataLoss),
        (grpc.StatusCode.UNAUTHENTICATED, tuna.Unauthenticated),
    ],
)
def test_one_class_per_status_code(code: grpc.StatusCode, cls: type[tuna.TunaError]) -> None:
    error = from_rpc_error(FakeRpcError(code, "x"))
    assert type(error) is cls and isinstance(error, tuna.TunaError) and error.code is code


def test_deadline_exceeded_is_a_timeout_error() -> None:
    assert isinstance(
        from_rpc_error(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "x")), TimeoutError
    )


def test_resolve_targets_tls_and_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNA_SERVER", raising=False)
    monkeypatch.delenv("TUNA_API_KEY", raising=False)
    plain = resolve(None, None, None, 5.0)
    assert (plain.target, plain.tls, plain.metadata) == ("127.0.0.1:50051", None, ())
    monkeypatch.setenv("TUNA_SERVER", "http://cp.example:7000/")
    monkeypatch.setenv("TUNA_API_KEY", "s3cret")
    from_env = resolve(None, None, None, 5.0)
    assert from_env.target == "cp.example:7000" and from_env.tls is None
    assert from_env.metadata == (("authorization", "Bearer s3cret"),)
    assert resolve("https://cp.example", None, None, 5.0).tls == tuna.TLS()
    custom = tuna.TLS(server_name="tuna.internal")
    with_tls = resolve("cp:1", "k", custom, None)
    assert with_tls.tls is custom
    assert ("grpc.ssl_target_name_override", "tuna.internal") in with_tls.channel_options()
    assert resolve("cp:1", "explicit", None, None).metadata == (
        ("authorization", "Bearer explicit"),
    )
    with pytest.raises(ValueError):
        resolve("http://cp:1", None, True, None)
    with pytest.raises(ValueError):
        resolve("https://cp:1", None, False, None)
    with pytest.raises(ValueError):
        resolve("cp:1", "bad\nkey", None, None)
    with pytest.raises(ValueError):
        tuna.TLS(cert_file="c.pem")


def test_method_helpers_build_the_proto() -> None:
    lora = tuna.LoRA(r=16, alpha=32, dropout=0.1, target_modules=["q_proj"], init="gaussian")
    m = lora.to_proto()
    assert (m.type, m.lora.r, m.lora.alpha, m.lora.init) == ("lora", 16, 32.0, "gaussian")
    assert not m.lora.HasField("lr_ratio_b")  # unset stays unset: the server's default
    assert tuna.DoRA(r=4).to_proto().type == "dora"
    assert tuna.IA3(target_modules=["k_proj"]).to_proto().ia3.target_modules == ["k_proj"]
    assert tuna.PromptTuning(num_virtual_tokens=8).to_proto().prompt_tuning.num_virtual_tokens == 8
    assert tuna.PrefixTuning(num_virtual_tokens=4).to_proto().prefix_tuning.num_virtual_tokens == 4
    assert tuna.BitFit().to_proto().type == "bitfit"
    assert tuna.Full().to_proto().type == "full"
    h = tuna.Hyperparameters(learning_rate=1, max_steps=5).to_proto()
    assert h.learning_rate == 1.0 and h.max_steps == 5 and not h.HasField("epochs")
    p = tuna.Preference(loss="orpo", beta=1).to_proto()
    assert (p.loss, p.beta) == ("orpo", 1.0) and not p.HasField("label_smoothing")
    spec = tuna.spec.build_job_spec(
        model="m", training_file="f", task="preference", preference=tuna.Preference()
    )
    assert spec.task == "preference" and spec.HasField("preference")
    merged = tuna.spec.build_job_spec(model="m", training_file="f", export_merged="bf16")
    assert merged.export_merged and merged.merged_dtype == "bf16"
    assert tuna.DatasetFormat.PREFERENCE.value == 5


def test_enum_arguments_accept_members_names_and_numbers() -> None:
    assert tuna.JobState.coerce("running") is tuna.JobState.RUNNING
    assert tuna.JobState.coerce(tuna.JobState.PAUSED) is tuna.JobState.PAUSED
    assert tuna.DatasetFormat.coerce("prompt-completion") is tuna.DatasetFormat.PROMPT_COMPLETION
    assert tuna.ArtifactKind.coerce(2) is tuna.ArtifactKind.CHECKPOINT
    with pytest.raises(ValueError, match="expected one of"):
        tuna.JobState.coerce("finished")
    with pytest.raises(ValueError):
        tuna.JobState.coerce(42)
    # A number a newer server sends is not an error when reading responses.
    assert tuna.JobState(42) is tuna.JobState.UNSPECIFIED
    assert tuna.JobState.SUCCEEDED.is_terminal and not tuna.JobState.PAUSED.is_terminal


def test_replicas_reach_the_spec() -> None:
    spec = tuna.spec.build_job_spec(model="m", training_file="f", replicas=3)
    assert spec.replicas == 3
    assert tuna.spec.build_job_spec(model="m", training_file="f").replicas == 0
