"""Verified downloads and model file selection, without a server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import tuna
from tuna._transfer import VerifiedDownload, model_files
from tuna.v1 import artifact_pb2, file_pb2, job_pb2


def file_stream(
    data: bytes, declared_sha: str, declared_size: int
) -> list[file_pb2.DownloadFileResponse]:
    meta = file_pb2.File(id="file_1", name="x.bin", size_bytes=declared_size, sha256=declared_sha)
    return [file_pb2.DownloadFileResponse(file=meta)] + [
        file_pb2.DownloadFileResponse(chunk=data[i : i + 3]) for i in range(0, len(data), 3)
    ]


def consume(sink: VerifiedDownload, messages: list) -> tuple:
    try:
        for m in messages:
            sink.feed(m)
        return sink.finish()
    except BaseException:
        sink.abort()
        raise


def test_a_matching_download_is_handed_over(tmp_path: Path) -> None:
    data = b"hello verified world"
    sha = hashlib.sha256(data).hexdigest()
    meta, path = consume(VerifiedDownload(tmp_path, "file"), file_stream(data, sha, len(data)))
    assert meta.id == "file_1" and path.read_bytes() == data and path.parent == tmp_path


@pytest.mark.parametrize(
    "sha, size",
    [
        (hashlib.sha256(b"something else").hexdigest(), 20),  # wrong digest
        (hashlib.sha256(b"hello verified world").hexdigest(), 25),  # short
        (hashlib.sha256(b"hello verified world").hexdigest(), 10),  # too long
    ],
)
def test_a_mismatch_raises_and_leaves_nothing(tmp_path: Path, sha: str, size: int) -> None:
    with pytest.raises(tuna.IntegrityError):
        consume(VerifiedDownload(tmp_path, "file"), file_stream(b"hello verified world", sha, size))
    assert list(tmp_path.iterdir()) == []


def test_the_declared_digest_must_match_the_expected_one(tmp_path: Path) -> None:
    art = job_pb2.Artifact(id="art_1", size_bytes=0, sha256="a" * 64)
    with pytest.raises(tuna.IntegrityError):
        consume(
            VerifiedDownload(tmp_path, "artifact", expected_sha256="b" * 64),
            [artifact_pb2.DownloadResponse(artifact=art)],
        )
    assert list(tmp_path.iterdir()) == []


def test_protocol_violations(tmp_path: Path) -> None:
    with pytest.raises(tuna.ProtocolError):
        consume(VerifiedDownload(tmp_path, "file"), [file_pb2.DownloadFileResponse(chunk=b"x")])
    with pytest.raises(tuna.ProtocolError):
        consume(VerifiedDownload(tmp_path, "file"), [])
    assert list(tmp_path.iterdir()) == []


def test_model_files_selection(tmp_path: Path) -> None:
    for name in ["config.json", "model.safetensors", "tokenizer.json", "README.md", "notes.txt"]:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    is_gguf, files = model_files(tmp_path)
    assert not is_gguf
    assert [f.name for f in files] == ["config.json", "model.safetensors", "tokenizer.json"]
    gguf = tmp_path / "m.gguf"
    gguf.write_text("x")
    assert model_files(gguf) == (True, [gguf])
    with pytest.raises(ValueError):
        model_files(tmp_path / "README.md")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError):
        model_files(empty)
