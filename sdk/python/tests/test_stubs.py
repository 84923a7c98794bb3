"""The committed stubs are exactly what the pinned generator makes of the current protos."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gen_stubs.py"


def _gen_stubs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_stubs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_stubs"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    gen = _gen_stubs()
    gen.generate(tmp_path)
    generated = sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
    )
    # Every API proto produced its modules (the comparison below is not vacuous).
    protos = sorted(p.stem for p in (gen.API_PROTO / "tuna" / "v1").glob("*.proto"))
    assert protos, "no protos found"
    for stem in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert f"tuna/v1/{stem}{suffix}" in generated
    stale = gen.stale_files(tmp_path)
    assert stale == [], (
        f"stale generated stubs {stale}: run `python sdk/python/scripts/gen_stubs.py` "
        "and commit the result"
    )


def test_stale_stub_is_detected(tmp_path: Path) -> None:
    """The comparison itself catches a changed, a missing and an extra file."""
    gen = _gen_stubs()
    gen.generate(tmp_path)
    (tmp_path / "tuna/v1/job_pb2.py").write_text("# edited\n")
    (tmp_path / "tuna/v1/file_pb2.pyi").unlink()
    (tmp_path / "tuna/_rpc/extra_pb2.py").write_text("")
    assert gen.stale_files(tmp_path) == [
        "tuna/v1/file_pb2.pyi",
        "tuna/v1/job_pb2.py",
        "tuna/_rpc/extra_pb2.py",
    ]
