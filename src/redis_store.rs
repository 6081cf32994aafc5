//! The one Redis client of an instance: every command goes through [`RedisStore`], which
//! adds the key prefix, a per-call timeout and a circuit breaker.
//!
//! One multiplexed connection ([`ConnectionManager`], reconnecting on its own) carries all
//! requests: concurrent commands are pipelined on the socket instead of each taking a
//! pooled connection (deadpool-redis pings every connection it hands out, which doubles
//! the round trips of a hot path). The manager is created on first use, so the service
//! starts, degraded, while Redis is down.
//!
//! When Redis stops answering, the breaker opens after a few failures and every call fails
//! at once for a while, so a dead Redis costs microseconds per request, not a timeout.
//! Callers treat [`KvError::Unavailable`] as "use MySQL".

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};

use failsafe::{backoff, failure_policy, futures::CircuitBreaker, Config, Instrument};
use redis::{aio::ConnectionManager, aio::ConnectionManagerConfig, FromRedisValue};
use tokio::sync::{Notify, OnceCell};

/// Consecutive failures that open the circuit.
const FAILURES_TO_OPEN: u32 = 3;
/// How long the circuit stays open before calls may try again.
const OPEN_FOR: Duration = Duration::from_secs(1);

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

#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    breaker: Breaker,
    events: Events,
}

impl RedisStore {
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        let events = Events::default();
        let policy =
            failure_policy::consecutive_failures(FAILURES_TO_OPEN, backoff::constant(OPEN_FOR));
        let breaker = Config::new()
            .failure_policy(policy)
            .instrument(events.clone())
            .build();
        Ok(Self {
            inner: Arc::new(Inner {
                client: redis::Client::open(url)?,
                connection: OnceCell::new(),
                prefix: prefix.to_string(),
                timeout,
                breaker,
                events,
            }),
        })
    }

    /// `prefix + suffix`: every key of this service lives under `REDIS_PREFIX`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.inner.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// A client for connections the manager cannot serve (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.inner.client
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
                    let _ = store.cmd::<String>(&redis::cmd("PING")).await;
                }
            }
        })
    }

    pub async fn cmd<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, KvError> {
        self.guard(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, KvError> {
        self.guard(|mut c| async move { pipe.query_async(&mut c).await })
            .await
    }

    /// Runs a Lua script by SHA (loading it once when Redis does not know it).
    pub async fn script<T: FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<T, KvError> {
        self.guard(|mut c| async move { call.invoke_async(&mut c).await })
            .await
    }

    async fn guard<T, F, Fut>(&self, op: F) -> Result<T, KvError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let inner = &*self.inner;
        let work = async {
            let conn = inner
                .connection
                .get_or_try_init(|| connect(&inner.client, inner.timeout))
                .await?;
            op(conn.clone()).await
        };
        let timed = async {
            match tokio::time::timeout(inner.timeout, work).await {
                Ok(result) => result,
                Err(_) => Err(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "timed out",
                ))),
            }
        };
        match inner.breaker.call_with(is_outage, timed).await {
            Ok(value) => Ok(value),
            Err(failsafe::Error::Rejected) => Err(KvError::Unavailable),
            Err(failsafe::Error::Inner(e)) if is_outage(&e) => {
                metrics::counter!("redis_errors_total", "kind" => "unavailable").increment(1);
                tracing::debug!(error = %e, "redis call failed");
                Err(KvError::Unavailable)
            }
            Err(failsafe::Error::Inner(e)) => {
                metrics::counter!("redis_errors_total", "kind" => "command").increment(1);
                tracing::warn!(error = %e, "redis command failed");
                Err(KvError::Command(e))
            }
        }
    }
}

async fn connect(
    client: &redis::Client,
    timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_number_of_retries(1)
        .set_factor(50)
        .set_max_delay(500);
    ConnectionManager::new_with_config(client.clone(), config).await
}

/// Whether an error says Redis is unreachable (as opposed to refusing a command).
fn is_outage(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::BusyLoadingError | redis::ErrorKind::TryAgain
        )
}
