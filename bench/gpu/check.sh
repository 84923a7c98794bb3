#!/usr/bin/env bash
# The GPU device check (issue: GPU workers). Runs from the repository root on a machine with
# an NVIDIA GPU, PyTorch, transformers and PEFT, given a prebuilt CUDA `tuna` binary (no Rust
# toolchain needed there):
#
#   TUNA_BIN=path/to/tuna bash bench/gpu/check.sh            # correctness + speed
#   TUNA_BIN=path/to/tuna bash bench/gpu/check.sh --quick    # correctness only
#   bash bench/gpu/check.sh --cpu-only                        # the check's own plumbing, no GPU
#
# Build the binary with `bash deploy/cuda/build.sh` (CUDA_COMPUTE_CAP=90 for H100/H200); it
# needs the CUDA 13 cuBLAS/cuRAND/NVRTC libraries at run time: TUNA_CUDA_LIBS names their
# folder (default: the PyPI wheels of a `pip install nvidia-cublas nvidia-curand
# nvidia-cuda-nvrtc` in the Python below, found automatically).
#
# (a) correctness: one tiny job (random Llama-shaped weights, byte-level data, LoRA, seed 7)
#     on CPU f32, CUDA f32 and CUDA bf16; per-step losses compared (f32 <= 1e-3 relative over
#     20 steps, bf16 <= 2e-2), and the CUDA adapter loaded in HF PEFT on the GPU: its eval
#     loss matches Tuna's.
# (b) speed: LoRA r=16 on all 7 linears, SmolLM2-135M- and Llama-3.2-1B-shaped models (random
#     bf16 weights generated here), batch 8 x 512, Tuna vs PyTorch + PEFT on the same GPU:
#     tokens/s and peak device memory (nvidia-smi, per process), ending with one line per
#     shape: `gpu <shape>: tuna X tok/s, pytorch Y tok/s, ratio R, memory tuna A GiB pytorch B GiB`.
#
# Everything is written under ${TUNA_GPU_CHECK_DIR:-/tmp/tuna-gpu-check}. The whole check is
# bounded by TUNA_GPU_CHECK_TIMEOUT seconds (default 450, inside the 8 minutes a lent H200
# allows).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
bin="${TUNA_BIN:-}"
if [ -z "$bin" ]; then
  for candidate in target/cuda/release/tuna ./tuna target/release/tuna; do
    if [ -x "$candidate" ]; then
      bin="$candidate"
      break
    fi
  done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "bench/gpu/check.sh: no tuna binary; set TUNA_BIN (build it with deploy/cuda/build.sh)" >&2
  exit 2
fi
libs="${TUNA_CUDA_LIBS:-$("$python" - <<'EOF' 2>/dev/null || true
import os, nvidia
for root in nvidia.__path__:
    for sub in ("cu13/lib", "cublas/lib"):
        p = os.path.join(root, sub)
        if os.path.exists(os.path.join(p, "libcublas.so.13")):
            print(p)
            raise SystemExit
EOF
)}"
if [ -n "$libs" ]; then
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
missing="$(ldd "$bin" 2>/dev/null | awk '/not found/ { print $1 }' | tr '\n' ' ')"
if [ -n "$missing" ]; then
  echo "bench/gpu/check.sh: $bin cannot start, missing: $missing" >&2
  echo "  (pip install nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88," >&2
  echo "   or set TUNA_CUDA_LIBS to a folder holding the CUDA 13 libraries)" >&2
  exit 2
fi
exec timeout --signal=INT "${TUNA_GPU_CHECK_TIMEOUT:-450}" \
  "$python" "$here/check.py" --tuna "$bin" "$@"
