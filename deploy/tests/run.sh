#!/usr/bin/env bash
# Tests of deploy/ that need no Docker, for .ci/run:
#  1. manifests.py: every YAML/JSON file parses, every compose and Kubernetes reference
#     resolves, and every variable, metric, label, column and state they name exists in the code.
#  2. The images' start-up path on this machine: the Dockerfiles' user and data-dir step run
#     against a scratch root, then the real binary ($TUNA_BIN, default target/debug/tuna) runs
#     as uid 10001 with the image's environment: server, readiness, metrics, worker, shutdown,
#     the refusals, and (with PostgreSQL on 127.0.0.1:5432) compose.yaml's topology: two
#     replicas with its server environment on one database and one S3 bucket (moto's S3
#     server), and the KEDA scaling query on real rows.
#
#   bash deploy/tests/run.sh       (as root: it creates files owned by uid 10001)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
umask 022
TUNA_BIN="${TUNA_BIN:-$repo/target/debug/tuna}"
DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
UID_TUNA=10001

passed=0
failed=0
pids=()
pg_db=""
scratch="$(mktemp -d /tmp/tuna-deploy-test.XXXXXX)"
chmod 0755 "$scratch"

cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  if [ -n "$pg_db" ]; then
    psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" > /dev/null 2>&1
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

# ---- 1. static checks ---------------------------------------------------------------------

python=python3
if ! python3 -c 'import yaml' 2> /dev/null; then
  venv="${TUNA_DEPLOY_VENV:-$repo/.cache/venv-deploy}"
  if ! "$venv/bin/python" -c 'import yaml' 2> /dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet 'PyYAML==6.0.2' \
      || { echo "deploy/tests: cannot install PyYAML into $venv" >&2; exit 1; }
  fi
  python="$venv/bin/python"
fi

"$python" "$here/manifests.py" > "$scratch/manifests.out" 2>&1
manifests_status=$?
manifests_failed=0
while IFS= read -r line; do
  echo "$line"
  case "$line" in
    "ok "*) passed=$((passed + 1)) ;;
    "not ok "*) manifests_failed=$((manifests_failed + 1)) ;;
  esac
done < "$scratch/manifests.out"
if [ "$manifests_status" -ne 0 ] && [ "$manifests_failed" -eq 0 ]; then
  manifests_failed=1
  echo "not ok manifests.py (exit status $manifests_status)"
fi
failed=$((failed + manifests_failed))

# ---- 2. the start-up path as uid 10001 ----------------------------------------------------

# Runs check function $2 (in this shell, so it can start and wait for processes), prints
# `ok NAME` or `not ok NAME` and its output.
check() {
  local name="$1" fn="$2" out="$scratch/$1.out"
  if "$fn" > "$out" 2>&1; then
    passed=$((passed + 1))
    echo "ok $name"
    grep '^+ ' "$out" | sed 's/^/    /'
  else
    failed=$((failed + 1))
    echo "not ok $name"
    tail -n 25 "$out" | sed 's/^/    /'
  fi
}

skip() { echo "skip $1 ($2)"; }

as_tuna() { setpriv --reuid="$UID_TUNA" --regid="$UID_TUNA" --clear-groups "$@"; }

