"""Jobs against a real server: a LoRA job watched to the end, its adapter, refusals,
idempotency, waiting, cancelling and listing."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

import tuna

from conftest import TrainedJob


def test_lora_job_watch_is_gap_free_and_carries_metrics(trained_job: TrainedJob) -> None:
    job, updates = trained_job.job, trained_job.updates
    assert job.state is tuna.JobState.SUCCEEDED, job.failure
    # seq is per job, strictly increasing and gap-free across events and metrics together
    # (job.proto), and watch() from 0 delivers all of it: 1, 2, ..., last_seq.
    seqs = [u.seq for u in updates]
    assert seqs == list(range(1, job.last_seq + 1))
    events = [u for u in updates if isinstance(u, tuna.JobEvent)]
    metrics = [u for u in updates if isinstance(u, tuna.MetricPoint)]
    assert events[0].kind == "created" and events[0].state is tuna.JobState.QUEUED
    assert "claimed" in [e.kind for e in events]
    assert updates[-1] == events[-1] and events[-1].state is tuna.JobState.SUCCEEDED
    assert all(not e.state.is_terminal for e in events[:-1])
    train_steps = sorted({m.step for m in metrics if "loss" in m.values})
    assert train_steps == list(range(1, 21))
    assert all(m.values["loss"] > 0 for m in metrics if "loss" in m.values)
    evals = [m for m in metrics if "eval_loss" in m.values]
    assert evals and evals[-1].step == 20
    assert all(m.time is not None and m.attempt == 1 for m in metrics)


def test_download_the_adapter_verified(
    client: tuna.Client, trained_job: TrainedJob, tmp_path: Path
) -> None:
    job = trained_job.job
    adapters = client.artifacts.list(job.id, kind="adapter")
    assert len(adapters) == 1
    adapter = adapters[0]
    assert adapter.kind is tuna.ArtifactKind.ADAPTER and adapter.step == 20
    assert len(adapter.sha256) == 64 and adapter.size_bytes > 0
    assert client.artifacts.get(adapter.id) == adapter

    dest = client.artifacts.download(job.id, tmp_path / "adapter")
    assert dest == tmp_path / "adapter"
    assert sorted(p.name for p in dest.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((dest / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    # A real safetensors file with LoRA A/B matrices.
    raw = (dest / "adapter_model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    tensors = json.loads(raw[8 : 8 + header_len])
    assert any("lora_A" in name for name in tensors)
    assert any("lora_B" in name for name in tensors)
    # Nothing but the adapter was left beside it (the verified tar was removed).
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]

    # By artifact id, and through the Job object; a used folder is refused.
    again = client.artifacts.download(adapter.id, tmp_path / "by-id")
    assert (again / "adapter_model.safetensors").read_bytes() == raw
    assert (job.download(tmp_path / "via-job") / "adapter_model.safetensors").read_bytes() == raw
    with pytest.raises(tuna.UnpackError):
        client.artifacts.download(adapter, dest)


def test_checkpoints_and_events(client: tuna.Client, trained_job: TrainedJob) -> None:
    job = trained_job.job
    checkpoints = client.jobs.checkpoints(job.id)
    assert [c.step for c in checkpoints] == [10, 20]
    assert all(c.kind is tuna.ArtifactKind.CHECKPOINT for c in checkpoints)
    events = list(client.jobs.events(job.id, page_size=2))  # several pages
    watched = [u for u in trained_job.updates if isinstance(u, tuna.JobEvent)]
    assert [(e.seq, e.kind) for e in events] == [(e.seq, e.kind) for e in watched]


def test_invalid_argument_names_the_fields(
    client: tuna.Client, model: tuna.Model, dataset: tuna.File
) -> None:
    with pytest.raises(tuna.InvalidArgument) as refused:
        client.jobs.create(
            model=model,
            training_file=dataset,
            hyperparameters=tuna.Hyperparameters(learning_rate=-1, max_steps=5),
        )
    error = refused.value
    assert error.code.name == "INVALID_ARGUMENT"
    assert error.fields == ["spec.hyperparameters.learning_rate"]
    assert "learning_rate" in error.message
    with pytest.raises(tuna.InvalidArgument) as several:
        client.jobs.create(
            model=model,
            training_file=dataset,
            method=tuna.LoRA(r=0, dropout=1.5),
            hyperparameters=tuna.Hyperparameters(learning_rate=-1),
        )
    assert {
        "spec.method.lora.r",
        "spec.method.lora.dropout",
        "spec.hyperparameters.learning_rate",
    } <= set(several.value.fields)


def test_request_id_makes_create_idempotent(
    client: tuna.Client, model: tuna.Model, dataset: tuna.File
) -> None:
    request_id = f"sdk-idem-{time.time_ns()}"
    args = dict(
        model=model,
        training_file=dataset,
        method=tuna.LoRA(r=4),
        hyperparameters=tuna.Hyperparameters(learning_rate=1e-3, max_steps=2),
        labels={"suite": "sdk", "case": "idempotent"},
    )
    first = client.jobs.create(**args, request_id=request_id)
    try:
        second = client.jobs.create(**args, request_id=request_id)
        assert second.id == first.id and second.request_id == request_id
        with pytest.raises(tuna.AlreadyExists):
            client.jobs.create(**{**args, "method": tuna.LoRA(r=8)}, request_id=request_id)
    finally:
        first.cancel()
    assert first.wait(timeout=60).state in (tuna.JobState.CANCELLED, tuna.JobState.SUCCEEDED)


def test_wait_times_out_then_cancel_ends_the_job(
    client: tuna.Client, model: tuna.Model, dataset: tuna.File
) -> None:
    job = client.jobs.create(
        model=model,
        training_file=dataset,
        hyperparameters=tuna.Hyperparameters(learning_rate=1e-3, max_steps=100_000),
        labels={"suite": "sdk", "case": "cancelled"},
    )
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        job.wait(timeout=1.5)
    assert 1.4 <= time.monotonic() - started < 10
    with pytest.raises(tuna.FailedPrecondition):
        client.jobs.delete(job.id)  # only finished jobs can be deleted
    cancelling = job.cancel()
    assert cancelling.state in (tuna.JobState.CANCELLING, tuna.JobState.CANCELLED)
    final = job.wait(timeout=60)
    assert final.state is tuna.JobState.CANCELLED and final.is_terminal
    with pytest.raises(tuna.FailedPrecondition):
        client.jobs.resume(job.id)
    client.jobs.delete(job.id)
    with pytest.raises(tuna.NotFound):
        client.jobs.get(job.id)


def test_list_filters_by_labels_and_states(client: tuna.Client, trained_job: TrainedJob) -> None:
    job = trained_job.job
    labelled = list(client.jobs.list(labels={"case": "trained"}))
    assert [j.id for j in labelled] == [job.id]
    assert labelled[0].labels == {"suite": "sdk", "case": "trained"}
    assert labelled[0].model == "tiny-llama"
    succeeded = {j.id for j in client.jobs.list(states=["succeeded"], page_size=1)}
    assert job.id in succeeded
    assert list(client.jobs.list(states=[tuna.JobState.QUEUED], labels={"case": "trained"})) == []


def test_a_merge_job_merges_finished_lora_jobs_on_a_worker(
    client: tuna.Client, model: tuna.Model, dataset: tuna.File, trained_job: TrainedJob
) -> None:
    other = client.jobs.create(
        model=model,
        training_file=dataset,
        method=tuna.LoRA(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
        hyperparameters=tuna.Hyperparameters(learning_rate=1e-2, max_steps=10, batch_size=8, seed=7),
    ).wait()
    assert other.state is tuna.JobState.SUCCEEDED, other.failure
    with pytest.raises(tuna.InvalidArgument) as twice:
        client.jobs.merge(model=model, merge=tuna.Merge(sources=[trained_job.job, trained_job.job]))
    assert twice.value.fields == ["spec.merge.sources[1]"]
    merged = client.jobs.merge(
        model=model,
        merge=tuna.Merge(sources=[trained_job.job, other], method="model_stock"),
        validation_file=dataset,
    )
    values: dict[str, float] = {}
    for update in merged.watch():
        if isinstance(update, tuna.MetricPoint):
            values.update(update.values)
    merged = merged.refresh()
    assert merged.state is tuna.JobState.SUCCEEDED, merged.failure
    assert merged.spec.task == "merge" and list(merged.spec.merge.sources) == [
        trained_job.job.id,
        other.id,
    ]
    assert values["eval_loss"] > 0
    assert 0 <= values["model_stock_ratio"] <= 1
    # Rank 0 = 8 + 4: the merge is held exactly.
    assert values["merge_reconstruction_error"] < 1e-6


def test_a_lofi_job_trains_its_shards_then_averages_them(
    client: tuna.Client, model: tuna.Model, dataset: tuna.File
) -> None:
    job = client.jobs.create(
        model=model,
        training_file=dataset,
        validation_file=dataset,
        method=tuna.LoRA(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
        hyperparameters=tuna.Hyperparameters(learning_rate=1e-2, max_steps=6, batch_size=4, seed=3),
        replicas=2,
    )
    assert job.spec.replicas == 2 and job.parent_job_id == ""
    values: dict[str, float] = {}
    kinds = []
    for update in job.watch():
        if isinstance(update, tuna.MetricPoint):
            values.update(update.values)
        else:
            kinds.append(update.kind)
    job = job.refresh()
    assert job.state is tuna.JobState.SUCCEEDED, job.failure
    shards = [j for j in client.jobs.list() if j.parent_job_id == job.id]
    assert sorted(s.shard_index for s in shards) == [0, 1]
    assert all(s.state is tuna.JobState.SUCCEEDED for s in shards)
    assert kinds.count("shard") >= 4  # each shard's claim and end
    assert {"source0_eval_loss", "source1_eval_loss", "eval_loss"} <= values.keys()


def test_a_bf16_base_with_gradient_checkpointing_trains_on_a_cpu_worker(
    client: tuna.Client, model: tuna.Model, dataset: tuna.File
) -> None:
    job = client.jobs.create(
        model=model,
        training_file=dataset,
        method=tuna.LoRA(r=4),
        hyperparameters=tuna.Hyperparameters(
            learning_rate=1e-3, max_steps=2, gradient_checkpointing=True
        ),
        resources=tuna.Resources(device="cpu", dtype="bf16"),
    )
    assert job.spec.resources.dtype == "bf16"
    assert job.spec.hyperparameters.gradient_checkpointing
    job = job.wait(timeout=300)
    assert job.state is tuna.JobState.SUCCEEDED, job.failure
    with pytest.raises(tuna.InvalidArgument) as refused:
        client.jobs.create(
            model=model,
            training_file=dataset,
            hyperparameters=tuna.Hyperparameters(optimizer="mezo", gradient_checkpointing=True),
        )
    assert refused.value.fields == ["spec.hyperparameters.gradient_checkpointing"]
