#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), two at a time, at the lowest CPU
# priority, and prints each target's executions and crashes. Not part of CI.
#
#   fuzz/run.sh [seconds] [target...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Corpora grow under
# fuzz/corpus/<target> (seeded from fuzz/seeds/<target>), logs go to fuzz/logs/<target>.log,
# and a crashing input is saved under fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")"
secs="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(jsonl_validator job_spec sweep_spec tar_unpack gguf_header)
fi
parallel="${FUZZ_JOBS:-2}"

max_len() {
  case "$1" in
    tar_unpack) echo 262144 ;; # a few entries with bodies
    *) echo 65536 ;;
  esac
}

nice -n 19 cargo +nightly fuzz build
mkdir -p logs

run() {
  local t="$1"
  mkdir -p "corpus/$t"
  if [ -d "seeds/$t" ]; then cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true; fi
  local cmd=(cargo +nightly fuzz run "$t" "corpus/$t" --
    "-max_total_time=$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048
    "-max_len=$(max_len "$t")" -timeout=60 -print_final_stats=1)
  echo "$t: nice -n 19 ${cmd[*]}" > "logs/$t.log"
  local start=$SECONDS
  if nice -n 19 "${cmd[@]}" >> "logs/$t.log" 2>&1; then
    echo "$t: finished after $((SECONDS - start)) s" >> "logs/$t.log"
  else
    echo "$t: FAILED (exit $?) after $((SECONDS - start)) s" >> "logs/$t.log"
  fi
}

running=0
for t in "${targets[@]}"; do
  run "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$parallel" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

status=0
for t in "${targets[@]}"; do
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*$' || true)
  crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
  verdict=$(tail -1 "logs/$t.log")
  echo "$t: executions ${execs:-?}, crash artifacts $crashes — $verdict"
  if [ "$crashes" -ne 0 ] || grep -q FAILED <<<"$verdict"; then status=1; fi
done
exit $status
