//! The one Redis client of an instance, on one server (`REDIS_URL`) or a Redis Cluster
//! (`REDIS_CLUSTER_NODES`): every command goes through [`RedisStore`], which adds the key
//! prefix, a per-call timeout and a circuit breaker. Imports no feature.
//!
//! Two lanes, the same commands:
//! - the **request lane**: one multiplexed connection (a `ConnectionManager`, or a
//!   cluster-async connection that multiplexes to every node), where concurrent commands
//!   are pipelined on the socket instead of each taking a pooled connection — redis-rs's
//!   own advice for request paths;
//! - the **background lane** ([`RedisStore::background`]): a `deadpool-redis` pool (its
//!   cluster pool on a cluster) for work that must not queue behind the requests and that
//!   requests must not queue behind: reconciler scans, rebuilds, the sweeper's releases.
//!
//! Keys that a script or a pipeline touches together share a hash tag (`{p42}`, `{sales}`),
//! so both run unchanged on a cluster (one slot each). Scripts run by SHA and are loaded
//! again on NOSCRIPT (a restarted or promoted node). When Redis stops answering, the breaker
//! opens after a few failures and every call fails at once for a while, so a dead Redis
//! costs microseconds per request, not a timeout. Callers treat [`KvError::Unavailable`]
//! as "use MySQL".

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};

use failsafe::{backoff, failure_policy, futures::CircuitBreaker, Config, Instrument};
use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
    Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisFuture,
    Value,
};
use tokio::sync::{mpsc, Notify, OnceCell};

use crate::config::RedisTarget;

/// Consecutive failures that open the circuit.
const FAILURES_TO_OPEN: u32 = 3;
/// How long the circuit stays open before calls may try again.
const OPEN_FOR: Duration = Duration::from_secs(1);
/// Connections of the background pool.
const BACKGROUND_POOL: usize = 4;
/// The background lane's bound on a call: its work waits for nobody, so it may take longer
/// than a request's Redis call, but not forever.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys asked for per `SCAN` step.
const SCAN_COUNT: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Redis is down, slow, or the circuit is open.
    #[error("redis is unavailable")]
    Unavailable,
    /// Redis answered with an error (a bug, not an outage).
    #[error("redis: {0}")]
    Command(redis::RedisError),
}

type Breaker =
    failsafe::StateMachine<failure_policy::ConsecutiveFailures<backoff::Constant>, Events>;

/// How often an unhealthy Redis is probed, so the circuit closes without waiting for traffic.
const PROBE_EVERY: Duration = Duration::from_secs(1);

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

/// Publishes the breaker state (gauge `redis_circuit_state`: 0 closed, 1 half-open,
/// 2 open) and wakes whoever waits for Redis to come back.
#[derive(Clone, Default)]
pub struct Events {
    recovered: Arc<Notify>,
    state: Arc<AtomicU8>,
}

impl Events {
    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Relaxed);
        metrics::gauge!("redis_circuit_state").set(f64::from(state));
    }
}

impl Instrument for Events {
    fn on_call_rejected(&self) {
        metrics::counter!("redis_calls_rejected_total").increment(1);
    }
    fn on_open(&self) {
        tracing::warn!("redis circuit open: serving from MySQL");
        self.set(OPEN);
    }
    fn on_half_open(&self) {
        self.set(HALF_OPEN);
    }
    fn on_closed(&self) {
        self.set(CLOSED);
        self.recovered.notify_one();
    }
}

/// Which connections a call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Request,
    Background,
}

#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
    lane: Lane,
}

enum Backend {
    Single {
        client: redis::Client,
    },
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        /// The seed nodes, for the subscription's own client.
        nodes: Vec<String>,
    },
}

enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

struct Inner {
    backend: Backend,
    request: OnceCell<Conn>,
    /// `Some` when request calls take pooled connections instead of `request`.
    request_pool: Option<Pool>,
    pool: Pool,
    prefix: String,
    timeout: Duration,
    breaker: Breaker,
    events: Events,
}

