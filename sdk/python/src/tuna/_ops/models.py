"""ModelService plans: register (upload the model's files, then RegisterModel), get, list,
delete."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from tuna._effects import Blocking, Plan, Timeout, Unary
from tuna._ops import files
from tuna._transfer import ProgressFn, model_files
from tuna.enums import FilePurpose, ModelFormat
from tuna.types import Model
from tuna.v1 import model_pb2

__all__ = ["register", "get", "list_models", "delete"]


def _offset_progress(progress: ProgressFn, offset: int, total: int, sent: int, _: int) -> None:
    progress(offset + sent, total)


def _sizes(paths: list[Path]) -> list[int]:
    return [p.stat().st_size for p in paths]


def register(
    name: str,
    path: str | os.PathLike[str],
    progress: ProgressFn | None,
    timeout: Timeout,
) -> Plan[Model]:
    """Uploads a Hugging Face model folder's files (or one ``.gguf`` file) with purpose MODEL
    and registers them under ``name``, each under its file name, like ``tuna models
    register``. ``progress`` sees the bytes of all files together."""
    is_gguf, paths = yield Blocking(partial(model_files, Path(path)))
    sizes: list[int] = yield Blocking(partial(_sizes, paths))
    total, offset = sum(sizes), 0
    entries: list[model_pb2.ModelFile] = []
    for source, size in zip(paths, sizes, strict=True):
        per_file = partial(_offset_progress, progress, offset, total) if progress else None
        uploaded = yield from files.upload(
            source, purpose=FilePurpose.MODEL, format=None, name=None, progress=per_file
        )
        entries.append(model_pb2.ModelFile(path=uploaded.name, file_id=uploaded.id))
        offset += size
    request = model_pb2.RegisterModelRequest(
        name=name,
        format=(ModelFormat.GGUF if is_gguf else ModelFormat.HF).proto_value,
        files=entries,
    )
    response = yield Unary(lambda s: s.models.RegisterModel, request, timeout)
    return Model.from_proto(response)


def get(name: str, timeout: Timeout) -> Plan[Model]:
    response = yield Unary(
        lambda s: s.models.GetModel, model_pb2.GetModelRequest(name=name), timeout
    )
    return Model.from_proto(response)


def list_models(timeout: Timeout) -> Plan[list[Model]]:
    response = yield Unary(lambda s: s.models.ListModels, model_pb2.ListModelsRequest(), timeout)
    return [Model.from_proto(m) for m in response.models]


def delete(name: str, timeout: Timeout) -> Plan[None]:
    yield Unary(lambda s: s.models.DeleteModel, model_pb2.DeleteModelRequest(name=name), timeout)
