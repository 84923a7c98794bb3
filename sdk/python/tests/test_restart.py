"""A watch survives the server process being killed and restarted mid-job: it reconnects
after the last seq it delivered, and the sequence stays gap-free without duplicates."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

import tuna
import tuna.aio

from conftest import DATASET, TunaServer, make_tiny_model


def test_watch_reconnects_across_a_server_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A short lease, so the restarted server reclaims the dead worker's job quickly.
    server = TunaServer(tmp_path / "data", lease_ms=1500)
    server.start()
    restarter: threading.Timer | None = None
    try:
        policy = tuna.RetryPolicy(initial_backoff=0.1, max_backoff=1.0, max_elapsed=60)
        with tuna.Client(server.target, retry=policy) as client:
            client.models.register("tiny", make_tiny_model(tmp_path / "tiny"))
            data = client.files.upload(DATASET)
            job = client.jobs.create(
                model="tiny",
                training_file=data,
                method=tuna.LoRA(r=4),
                hyperparameters=tuna.Hyperparameters(
                    learning_rate=5e-3, max_steps=40, batch_size=8, checkpoint_every=10
                ),
            )
            caplog.set_level(logging.INFO, logger="tuna")
            updates: list[tuna.JobUpdate] = []
            seq_at_kill = None
            for update in job.watch():
                updates.append(update)
                if (
                    seq_at_kill is None
                    and isinstance(update, tuna.MetricPoint)
                    and update.step >= 5
                ):
                    seq_at_kill = update.seq
                    server.kill()
                    # Down for a while: the watch retries against a closed port meanwhile.
                    restarter = threading.Timer(1.5, server.start)
                    restarter.start()
            assert restarter is not None
            restarter.join()
            final = job.refresh()
    finally:
        if restarter is not None:
            restarter.cancel()
            restarter.join()
        server.stop()

    assert seq_at_kill is not None
    assert final.state is tuna.JobState.SUCCEEDED, (final.failure, server.log())
    seqs = [u.seq for u in updates]
    assert seqs == list(range(1, final.last_seq + 1)), "gaps or duplicates across the restart"
    assert seqs[-1] > seq_at_kill
    # The job really was interrupted and reclaimed: a second attempt finished it.
    assert final.attempt >= 2
    assert any(isinstance(u, tuna.JobEvent) and u.attempt >= 2 for u in updates)
    assert updates[-1].state is tuna.JobState.SUCCEEDED  # type: ignore[union-attr]
    reconnects = [r for r in caplog.records if "reconnecting" in r.getMessage()]
    assert reconnects, "the watch never had to reconnect"


def test_async_watch_reconnects_across_a_graceful_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The asyncio client, with the server stopped gracefully (SIGTERM): open watches get
    UNAVAILABLE ("server shutting down") and resume on the restarted server."""
    server = TunaServer(tmp_path / "data", lease_ms=1500)
    server.start()

    async def flow() -> tuple[list[int], int, tuna.AsyncJob]:
        policy = tuna.RetryPolicy(initial_backoff=0.1, max_backoff=1.0, max_elapsed=60)
        async with tuna.aio.AsyncClient(server.target, retry=policy) as client:
            await client.models.register("tiny", make_tiny_model(tmp_path / "tiny"))
            data = await client.files.upload(DATASET)
            job = await client.jobs.create(
                model="tiny",
                training_file=data,
                method=tuna.LoRA(r=4),
                hyperparameters=tuna.Hyperparameters(
                    learning_rate=5e-3, max_steps=30, batch_size=8, checkpoint_every=10
                ),
            )
            seqs: list[int] = []
            seq_at_stop = 0
            async for update in job.watch():
                seqs.append(update.seq)
                if not seq_at_stop and isinstance(update, tuna.MetricPoint) and update.step >= 5:
                    seq_at_stop = update.seq
                    # Off the event loop: stopping and starting block.
                    await asyncio.to_thread(server.stop)
                    await asyncio.to_thread(server.start)
            return seqs, seq_at_stop, await job.refresh()

    caplog.set_level(logging.INFO, logger="tuna")
    try:
        seqs, seq_at_stop, final = asyncio.run(flow())
    finally:
        server.stop()
    assert seq_at_stop and seqs[-1] > seq_at_stop
    assert final.state is tuna.JobState.SUCCEEDED, (final.failure, server.log())
    assert seqs == list(range(1, final.last_seq + 1))
    assert any("shutting down" in r.getMessage() for r in caplog.records)
