"""Specs from dicts, files or messages: a ``tuna.v1.SweepSpec`` for ``sweeps.create``, a
``tuna.v1.JobSpec`` for ``jobs.create_from_spec``.

A spec can be given as the message itself, as a dict in protobuf's JSON mapping (field names
as in the ``.proto`` files or lowerCamelCase, enums by name), or as the path of a TOML
(``.toml``) or JSON file in that mapping, like the CLI's ``tuna sweeps create FILE`` and
``tuna jobs create --spec-file FILE`` (see ``examples/sweep.toml`` and ``examples/job.json``).
An unknown or mistyped field is an error naming it, never silently dropped.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

from google.protobuf import json_format
from google.protobuf.message import Message

from tuna.v1 import job_pb2, sweep_pb2

__all__ = ["SpecLike", "SweepSpecLike", "JobSpecLike", "load_spec", "with_template_files"]

M = TypeVar("M", bound=Message)

#: A spec message, a mapping in protobuf's JSON form, or the path of a TOML or JSON file.
SpecLike = Union[M, Mapping[str, Any], str, "os.PathLike[str]"]
SweepSpecLike = Union[sweep_pb2.SweepSpec, Mapping[str, Any], str, "os.PathLike[str]"]
JobSpecLike = Union[job_pb2.JobSpec, Mapping[str, Any], str, "os.PathLike[str]"]


def _parse(data: object, message_type: type[M], where: str) -> M:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: a {message_type.DESCRIPTOR.full_name} is an object")
    message = message_type()
    try:
        json_format.ParseDict(dict(data), message, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        raise ValueError(f"{where}: {e}") from None
    return message


def load_spec(spec: SpecLike[M], message_type: type[M]) -> M:
    """The ``message_type`` message for a message (copied), a mapping or a file path.

    Raises:
        ValueError: the mapping or file is not a valid message of that type (the error
            names the field), or the file is not valid TOML/JSON.
        OSError: the file cannot be read.
    """
    if isinstance(spec, message_type):
        copy = message_type()
        copy.CopyFrom(spec)
        return copy
    if isinstance(spec, Message):
        raise TypeError(
            f"expected a {message_type.DESCRIPTOR.full_name}, got a {spec.DESCRIPTOR.full_name}"
        )
    if isinstance(spec, Mapping):
        return _parse(spec, message_type, message_type.DESCRIPTOR.full_name)
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        text = path.read_text(encoding="utf-8")
        is_toml = path.suffix == ".toml"
        try:
            data = tomllib.loads(text) if is_toml else json.loads(text)
        except ValueError as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
            raise ValueError(f"{path}: invalid {'TOML' if is_toml else 'JSON'}: {e}") from None
        return _parse(data, message_type, str(path))
    raise TypeError(
        f"a spec is a {message_type.DESCRIPTOR.full_name}, a mapping or a file path, "
        f"not {type(spec).__name__}"
    )


def with_template_files(
    spec: sweep_pb2.SweepSpec,
    *,
    model: str | None = None,
    training_file: str | None = None,
    validation_file: str | None = None,
) -> sweep_pb2.SweepSpec:
    """``spec`` with the template's base model and file ids replaced by those given (like the
    CLI's ``--model``, ``--training-file`` and ``--validation-file``); in place, returned."""
    if model is not None:
        spec.template.base_model = model
    if training_file is not None:
        spec.template.training_file = training_file
    if validation_file is not None:
        spec.template.validation_file = validation_file
    return spec
