"""Safe unpacking of artifact archives (the rules of the Rust SDK's ``client/src/pack.rs``).

An artifact is one uncompressed tar written by a worker, so it is treated as hostile. Only
flat regular files with plain names are accepted (1 to 128 ASCII letters, digits, ``_``,
``-``, ``.``, not starting with ``.``: no absolute paths, ``..``, subfolders, hidden files,
control or bidi characters), never links, folders, devices, FIFOs or sparse files; each file
is written with mode 0644 (never the archive's mode) into a fresh folder, within a bounded
file count and total size. The files go into a staging folder beside the destination that is
renamed into place only once every entry passed, so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

from tuna.errors import UnpackError

__all__ = ["unpack", "safe_name", "MAX_ENTRIES", "MAX_TOTAL_BYTES"]

#: Most files one archive may hold (an adapter has two, a checkpoint three or four).
MAX_ENTRIES = 64
#: Most bytes of all files together (above the server's default upload cap of 10 GiB).
MAX_TOTAL_BYTES = 64 << 30

_PLAIN = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)
_TYPE_NAMES = {
    tarfile.LNKTYPE: "a hard link",
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.DIRTYPE: "a directory",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


class _Refused(Exception):
    pass


def safe_name(name: str) -> str:
    """``name`` if it is a plain file name (see the module docs), else :class:`ValueError`."""
    if not 1 <= len(name) <= 128:
        raise ValueError("a name is 1 to 128 characters")
    if name.startswith("."):
        raise ValueError("names may not start with '.'")
    if not _PLAIN.fullmatch(name):
        raise ValueError("only plain file names (letters, digits, _ - .) in one flat folder")
    return name


def _fresh_target(dest: Path) -> bool:
    """Whether ``dest`` is an existing empty folder (``False``: it does not exist).

    Raises:
        UnpackError: it is anything else (a file, a symlink, a folder with entries).
    """
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(dest) as entries:
            if next(entries, None) is None:
                return True
    raise UnpackError(
        f"{dest}: exists and is not an empty folder; artifacts unpack into a fresh folder"
    )


def _extract(archive: Path, into: Path, max_entries: int, max_total_bytes: int) -> None:
    count = 0
    total = 0
    with tarfile.open(archive, mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        for member in tar:
            shown = member.name[:128]
            try:
                if member.type not in _REGULAR or member.sparse is not None:
                    what = _TYPE_NAMES.get(member.type, f"type {member.type!r}")
                    raise _Refused(f"only regular files are accepted, not {what}")
                try:
                    name = safe_name(member.name)
                except ValueError as e:
                    raise _Refused(str(e)) from None
                count += 1
                if count > max_entries:
                    raise UnpackError(f"the archive has more than {max_entries} files")
                total += member.size
                if total > max_total_bytes:
                    raise UnpackError(f"the archive's files exceed {max_total_bytes} bytes in all")
                source = tar.extractfile(member)
                if source is None:  # unreachable for regular files
                    raise _Refused("no data")
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                try:
                    fd = os.open(into / name, flags, 0o644)
                except FileExistsError:
                    raise _Refused("the name appears twice") from None
                with os.fdopen(fd, "wb") as out:
                    copied = 0
                    while copied < member.size:
                        block = source.read(min(1 << 20, member.size - copied))
                        if not block:
                            break
                        out.write(block)
                        copied += len(block)
                if copied != member.size:
                    raise _Refused("the archive ends inside this file")
            except _Refused as e:
                raise UnpackError(f"archive entry {shown!r} refused: {e}") from None


def unpack(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_entries: int = MAX_ENTRIES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> Path:
    """Unpacks the artifact tar ``archive`` into the folder ``dest``, which must not exist or
    be empty (missing parents are created). All or nothing.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        UnpackError: an entry was refused, the limits were exceeded, the archive is not a
            readable tar, or ``dest`` is not fresh. Nothing was written into ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    existing_empty = _fresh_target(dest)
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tuna-unpack-", dir=parent))
    try:
        try:
            _extract(archive, staging, max_entries, max_total_bytes)
        except (tarfile.TarError, EOFError) as e:
            raise UnpackError(f"{archive}: not a readable tar archive: {e}") from e
        if existing_empty:
            dest.rmdir()
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
