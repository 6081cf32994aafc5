#!/usr/bin/env bash
# The benchmark, end to end, from one command on a fresh machine:
# installs what it needs (MariaDB, Redis, wrk, redis-benchmark, mysqlslap, k6), builds the
# release binary, seeds 100,000 products and 10,000 users, and measures the service against
# ceilings measured in the same run. Writes bench/results/latest.md. About 15 minutes.
# Sizes: BENCH_PRODUCTS, BENCH_USERS, BENCH_BUYERS, BENCH_UNITS, BENCH_REPEATS, BENCH_SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v mysqlslap >/dev/null || missing+=(mariadb-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[bench] installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
eval "$(scripts/tools.sh)"
cargo build --release --locked
exec python3 bench/bench.py
