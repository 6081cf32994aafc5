#!/usr/bin/env bash
# The benchmark, end to end, from one command on a fresh machine:
# installs what it needs (MariaDB, Redis, wrk, redis-benchmark, mysqlslap, k6), builds the
# release binary, seeds 100,000 products and 10,000 users, and measures the service against
# ceilings measured in the same run, then the same paths through HAProxy (1 and 2
# instances) and on a 3-master Redis Cluster it starts itself. Writes
# bench/results/latest.md and latest.svg. About 20 minutes.
# Sizes: BENCH_PRODUCTS, BENCH_USERS, BENCH_BUYERS, BENCH_UNITS, BENCH_REPEATS, BENCH_SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v mysqlslap >/dev/null || missing+=(mariadb-client)
command -v haproxy >/dev/null || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[bench] installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
eval "$(scripts/tools.sh)"
cargo build --release --locked
exec python3 bench/bench.py
