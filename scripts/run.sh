#!/usr/bin/env bash
# Sets everything up on a fresh machine and runs the service with demo data:
# MariaDB + Redis (installed and started when missing), a release build, demo seed,
# then prints a demo user's token and a ready-to-paste curl line. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
cargo build --release --locked

export DATABASE_URL="${DATABASE_URL:-mysql://commerce:commerce@127.0.0.1:3306/commerce}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export BIND_ADDR="${BIND_ADDR:-127.0.0.1:8080}"
# Fresh secrets per run unless you bring your own; nothing secret is committed.
export AUTH_JWT_SECRET="${AUTH_JWT_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
export ADMIN_TOKEN="${ADMIN_TOKEN:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}"

./target/release/commerce-api serve --seed-demo &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server' INT TERM
base="http://$BIND_ADDR"
for _ in $(seq 1 100); do curl -fs "$base/healthz" >/dev/null 2>&1 && break; sleep 0.2; done

token=$(curl -fs -X POST -H "Authorization: Bearer $ADMIN_TOKEN" "$base/v1/admin/users/1/tokens" \
  | sed -E 's/.*"token":"([^"]+)".*/\1/')
cat <<MSG

  commerce-api is running on $base (demo data: 1000 products, 100 users)
  ADMIN_TOKEN=$ADMIN_TOKEN
  demo user 1 token: $token

  curl -s -H "Authorization: Bearer $token" $base/v1/users/1/points

MSG
wait $server
