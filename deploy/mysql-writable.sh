#!/bin/sh
# HAProxy's external check of a MySQL server (deploy/haproxy-mysql.cfg.template): passes
# only when the server at $3:$4 answers and accepts writes (read_only = OFF). It logs in
# as `check`, a user with no privileges (it only reads a variable).
[ "$(mariadb --connect-timeout=1 -h"$3" -P"$4" -ucheck -N -B -e 'SELECT @@global.read_only' 2>/dev/null)" = 0 ]
