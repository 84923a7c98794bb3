"""The asyncio client runs one full flow: model, dataset, job, watch, wait, adapter."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

import tuna
import tuna.aio

from conftest import DATASET, TunaServer


def test_async_client_full_flow(server: TunaServer, tiny_model_dir: Path, tmp_path: Path) -> None:
    async def flow() -> None:
        async with tuna.aio.AsyncClient(server.target) as client:
            await client.wait_ready()
            model = await client.models.register("tiny-async", tiny_model_dir)
            assert model.name == "tiny-async" and model.format is tuna.ModelFormat.HF
            progress: list[tuple[int, int]] = []
            data = await client.files.upload(
                DATASET, progress=lambda sent, total: progress.append((sent, total))
            )
            assert data.sha256 == hashlib.sha256(DATASET.read_bytes()).hexdigest()
            assert progress[-1] == (data.size_bytes, data.size_bytes)

            def failing(sent: int, total: int) -> None:
                raise RuntimeError("stop the upload")

            with pytest.raises(RuntimeError, match="stop the upload"):
                await client.files.upload(DATASET, progress=failing)

            with pytest.raises(tuna.InvalidArgument) as refused:
                await client.jobs.create(
                    model=model,
                    training_file=data,
                    hyperparameters=tuna.Hyperparameters(learning_rate=-1),
                )
            assert refused.value.fields == ["spec.hyperparameters.learning_rate"]

            job = await client.jobs.create(
                model=model,
                training_file=data,
                method=tuna.DoRA(r=4),
                hyperparameters=tuna.Hyperparameters(learning_rate=5e-3, max_steps=8),
                labels={"suite": "sdk", "case": "async"},
            )
            assert isinstance(job, tuna.AsyncJob) and job.state is tuna.JobState.QUEUED
            seqs = []
            steps = set()
            async for update in job.watch():
                seqs.append(update.seq)
                if isinstance(update, tuna.MetricPoint) and "loss" in update.values:
                    steps.add(update.step)
            final = await job.wait(timeout=30)
            assert final.state is tuna.JobState.SUCCEEDED, final.failure
            assert seqs == list(range(1, final.last_seq + 1))
            assert steps == set(range(1, 9))
            assert final.spec.method.type == "dora"

            listed = [j.id async for j in client.jobs.list(labels={"case": "async"})]
            assert listed == [job.id]
            events = [e.kind async for e in job.events()]
            assert events[0] == "created" and events[-1] == "succeeded"
            adapters = await job.artifacts(kind="adapter")
            assert len(adapters) == 1
            dest = await client.artifacts.download(job.id, tmp_path / "adapter")
            names = sorted(p.name for p in dest.iterdir())
            assert names == ["adapter_config.json", "adapter_model.safetensors"]

    asyncio.run(flow())
