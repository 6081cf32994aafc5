#!/usr/bin/env bash
# Black-box checks against a running service (the debug binary on a throwaway database
# with demo data):
# 1. schemathesis generates requests from /openapi.json and fails on any 5xx or any
#    response whose status, content type or body the document does not describe.
#    Bounded: FUZZ_EXAMPLES examples per operation (25), FUZZ_SECONDS per run (300).
# 2. every k6 scenario in smoke mode (seconds, small data), each ending with its
#    invariant checks through the API;
# 3. a real Prometheus scrapes the service through all of it, with the alert rules
#    loaded: every dashboard query must return a series (scripts/check-dashboards.py);
#    promtool checks the rules and runs their unit tests;
# 4. /docs opened in headless Chromium shows every operation of /openapi.json
#    (scripts/check-docs.py).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\033[1m[api-checks]\033[0m %s\n' "$*"; }

[ -n "${SCHEMATHESIS_BIN:-}" ] && [ -n "${K6_BIN:-}" ] || eval "$(scripts/tools.sh)"

bin=target/debug/commerce-api
[ -x "$bin" ] || cargo build --locked
port="${FUZZ_PORT:-18181}"
base="http://127.0.0.1:$port"
admin="fuzz-admin-token-$$"
DATABASE_URL="${TEST_DATABASE_URL:-mysql://commerce:commerce@127.0.0.1:3306}/commerce_test_fuzz_$$" \
  REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}" REDIS_PREFIX="commerce_test_fuzz_$$:" \
  BIND_ADDR="127.0.0.1:$port" AUTH_JWT_SECRET="fuzz-secret-$$-padded-to-thirty-two-bytes" ADMIN_TOKEN="$admin" \
  RATE_LIMIT_PER_SEC=0 USER_RATE_LIMIT_PER_SEC=0 RUST_LOG=error \
  "$bin" serve --seed-demo &
server=$!
prom_dir="$(mktemp -d)"
prom_port="${PROM_PORT:-19191}"
cat >"$prom_dir/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$PWD/dashboards/alerts.yml"]
scrape_configs:
  - job_name: commerce-api
    static_configs: [{targets: ["127.0.0.1:$port"]}]
YML
prometheus --config.file="$prom_dir/prometheus.yml" --storage.tsdb.path="$prom_dir/data" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$prom_dir/prometheus.log" 2>&1 &
prom=$!
trap 'kill $server $prom 2>/dev/null || true; rm -rf "$prom_dir"' EXIT
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.2; done
token=$(curl -sf -X POST -H "Authorization: Bearer $admin" "$base/v1/admin/users/1/tokens" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

run() {
  timeout "${FUZZ_SECONDS:-300}" "$SCHEMATHESIS_BIN" run "$base/openapi.json" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
    --max-examples "${FUZZ_EXAMPLES:-25}" --generation-deterministic --no-color "$@"
}
log "schemathesis: user routes (as user 1) and public routes"
run -H "Authorization: Bearer $token" --exclude-path-regex '^/v1/admin'
log "schemathesis: admin routes"
run -H "Authorization: Bearer $admin" --include-path-regex '^/v1/admin'
log "schemathesis: no 5xx, every response conforms to the document"

for scenario in k6/*.js; do
  [ "$scenario" = k6/lib.js ] && continue
  log "k6 smoke: $scenario"
  "$K6_BIN" run --quiet --no-usage-report -e SMOKE=1 -e BASE_URL="$base" -e ADMIN_TOKEN="$admin" "$scenario"
done
log "k6 smoke: a fair drop (opening in 2 s, one per customer, every buyer firing 5 orders at once)"
"$K6_BIN" run --quiet --no-usage-report -e SMOKE=1 -e LIMIT=1 -e GREEDY=5 -e STARTS_IN=2 -e BASE_URL="$base" \
  -e ADMIN_TOKEN="$admin" k6/flash_sale.js
log "k6 smoke: every scenario's thresholds and invariants held"

log "/docs in headless Chromium"
python3 scripts/check-docs.py "$base"
log "alert rules: promtool check and unit tests"
promtool check rules dashboards/alerts.yml
promtool test rules dashboards/alerts_test.yml
log "dashboards on a real Prometheus (scraping the service under the smoke load above)"
sleep 3
python3 scripts/check-dashboards.py "http://127.0.0.1:$prom_port" dashboards/commerce-api.json
