#!/usr/bin/env python3
"""Tuna's quick start with the Python SDK (``pip install ./sdk/python``).

The same walk as ``examples/quickstart.sh`` drives with the CLI, against a running server
(for example ``tuna server --embedded-worker --listen 127.0.0.1:50051``):

1. a tiny seeded Llama model (``tuna models make-tiny``), registered as ``tiny-llama``;
2. the arithmetic dataset, uploaded and validated line by line;
3. a LoRA job, created twice with the same request id (one job), followed live;
4. a refused request naming its field;
5. the adapter downloaded, sha256-verified and unpacked.

    python examples/quickstart.py --server 127.0.0.1:50051

Exit status 0 when the job succeeded and the adapter was downloaded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tuna

REPO = Path(__file__).resolve().parent.parent
MODEL = "tiny-llama"


def tuna_binary(explicit: str | None) -> str:
    """The ``tuna`` binary that writes the tiny model: --tuna, $TUNA_BIN, the repo's debug
    build, or ``tuna`` on PATH."""
    for candidate in (explicit, os.environ.get("TUNA_BIN"), REPO / "target" / "debug" / "tuna"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    found = shutil.which("tuna")
    if found is None:
        sys.exit("error: no tuna binary (pass --tuna, set TUNA_BIN or build it with cargo)")
    return found


def ensure_model(client: tuna.Client, args: argparse.Namespace, work: Path) -> tuna.Model:
    try:
        model = client.models.get(MODEL)
        print(f"   {MODEL} is already registered ({len(model.files)} files)")
        return model
    except tuna.NotFound:
        pass
    folder = Path(args.model_dir) if args.model_dir else work / MODEL
    if not args.model_dir:
        subprocess.run(
            [tuna_binary(args.tuna), "models", "make-tiny", "--out", str(folder), "--seed", "1"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    model = client.models.register(MODEL, folder)
    print(f"   registered {model.name}: {', '.join(f.path for f in model.files)}")
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=None, help="host:port (default $TUNA_SERVER)")
    parser.add_argument("--api-key", default=None, help="default $TUNA_API_KEY")
    parser.add_argument("--tuna", default=None, help="tuna binary for `models make-tiny`")
    parser.add_argument("--model-dir", default=None, help="use this model folder instead")
    parser.add_argument("--data", default=str(REPO / "examples" / "data" / "arithmetic.jsonl"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=None, help="where the adapter goes (default: temp)")
    args = parser.parse_args()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tuna-quickstart-"))
    work.mkdir(parents=True, exist_ok=True)

    with tuna.Client(args.server, api_key=args.api_key) as client:
        client.wait_ready()
        print(f"== a tiny seeded Llama model, registered as {MODEL} (server {client.target})")
        model = ensure_model(client, args, work)

        print("== upload the dataset (validated line by line)")
        data = client.files.upload(
            args.data, progress=lambda sent, total: print(f"   {sent}/{total} bytes")
        )
        print(f"   {data.id}: {data.line_count} {data.format} records, sha256 {data.sha256}")

        print("== a LoRA job, created twice with the same request id (one job), followed live")
        request_id = f"quickstart-{time.time_ns()}"

        def create() -> tuna.Job:
            return client.jobs.create(
                model=model,
                training_file=data,
                method=tuna.LoRA(r=8),
                hyperparameters=tuna.Hyperparameters(learning_rate=5e-3, max_steps=args.steps),
                labels={"team": "nlp"},
                request_id=request_id,
            )

        job, again = create(), create()
        if job.id != again.id:
            print(f"error: idempotency broken: {job.id} vs {again.id}", file=sys.stderr)
            return 1
        print(f"   {job.id} (request id {request_id})")
        for update in job.watch():
            if isinstance(update, tuna.JobEvent):
                print(f"   [{update.seq:>3}] {update.kind:<14} {update.state}  {update.message}")
            elif update.step % 5 == 0 and "loss" in update.values:
                print(
                    f"   [{update.seq:>3}] step {update.step:>4}  loss {update.values['loss']:.4f}"
                )
        job = job.refresh()
        print(f"   {job.id} {job.state} after {job.attempt} attempt(s)")
        if not job.succeeded:
            print(f"error: the job ended {job.state}: {job.failure}", file=sys.stderr)
            return 1

        print("== a bad request names the field")
        try:
            client.jobs.create(
                model=model,
                training_file=data,
                hyperparameters=tuna.Hyperparameters(learning_rate=-1),
            )
            print("error: a negative learning rate was accepted", file=sys.stderr)
            return 1
        except tuna.InvalidArgument as e:
            for v in e.field_violations:
                print(f"   {e.code.name if e.code else ''}: {v.field}: {v.description}")

        print("== download the adapter (sha256 verified, unpacked safely)")
        adapter = client.artifacts.download(job.id, work / "adapter")
        for path in sorted(adapter.iterdir()):
            print(f"   {path}  {path.stat().st_size} bytes")
    print(f"== done: the adapter is in {adapter}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
