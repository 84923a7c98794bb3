"""ArtifactService plans: list, get, and the verified, safely unpacked download."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from tuna._effects import Blocking, Plan, Timeout, Unary
from tuna._ops.common import fetch_verified
from tuna.enums import ArtifactKind
from tuna.errors import NotFound
from tuna.pack import unpack
from tuna.types import Artifact
from tuna.v1 import artifact_pb2

__all__ = ["list_artifacts", "get", "resolve", "download"]

#: Job ids start with this prefix; anything else given to ``download`` is an artifact id.
JOB_PREFIX = "job_"


def list_artifacts(
    job_id: str, kind: ArtifactKind | str | int | None, timeout: Timeout
) -> Plan[list[Artifact]]:
    request = artifact_pb2.ListArtifactsRequest(
        job_id=job_id, kind=ArtifactKind.coerce(kind if kind is not None else 0).proto_value
    )
    response = yield Unary(lambda s: s.artifacts.ListArtifacts, request, timeout)
    return [Artifact.from_proto(a) for a in response.artifacts]


def get(artifact_id: str, timeout: Timeout) -> Plan[Artifact]:
    request = artifact_pb2.GetArtifactRequest(id=artifact_id)
    response = yield Unary(lambda s: s.artifacts.GetArtifact, request, timeout)
    return Artifact.from_proto(response)


def resolve(
    ref: str | Artifact, kind: ArtifactKind | str | int, timeout: Timeout
) -> Plan[Artifact]:
    """The artifact ``ref`` names: an :class:`Artifact`, an artifact id, or a job id (then the
    job's newest artifact of ``kind``).

    Raises:
        NotFound: the job has no artifact of that kind.
    """
    if isinstance(ref, Artifact):
        return ref
    if not ref.startswith(JOB_PREFIX):
        return (yield from get(ref, timeout))
    wanted = ArtifactKind.coerce(kind)
    found = yield from list_artifacts(ref, wanted, timeout)
    if not found:
        raise NotFound(f"job {ref} has no {wanted} artifact (yet)")
    return found[-1]


def download(
    ref: str | Artifact,
    dest: str | os.PathLike[str],
    kind: ArtifactKind | str | int,
    timeout: Timeout,
) -> Plan[Path]:
    """Streams the artifact to a temporary file beside ``dest``, verifies its size and sha256
    against what the server declared, and unpacks it into ``dest`` with
    :func:`tuna.pack.unpack` (flat regular files only, all or nothing)."""
    target = Path(dest)
    artifact = yield from resolve(ref, kind, timeout)
    _, archive = yield from fetch_verified(
        lambda s: s.artifacts.Download,
        artifact_pb2.DownloadRequest(artifact_id=artifact.id),
        target.parent,
        "artifact",
        expected_sha256=artifact.sha256,
    )
    try:
        unpacked: Path = yield Blocking(partial(unpack, archive, target))
    finally:
        archive.unlink(missing_ok=True)
    return unpacked