free_ports() {
  "$python" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# The image's ENV for a stage: IMG_ENV[KEY]=VALUE.
declare -A IMG_ENV
load_image_env() {
  IMG_ENV=()
  local k v
  while IFS='=' read -r k v; do IMG_ENV[$k]="$v"; done \
    < <("$python" "$here/manifests.py" --env "$1" "$2")
}

# A scratch root like the base image's: /etc with root only, then the Dockerfile's own user
# and data-dir RUN step, with its paths under the root (useradd/groupadd --prefix).
make_root() {
  local root="$1" dockerfile="$2" stage="$3" run cmd word out msg status
  install -d -m 0755 "$root/etc" "$root/usr/local/bin"
  echo 'root:x:0:0:root:/root:/bin/bash' > "$root/etc/passwd"
  echo 'root:x:0:' > "$root/etc/group"
  echo 'root:*:19000:0:99999:7:::' > "$root/etc/shadow"
  echo 'root:*::' > "$root/etc/gshadow"
  run="$("$python" "$here/manifests.py" --user-setup "$dockerfile" "$stage")" || return 1
  # Split on &&; each command is run with its absolute paths moved under the root.
  while IFS= read -r cmd; do
    cmd="$(echo "$cmd" | sed 's/^ *//; s/ *$//')"
    [ -n "$cmd" ] || continue
    read -ra words <<< "$cmd"
    out=()
    case "${words[0]}" in
      groupadd | useradd) out=("${words[0]}" --prefix "$root" "${words[@]:1}") ;;
      install | mkdir | chown | chmod)
        for word in "${words[@]}"; do
          case "$word" in /*) out+=("$root$word") ;; *) out+=("$word") ;; esac
        done
        ;;
      *)
        echo "make_root: $dockerfile: unexpected command in the user step: $cmd"
        return 1
        ;;
    esac
    echo "+ ${out[*]}"
    msg="$("${out[@]}" 2>&1)"
    status=$?
    printf '%s\n' "$msg" | grep -v -e 'greater than SYS_UID_MAX' -e '^$'
    [ "$status" -eq 0 ] || return 1
  done < <(echo "$run" | sed 's/&&/\n/g')
}

# The binary and the health check where the image has them (a link when uid 10001 can reach
# the binary, else a copy).
install_bins() {
  local root="$1"
  if as_tuna test -x "$TUNA_BIN"; then
    ln -sf "$TUNA_BIN" "$root/usr/local/bin/tuna"
  else
    install -m 0755 "$TUNA_BIN" "$root/usr/local/bin/tuna"
  fi
  install -m 0755 "$repo/deploy/tuna-ready" "$root/usr/local/bin/tuna-ready"
}

# env -i arguments: the image's ENV, its paths under $1, its ports replaced by $2 and $3.
image_env_args() {
  local root="$1" port="$2" mport="$3" k v
  ENV_ARGS=(PATH="$root/usr/local/bin:/usr/bin:/bin" HOME="$root${IMG_ENV[TUNA_DATA_DIR]}")
  for k in "${!IMG_ENV[@]}"; do
    v="${IMG_ENV[$k]}"
    case "$k" in
      TUNA_DATA_DIR | TUNA_WORKER_CACHE_DIR) v="$root$v" ;;
      TUNA_LISTEN) v="${v%:*}:$port" ;;
      TUNA_METRICS_LISTEN) v="${v%:*}:$mport" ;;
    esac
    ENV_ARGS+=("$k=$v")
  done
}

# Starts `tuna ARGS...` as uid 10001 in the data dir (the image's WORKDIR); sets PID.
start_tuna() {
  local log="$1" dir="$2"
  shift 2
  (cd "$dir" && exec setpriv --reuid="$UID_TUNA" --regid="$UID_TUNA" --clear-groups \
    env -i "${ENV_ARGS[@]}" "$@") > "$log" 2>&1 &
  PID=$!
  pids+=("$PID")
}

# Drops an exited (and reaped) process from the ones cleanup stops.
forget() {
  local p keep=()
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# Waits up to $2 seconds for process $1 to exit; returns its status (124: still running).
wait_exit() {
  local pid="$1" i
  for i in $(seq $(($2 * 10))); do
    if ! kill -0 "$pid" 2> /dev/null; then
      wait "$pid"
      local status=$?
      forget "$pid"
      return "$status"
    fi
    sleep 0.1
  done
  return 124
}

# Polls `$@` every 0.2 s for up to $1 seconds.
eventually() {
  local t="$1" i
  shift
  for i in $(seq $((t * 5))); do
    "$@" > /dev/null 2>&1 && return 0
    sleep 0.2
  done
  "$@"
}

ready() { as_tuna env -i "${ENV_ARGS[@]}" tuna-ready "$@"; }

# Waits up to $3 seconds for server $1 to be ready at $2; fails at once if it exits.
wait_ready() {
  local pid="$1" addr="$2" i
  for i in $(seq $(($3 * 5))); do
    if ! kill -0 "$pid" 2> /dev/null; then
      wait_exit "$pid" 1
      echo "the server exited (status $?)"
      return 1
    fi
    ready "$addr" > /dev/null 2>&1 && return 0
    sleep 0.2
  done
  ready "$addr"
}
not() { ! "$@"; }
owned_by_tuna() { [ "$(stat -c %u:%g "$1")" = "$UID_TUNA:$UID_TUNA" ]; }

ROOT="$scratch/image"
DATA=""
SERVER_PID=""
read -r PORT MPORT <<< "$(free_ports 2)"

test_user_setup() {
  make_root "$ROOT" Dockerfile server || return 1
  load_image_env Dockerfile server
  DATA="$ROOT${IMG_ENV[TUNA_DATA_DIR]}"
  grep -qx "tuna:x:$UID_TUNA:$UID_TUNA::${IMG_ENV[TUNA_DATA_DIR]}:/usr/sbin/nologin" "$ROOT/etc/passwd" \
    || { echo "no tuna user with uid $UID_TUNA in the image's passwd:"; cat "$ROOT/etc/passwd"; return 1; }
  grep -qx "tuna:x:$UID_TUNA:" "$ROOT/etc/group" || { echo "no tuna group $UID_TUNA"; return 1; }
  [ "$(stat -c '%u:%g %a' "$DATA")" = "$UID_TUNA:$UID_TUNA 750" ] \
    || { echo "$DATA: $(stat -c '%u:%g %a' "$DATA"), wanted $UID_TUNA:$UID_TUNA 750"; return 1; }
}

test_user_setup_cuda() {
  local root="$scratch/cuda"
  make_root "$root" Dockerfile.cuda worker || return 1
  load_image_env Dockerfile.cuda worker
  grep -q "^tuna:x:$UID_TUNA:$UID_TUNA:" "$root/etc/passwd" || { echo "no tuna user"; return 1; }
  owned_by_tuna "$root${IMG_ENV[TUNA_DATA_DIR]}" || { echo "the data dir is not owned by $UID_TUNA"; return 1; }
  [ "${IMG_ENV[TUNA_WORKER_DEVICE]:-}" = cuda ] || { echo "TUNA_WORKER_DEVICE is not cuda"; return 1; }
}

test_server_starts() {
  [ -x "$TUNA_BIN" ] || { echo "no tuna binary at $TUNA_BIN (cargo build -p tuna, or set TUNA_BIN)"; return 1; }
  [ -n "$DATA" ] || { echo "the image root was not set up"; return 1; }
  install_bins "$ROOT"
  load_image_env Dockerfile server
  image_env_args "$ROOT" "$PORT" "$MPORT"
  # What compose.yaml and the Kubernetes manifests add: both secrets, TLS ended in front.
  ENV_ARGS+=("TUNA_API_KEY=$(openssl rand -hex 32)" "TUNA_WORKER_TOKEN=$(openssl rand -hex 32)" TUNA_INSECURE=true)
  start_tuna "$scratch/server.log" "$DATA" tuna server
  SERVER_PID=$PID
  if ! wait_ready "$SERVER_PID" "127.0.0.1:$PORT" 60; then
    echo "not ready; server log:"
    tail -n 15 "$scratch/server.log"
    return 1
  fi
  echo "+ readiness: tuna.v1.JobService SERVING on :$PORT"
  curl -fsS -o "$scratch/openapi.json" "http://127.0.0.1:$PORT/api/openapi.json" \
    && grep -q '"openapi"' "$scratch/openapi.json" || { echo "no OpenAPI document on :$PORT"; return 1; }
  curl -fsS "http://127.0.0.1:$MPORT/metrics" > "$scratch/metrics.txt" \
    || { echo "no /metrics on :$MPORT"; return 1; }
  grep -q '^tuna_jobs{state="queued",device="any"} 0$' "$scratch/metrics.txt" \
    || { echo "no queue-depth gauge in /metrics"; head "$scratch/metrics.txt"; return 1; }
  for f in "$DATA/tuna.db" "$DATA/blobs"; do
    owned_by_tuna "$f" || { echo "$f is missing or not owned by $UID_TUNA"; ls -la "$DATA"; return 1; }
  done
}

test_readiness() {
  [ -n "$SERVER_PID" ] || { echo "no server"; return 1; }
  chmod 000 "$DATA/blobs"
  eventually 10 not ready || { chmod 0755 "$DATA/blobs"; echo "still ready with an unreadable blob store"; return 1; }
  echo "+ blob store unreadable: tuna.v1.JobService NOT_SERVING"
  ready 127.0.0.1:"$PORT" "" || { chmod 0755 "$DATA/blobs"; echo 'liveness ("") went down too'; return 1; }
  echo '+ liveness ("") still SERVING'
  chmod 0755 "$DATA/blobs"
  eventually 10 ready || { echo "not ready again after the blob store came back"; return 1; }
  echo "+ blob store back: SERVING"
}

test_worker() {
  [ -n "$SERVER_PID" ] || { echo "no server"; return 1; }
  local server_env=("${ENV_ARGS[@]}") token key
  token="$(printf '%s\n' "${server_env[@]}" | sed -n 's/^TUNA_WORKER_TOKEN=//p')"
  key="$(printf '%s\n' "${server_env[@]}" | sed -n 's/^TUNA_API_KEY=//p')"
  load_image_env Dockerfile worker
  image_env_args "$ROOT" "$PORT" "$MPORT"
  ENV_ARGS+=("TUNA_SERVER=http://127.0.0.1:$PORT" "TUNA_WORKER_TOKEN=$token" "TUNA_API_KEY=$key")
  start_tuna "$scratch/worker.log" "$DATA" tuna worker
  local worker=$PID
  eventually 30 grep -q 'registered with' "$scratch/worker.log" \
    || { echo "the worker did not register; its log:"; tail "$scratch/worker.log"; return 1; }
  echo "+ worker registered"
  owned_by_tuna "$ROOT${IMG_ENV[TUNA_WORKER_CACHE_DIR]}" \
    || { echo "the worker cache is missing or not owned by $UID_TUNA"; return 1; }
  eventually 10 sh -c "curl -fsS http://127.0.0.1:$MPORT/metrics | grep '^tuna_workers{device=\"cpu\"} 1\$'" \
    || { echo "tuna_workers{device=\"cpu\"} is not 1"; return 1; }
  echo "+ tuna_workers{device=\"cpu\"} 1"
  kill -TERM "$worker"
  wait_exit "$worker" 20 || { echo "the worker did not exit 0 on SIGTERM (status $?)"; return 1; }
  echo "+ worker drained and exited 0 on SIGTERM"
  ENV_ARGS=("${server_env[@]}")
}

test_server_stops() {
  [ -n "$SERVER_PID" ] || { echo "no server"; return 1; }
  kill -TERM "$SERVER_PID"
  wait_exit "$SERVER_PID" 20 || { echo "the server did not exit 0 on SIGTERM (status $?)"; tail "$scratch/server.log"; return 1; }
}

# The image without the secrets deploy/ sets: a public address is refused, by name.
test_refuses_without_secrets() {
  local root="$scratch/bare"
  make_root "$root" Dockerfile server > /dev/null || return 1
  install_bins "$root"
  load_image_env Dockerfile server
  image_env_args "$root" "$PORT" "$MPORT"
  start_tuna "$scratch/bare.log" "$root${IMG_ENV[TUNA_DATA_DIR]}" tuna server
  wait_exit "$PID" 30
  local status=$?
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ] || { echo "status $status: it did not refuse"; return 1; }
  grep -q 'refusing to serve 0.0.0.0' "$scratch/bare.log" || { cat "$scratch/bare.log"; return 1; }
  grep 'refusing' "$scratch/bare.log" | cut -c1-110 | sed 's/^/+ /; s/$/.../' 
}

# A data dir uid 10001 cannot write (a volume mounted root-owned) stops the server with an error.
test_data_dir_not_owned() {
  local root="$scratch/rootowned"
  make_root "$root" Dockerfile server > /dev/null || return 1
  install_bins "$root"
  load_image_env Dockerfile server
  chown 0:0 "$root${IMG_ENV[TUNA_DATA_DIR]}"
  chmod 0755 "$root${IMG_ENV[TUNA_DATA_DIR]}"
  image_env_args "$root" "$PORT" "$MPORT"
  ENV_ARGS+=("TUNA_API_KEY=k$RANDOM" "TUNA_WORKER_TOKEN=t$RANDOM" TUNA_INSECURE=true)
  start_tuna "$scratch/rootowned.log" "$root${IMG_ENV[TUNA_DATA_DIR]}" tuna server
  wait_exit "$PID" 30
  local status=$?
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ] || { echo "status $status: it started"; return 1; }
  grep '^error: ' "$scratch/rootowned.log" | sed 's/^/+ /' | grep . || { cat "$scratch/rootowned.log"; return 1; }
}

# compose.yaml's topology on this machine: two replicas, started together, with the server
# environment compose.yaml gives them (secrets from gen-env.sh), on one fresh PostgreSQL
# database (migrations under sqlx's advisory lock: no migration Job) and one S3 bucket (moto's
# S3 server standing in for the S3 gateway; a shared directory without moto). A file uploaded
# through one replica downloads through the other; readiness follows S3; then the KEDA query
# and the queue-depth gauge on real rows.
start_s3() {
  "$s3_python" -m moto.server -H 127.0.0.1 -p "$S3_PORT" > "$scratch/s3.log" 2>&1 &
  S3_PID=$!
  pids+=("$S3_PID")
  eventually 30 curl -fsS -o /dev/null "http://127.0.0.1:$S3_PORT/" || return 1
  AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY_ID" \
    AWS_SECRET_ACCESS_KEY="$S3_SECRET_ACCESS_KEY" "$s3_python" -c '
import boto3, os, sys
boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=sys.argv[1])' "$S3_BUCKET"
}

test_compose_topology() {
  local k v
  while IFS='=' read -r k v; do export "$k=$v"; done < <(bash "$repo/deploy/gen-env.sh" | grep -v '^#')
  pg_db="tuna_deploy_test_$$"
  psql -q "$DATABASE_URL" -c "CREATE DATABASE $pg_db" || return 1
  local url="${DATABASE_URL%/*}/$pg_db" root="$scratch/pg" p1 p2 m1 m2 a b base=()
  make_root "$root" Dockerfile server > /dev/null || return 1
  install_bins "$root"
  install -d -o "$UID_TUNA" -g "$UID_TUNA" "$root/shared-blobs" "$root/r1" "$root/r2"
  read -r p1 p2 m1 m2 S3_PORT <<< "$(free_ports 5)"
  while IFS='=' read -r k v; do
    case "$k" in
      TUNA_DATABASE_URL) v="$url" ;;                    # postgres:5432 -> this machine's
      AWS_ENDPOINT_URL) v="http://127.0.0.1:$S3_PORT" ;; # s3:7070 -> moto
      TUNA_OTLP_ENDPOINT) continue ;;                    # no collector here
    esac
    base+=("$k=$v")
  done < <("$python" "$here/manifests.py" --compose-env server-1)
  if [ -n "$s3_python" ]; then
    start_s3 || { echo "moto's S3 server did not start"; tail "$scratch/s3.log"; return 1; }
    echo "+ S3 (moto) at :$S3_PORT, bucket $S3_BUCKET"
  else
    base=("${base[@]/#TUNA_BLOB_URL=*/TUNA_BLOB_DIR=$root/shared-blobs}")
    echo "+ no moto: a shared blob directory stands in for the bucket"
  fi
  load_image_env Dockerfile server
  image_env_args "$root" "$p1" "$m1"
  ENV_ARGS+=("${base[@]}" "TUNA_DATA_DIR=$root/r1")
  start_tuna "$scratch/pg1.log" "$root/r1" tuna server
  a=$PID
  image_env_args "$root" "$p2" "$m2"
  ENV_ARGS+=("${base[@]}" "TUNA_DATA_DIR=$root/r2")
  start_tuna "$scratch/pg2.log" "$root/r2" tuna server
  b=$PID
  wait_ready "$a" "127.0.0.1:$p1" 60 && wait_ready "$b" "127.0.0.1:$p2" 30 \
    || { echo "a replica is not ready"; tail -n 5 "$scratch/pg1.log" "$scratch/pg2.log"; return 1; }
  echo "+ two replicas with compose.yaml's server environment migrated one database together and are SERVING"

  printf '{"text": "one"}\n{"text": "two"}\n' > "$scratch/train.jsonl"
  local id
  id="$(TUNA_API_KEY="$TUNA_API_KEY" "$TUNA_BIN" --server "http://127.0.0.1:$p1" --output json \
    files upload "$scratch/train.jsonl" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["id"])')" \
    || { echo "upload through replica 1 failed"; return 1; }
  TUNA_API_KEY="$TUNA_API_KEY" "$TUNA_BIN" --server "http://127.0.0.1:$p2" files download "$id" \
    --out "$scratch/back.jsonl" > /dev/null && cmp -s "$scratch/train.jsonl" "$scratch/back.jsonl" \
    || { echo "$id did not download through replica 2"; return 1; }
  echo "+ $id uploaded through replica 1, downloaded byte-identical through replica 2"

  if [ -n "$s3_python" ]; then
    kill -TERM "$S3_PID"
    wait_exit "$S3_PID" 10
    eventually 10 not ready "127.0.0.1:$p1" && eventually 10 not ready "127.0.0.1:$p2" \
      || { echo "still ready with S3 down"; return 1; }
    ready "127.0.0.1:$p1" "" || { echo 'liveness ("") went down with S3'; return 1; }
    echo '+ S3 down: both replicas NOT_SERVING for tuna.v1.JobService, "" still SERVING'
    start_s3 || return 1
    eventually 10 ready "127.0.0.1:$p1" && eventually 10 ready "127.0.0.1:$p2" \
      || { echo "not ready again after S3 came back"; return 1; }
    echo "+ S3 back: both SERVING"
  fi

  local query n
  query="$("$python" "$here/manifests.py" --keda-query)"
  n="$(psql -qtA "$url" -c "$query")" || return 1
  [ "$n" = 0 ] || { echo "KEDA query on an empty queue: $n"; return 1; }
  psql -q "$url" -c "INSERT INTO jobs (id, state, spec, base_model, training_file, priority, device,
      min_memory_bytes, max_attempts, run_after, created_at, updated_at) VALUES
      ('job_deploy_cuda', 'queued', '{}', 'm', '$id', 0, 'cuda', 0, 3, 0, 0, 0),
      ('job_deploy_cpu', 'queued', '{}', 'm', '$id', 0, 'cpu', 0, 3, 0, 0, 0)" || return 1
  n="$(psql -qtA "$url" -c "$query")" || return 1
  [ "$n" = 1 ] || { echo "KEDA query with one queued cuda job and one cpu job: $n"; return 1; }
  echo "+ KEDA query: 0 on an empty queue, 1 with one queued cuda job (and one cpu job)"
  for m in "$m1" "$m2"; do
    curl -fsS -o "$scratch/metrics-$m.txt" "http://127.0.0.1:$m/metrics" \
      && grep -q '^tuna_jobs{state="queued",device="cuda"} 1$' "$scratch/metrics-$m.txt" \
      || { echo "replica metrics :$m do not show the queued cuda job"; return 1; }
  done
  echo "+ both replicas export tuna_jobs{state=\"queued\",device=\"cuda\"} 1 (the dashboard takes max)"
  kill -TERM "$a" "$b"
  wait_exit "$a" 20 && wait_exit "$b" 20 || { echo "a replica did not stop cleanly"; return 1; }
}

