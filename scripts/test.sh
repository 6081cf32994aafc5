#!/usr/bin/env bash
# Runs the whole test suite: formatting, clippy, unit and integration tests against real
# MariaDB and Redis (installed and started when missing). Each test makes its own database.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-mysql://commerce:commerce@127.0.0.1:3306}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"

drop_test_databases() {
  local client; client="$(command -v mariadb || command -v mysql)"
  "$client" -h127.0.0.1 -ucommerce -pcommerce -N -e \
    "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'commerce\_test\_%'" 2>/dev/null |
    while read -r db; do "$client" -h127.0.0.1 -ucommerce -pcommerce -e "DROP DATABASE \`$db\`" || true; done
}
drop_test_databases

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --profile ci
else
  cargo test --locked
fi
drop_test_databases