/// A connection of any kind the store uses, so that every command is written once. All
/// are multiplexed handles: cloning one shares its socket.
#[derive(Clone)]
enum Conn {
    /// The request lane on one server (reconnects on its own).
    Manager(ConnectionManager),
    /// A pooled connection of the background lane on one server.
    Multiplexed(redis::aio::MultiplexedConnection),
    /// Either lane on a cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A background-lane connection, back in its pool when dropped.
enum Pooled {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

impl Pooled {
    /// A handle on the pooled connection's socket, valid while `self` is held.
    fn conn(&self) -> Conn {
        match self {
            Pooled::Single(c) => Conn::Multiplexed((**c).clone()),
            Pooled::Cluster(c) => Conn::Cluster((**c).clone()),
        }
    }
}

impl RedisStore {
    /// `request_pool`: 0 puts request calls on one multiplexed connection (redis-rs's
    /// advice, and the default); N > 0 on a deadpool pool of N connections.
    pub fn new(
        target: &RedisTarget,
        prefix: &str,
        timeout: Duration,
        request_pool: usize,
    ) -> anyhow::Result<Self> {
        let events = Events::default();
        let policy =
            failure_policy::consecutive_failures(FAILURES_TO_OPEN, backoff::constant(OPEN_FOR));
        let breaker = Config::new()
            .failure_policy(policy)
            .instrument(events.clone())
            .build();
        let background = timeout.max(BACKGROUND_TIMEOUT);
        let pool = make_pool(target, BACKGROUND_POOL, background)?;
        let request_pool = match request_pool {
            0 => None,
            size => Some(make_pool(target, size, timeout)?),
        };
        let backend = match target {
            RedisTarget::Single(url) => Backend::Single {
                client: redis::Client::open(url.as_str())?,
            },
            RedisTarget::Cluster(nodes) => Backend::Cluster {
                client: Box::new(cluster_builder(nodes, timeout).build()?),
                nodes: nodes.clone(),
            },
        };
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                request: OnceCell::new(),
                request_pool,
                pool,
                prefix: prefix.to_string(),
                timeout,
                breaker,
                events,
            }),
            lane: Lane::Request,
        })
    }

    /// The same store on the background lane (the deadpool connections).
    pub fn background(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            lane: Lane::Background,
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.backend, Backend::Cluster { .. })
    }

    /// `prefix + suffix`: every key of this service lives under `REDIS_PREFIX`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.inner.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Resolves when the circuit closes again (and once at start-up).
    pub fn recovered(&self) -> Arc<Notify> {
        self.inner.events.recovered.clone()
    }

    /// Whether the circuit is closed (Redis answered the last calls).
    pub fn healthy(&self) -> bool {
        self.inner.events.state.load(Ordering::Relaxed) == CLOSED
    }

    /// Pings Redis every second while the circuit is not closed, so that it closes (and
    /// the reconciler runs) as soon as Redis is back, traffic or not.
    pub fn spawn_probe(&self) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if !store.healthy() {
                    let _ = store.cmd::<Value>(&redis::cmd("PING")).await;
                }
            }
        })
    }

    pub async fn cmd<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, KvError> {
        self.guard(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// A pipeline; on a cluster every key in it must share one hash slot.
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, KvError> {
        self.guard(|mut c| async move { pipe.query_async(&mut c).await })
            .await
    }

    /// Runs a Lua script by SHA (loading it when the node does not know it).
    pub async fn script<T: FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<T, KvError> {
        self.guard(|mut c| async move { call.invoke_async(&mut c).await })
            .await
    }

    /// Several script calls at once on one connection: written back to back, they cost one
    /// round trip (one per node on a cluster, in parallel).
    pub async fn scripts<T: FromRedisValue + Send>(
        &self,
        calls: &[redis::ScriptInvocation<'_>],
    ) -> Result<Vec<T>, KvError> {
        self.all(calls, |call, mut conn| async move {
            call.invoke_async::<T>(&mut conn).await
        })
        .await
    }

    /// Several commands at once, like [`Self::scripts`]. Keys may be in any slot.
    pub async fn cmds<T: FromRedisValue + Send>(&self, cmds: &[Cmd]) -> Result<Vec<T>, KvError> {
        self.all(cmds, |cmd, mut conn| async move {
            cmd.query_async::<T>(&mut conn).await
        })
        .await
    }

    /// `call` for every item at once, each on a clone of one connection (so they pipeline).
    async fn all<'a, I, T, F, Fut>(&self, items: &'a [I], call: F) -> Result<Vec<T>, KvError>
    where
        F: Fn(&'a I, Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.guard(|conn| {
            let calls = items.iter().map(|item| call(item, conn.clone()));
            futures_util::future::try_join_all(calls)
        })
        .await
    }

    /// Every key matching `pattern` (a glob after the prefix), from every master.
    pub async fn scan(&self, pattern: &str) -> Result<Vec<String>, KvError> {
        let pattern = self.key(pattern);
        let masters = self.masters().await?;
        let mut keys = Vec::new();
        for master in masters {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, found): (u64, Vec<String>) =
                    self.on_node(&scan, master.as_ref()).await?;
                keys.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }

    /// The masters of a cluster (`host`, `port`); `[None]` for one server.
    async fn masters(&self) -> Result<Vec<Option<(String, u16)>>, KvError> {
        if !self.is_cluster() {
            return Ok(vec![None]);
        }
        let nodes: String = self.cmd(redis::cmd("CLUSTER").arg("NODES")).await?;
        Ok(parse_masters(&nodes).into_iter().map(Some).collect())
    }

    /// `cmd` on one node of a cluster (`None`: wherever it routes).
    async fn on_node<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        node: Option<&(String, u16)>,
    ) -> Result<T, KvError> {
        let Some((host, port)) = node else {
            return self.cmd(cmd).await;
        };
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port: *port,
        });
        let cmd = cmd.clone();
        self.guard(move |c| async move {
            let Conn::Cluster(mut cluster) = c else {
                return cmd.query_async(&mut c.clone()).await;
            };
            let value = cluster.route_command(cmd, routing).await?;
            T::from_redis_value(value).map_err(redis::RedisError::from)
        })
        .await
    }

    /// A dedicated subscription to `channels` (RESP3 pushes, resubscribed after a
    /// reconnect; a `Subscribe` push after a `Disconnection` means messages may have been
    /// missed in between).
    pub async fn subscribe(
        &self,
        channels: &[String],
    ) -> Result<mpsc::UnboundedReceiver<PushInfo>, KvError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let timeout = self.inner.timeout.max(Duration::from_secs(2));
        let subscribed = async {
            match &self.inner.backend {
                Backend::Single { client } => {
                    let info = client
                        .get_connection_info()
                        .clone()
                        .into_connection_info()?;
                    let settings = info
                        .redis_settings()
                        .clone()
                        .set_protocol(ProtocolVersion::RESP3);
                    let client = redis::Client::open(info.set_redis_settings(settings))?;
                    let config = ConnectionManagerConfig::new()
                        .set_push_sender(tx)
                        .set_automatic_resubscription()
                        .set_connection_timeout(Some(timeout));
                    let mut conn = ConnectionManager::new_with_config(client, config).await?;
                    conn.subscribe(channels).await?;
                    // The manager lives as long as the task that owns its pushes.
                    tokio::spawn(async move {
                        let _keep = conn;
                        std::future::pending::<()>().await
                    });
                }
                Backend::Cluster { nodes, .. } => {
                    let client = cluster_builder(nodes, timeout)
                        .use_protocol(ProtocolVersion::RESP3)
                        .push_sender(tx)
                        .build()?;
                    let mut conn = client.get_async_connection().await?;
                    conn.subscribe(channels).await?;
                    tokio::spawn(async move {
                        let _keep = conn;
                        std::future::pending::<()>().await
                    });
                }
            }
            Ok::<_, redis::RedisError>(())
        };
        match tokio::time::timeout(timeout, subscribed).await {
            Ok(Ok(())) => Ok(rx),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(KvError::Unavailable),
        }
    }

    async fn request_conn(&self) -> redis::RedisResult<Conn> {
        let inner = &*self.inner;
        let conn = inner
            .request
            .get_or_try_init(|| async {
                match &inner.backend {
                    Backend::Single { client } => {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(inner.timeout))
                            .set_response_timeout(Some(inner.timeout))
                            .set_number_of_retries(1)
                            .set_min_delay(Duration::from_millis(50))
                            .set_max_delay(Duration::from_millis(500));
                        Ok::<_, redis::RedisError>(Conn::Manager(
                            ConnectionManager::new_with_config(client.clone(), config).await?,
                        ))
                    }
                    Backend::Cluster { client, .. } => {
                        Ok(Conn::Cluster(client.get_async_connection().await?))
                    }
                }
            })
            .await?;
        Ok(conn.clone())
    }

    async fn guard<T, F, Fut>(&self, op: F) -> Result<T, KvError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let inner = &*self.inner;
        let bound = match self.lane {
            Lane::Request => inner.timeout,
            Lane::Background => inner.timeout.max(BACKGROUND_TIMEOUT),
        };
        // The request lane's multiplexed connection, unless REDIS_REQUEST_POOL gave it a pool.
        let pool = match self.lane {
            Lane::Request => inner.request_pool.as_ref(),
            Lane::Background => Some(&inner.pool),
        };
        let work = async {
            match pool {
                None => op(self.request_conn().await?).await,
                Some(pool) => {
                    // Held until `op` is done, then back in the pool.
                    let pooled = pooled(pool).await?;
                    op(pooled.conn()).await
                }
            }
        };
        let timed = async {
            match tokio::time::timeout(bound, work).await {
                Ok(result) => result,
                Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "redis call timed out",
                ))),
            }
        };
        match inner.breaker.call_with(is_outage, timed).await {
            Ok(value) => Ok(value),
            Err(failsafe::Error::Rejected) => Err(KvError::Unavailable),
            Err(failsafe::Error::Inner(e)) => Err(classify(e)),
        }
    }
}

