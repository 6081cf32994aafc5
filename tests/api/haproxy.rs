//! HAProxy (Debian's package) in front of API instances for one test, with the service's
//! own configuration (`deploy/haproxy.cfg.template`), on a free port; stopped when dropped.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::{free_port, unique_name};

pub struct HaProxy {
    child: Child,
    dir: std::path::PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl HaProxy {
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
        let url = format!("http://127.0.0.1:{port}");
        let proxy = HaProxy { child, dir, url };
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
