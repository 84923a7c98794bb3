"""Uploads, downloads and the model registry against a real server."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import tuna
from tuna._transfer import CHUNK_SIZE

from conftest import DATASET, MODEL_NAME


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_dataset_digest_and_progress(client: tuna.Client) -> None:
    calls: list[tuple[int, int]] = []
    uploaded = client.files.upload(
        DATASET,
        format="prompt-completion",
        progress=lambda sent, total: calls.append((sent, total)),
    )
    size = DATASET.stat().st_size
    assert uploaded.id.startswith("file_")
    assert uploaded.sha256 == sha256_of(DATASET)
    assert uploaded.size_bytes == size
    assert uploaded.purpose is tuna.FilePurpose.DATASET
    assert uploaded.format is tuna.DatasetFormat.PROMPT_COMPLETION
    assert uploaded.line_count == len(DATASET.read_text().splitlines())
    assert calls == [(size, size)]
    assert client.files.get(uploaded.id) == uploaded


def test_multi_chunk_upload_reports_each_chunk_and_downloads_verified(
    client: tuna.Client, tmp_path: Path
) -> None:
    blob = tmp_path / "weights.bin"
    blob.write_bytes(os.urandom(2 * CHUNK_SIZE + 12345))
    size = blob.stat().st_size
    calls: list[tuple[int, int]] = []
    uploaded = client.files.upload(
        blob, purpose="model", progress=lambda sent, total: calls.append((sent, total))
    )
    assert calls == [(CHUNK_SIZE, size), (2 * CHUNK_SIZE, size), (size, size)]
    assert uploaded.sha256 == sha256_of(blob) and uploaded.purpose is tuna.FilePurpose.MODEL
    assert uploaded.id in {f.id for f in client.files.list(purpose="model")}
    # Download into a folder (the stored name) and to an explicit path.
    into = client.files.download(uploaded, tmp_path)
    assert into == tmp_path / "weights.bin" and sha256_of(into) == uploaded.sha256
    out = client.files.download(uploaded.id, tmp_path / "copy.bin")
    assert out.read_bytes() == blob.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".download")]
    client.files.delete(uploaded)
    with pytest.raises(tuna.NotFound):
        client.files.get(uploaded.id)


def test_a_bad_dataset_line_is_refused_naming_it(client: tuna.Client, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "completion": "2"}\nnot json\n')
    with pytest.raises(tuna.InvalidArgument) as refused:
        client.files.upload(bad)
    assert "line 2" in refused.value.message
    assert refused.value.fields == ["content"]


def test_register_tiny_model(client: tuna.Client, model: tuna.Model, tiny_model_dir: Path) -> None:
    assert model.name == MODEL_NAME
    assert model.format is tuna.ModelFormat.HF
    local = {p.name: sha256_of(p) for p in tiny_model_dir.iterdir() if p.is_file()}
    assert {f.path: f.sha256 for f in model.files} == local
    assert "config.json" in local and "model.safetensors" in local
    assert client.models.get(MODEL_NAME) == model
    assert MODEL_NAME in [m.name for m in client.models.list()]
    with pytest.raises(tuna.AlreadyExists):
        client.models.register(MODEL_NAME, tiny_model_dir)


def test_missing_resources_raise_not_found(client: tuna.Client) -> None:
    with pytest.raises(tuna.NotFound):
        client.models.get("no-such-model")
    with pytest.raises(tuna.NotFound):
        client.jobs.get("job_" + "0" * 32)


def test_a_failing_progress_callback_surfaces_its_own_error(client: tuna.Client) -> None:
    def progress(sent: int, total: int) -> None:
        raise RuntimeError("stop the upload")

    with pytest.raises(RuntimeError, match="stop the upload"):
        client.files.upload(DATASET, progress=progress)
