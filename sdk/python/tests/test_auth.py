"""API keys: sent as ``authorization: Bearer <key>``; a server that requires one refuses
calls without it as UNAUTHENTICATED."""

from __future__ import annotations

from pathlib import Path

import pytest

import tuna

from conftest import DATASET, TunaServer


def test_api_key_is_sent_as_bearer_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNA_API_KEY", raising=False)
    server = TunaServer(tmp_path / "data")
    server.start(env={"TUNA_API_KEY": "sdk-test-key"})
    try:
        with tuna.Client(server.target) as anonymous:
            with pytest.raises(tuna.Unauthenticated):
                list(anonymous.files.list())
        with tuna.Client(server.target, api_key="wrong") as wrong:
            with pytest.raises(tuna.Unauthenticated):
                wrong.files.upload(DATASET)
        with tuna.Client(server.target, api_key="sdk-test-key") as keyed:
            uploaded = keyed.files.upload(DATASET)
            assert keyed.files.get(uploaded.id).sha256 == uploaded.sha256
        # The environment default, like the CLI's.
        monkeypatch.setenv("TUNA_API_KEY", "sdk-test-key")
        monkeypatch.setenv("TUNA_SERVER", f"http://{server.target}")
        with tuna.Client() as from_env:
            assert from_env.target == server.target
            assert uploaded.id in {f.id for f in from_env.files.list()}
    finally:
        server.stop()