# moto's S3 server, from this Python or a venv (PyPI); without it the bucket is a directory.
s3_python=""
find_moto() {
  local p venv="${TUNA_DEPLOY_S3_VENV:-$repo/.cache/venv-deploy-s3}"
  for p in python3 "$venv/bin/python"; do
    if "$p" -c 'import moto.server, boto3' 2> /dev/null; then
      s3_python="$p"
      return
    fi
  done
  python3 -m venv "$venv" > /dev/null 2>&1 && "$venv/bin/pip" install --quiet 'moto[server]>=5,<6' > /dev/null 2>&1 \
    && s3_python="$venv/bin/python"
}

if [ "$(id -u)" != 0 ]; then
  failed=$((failed + 1))
  echo "not ok image-start-up (needs root to create files owned by uid $UID_TUNA)"
else
  check image-user-setup test_user_setup
  check image-user-setup-cuda test_user_setup_cuda
  check server-starts-as-uid-10001 test_server_starts
  check readiness-follows-blob-store test_readiness
  check worker-starts-as-uid-10001 test_worker
  check server-stops-on-sigterm test_server_stops
  check refuses-public-address-without-secrets test_refuses_without_secrets
  check data-dir-not-owned-fails test_data_dir_not_owned
  if command -v psql > /dev/null && pg_isready -q -d "$DATABASE_URL" 2> /dev/null; then
    find_moto
    check compose-topology-replicas-s3-keda test_compose_topology
  else
    skip compose-topology-replicas-s3-keda "no PostgreSQL at $DATABASE_URL"
  fi
fi

echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
