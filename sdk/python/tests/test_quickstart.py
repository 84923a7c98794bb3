"""examples/quickstart.py runs end to end against the fixture server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TunaServer, tuna_bin


def test_quickstart_example(server: TunaServer, tmp_path: Path) -> None:
    env = {**os.environ, "TUNA_BIN": str(tuna_bin())}
    env.pop("TUNA_API_KEY", None)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "quickstart.py"),
            "--server",
            server.target,
            "--steps",
            "10",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "succeeded after 1 attempt(s)" in out
    assert "INVALID_ARGUMENT: spec.hyperparameters.learning_rate" in out
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
