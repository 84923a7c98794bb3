"""Artifact archives are hostile input: only flat regular files with plain names unpack, all
or nothing (the rules of client/src/pack.rs)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import tuna
from tuna.pack import unpack


@dataclass(frozen=True)
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    body: bytes = b"pwned"
    link: str = ""
    mode: int = 0o644


def craft(path: Path, entries: list[Entry]) -> None:
    """Writes entries the way an attacker would: names, types and links unchecked."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8") as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.linkname = e.link
            regular = e.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
            info.size = len(e.body) if regular else 0
            tar.addfile(info, io.BytesIO(e.body) if regular else None)


def tree(root: Path) -> list[str]:
    """Every path below root, relative, sorted: what an unpack left anywhere."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


GOOD = Entry("adapter_config.json", body=b'{"r": 8}')

PLAIN = "only plain file names"
TYPE = "only regular files"
# case -> (entries after a good one, the reason the refusal must give)
REFUSED: dict[str, tuple[list[Entry], str]] = {
    "parent escape": ([Entry("../outside.txt")], "may not start with '.'"),
    "nested parent escape": ([Entry("x/../../planted")], PLAIN),
    "absolute path": ([Entry("{tmp}/abs-planted.txt")], PLAIN),  # {tmp}: the test's folder
    "subfolder": ([Entry("sub/run.sh")], PLAIN),
    "backslash": ([Entry("a\\b")], PLAIN),
    "bidi control": ([Entry("evil\u202etxt.sh")], PLAIN),
    "non-ascii": ([Entry("adapter\u00e9.json")], PLAIN),
    "hidden file": ([Entry(".bashrc")], "may not start with '.'"),
    "dot": ([Entry(".")], "may not start with '.'"),
    "too long": ([Entry("a" * 129)], "1 to 128 characters"),
    "empty name": ([Entry("")], "1 to 128 characters"),
    "symlink out": ([Entry("link", type=tarfile.SYMTYPE, link="/etc/passwd")], TYPE),
    "hardlink": ([Entry("a"), Entry("b", type=tarfile.LNKTYPE, link="a")], TYPE),
    "directory": ([Entry("sub", type=tarfile.DIRTYPE)], TYPE),
    "char device": ([Entry("tty", type=tarfile.CHRTYPE)], TYPE),
    "block device": ([Entry("sda", type=tarfile.BLKTYPE)], TYPE),
    "fifo": ([Entry("pipe", type=tarfile.FIFOTYPE)], TYPE),
    "contiguous file": ([Entry("contig", type=tarfile.CONTTYPE)], TYPE),
    "duplicate name": ([Entry("a"), Entry("a", body=b"second")], "appears twice"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsafe_archive_is_refused_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep")
    archive = tmp_path / "crafted.tar"
    # A good file first, so a refusal after some output was written is exercised too.
    crafted, reason = REFUSED[case]
    entries = [
        Entry(e.name.replace("{tmp}", str(tmp_path)), e.type, e.body, e.link, e.mode)
        for e in crafted
    ]
    craft(archive, [GOOD, *entries])
    with pytest.raises(tuna.UnpackError) as refused:
        unpack(archive, tmp_path / "target")
    assert "refused" in str(refused.value) and reason in str(refused.value)
    assert tree(tmp_path) == ["crafted.tar", "outside.txt"], f"{case}: something was left behind"
    assert outside.read_bytes() == b"keep"


def test_limits_on_entries_and_total_size(tmp_path: Path) -> None:
    archive = tmp_path / "many.tar"
    craft(archive, [Entry(f"f{i}") for i in range(5)])  # 5 files of 5 bytes
    with pytest.raises(tuna.UnpackError, match="more than 4 files"):
        unpack(archive, tmp_path / "out", max_entries=4)
    with pytest.raises(tuna.UnpackError, match="exceed 24 bytes"):
        unpack(archive, tmp_path / "out", max_total_bytes=24)
    assert tree(tmp_path) == ["many.tar"]
    unpack(archive, tmp_path / "out", max_entries=5, max_total_bytes=25)
    assert tree(tmp_path / "out") == [f"f{i}" for i in range(5)]


def test_truncated_and_garbage_archives_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    craft(archive, [GOOD, Entry("adapter_model.safetensors", body=b"x" * 5000)])
    data = archive.read_bytes()
    archive.write_bytes(data[: 512 * 4])  # ends inside the second file
    with pytest.raises(tuna.UnpackError):
        unpack(archive, tmp_path / "out")
    archive.write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(tuna.UnpackError):
        unpack(archive, tmp_path / "out")
    assert tree(tmp_path) == ["a.tar"]


def test_files_are_written_0644_whatever_the_archive_says(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    craft(archive, [Entry("run.sh", mode=0o6777)])
    out = unpack(archive, tmp_path / "out")
    assert out == tmp_path / "out"
    assert (out / "run.sh").read_bytes() == b"pwned"
    mode = stat.S_IMODE(os.stat(out / "run.sh").st_mode)
    assert mode & 0o7133 == 0, f"no exec, setuid, setgid or group/other write: {mode:o}"


def test_only_a_fresh_target_is_accepted(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    craft(archive, [Entry("adapter_config.json", body=b"new")])
    home = tmp_path / "home"
    home.mkdir()
    (home / "adapter_config.json").write_bytes(b"old")
    with pytest.raises(tuna.UnpackError, match="not an empty folder"):
        unpack(archive, home)
    assert (home / "adapter_config.json").read_bytes() == b"old"
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    with pytest.raises(tuna.UnpackError):
        unpack(archive, a_file)
    elsewhere = tmp_path / "empty-elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    with pytest.raises(tuna.UnpackError):
        unpack(archive, link)
    assert tree(elsewhere) == []
    # An empty folder is fine, and so is a missing one (parents created).
    empty = tmp_path / "fresh"
    empty.mkdir()
    unpack(archive, empty)
    assert (empty / "adapter_config.json").read_bytes() == b"new"
    unpack(archive, tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a/b/c/adapter_config.json").read_bytes() == b"new"
    leftovers = [p for p in tree(tmp_path) if ".tuna-unpack-" in p]
    assert leftovers == []
