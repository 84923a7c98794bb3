"""A small sweep against a real server, followed to its best trial."""

from __future__ import annotations

from pathlib import Path

import pytest

import tuna
from tuna.spec_file import load_spec
from tuna.v1 import sweep_pb2

from conftest import REPO

SPEC = {
    "max_trials": 3,
    "parallelism": 1,
    "seed": 5,
    "objective": {"metric": "eval_loss", "direction": "DIRECTION_MINIMIZE"},
    "algorithm": {"name": "grid", "grid_levels": 3},
    "parameters": [
        {"name": "hyperparameters.learning_rate", "scale": "log", "min": 1e-3, "max": 5e-2}
    ],
    "template": {
        "method": {"type": "lora", "lora": {"r": 4}},
        "hyperparameters": {"max_steps": 6, "batch_size": 8, "eval_every": 3, "seed": 1},
    },
}


def test_grid_sweep_to_its_best_trial(
    client: tuna.Client, model: tuna.Model, dataset: tuna.File, tmp_path: Path
) -> None:
    sweep = client.sweeps.create(SPEC, model=model, training_file=dataset, validation_file=dataset)
    assert sweep.id.startswith("swp_") and sweep.state is tuna.SweepState.RUNNING
    assert sweep.spec.template.training_file == dataset.id
    snapshots = list(client.sweeps.watch(sweep.id))
    assert snapshots and snapshots[-1].sweep.state is tuna.SweepState.SUCCEEDED
    final = client.sweeps.wait(sweep.id, timeout=10)
    assert final.state is tuna.SweepState.SUCCEEDED, final.message
    assert final.trials_finished == 3 and final.trials_running == 0

    trials = client.sweeps.trials(sweep.id)
    assert [t.trial for t in trials] == [0, 1, 2]
    assert all(t.job_state is tuna.JobState.SUCCEEDED and t.observed for t in trials)
    rates = sorted(t.params["hyperparameters.learning_rate"] for t in trials)
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(5e-2)
    objectives = {t.job_id: t.objective for t in trials}
    assert all(v is not None for v in objectives.values())

    best = client.sweeps.best_trial(sweep.id)
    assert best is not None and final.best_trial == best
    assert best.objective == min(v for v in objectives.values() if v is not None)
    assert {j.id for j in client.jobs.list(sweep_id=sweep.id)} == set(objectives)
    adapter = client.artifacts.download(best.job_id, tmp_path / "best")
    assert (adapter / "adapter_model.safetensors").is_file()
    assert sweep.id in [s.id for s in client.sweeps.list()]


def test_sweep_spec_files_and_refusals(client: tuna.Client, dataset: tuna.File) -> None:
    shipped = load_spec(REPO / "examples" / "sweep.toml", sweep_pb2.SweepSpec)
    assert shipped.max_trials == 8 and shipped.algorithm.asha.min_resource == 4
    assert [p.name for p in shipped.parameters] == [
        "hyperparameters.learning_rate",
        "method.lora.r",
    ]
    with pytest.raises(ValueError, match="max_trails"):
        client.sweeps.create({"max_trails": 3})
    bad = {**SPEC, "parameters": [{**SPEC["parameters"][0], "min": 1.0, "max": 0.1}]}
    with pytest.raises(tuna.InvalidArgument) as refused:
        client.sweeps.create(bad, model="tiny-llama", training_file=dataset)
    assert any(f.startswith("spec.parameters[0]") for f in refused.value.fields), refused.value
