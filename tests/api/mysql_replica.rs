//! MariaDB servers of a test's own: `mariadbd` processes with data directories of their
//! own (made by `mariadb-install-db`), on free loopback ports, with the durability settings
//! the README requires (`innodb_flush_log_at_trx_commit=1`, `sync_binlog=1`), the
//! service's user created. One server ([`Mariadb`]: killed with `kill -9` and started again
//! on the same data), or a primary and its GTID replica ([`MariaPair`]). Stopped and
//! removed when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::helpers::{block_until, free_port, unique_name};

/// One `mariadbd`.
pub struct Mariadb {
    datadir: PathBuf,
    pub port: u16,
    server_id: u32,
    extra: Vec<String>,
    child: Option<Child>,
}

pub struct MariaPair {
    dir: PathBuf,
    pub primary: Mariadb,
    pub replica: Mariadb,
}

/// Whether the MySQL at 127.0.0.1:`port` (a server, or HAProxy in front of some) accepts
/// writes: its `read_only` is off, asked as the unprivileged `check` user.
pub fn writable_through(port: u16) -> bool {
    Command::new("mariadb")
        .args(["-h127.0.0.1", "-ucheck", "-N", "-B", &format!("-P{port}")])
        .args(["--connect-timeout=1", "-e", "SELECT @@global.read_only"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Semi-synchronous replication that loses no acknowledged commit: the primary answers a
/// commit only once the replica has it in its relay log (AFTER_SYNC), waiting up to 10 s.
const SEMI_SYNC_PRIMARY: &[&str] = &[
    "--rpl-semi-sync-master-enabled=ON",
    "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
    "--rpl-semi-sync-master-timeout=10000",
];
/// The standby: acknowledges what it received, syncs its relay log, takes no writes until
/// promoted.
const SEMI_SYNC_STANDBY: &[&str] = &[
    "--rpl-semi-sync-slave-enabled=ON",
    "--sync-relay-log=1",
    "--read-only=ON",
];

/// Runs `statements` as root on the server at `port`; their output, tab-separated.
pub fn sql(port: u16, statements: &str) -> String {
    let out = Command::new("mariadb")
        .args([
            "-h127.0.0.1",
            "-uroot",
            "-N",
            "-B",
            &format!("-P{port}"),
            "-e",
            statements,
        ])
        .output()
        .expect("mariadb client");
    assert!(
        out.status.success(),
        "{statements}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn answers(port: u16) -> bool {
    Command::new("mariadb")
        .args([
            "-h127.0.0.1",
            "-uroot",
            &format!("-P{port}"),
            "-e",
            "SELECT 1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn install(datadir: &Path) {
    let installed = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .args([
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mariadb-install-db");
    assert!(installed.success(), "mariadb-install-db failed");
}

impl Mariadb {
    /// A fresh server with the service's user, `extra` options on top.
    pub fn start(extra: &[&str]) -> Mariadb {
        let dir = std::env::temp_dir().join(format!("mariadb-{}", unique_name()));
        install(&dir);
        let server = Self::on(dir, free_port(), 1, extra);
        server.create_service_user();
        server
    }

    /// A server on an installed data directory.
    fn on(datadir: PathBuf, port: u16, server_id: u32, extra: &[&str]) -> Mariadb {
        let mut server = Mariadb {
            datadir,
            port,
            server_id,
            extra: extra.iter().map(|e| e.to_string()).collect(),
            child: None,
        };
        server.restart();
        server
    }

    fn create_service_user(&self) {
        self.sql(
            "CREATE USER 'commerce'@'%' IDENTIFIED BY 'commerce'; \
             GRANT ALL PRIVILEGES ON `commerce%`.* TO 'commerce'@'%';",
        );
    }

    /// Starts the process (again) on its data directory and port; returns once it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let d = self.datadir.display();
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={d}"))
            .arg(format!("--socket={d}/sock"))
            .arg(format!("--pid-file={d}/pid"))
            .arg(format!("--log-error={d}/error.log"))
            .arg(format!("--port={}", self.port))
            .arg(format!("--server-id={}", self.server_id))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
                "--log-bin=binlog",
                "--binlog-format=ROW",
                "--innodb-buffer-pool-size=32M",
                "--max-connections=300",
                // What an acknowledged commit must survive (README "MySQL's failures").
                "--innodb-flush-log-at-trx-commit=1",
                "--sync-binlog=1",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        self.child = Some(child);
        block_until(
            Duration::from_secs(60),
            &format!("mariadbd on {} did not start", self.port),
            || answers(self.port),
        );
    }

    /// `kill -9`: the server is gone, what it had not made durable with it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn sql(&self, statements: &str) -> String {
        sql(self.port, statements)
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "mysql://commerce:commerce@127.0.0.1:{}/{database}",
            self.port
        )
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        self.kill();
        // A pair's members live in the pair's directory, which the pair removes.
        if self.datadir.parent() == Some(std::env::temp_dir().as_path()) {
            let _ = std::fs::remove_dir_all(&self.datadir);
        }
    }
}

impl MariaPair {
    /// A primary and a read replica (asynchronous replication).
    pub fn start() -> MariaPair {
        Self::with(&[], &[])
    }

    /// A primary and a standby that can take over: semi-synchronous replication
    /// (AFTER_SYNC), the standby read-only until promoted.
    pub fn start_standby() -> MariaPair {
        let pair = Self::with(SEMI_SYNC_PRIMARY, SEMI_SYNC_STANDBY);
        block_until(Duration::from_secs(20), "semi-sync never came on", || {
            pair.primary
                .sql("SHOW STATUS LIKE 'Rpl_semi_sync_master_status'")
                .trim_end()
                == "Rpl_semi_sync_master_status\tON"
        });
        pair
    }

    fn with(primary_options: &[&str], replica_options: &[&str]) -> MariaPair {
        let dir = std::env::temp_dir().join(format!("mariadb-pair-{}", unique_name()));
        let (primary_dir, replica_dir) = (dir.join("primary"), dir.join("replica"));
        std::fs::create_dir_all(&dir).expect("dir");
        install(&primary_dir);
        // The replica starts from the same empty data directory.
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&primary_dir)
            .arg(&replica_dir)
            .status()
            .expect("cp");
        assert!(copied.success());
        let primary = Mariadb::on(primary_dir, free_port(), 1, primary_options);
        let replica = Mariadb::on(replica_dir, free_port(), 2, replica_options);
        primary.sql(
            "CREATE USER 'repl'@'%' IDENTIFIED BY 'repl'; GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'; \
             CREATE USER 'check'@'%';",
        );
        primary.create_service_user();
        replica.sql(&format!(
            "SET GLOBAL gtid_slave_pos = ''; CHANGE MASTER TO MASTER_HOST = '127.0.0.1', \
             MASTER_PORT = {}, MASTER_USER = 'repl', MASTER_PASSWORD = 'repl', \
             MASTER_USE_GTID = slave_pos; START SLAVE;",
            primary.port
        ));
        MariaPair {
            dir,
            primary,
            replica,
        }
    }

    pub fn primary_url(&self, database: &str) -> String {
        self.primary.url(database)
    }

    pub fn replica_url(&self, database: &str) -> String {
        self.replica.url(database)
    }

    /// The replica stops applying what the primary writes (it falls behind).
    pub fn pause_replication(&self) {
        self.replica.sql("STOP SLAVE SQL_THREAD");
    }

    pub fn resume_replication(&self) {
        self.replica.sql("START SLAVE SQL_THREAD");
    }

    /// `kill -9` of the replica.
    pub fn kill_replica(&mut self) {
        self.replica.kill();
    }

    /// `kill -9` of the primary.
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }

    /// Promotes the replica: it stops fetching, applies everything it had received (with
    /// semi-sync, every commit the primary acknowledged), forgets its primary and takes
    /// writes. `scripts/cluster.sh failover` does the same.
    pub fn promote_replica(&self) {
        self.replica.sql("STOP SLAVE IO_THREAD");
        let status = self.replica.sql("SHOW SLAVE STATUS\\G");
        let received = status
            .lines()
            .find_map(|l| l.trim().strip_prefix("Gtid_IO_Pos: "))
            .unwrap_or_default()
            .to_string();
        let applied = self
            .replica
            .sql(&format!("SELECT MASTER_GTID_WAIT('{received}', 30)"));
        assert_eq!(
            applied.trim(),
            "0",
            "the replica did not apply what it received"
        );
        self.replica
            .sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF;");
    }
}

impl Drop for MariaPair {
    fn drop(&mut self) {
        self.primary.kill();
        self.replica.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
