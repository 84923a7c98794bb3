#!/usr/bin/env bash
# The Python SDK's CI: a fresh virtual environment (only Python >= 3.11 and PyPI needed), the
# SDK installed from this folder, then its tests against a real `tuna` binary.
#
#   bash sdk/python/ci.sh            # TUNA_BIN defaults to <repo>/target/debug/tuna
#   TUNA_BIN=/path/to/tuna PYTHON=python3.12 bash sdk/python/ci.sh -k watch
#
# Extra arguments go to pytest. The venv lives in $TUNA_SDK_VENV (default
# <repo>/.cache/venv-sdk) and is reused between runs.
set -euo pipefail
sdk="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$sdk/../.." && pwd)"
python="${PYTHON:-python3}"
venv="${TUNA_SDK_VENV:-$repo/.cache/venv-sdk}"
export TUNA_BIN="${TUNA_BIN:-$repo/target/debug/tuna}"

if [ ! -x "$TUNA_BIN" ]; then
  echo "sdk/python/ci.sh: no tuna binary at $TUNA_BIN (cargo build -p tuna, or set TUNA_BIN)" >&2
  exit 1
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "sdk/python/ci.sh: $python is older than Python 3.11" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  # Some distributions ship Python without ensurepip (python3-venv); virtualenv from PyPI
  # does the same job there.
  "$python" -m venv "$venv" 2>/dev/null || {
    rm -rf "$venv"
    "$python" -m pip install --quiet --user virtualenv
    "$python" -m virtualenv --quiet "$venv"
  }
fi
# grpcio-tools is pinned: the stub freshness test regenerates with exactly this version.
# mypy and the stub packages are pinned so a new release cannot fail an unchanged tree.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "$sdk" "pytest>=8" "grpcio-tools==1.85.4" \
  "mypy==2.4.1" "types-protobuf==7.35.1.20261122" "types-grpcio==1.85.0.20261028"
cd "$sdk"
# Type hints are checked (strict; settings in pyproject.toml).
"$venv/bin/python" -m mypy
# The installed package, not the source tree, is what the tests import.
"$venv/bin/python" -m pytest -p no:cacheprovider -q tests "$@"
