#!/usr/bin/env python3
"""Regenerates the SDK's committed protobuf and gRPC stubs.

Inputs:

* the API contract, ``<repo>/proto/tuna/v1/*.proto`` -> ``src/tuna/v1/`` (messages, ``.pyi``
  type stubs and gRPC service stubs);
* the SDK's own copy of the ``google.rpc`` error model, ``sdk/python/proto/tuna/_rpc/*.proto``
  -> ``src/tuna/_rpc/`` (messages and ``.pyi`` only).

Usage::

    python sdk/python/scripts/gen_stubs.py            # rewrite src/tuna/v1 and src/tuna/_rpc
    python sdk/python/scripts/gen_stubs.py --check    # exit 1 if the committed stubs are stale

It needs ``grpcio-tools`` at exactly :data:`GRPCIO_TOOLS_VERSION` (the generated code records
the protobuf and gRPC versions it came from, so another version produces different files).
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import importlib.resources
import shutil
import sys
import tempfile
from pathlib import Path

SDK = Path(__file__).resolve().parent.parent
REPO = SDK.parent.parent
API_PROTO = REPO / "proto"
SDK_PROTO = SDK / "proto"
SRC = SDK / "src"

#: The grpcio-tools release the committed stubs were generated with (also pinned in ci.sh and
#: the ``dev`` extra of pyproject.toml).
GRPCIO_TOOLS_VERSION = "1.85.4"

#: Generated packages, relative to ``src/`` (and to their proto root): the proto root they come
#: from and whether they get gRPC service stubs.
PACKAGES: dict[str, tuple[Path, bool]] = {
    "tuna/v1": (API_PROTO, True),
    "tuna/_rpc": (SDK_PROTO, False),
}

_INIT = '"""Generated from {source} by sdk/python/scripts/gen_stubs.py; do not edit."""\n'


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    argv = ["grpc_tools.protoc", f"-I{API_PROTO}", f"-I{SDK_PROTO}", f"-I{include}", *args]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(argv)}")


def generate(out: Path) -> None:
    """Writes every generated package into ``out`` (a ``src``-like root)."""
    installed = importlib.metadata.version("grpcio-tools")
    if installed != GRPCIO_TOOLS_VERSION:
        raise RuntimeError(
            f"grpcio-tools {installed} is installed; the stubs are generated with "
            f"grpcio-tools=={GRPCIO_TOOLS_VERSION}"
        )
    for package, (root, with_services) in PACKAGES.items():
        files = [str(p) for p in sorted((root / package).glob("*.proto"))]
        if not files:
            raise FileNotFoundError(f"no .proto files in {root / package}")
        outputs = [f"--python_out={out}", f"--pyi_out={out}"]
        if with_services:
            outputs.append(f"--grpc_python_out={out}")
        _protoc([*outputs, *files])
        source = (root / package).relative_to(REPO).as_posix()
        (out / package / "__init__.py").write_text(_INIT.format(source=source))


def stale_files(generated: Path, committed: Path = SRC) -> list[str]:
    """Paths (relative to the roots) that differ between two ``src``-like roots, in the
    generated packages only: changed, missing or extra files."""
    diffs: list[str] = []
    for package in PACKAGES:
        new, old = generated / package, committed / package
        names_new = {p.name for p in new.iterdir() if p.is_file()} if new.is_dir() else set()
        names_old = (
            {p.name for p in old.iterdir() if p.is_file() and not p.name.endswith(".pyc")}
            if old.is_dir()
            else set()
        )
        for name in sorted(names_new | names_old):
            a, b = new / name, old / name
            if not (a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)):
                diffs.append(f"{package}/{name}")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 if the stubs are stale"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tuna-stubs-") as tmp:
        out = Path(tmp)
        generate(out)
        diffs = stale_files(out)
        if args.check:
            for d in diffs:
                print(f"stale: src/{d}", file=sys.stderr)
            return 1 if diffs else 0
        for package in PACKAGES:
            target = SRC / package
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(out / package, target)
        print(f"regenerated {', '.join('src/' + p for p in PACKAGES)} ({len(diffs)} files changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
