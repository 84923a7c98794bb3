"""Fixtures: a real ``tuna server --embedded-worker`` process (SQLite + local blobs + an
in-process CPU worker), a tiny seeded Llama model and the arithmetic dataset.

The binary is ``$TUNA_BIN``, else ``<repo>/target/debug/tuna``; tests that need it fail
(not skip) when it is missing, so CI cannot pass without exercising the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tuna

SDK = Path(__file__).resolve().parent.parent
REPO = SDK.parent.parent
DATASET = REPO / "examples" / "data" / "arithmetic.jsonl"
MODEL_NAME = "tiny-llama"


def tuna_bin() -> Path:
    """The ``tuna`` binary under test."""
    path = Path(os.environ.get("TUNA_BIN") or REPO / "target" / "debug" / "tuna")
    if not path.is_file():
        pytest.fail(f"the tuna binary {path} is missing: build it or set TUNA_BIN")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TunaServer:
    """One ``tuna server --embedded-worker`` process that can be killed and restarted on the
    same port and data folder."""

    def __init__(self, data_dir: Path, *, lease_ms: int = 5000, extra: list[str] | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.lease_ms = lease_ms
        self.extra = extra or []
        self.log_path = data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, env: dict[str, str] | None = None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(tuna_bin()),
            "server",
            "--embedded-worker",
            "--listen",
            self.target,
            "--data-dir",
            str(self.data_dir),
            "--lease-ms",
            str(self.lease_ms),
            *self.extra,
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, **(env or {})},
            )
        self._wait_listening()

    def _wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"tuna server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"tuna server did not listen on {self.target} in {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, the worker's lease is left to expire."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


def make_tiny_model(out: Path, seed: int = 1) -> Path:
    subprocess.run(
        [str(tuna_bin()), "models", "make-tiny", "--out", str(out), "--seed", str(seed)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunaServer]:
    """The shared server (stopped at the end of the session)."""
    srv = TunaServer(tmp_path_factory.mktemp("tuna-data"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server: TunaServer) -> Iterator[tuna.Client]:
    with tuna.Client(server.target, timeout=30) as c:
        c.wait_ready()
        yield c


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def model(client: tuna.Client, tiny_model_dir: Path) -> tuna.Model:
    """The tiny model, registered once per session."""
    try:
        return client.models.get(MODEL_NAME)
    except tuna.NotFound:
        return client.models.register(MODEL_NAME, tiny_model_dir)


@pytest.fixture(scope="session")
def dataset(client: tuna.Client) -> tuna.File:
    return client.files.upload(DATASET)


@dataclass
class TrainedJob:
    job: tuna.Job
    updates: list[tuna.JobUpdate]


@pytest.fixture(scope="session")
def trained_job(client: tuna.Client, model: tuna.Model, dataset: tuna.File) -> TrainedJob:
    """A LoRA job with a validation file, followed with ``watch()`` from its creation to
    its end."""
    job = client.jobs.create(
        model=model,
        training_file=dataset,
        validation_file=dataset,
        method=tuna.LoRA(r=8, alpha=16, target_modules=["q_proj", "v_proj"]),
        hyperparameters=tuna.Hyperparameters(
            learning_rate=5e-3,
            max_steps=20,
            batch_size=8,
            eval_every=10,
            checkpoint_every=10,
            seed=7,
        ),
        labels={"suite": "sdk", "case": "trained"},
    )
    updates = list(job.watch())
    return TrainedJob(job=job.refresh(), updates=updates)
