#!/usr/bin/env bash
# Prints a deploy/.env with fresh random secrets for deploy/compose.yaml:
#   bash deploy/gen-env.sh > deploy/.env && chmod 600 deploy/.env
# Keep the file: the database and the bucket are created with these values.
set -euo pipefail
rand() { openssl rand -hex "$1"; }
cat <<ENV
# Clients use TUNA_API_KEY, workers TUNA_WORKER_TOKEN (and TUNA_API_KEY to fetch their inputs).
TUNA_API_KEY=$(rand 32)
TUNA_WORKER_TOKEN=$(rand 32)
POSTGRES_PASSWORD=$(rand 24)
S3_ACCESS_KEY_ID=tuna$(rand 8)
S3_SECRET_ACCESS_KEY=$(rand 32)
S3_BUCKET=tuna
ENV
