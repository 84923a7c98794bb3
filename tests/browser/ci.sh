#!/usr/bin/env bash
# The dashboard's browser tests, for .ci/run: Debian's Chromium (installed if missing),
# playwright-core from the lock file, then run.mjs against target/debug/tuna (or $TUNA_BIN).
# Build the binary first (cargo build -p tuna). Screenshots land in tests/browser/out/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "== installing chromium (apt-get)"
  sudo_cmd=""
  if [ "$(id -u)" != 0 ] && command -v sudo > /dev/null; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium > /dev/null
fi
command -v node > /dev/null || { echo "error: node (>= 20) is required" >&2; exit 1; }
command -v npm > /dev/null || { echo "error: npm is required" >&2; exit 1; }

cd "$here"
npm ci --no-audit --no-fund --loglevel=error
exec node run.mjs "$@"
