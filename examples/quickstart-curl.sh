#!/usr/bin/env bash
# The quick-start job driven with nothing but curl, through the JSON HTTP API that `tuna
# server` serves on its gRPC port (/api/<package.Service>/<Method>, protobuf's JSON mapping):
# register a tiny model, upload the dataset, create a LoRA job, follow it live as server-sent
# events, download the adapter and verify its sha256. examples/quickstart.sh does the same with
# the CLI, examples/quickstart.py with the Python SDK.
#
# With TUNA_BIN unset it builds the binary; with TUNA_URL set it uses that server instead of
# starting one (then TUNA_API_KEY must be the server's key, if it has one).
set -euo pipefail
cd "$(dirname "$0")/.."

port="${TUNA_PORT:-50051}"
data="${TUNA_DATA:-$(mktemp -d)}"
if [ -z "${TUNA_BIN:-}" ]; then
  cargo build --quiet -p tuna
  TUNA_BIN="${CARGO_TARGET_DIR:-target}/debug/tuna"
fi
key="${TUNA_API_KEY:-}"
mkdir -p "$data"

if [ -z "${TUNA_URL:-}" ]; then
  TUNA_URL="http://127.0.0.1:${port}"
  "$TUNA_BIN" server --listen "127.0.0.1:${port}" --data-dir "$data" --embedded-worker \
    2> "$data/server.log" &
  server=$!
  trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$TUNA_URL/api/openapi.json" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { cat "$data/server.log"; exit 1; }
    sleep 0.1
  done
fi

auth=()
[ -n "$key" ] && auth=(-H "Authorization: Bearer $key")

# api RPC JSON: one unary call; prints the response JSON, fails (printing the error JSON) on
# an HTTP error status.
api() {
  curl -sS --fail-with-body "${auth[@]}" -H 'Content-Type: application/json' \
    "$TUNA_URL/api/$1" -d "${2:-{\}}"
}
# upload FILE PURPOSE [NAME]: the raw bytes, the header (size, sha256) as JSON in Tuna-Header.
upload() {
  local size sha
  size=$(stat -c %s "$1")
  sha=$(sha256sum "$1" | cut -d' ' -f1)
  curl -sS --fail-with-body "${auth[@]}" -H 'Content-Type: application/octet-stream' \
    -H "Tuna-Header: {\"name\":\"${3:-$(basename "$1")}\",\"purpose\":\"$2\",\"sizeBytes\":\"$size\",\"sha256\":\"$sha\"}" \
    --data-binary @"$1" "$TUNA_URL/api/tuna.v1.FileService/Upload"
}
# field NAME: the first string value of NAME in the JSON on stdin.
field() { grep -o "\"$1\":\"[^\"]*\"" | head -1 | cut -d'"' -f4; }

echo "== a tiny seeded Llama model, its files uploaded and registered as tiny-llama-curl"
"$TUNA_BIN" models make-tiny --out "$data/tiny-llama" --seed 1 > /dev/null
files=""
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
  id=$(upload "$data/tiny-llama/$f" FILE_PURPOSE_MODEL | field id)
  files="$files${files:+,}{\"path\":\"$f\",\"fileId\":\"$id\"}"
done
api tuna.v1.ModelService/RegisterModel \
  "{\"name\":\"tiny-llama-curl\",\"format\":\"MODEL_FORMAT_HF\",\"files\":[$files]}" > /dev/null

echo "== upload the dataset (validated line by line)"
file_id=$(upload examples/data/arithmetic.jsonl FILE_PURPOSE_DATASET | field id)
echo "$file_id"

echo "== a LoRA job, followed live (server-sent events) to the end"
job_id=$(api tuna.v1.JobService/CreateJob "{\"spec\": {
  \"baseModel\": \"tiny-llama-curl\", \"trainingFile\": \"$file_id\",
  \"method\": {\"type\": \"lora\", \"lora\": {\"r\": 8}},
  \"hyperparameters\": {\"learningRate\": 0.005, \"maxSteps\": 30},
  \"labels\": {\"team\": \"nlp\"}}}" | field id)
echo "$job_id"
curl -sS -N --fail-with-body "${auth[@]}" "$TUNA_URL/api/tuna.v1.JobService/WatchJob" \
  -H 'Content-Type: application/json' -d "{\"id\":\"$job_id\"}" > "$data/watch.sse"
grep -c '^event: message' "$data/watch.sse" | sed 's/$/ updates/'
grep '^event:' "$data/watch.sse" | tail -1
state=$(curl -sS --fail-with-body "${auth[@]}" "$TUNA_URL/api/tuna.v1.JobService/GetJob?id=$job_id" | field state)
echo "state: $state"
[ "$state" = JOB_STATE_SUCCEEDED ] || { echo "the job did not succeed"; exit 1; }

echo "== a bad request names the field (HTTP 400, the same field violations as gRPC)"
api tuna.v1.JobService/CreateJob "{\"spec\": {\"baseModel\": \"tiny-llama-curl\",
  \"trainingFile\": \"$file_id\", \"method\": {\"type\": \"lora\"},
  \"hyperparameters\": {\"learningRate\": -1}}}" || true
echo

echo "== download the adapter: raw bytes, the artifact (with its sha256) in Tuna-Header"
artifact=$(api tuna.v1.ArtifactService/ListArtifacts \
  "{\"jobId\":\"$job_id\",\"kind\":\"ARTIFACT_KIND_ADAPTER\"}" | field id)
curl -sS --fail-with-body "${auth[@]}" -H 'Accept: application/octet-stream' \
  -D "$data/download.headers" -o "$data/adapter.tar" \
  "$TUNA_URL/api/tuna.v1.ArtifactService/Download?artifactId=$artifact"
want=$(grep -i '^tuna-header:' "$data/download.headers" | field sha256)
got=$(sha256sum "$data/adapter.tar" | cut -d' ' -f1)
[ "$want" = "$got" ] || { echo "sha256 mismatch: $want vs $got"; exit 1; }
mkdir -p "$data/adapter" && tar -xf "$data/adapter.tar" -C "$data/adapter"
ls "$data/adapter"
echo "== done: sha256 $got verified"
