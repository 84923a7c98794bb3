#!/usr/bin/env bash
# Tuna's CLI against a `tuna server` process on the embedded default (a SQLite file, a local
# blob folder and an in-process CPU worker, all under one data folder): a tiny model, a
# validated dataset upload, an idempotent LoRA job followed to the end, a bad request, and a
# small hyperparameter sweep with ASHA early stopping whose best adapter is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

port="${TUNA_PORT:-50051}"
data="${TUNA_DATA:-$(mktemp -d)}"
cargo build --quiet -p tuna
tuna="${CARGO_TARGET_DIR:-target}/debug/tuna"
export TUNA_SERVER="http://127.0.0.1:${port}"

mkdir -p "$data"
"$tuna" server --listen "127.0.0.1:${port}" --data-dir "$data" --embedded-worker \
  2> "$data/server.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  "$tuna" jobs list > /dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$data/server.log"; exit 1; }
  sleep 0.1
done

id_of() { sed -n 's/.*"id": "\([a-z]*_[0-9a-f]*\)".*/\1/p' | head -1; }

echo "== a tiny seeded Llama model, registered as tiny-llama"
"$tuna" models make-tiny --out "$data/tiny-llama" --seed 1
"$tuna" models register tiny-llama --path "$data/tiny-llama"

echo "== upload the dataset (validated line by line)"
file_id=$("$tuna" files upload examples/data/arithmetic.jsonl --output json | id_of)
echo "$file_id"

echo "== a LoRA job, created twice with the same request id (one job), followed to the end"
request_id="quickstart-$(date +%s)"
args=(jobs create --model tiny-llama --training-file "$file_id" --method lora --r 8
  --learning-rate 0.005 --max-steps 30 --label team=nlp --request-id "$request_id")
job_id=$("$tuna" "${args[@]}" --output json | id_of)
again=$("$tuna" "${args[@]}" --output json | id_of)
[ "$job_id" = "$again" ] || { echo "idempotency broken: $job_id vs $again"; exit 1; }
"$tuna" jobs watch "$job_id" > /dev/null
"$tuna" jobs get "$job_id"

echo "== a bad request names the field"
"$tuna" jobs create --model tiny-llama --training-file "$file_id" --learning-rate=-1 || true

echo "== a sweep: 8 trials over learning rate and LoRA rank, ASHA stopping on eval loss"
sweep_id=$("$tuna" sweeps create examples/sweep.toml --model tiny-llama \
  --training-file "$file_id" --validation-file "$file_id" --output json | id_of)
"$tuna" sweeps watch "$sweep_id" > /dev/null
"$tuna" sweeps get "$sweep_id"
"$tuna" sweeps trials "$sweep_id"
best_job=$("$tuna" sweeps get "$sweep_id" --output json \
  | sed -n '/"best_trial"/,/}/s/.*"job_id": "\(job_[0-9a-f]*\)".*/\1/p' | head -1)
"$tuna" artifacts download "$best_job" --out "$data/best-adapter"
ls "$data/best-adapter"

echo "== done: state is in $data (SQLite + blobs); server log in $data/server.log"
