"""Bytes in and out: file digests, upload chunks, and verified downloads.

Shared by the sync and asyncio clients; nothing here talks to the network.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from google.protobuf.message import Message

from tuna.errors import IntegrityError, ProtocolError
from tuna.v1 import file_pb2

__all__ = [
    "CHUNK_SIZE",
    "ProgressFn",
    "hash_file",
    "read_chunks",
    "UploadBody",
    "VerifiedDownload",
    "model_files",
]

#: Largest chunk of an upload or download (the API's limit).
CHUNK_SIZE = 1 << 20

#: ``progress(bytes_sent, total_bytes)``, called after every chunk handed to the transport.
ProgressFn = Callable[[int, int], None]


def hash_file(path: Path) -> tuple[int, str]:
    """Size and lowercase hex SHA-256 of a file (the first pass of an upload)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK_SIZE):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def read_chunks(f: IO[bytes]) -> Iterator[bytes]:
    """The file's content in chunks of at most :data:`CHUNK_SIZE` bytes."""
    while chunk := f.read(CHUNK_SIZE):
        yield chunk


class UploadBody:
    """The messages of one ``FileService.Upload`` after the first pass (size and digest):
    the header, then one message per chunk, counting the bytes and reporting progress.

    The transport reads the chunks (blocking or in a thread) and wraps each with
    :meth:`chunk`; :meth:`done` checks the file did not change size between the passes.
    An exception raised while producing messages is kept in :attr:`error`, because gRPC
    only reports that the request stream failed.
    """

    def __init__(
        self, path: Path, header: file_pb2.UploadFileHeader, progress: ProgressFn | None
    ) -> None:
        self.path = path
        self.header = header
        self.progress = progress
        self.sent = 0
        #: What went wrong while producing the messages, if anything.
        self.error: BaseException | None = None

    def first(self) -> file_pb2.UploadFileRequest:
        """The header message."""
        return file_pb2.UploadFileRequest(header=self.header)

    def chunk(self, data: bytes) -> file_pb2.UploadFileRequest:
        """The message of the next chunk."""
        return file_pb2.UploadFileRequest(chunk=data)

    def sent_chunk(self, size: int) -> None:
        """The transport took the last chunk: count it and report progress."""
        self.sent += size
        if self.progress is not None:
            self.progress(self.sent, self.header.size_bytes)

    def done(self) -> None:
        """Every chunk was sent.

        Raises:
            IntegrityError: the file's size changed since it was hashed.
        """
        if self.sent != self.header.size_bytes:
            raise IntegrityError(
                f"{self.path} changed while uploading: {self.sent} bytes read, "
                f"{self.header.size_bytes} hashed"
            )
        if self.sent == 0 and self.progress is not None:
            self.progress(0, 0)


class VerifiedDownload:
    """Consumes a download stream (``FileService.Download`` or ``ArtifactService.Download``):
    the first message carries the resource's metadata (``size_bytes``, ``sha256``), the rest
    carry chunks. Chunks go to a temporary file in ``directory``; :meth:`finish` checks the size
    and digest and hands the file over, :meth:`abort` removes it. A mismatch never leaves a
    file behind.

    Args:
        directory: where the temporary file is created (beside the final destination, so it
            can be renamed into place).
        meta_field: the name of the first message's metadata field in the ``data`` oneof
            (``file`` or ``artifact``).
        expected_sha256: if the caller already knows the digest (from ``GetArtifact``), the
            stream's metadata must agree with it.
    """

    def __init__(self, directory: Path, meta_field: str, expected_sha256: str | None = None):
        self._directory = directory
        self._meta_field = meta_field
        self._expected_sha256 = expected_sha256
        self._meta: Any = None
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._digest = hashlib.sha256()
        self._received = 0

    def feed(self, message: Message) -> None:
        """Takes the next message of the stream."""
        which = message.WhichOneof("data")
        if self._meta is None:
            if which != self._meta_field:
                raise ProtocolError(f"the download did not start with the {self._meta_field}")
            meta = getattr(message, self._meta_field)
            if self._expected_sha256 is not None and meta.sha256 != self._expected_sha256:
                raise IntegrityError(
                    f"the download declares sha256 {meta.sha256}, expected {self._expected_sha256}"
                )
            self._meta = meta
            self._directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(
                prefix=f".{meta.id or 'download'}.", suffix=".download", dir=self._directory
            )
            self._path = Path(name)
            self._file = os.fdopen(fd, "wb")
            return
        if which != "chunk":
            raise ProtocolError(f"unexpected {which!r} message inside a download")
        chunk: bytes = message.chunk  # type: ignore[attr-defined]
        self._received += len(chunk)
        if self._received > self._meta.size_bytes:
            raise IntegrityError(
                f"the download sent more than the declared {self._meta.size_bytes} bytes"
            )
        self._digest.update(chunk)
        assert self._file is not None
        self._file.write(chunk)

    def finish(self) -> tuple[Any, Path]:
        """The metadata message and the verified temporary file (now the caller's).

        Raises:
            ProtocolError: the stream was empty.
            IntegrityError: the size or digest differs from the declared one.
        """
        if self._meta is None or self._file is None or self._path is None:
            raise ProtocolError("the download stream was empty")
        self._file.close()
        actual = self._digest.hexdigest()
        if self._received != self._meta.size_bytes:
            self.abort()
            raise IntegrityError(
                f"the download has {self._received} bytes, {self._meta.size_bytes} declared"
            )
        if actual != self._meta.sha256:
            self.abort()
            raise IntegrityError(
                f"the download hashes to sha256 {actual}, {self._meta.sha256} declared"
            )
        return self._meta, self._path

    def abort(self) -> None:
        """Closes and removes the temporary file (safe to call more than once)."""
        if self._file is not None:
            self._file.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None


#: The files of a Hugging Face model folder that a registration uploads.
_HF_NAMES = frozenset(
    {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "model.safetensors.index.json",
    }
)


def model_files(path: Path) -> tuple[bool, list[Path]]:
    """The files to upload for a model: ``(is_gguf, paths)``.

    A single ``.gguf`` file, or the model files of a Hugging Face folder (``config.json``,
    ``*.safetensors``, ``model.safetensors.index.json``, ``tokenizer.json`` and the small
    tokenizer/generation JSON files), sorted; the same selection as the CLI's.

    Raises:
        ValueError: a single file that is not ``.gguf``, or a folder without model files.
        OSError: the path cannot be read.
    """
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path}: a single model file must be a .gguf file")
        return True, [path]
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and (p.name in _HF_NAMES or p.name.endswith(".safetensors"))
    )
    if not files:
        raise ValueError(
            f"{path}: no model files (config.json, *.safetensors, tokenizer.json) found"
        )
    return False, files
