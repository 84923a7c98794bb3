#!/usr/bin/env bash
# Starts a CUDA-built `tuna` on a machine without a GPU or NVIDIA driver (CI), through the
# libraries deploy/cuda/build.sh installed and the libcuda stub it generated:
#   1. `tuna worker --device cuda` must exit non-zero at start-up, naming the missing driver
#      and the way out (--device cpu), never register with the server;
#   2. the same binary must serve CPU jobs: `tuna demo` runs the whole service (control plane,
#      in-process CPU worker, one LoRA job) end to end.
#
#   bash deploy/cuda/smoke.sh [path/to/tuna]     # default target/cuda/debug/tuna
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$repo/target/cuda/debug/tuna}"
venv="${TUNA_CUDA_VENV:-$repo/.cache/venv-cuda}"
libs="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')"
stubs="$venv/link/stubs"
if [ ! -x "$bin" ] || [ ! -e "$stubs/libcuda.so.1" ]; then
  echo "deploy/cuda/smoke.sh: build first: bash deploy/cuda/build.sh --debug" >&2
  exit 2
fi
# The stub comes after everything else, so a real driver would win where one is installed.
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:$stubs"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

set +e
# Port 9 (discard) on loopback: a worker that got past the device check would retry there
# until the timeout, which this check reports as a failure.
timeout 60 "$bin" worker --device cuda --server http://127.0.0.1:9 >"$scratch/out" 2>&1
code=$?
set -e
if [ "$code" -eq 0 ] || [ "$code" -eq 124 ] \
  || ! grep -q "no NVIDIA driver" "$scratch/out" || ! grep -q -- "--device cpu" "$scratch/out"; then
  echo "deploy/cuda/smoke.sh: FAILED: --device cuda without a driver exited $code:" >&2
  cat "$scratch/out" >&2
  exit 1
fi
echo "deploy/cuda/smoke.sh: --device cuda refused (exit $code): $(grep -m1 'no NVIDIA driver' "$scratch/out")"

"$bin" demo --data-dir "$scratch/demo" --steps 5 >"$scratch/demo.out" 2>&1 || {
  echo "deploy/cuda/smoke.sh: FAILED: the CUDA binary did not run a CPU job:" >&2
  tail -20 "$scratch/demo.out" >&2
  exit 1
}
if ! grep -q "succeeded  attempt 1 ended: succeeded" "$scratch/demo.out"; then
  echo "deploy/cuda/smoke.sh: FAILED: the demo job did not succeed:" >&2
  tail -20 "$scratch/demo.out" >&2
  exit 1
fi
echo "deploy/cuda/smoke.sh: the CUDA binary ran a CPU job:$(grep -m1 'final eval loss' "$scratch/demo.out")"