async fn pooled(pool: &Pool) -> redis::RedisResult<Pooled> {
    let io = |e: String| redis::RedisError::from(std::io::Error::other(e));
    Ok(match pool {
        Pool::Single(p) => Pooled::Single(p.get().await.map_err(|e| io(e.to_string()))?),
        Pool::Cluster(p) => Pooled::Cluster(p.get().await.map_err(|e| io(e.to_string()))?),
    })
}

/// A deadpool pool of `size` connections whose waits are bounded by `bound`.
fn make_pool(target: &RedisTarget, size: usize, bound: Duration) -> anyhow::Result<Pool> {
    let pool_config = deadpool_redis::PoolConfig {
        max_size: size,
        timeouts: deadpool_redis::Timeouts {
            wait: Some(bound),
            create: Some(bound),
            recycle: Some(bound),
        },
        ..Default::default()
    };
    let runtime = Some(deadpool_redis::Runtime::Tokio1);
    Ok(match target {
        RedisTarget::Single(url) => {
            let mut config = deadpool_redis::Config::from_url(url.clone());
            config.pool = Some(pool_config);
            Pool::Single(config.create_pool(runtime)?)
        }
        RedisTarget::Cluster(nodes) => {
            let mut config = deadpool_redis::cluster::Config::from_urls(nodes.clone());
            config.pool = Some(pool_config);
            Pool::Cluster(config.create_pool(runtime)?)
        }
    })
}

fn cluster_builder(nodes: &[String], timeout: Duration) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(200)
}

/// The `host:port` of every master that is not failing, from `CLUSTER NODES`.
fn parse_masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                return None;
            }
            let addr = fields.get(1)?.split('@').next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

fn classify(e: redis::RedisError) -> KvError {
    if is_outage(&e) {
        metrics::counter!("redis_errors_total", "kind" => "unavailable").increment(1);
        tracing::debug!(error = %e, "redis call failed");
        KvError::Unavailable
    } else {
        metrics::counter!("redis_errors_total", "kind" => "command").increment(1);
        tracing::warn!(error = %e, "redis command failed");
        KvError::Command(e)
    }
}

/// Whether an error says Redis is unreachable or not serving (as opposed to refusing a
/// command): I/O, timeouts, a node loading, a cluster without a master for a slot.
fn is_outage(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ClusterDown
                )
        )
}

#[cfg(test)]
mod tests {
    use super::parse_masters;

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let nodes = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 connected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            parse_masters(nodes),
            vec![("127.0.0.1".into(), 30002), ("127.0.0.1".into(), 30001)]
        );
    }
}
