#!/usr/bin/env bash
# Tuna quick start on the embedded default: one process, a SQLite file and a local blob folder
# under ./tuna-data. Starts the control plane, uploads a dataset (validated line by line),
# submits a LoRA job (twice, with the same request id: one job), and shows it.
#
# Training workers arrive with the training-engine and end-to-end issues; until then the job
# stays QUEUED, which this script shows and then cancels.
set -euo pipefail
cd "$(dirname "$0")/.."

port="${TUNA_PORT:-50051}"
cargo build --quiet -p tuna
tuna=target/debug/tuna
export TUNA_SERVER="http://127.0.0.1:${port}"

mkdir -p tuna-data
"$tuna" server --listen "127.0.0.1:${port}" --data-dir tuna-data 2> tuna-data/server.log &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  "$tuna" jobs list > /dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat tuna-data/server.log; exit 1; }
  sleep 0.1
done

echo "== upload the dataset"
file_json=$("$tuna" files upload examples/data/arithmetic.jsonl --output json)
echo "$file_json"
file_id=$(echo "$file_json" | sed -n 's/.*"id": "\(file_[0-9a-f]*\)".*/\1/p')

echo "== create a LoRA job (the same request id twice: one job)"
request_id="quickstart-$(date +%s)"
"$tuna" jobs create --model tiny-llama --training-file "$file_id" --method lora --r 8 \
  --learning-rate 0.0005 --max-steps 200 --label team=nlp --request-id "$request_id"
job_id=$("$tuna" jobs create --model tiny-llama --training-file "$file_id" --method lora --r 8 \
  --learning-rate 0.0005 --max-steps 200 --label team=nlp --request-id "$request_id" --output json \
  | sed -n 's/.*"id": "\(job_[0-9a-f]*\)".*/\1/p')

echo "== a bad request names the field"
"$tuna" jobs create --model tiny-llama --training-file "$file_id" --learning-rate=-1 || true

echo "== the job, the queue, its history"
"$tuna" jobs get "$job_id"
"$tuna" jobs list --label team=nlp --page-size 5
"$tuna" jobs cancel "$job_id"
"$tuna" jobs events "$job_id"

echo "== done: state is kept in tuna-data/ (SQLite + blobs); server log in tuna-data/server.log"
