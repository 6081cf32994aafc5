//! A real Redis Cluster for one test: three masters with a replica each, on loopback ports
//! of its own (each node also listens on its port + 10000, so ports stay ≤ 55535), no
//! persistence, stopped and removed when dropped.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::block_until;

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

struct Node {
    port: u16,
    child: Option<Child>,
}

/// A port whose cluster-bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = listener.local_addr() else {
            continue;
        };
        // Ephemeral ports run high: fold into 20000..45000.
        let port = 20_000 + addr.port() % 25_000;
        drop(listener);
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisCluster {
    /// Starts six nodes and joins them: masters on the first three, a replica of each on
    /// the other three. Fails over within about a second of a master's death.
    pub fn start() -> RedisCluster {
        let dir =
            std::env::temp_dir().join(format!("redis-cluster-{}", crate::helpers::unique_name()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = cluster_port();
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        let start = Instant::now();
        for node in &nodes {
            while cli(node.port, &["PING"]).trim() != "PONG" {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "node {} not up",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(created.success(), "the cluster was not created");
        let cluster = RedisCluster { nodes, dir };
        cluster.until_ok();
        // A replica that never finished its first sync would not take over its master.
        block_until(Duration::from_secs(20), "replicas never synced", || {
            cluster.live_ports().iter().all(|p| {
                let info = cli(*p, &["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        cluster
    }

    /// Waits until every live node says the cluster is ok and agrees on three masters.
    pub fn until_ok(&self) {
        let start = Instant::now();
        loop {
            let ok = self.live_ports().iter().all(|p| {
                cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    && self.masters_seen_by(*p).len() == 3
            });
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn masters_seen_by(&self, port: u16) -> Vec<u16> {
        cli(port, &["CLUSTER", "NODES"])
            .lines()
            .filter(|l| {
                let flags = l.split_whitespace().nth(2).unwrap_or("");
                flags.contains("master") && !flags.contains("fail")
            })
            .filter_map(|l| {
                l.split_whitespace()
                    .nth(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Waits until `victim` is no master any more (its replica took its slots) and the
    /// cluster is ok.
    pub fn until_failed_over(&self, victim: u16) {
        block_until(
            Duration::from_secs(20),
            &format!("no replica took over {victim}"),
            || !self.masters().contains(&victim),
        );
        self.until_ok();
    }

    /// `host:port` of every node, the seeds of `REDIS_CLUSTER_NODES`.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The current masters' ports.
    pub fn masters(&self) -> Vec<u16> {
        let any = self.live_ports()[0];
        self.masters_seen_by(any)
    }

    /// The master that owns `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let any = self.live_ports()[0];
        let slot: u16 = cli(any, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("slot");
        for line in cli(any, &["CLUSTER", "NODES"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields.get(2).is_some_and(|f| f.contains("master")) {
                continue;
            }
            for range in &fields[8..] {
                let (lo, hi) = match range.split_once('-') {
                    Some((lo, hi)) => (lo.parse().unwrap_or(u16::MAX), hi.parse().unwrap_or(0)),
                    None => (
                        range.parse().unwrap_or(u16::MAX),
                        range.parse().unwrap_or(0),
                    ),
                };
                if (lo..=hi).contains(&slot) {
                    return fields[1]
                        .split('@')
                        .next()
                        .unwrap()
                        .rsplit(':')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                }
            }
        }
        panic!("no master owns slot {slot}");
    }

    /// `FLUSHALL` on every master: the cluster loses every key.
    pub fn flush_all(&self) {
        for port in self.masters() {
            assert_eq!(cli(port, &["FLUSHALL"]).trim(), "OK");
        }
    }

    /// `kill -9` of the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
