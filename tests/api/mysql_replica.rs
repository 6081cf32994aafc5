//! A MariaDB primary and its replica for one test: two `mariadbd` processes with data
//! directories of their own (made by `mariadb-install-db`), on free loopback ports, GTID
//! replication, the service's user created on the primary (and so on the replica).
//! Stopped and removed when dropped.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::{free_port, unique_name};

pub struct MariaPair {
    dir: PathBuf,
    primary: Server,
    replica: Server,
}

struct Server {
    port: u16,
    child: Option<Child>,
}

fn sql(port: u16, statements: &str) -> String {
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

fn start(datadir: &std::path::Path, port: u16, server_id: u32) -> Server {
    let child = Command::new("mariadbd")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .arg(format!("--socket={}/sock", datadir.display()))
        .arg(format!("--pid-file={}/pid", datadir.display()))
        .arg(format!("--log-error={}/error.log", datadir.display()))
        .arg(format!("--port={port}"))
        .arg(format!("--server-id={server_id}"))
        .args([
            "--bind-address=127.0.0.1",
            "--user=root",
            "--skip-name-resolve",
        ])
        .args([
            "--log-bin=binlog",
            "--binlog-format=ROW",
            "--innodb-buffer-pool-size=32M",
        ])
        .args(["--max-connections=300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mariadbd");
    let start = Instant::now();
    while Command::new("mariadb")
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
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "mariadbd on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        port,
        child: Some(child),
    }
}

impl MariaPair {
    pub fn start() -> MariaPair {
        let dir = std::env::temp_dir().join(format!("mariadb-pair-{}", unique_name()));
        let (primary_dir, replica_dir) = (dir.join("primary"), dir.join("replica"));
        std::fs::create_dir_all(&dir).expect("dir");
        let installed = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", primary_dir.display()))
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
        // The replica starts from the same empty data directory.
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&primary_dir)
            .arg(&replica_dir)
            .status()
            .expect("cp");
        assert!(copied.success());
        let primary = start(&primary_dir, free_port(), 1);
        let replica = start(&replica_dir, free_port(), 2);
        sql(
            primary.port,
            "CREATE USER 'repl'@'%' IDENTIFIED BY 'repl'; GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'; \
             CREATE USER 'commerce'@'%' IDENTIFIED BY 'commerce'; \
             GRANT ALL PRIVILEGES ON `commerce%`.* TO 'commerce'@'%';",
        );
        sql(
            replica.port,
            &format!(
                "SET GLOBAL gtid_slave_pos = ''; CHANGE MASTER TO MASTER_HOST = '127.0.0.1', \
                 MASTER_PORT = {}, MASTER_USER = 'repl', MASTER_PASSWORD = 'repl', \
                 MASTER_USE_GTID = slave_pos; START SLAVE;",
                primary.port
            ),
        );
        MariaPair {
            dir,
            primary,
            replica,
        }
    }

    pub fn primary_url(&self, database: &str) -> String {
        format!(
            "mysql://commerce:commerce@127.0.0.1:{}/{database}",
            self.primary.port
        )
    }

    pub fn replica_url(&self, database: &str) -> String {
        format!(
            "mysql://commerce:commerce@127.0.0.1:{}/{database}",
            self.replica.port
        )
    }

    /// The replica stops applying what the primary writes (it falls behind).
    pub fn pause_replication(&self) {
        sql(self.replica.port, "STOP SLAVE SQL_THREAD");
    }

    pub fn resume_replication(&self) {
        sql(self.replica.port, "START SLAVE SQL_THREAD");
    }

    /// `kill -9` of the replica.
    pub fn kill_replica(&mut self) {
        if let Some(mut child) = self.replica.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MariaPair {
    fn drop(&mut self) {
        for server in [&mut self.primary, &mut self.replica] {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
