-- Freshness of a read replica (DATABASE_READ_URL), measured end to end: every instance
-- writes this row on the primary and reads it back from the replica (issue 13).
CREATE TABLE replication_heartbeat (
    id   TINYINT     NOT NULL,
    beat DATETIME(6) NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
