"""FileService plans: upload (digest first, then 1 MiB chunks), get, list, delete, download."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from tuna._effects import Blocking, Plan, Stream, Timeout, Unary, Upload
from tuna._ops.common import fetch_verified, paged
from tuna._transfer import ProgressFn, hash_file
from tuna.enums import DatasetFormat, FilePurpose
from tuna.errors import ProtocolError
from tuna.types import File
from tuna.v1 import file_pb2

__all__ = ["upload", "get", "list_files", "delete", "download"]

PathLike = str | os.PathLike[str]


def upload(
    path: PathLike,
    *,
    purpose: FilePurpose | str | int,
    format: DatasetFormat | str | int | None,
    name: str | None,
    progress: ProgressFn | None,
) -> Plan[File]:
    """Hashes the file, then streams the header (name, purpose, size, sha256, format) and the
    content; the server verifies both and validates every line of a dataset."""
    source = Path(path)
    size, sha256 = yield Blocking(partial(hash_file, source))
    header = file_pb2.UploadFileHeader(
        name=name if name is not None else source.name,
        purpose=FilePurpose.coerce(purpose).proto_value,
        size_bytes=size,
        sha256=sha256,
        format=DatasetFormat.coerce(format).proto_value if format is not None else None,
    )
    message = yield Upload(source, header, progress)
    return File.from_proto(message)


def get(file_id: str, timeout: Timeout) -> Plan[File]:
    response = yield Unary(lambda s: s.files.GetFile, file_pb2.GetFileRequest(id=file_id), timeout)
    return File.from_proto(response)


def list_files(
    purpose: FilePurpose | str | int | None, page_size: int, timeout: Timeout
) -> Stream[File]:
    purpose_value = FilePurpose.coerce(purpose if purpose is not None else 0).proto_value
    return paged(
        lambda s: s.files.ListFiles,
        lambda token: file_pb2.ListFilesRequest(
            page_size=page_size, page_token=token, purpose=purpose_value
        ),
        lambda response: response.files,
        File.from_proto,
        timeout,
    )


def delete(file_id: str, timeout: Timeout) -> Plan[None]:
    yield Unary(lambda s: s.files.DeleteFile, file_pb2.DeleteFileRequest(id=file_id), timeout)


def download(file_id: str, dest: PathLike) -> Plan[Path]:
    """Downloads into ``dest`` (a file path, or an existing folder to write the file's own
    name into), verified against the declared size and sha256; written atomically."""
    target = Path(dest)
    into_folder = target.is_dir()
    meta, temporary = yield from fetch_verified(
        lambda s: s.files.Download,
        file_pb2.DownloadFileRequest(id=file_id),
        target if into_folder else target.parent,
        "file",
    )
    if into_folder:
        if meta.name in ("", ".", "..") or Path(meta.name).name != meta.name:
            temporary.unlink(missing_ok=True)
            raise ProtocolError(f"the server sent an unusable file name {meta.name!r}")
        target = target / meta.name
    os.replace(temporary, target)
    return target
