#!/usr/bin/env bash
# Builds `tuna` with CUDA on a machine without a GPU or a system CUDA toolkit: installs the
# CUDA 13.0 compiler, headers and runtime from PyPI into a local virtual environment and
# points candle's kernel build (nvcc → PTX) at it.
#
#   bash deploy/cuda/build.sh            # cargo build --release -p tuna --features cuda
#   bash deploy/cuda/build.sh --check    # cargo check only (what CI runs: proves the toolchain)
#   CUDA_COMPUTE_CAP=80 bash deploy/cuda/build.sh   # A100; 89 = L4/L40/RTX 40xx; default 90
#
# The 13.0 line is pinned (nvcc, nvvm, crt, cccl, runtime together: a newer nvvm emits PTX
# that 13.0's ptxas refuses) so its PTX loads on an R580 driver. Linking (the full build)
# also needs libcuda and cuBLAS/cuRAND/NVRTC to link against (candle's cudarc links them
# dynamically): set LIBRARY_PATH to a CUDA toolkit's lib64 and lib64/stubs, as
# deploy/Dockerfile.cuda does; `--check` needs none of that.
#
# Until the engine trains on CUDA, a CUDA build still trains on the CPU only, and
# `tuna worker --device cuda` refuses to start (docs/engine-notes.md §1.8).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${TUNA_CUDA_VENV:-$repo/.cache/venv-cuda}"
python="${PYTHON:-python3}"
cap="${CUDA_COMPUTE_CAP:-90}"
case "$cap" in
  80|86|89|90) ;;
  *) echo "deploy/cuda/build.sh: CUDA_COMPUTE_CAP=$cap; expected 80, 86, 89 or 90" >&2; exit 2 ;;
esac
mode=build
case "${1:-}" in
  --check) mode=check ;;
  "") ;;
  *) echo "deploy/cuda/build.sh: unknown argument $1 (use --check or nothing)" >&2; exit 2 ;;
esac

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
  "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-runtime==13.0.96"
cuda="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
if [ ! -x "$cuda/bin/nvcc" ]; then
  echo "deploy/cuda/build.sh: no nvcc under $cuda" >&2
  exit 1
fi
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_HOME="$cuda"
export CUDA_COMPUTE_CAP="$cap"
# Its own target folder: CUDA changes candle's build, which would otherwise rebuild the CPU
# binary's dependencies on every switch.
export CARGO_TARGET_DIR="${TUNA_CUDA_TARGET_DIR:-$repo/target/cuda}"
nvcc --version | tail -1
cd "$repo"
if [ "$mode" = check ]; then
  cargo check --locked -p tuna --features cuda
else
  cargo build --release --locked -p tuna --features cuda
  echo "deploy/cuda/build.sh: $CARGO_TARGET_DIR/release/tuna (sm_$cap)"
fi
