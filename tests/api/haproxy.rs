//! HAProxy (Debian's package) for one test, with the service's own configurations, on a
//! free port; stopped when dropped: in front of API instances
//! (`deploy/haproxy.cfg.template`), or as the write address of a MySQL primary and its
//! standby (`deploy/haproxy-mysql.cfg.template`).

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::{free_port, unique_name};

pub struct HaProxy {
    child: Child,
    dir: std::path::PathBuf,
    /// `http://127.0.0.1:<port>` (API instances) or `127.0.0.1:<port>` (MySQL).
    pub url: String,
}

/// Starts Debian's HAProxy on `config`; the process and its folder are the proxy.
fn spawn(config: String, url: String) -> HaProxy {
    let dir = std::env::temp_dir().join(format!("haproxy-{}", unique_name()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, config).expect("config");
    let log = std::fs::File::create(dir.join("haproxy.log")).expect("log");
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("haproxy");
    HaProxy { child, dir, url }
}

impl HaProxy {
    /// The write address of MySQL servers on `ports` (`deploy/haproxy-mysql.cfg.template`,
    /// checked by `deploy/mysql-writable.sh`); waits until it reaches a writable one.
    pub async fn start_mysql(ports: &[u16]) -> HaProxy {
        let port = free_port();
        let servers: String = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server mysql{i} 127.0.0.1:{p} check\n"))
            .collect();
        let check =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mysql-writable.sh");
        let config = include_str!("../../deploy/haproxy-mysql.cfg.template")
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@CHECK@", &check.display().to_string())
            .replace("@SERVERS@", &servers);
        let proxy = spawn(config, format!("127.0.0.1:{port}"));
        let start = Instant::now();
        while !crate::mysql_replica::writable_through(port) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "haproxy never reached a writable MySQL: {}",
                std::fs::read_to_string(proxy.dir.join("haproxy.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await; // every server checked
        proxy
    }

    /// Balances over `backends` (`http://host:port` each); waits until every backend is up.
    pub async fn start(backends: &[&str]) -> HaProxy {
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                format!(
                    "    server api{i} {} check\n",
                    b.trim_start_matches("http://")
                )
            })
            .collect();
        let config = include_str!("../../deploy/haproxy.cfg.template")
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@SERVERS@", &servers);
        let proxy = spawn(config, format!("http://127.0.0.1:{port}"));
        // Every backend answered its health check once: as many 200s in a row as backends.
        let start = Instant::now();
        let client = reqwest::Client::new();
        let mut ok = 0;
        while ok < backends.len() * 2 {
            let up = client
                .get(format!("{}/readyz", proxy.url))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            ok = if up { ok + 1 } else { 0 };
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "haproxy never served: {}",
                std::fs::read_to_string(proxy.dir.join("haproxy.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(1200)).await; // rise 2 × inter 500 ms
        proxy
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
