#!/usr/bin/env bash
# Makes sure MariaDB and Redis are installed and running on this machine, and that the
# service's own MySQL user exists (created through the root socket, which is how a bare
# Debian install lets root in). Safe to run again: it only does what is missing.
set -euo pipefail

DB_USER="${DB_USER:-commerce}"
DB_PASSWORD="${DB_PASSWORD:-commerce}"

log() { printf '\033[1m[services]\033[0m %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || command -v mysqld >/dev/null 2>&1 || missing+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! port_open 3306; then
  log "starting MariaDB"
  as_root mkdir -p /run/mysqld
  as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
  daemon=/usr/sbin/mariadbd; [ -x "$daemon" ] || daemon="$(command -v mariadbd || command -v mysqld)"
  as_root start-stop-daemon --start --oknodo --background --exec "$daemon" -- --user=mysql
  for _ in $(seq 1 60); do port_open 3306 && break; sleep 0.5; done
  port_open 3306 || { log "MariaDB did not come up on 3306"; exit 1; }
fi

if ! port_open 6379; then
  log "starting Redis"
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 40); do port_open 6379 && break; sleep 0.25; done
  port_open 6379 || { log "Redis did not come up on 6379"; exit 1; }
fi

# The service's user: may create and use the databases named commerce* (tests make one each).
client="$(command -v mariadb || command -v mysql)"
if ! "$client" -h127.0.0.1 -u"$DB_USER" -p"$DB_PASSWORD" -e 'SELECT 1' >/dev/null 2>&1; then
  log "creating MySQL user $DB_USER"
  as_root "$client" -uroot <<SQL
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON \`commerce%\`.* TO '$DB_USER'@'localhost';
GRANT ALL PRIVILEGES ON \`commerce%\`.* TO '$DB_USER'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
fi
# Every commit acknowledged to a client must survive a crash of MariaDB (kill -9, power):
# the redo log flushed at each commit (the default) and, when the binary log is on, synced
# at each commit too (README "MySQL's failures").
as_root "$client" -uroot -e 'SET GLOBAL innodb_flush_log_at_trx_commit = 1; SET GLOBAL sync_binlog = 1' 2>/dev/null ||
  log "could not set innodb_flush_log_at_trx_commit = 1 and sync_binlog = 1 (not root on this server): set them in its configuration"
# Parallel tests (and a second instance, and load tests) each hold a pool; the default
# of 151 connections is too few.
as_root "$client" -uroot -e 'SET GLOBAL max_connections = GREATEST(@@global.max_connections, 1000)' 2>/dev/null ||
  log "could not raise max_connections (not root on this server); keep DB_MAX_CONNECTIONS small"
log "MariaDB on 127.0.0.1:3306 (user $DB_USER) and Redis on 127.0.0.1:6379 are up"
