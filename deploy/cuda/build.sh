#!/usr/bin/env bash
# Builds `tuna` with CUDA on a machine without a GPU or a system CUDA toolkit: installs the
# CUDA 13.0 compiler, headers and libraries from PyPI into a local virtual environment and
# points candle's kernel build (nvcc -> PTX) and the link at them.
#
#   bash deploy/cuda/build.sh            # cargo build --release -p tuna --features cuda
#   bash deploy/cuda/build.sh --check    # cargo check only (proves the toolchain)
#   bash deploy/cuda/build.sh --debug    # a debug build (what CI runs: it then starts the binary)
#   CUDA_COMPUTE_CAP=80 bash deploy/cuda/build.sh   # A100; 89 = L4/L40/RTX 40xx; default 90
#
# The 13.0 line is pinned (nvcc, nvvm, crt, cccl, runtime, cuBLAS, cuRAND, NVRTC together: a
# newer nvvm emits PTX that 13.0's ptxas refuses) so its PTX loads on an R580 driver.
#
# Linking: candle 0.11.1 fixes cudarc to `dynamic-linking`, so the binary names libcuda.so.1,
# libcublas(Lt).so.13, libcurand.so.10 and libnvrtc.so.13 as needed libraries. cuBLAS, cuRAND
# and NVRTC come from PyPI (their folder is printed at the end: put it on LD_LIBRARY_PATH, or
# install the same CUDA 13 libraries on the host). libcuda belongs to the NVIDIA driver and
# is not on PyPI: when no libcuda.so is on LIBRARY_PATH (no system toolkit), the script
# generates a link stub from cudarc's own bindings in which every driver call returns
# CUDA_ERROR_STUB_LIBRARY, as the toolkit's stubs/libcuda.so does. The same stub, placed after
# the driver on the library path, lets the binary start on a machine without a driver: it
# serves CPU jobs and refuses `--device cuda` naming the missing driver
# (docs/engine-notes.md §1.8).
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
profile=release
case "${1:-}" in
  --check) mode=check ;;
  --debug) profile=debug ;;
  "") ;;
  *) echo "deploy/cuda/build.sh: unknown argument $1 (use --check, --debug or nothing)" >&2; exit 2 ;;
esac

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
  "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-runtime==13.0.96"
if [ "$mode" = build ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "nvidia-cublas==13.0.2.14" "nvidia-curand==10.4.0.35" "nvidia-cuda-nvrtc==13.0.88"
fi
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
if [ "$mode" = build ]; then
  # Unversioned names for the linker, beside the PyPI libraries' versioned files.
  link="$venv/link"
  mkdir -p "$link"
  for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
    if [ -e "$cuda/lib/$lib" ]; then
      ln -sf "$cuda/lib/$lib" "$link/${lib%%.so.*}.so"
    fi
  done
  has_libcuda=no
  IFS=: read -r -a dirs <<< "${LIBRARY_PATH:-}"
  for d in "${dirs[@]}" /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64/stubs; do
    if [ -n "$d" ] && { [ -e "$d/libcuda.so" ] || [ -e "$d/libcuda.so.1" ]; }; then
      has_libcuda=yes
    fi
  done
  if [ "$has_libcuda" = no ]; then
    bash "$repo/deploy/cuda/libcuda-stub.sh" "$link/stubs"
    export LIBRARY_PATH="$link/stubs:${LIBRARY_PATH:-}"
  fi
  export LIBRARY_PATH="$link:${LIBRARY_PATH:-}"
fi
if [ "$mode" = check ]; then
  cargo check --locked -p tuna --features cuda
else
  if [ "$profile" = release ]; then
    cargo build --release --locked -p tuna --features cuda
  else
    cargo build --locked -p tuna --features cuda
  fi
  echo "deploy/cuda/build.sh: $CARGO_TARGET_DIR/$profile/tuna (sm_$cap)"
  echo "deploy/cuda/build.sh: it needs CUDA 13 cuBLAS/cuRAND/NVRTC at run time, for example"
  echo "  LD_LIBRARY_PATH=$cuda/lib \\"
  echo "  $CARGO_TARGET_DIR/$profile/tuna worker --device cuda"
  if [ -d "$link/stubs" ]; then
    echo "deploy/cuda/build.sh: on a machine without the NVIDIA driver, append $link/stubs"
    echo "  to LD_LIBRARY_PATH (after the driver's folder) to start it for CPU jobs"
  fi
fi
