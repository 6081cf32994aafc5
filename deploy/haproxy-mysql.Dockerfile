# HAProxy as MySQL's write address (docker-compose.yml's haproxy-mysql): Debian's HAProxy
# image with the MariaDB client its external check needs (deploy/mysql-writable.sh).
FROM haproxy:2.9
USER root
RUN apt-get update && apt-get install -y --no-install-recommends mariadb-client && rm -rf /var/lib/apt/lists/*
COPY deploy/haproxy-mysql.cfg.template /template.cfg
COPY deploy/mysql-writable.sh /usr/local/bin/mysql-writable.sh
