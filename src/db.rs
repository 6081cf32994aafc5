//! MySQL access: connecting (creating the database when missing), embedded migrations,
//! the MySQL error numbers the service reacts to, and [`transact`], the retrying runner of
//! plain transactions. A leaf: it imports nothing of this crate.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use chrono::{NaiveDateTime, Utc};
use sqlx::{
    migrate::{MigrateDatabase, Migrator},
    mysql::{MySqlDatabaseError, MySqlPoolOptions},
    Executor, MySql, MySqlConnection, MySqlPool,
};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How often a transaction that lost a deadlock or a lock wait is tried again.
pub const MAX_RETRIES: u32 = 5;
/// Deadlock victim: the transaction was rolled back and may run again.
pub const ER_LOCK_DEADLOCK: u16 = 1213;
/// A row lock was not granted within `innodb_lock_wait_timeout`; only the statement was
/// rolled back.
pub const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// Duplicate entry for a unique key.
pub const ER_DUP_ENTRY: u16 = 1062;
/// The server has no connection left for us.
pub const ER_CON_COUNT_ERROR: u16 = 1040;
/// The server refuses writes (`read_only`): it is a replica or a demoted primary, so the
/// write address (HAProxy) sent us to the wrong server during a failover.
pub const ER_OPTION_PREVENTS_STATEMENT: u16 = 1290;

/// When a server last refused a write as read-only, in ms since the Unix epoch: every
/// connection opened before it is closed instead of reused, so the pool reconnects through
/// the write address to the server that is writable now.
static READ_ONLY_SEEN_MS: AtomicU64 = AtomicU64::new(0);

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Takes note of what an error says about the server: a read-only refusal retires the
/// connections opened until now (see [`READ_ONLY_SEEN_MS`]).
pub fn note(e: &sqlx::Error) {
    if mysql_error_number(e) == Some(ER_OPTION_PREVENTS_STATEMENT) {
        READ_ONLY_SEEN_MS.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        metrics::counter!("db_read_only_refusals_total").increment(1);
        tracing::warn!("MySQL refused a write as read-only; reconnecting to the writable server");
    }
}

/// Whether a connection `age` old was opened after the last read-only refusal.
fn opened_since_read_only(age: Duration) -> bool {
    let opened = unix_ms(SystemTime::now() - age);
    opened > READ_ONLY_SEEN_MS.load(Ordering::Relaxed)
}
/// How long a session waits for a row lock before its statement fails with 1205.
pub const LOCK_WAIT_SECS: u32 = 5;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The current time as stored in DATETIME(6) columns (UTC).
pub fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
}

/// A stored UTC `DATETIME` as RFC 3339 (`2026-11-24T05:18:00.123Z`), as the API shows it.
pub fn rfc3339(value: &NaiveDateTime) -> String {
    value
        .and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Creates the database named in `url` if needed, connects, and applies the migrations.
///
/// Every connection runs READ COMMITTED: each decision is taken under an explicit row lock
/// (`FOR UPDATE` or a conditional `UPDATE`), and READ COMMITTED takes no gap locks, so
/// inserts of new orders never wait on the expiry sweeper's range scan.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<MySqlPool> {
    if !MySql::database_exists(url).await? {
        if let Err(e) = MySql::create_database(url).await {
            // Another instance may have created it in the meantime.
            if !MySql::database_exists(url).await? {
                return Err(e.into());
            }
        }
    }
    let pool = pool(url, max_connections).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// A pool on an existing database, without migrating it.
pub async fn pool(url: &str, max_connections: u32) -> anyhow::Result<MySqlPool> {
    pool_with(url, max_connections, Duration::from_secs(3)).await
}

/// A read replica's pool: it gives up waiting for a connection sooner, since the primary
/// can answer instead. Connections are made on first use, so a replica that is down at
/// start-up is simply not used.
pub async fn replica_pool(url: &str, max_connections: u32) -> anyhow::Result<MySqlPool> {
    Ok(options(max_connections, Duration::from_millis(500)).connect_lazy(url)?)
}

async fn pool_with(
    url: &str,
    max_connections: u32,
    acquire: Duration,
) -> anyhow::Result<MySqlPool> {
    Ok(options(max_connections, acquire).connect(url).await?)
}

fn options(max_connections: u32, acquire: Duration) -> MySqlPoolOptions {
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire)
        .before_acquire(|_conn, meta| Box::pin(async move { Ok(opened_since_read_only(meta.age)) }))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                // A row lock not granted within this is an error (1205), not a request
                // stuck for InnoDB's default 50 s.
                conn.execute(
                    format!("SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_SECS}").as_str(),
                )
                .await?;
                Ok(())
            })
        })
}

/// The MySQL error number of a database error, if it is one.
pub fn mysql_error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

/// A deadlock victim or a lock-wait timeout: the transaction did nothing and may run again.
pub fn is_retryable(e: &sqlx::Error) -> bool {
    mysql_error_number(e).is_some_and(|n| n == ER_LOCK_DEADLOCK || n == ER_LOCK_WAIT_TIMEOUT)
}

/// Connection-level failures: the database is away (or, read-only, is not the primary any
/// more), not the request at fault. Nothing was written; a retry is safe.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
    ) || matches!(
        mysql_error_number(e),
        Some(ER_CON_COUNT_ERROR | ER_OPTION_PREVENTS_STATEMENT)
    )
}

/// An error type that can tell whether its transaction may simply run again.
pub trait Retry: From<sqlx::Error> {
    fn retryable(&self) -> bool;
}

/// Rows one statement of [`delete_all_before`] deletes: short statements, short locks.
pub const DELETE_CHUNK: u64 = 1_000;

/// Deletes every row `delete` names (a `DELETE … WHERE <column> < ? LIMIT ?`), `DELETE_CHUNK`
/// at a time, each chunk its own statement; returns how many.
pub async fn delete_all_before(
    pool: &MySqlPool,
    delete: &str,
    cutoff: NaiveDateTime,
) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    loop {
        let n = sqlx::query(delete)
            .bind(cutoff)
            .bind(DELETE_CHUNK)
            .execute(pool)
            .await?
            .rows_affected();
        deleted += n;
        if n < DELETE_CHUNK {
            return Ok(deleted);
        }
    }
}

/// Runs `work` in one transaction and commits it; on a deadlock or lock-wait timeout the
/// whole transaction is rolled back and run again, at most `MAX_RETRIES` times.
pub async fn transact<T, E, F>(pool: &MySqlPool, mut work: F) -> Result<T, E>
where
    T: Send,
    E: Retry,
    F: for<'c> FnMut(&'c mut MySqlConnection) -> BoxFuture<'c, Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        let result = async {
            let mut tx = begin(pool).await?;
            match work(&mut tx).await {
                Ok(value) => {
                    tx.commit().await?;
                    Ok(value)
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    Err(e)
                }
            }
        }
        .await;
        match result {
            Err(e) if e.retryable() && attempt < MAX_RETRIES => {
                attempt += 1;
                backoff(attempt).await;
            }
            other => return other,
        }
    }
}

/// Runs `attempt` again after a deadlock or lock-wait timeout, at most `MAX_RETRIES` times
/// (for work that opens its own transaction, as the checkout batches do); returns its value
/// and how many runs it took.
pub async fn retried<T, E, F, Fut>(mut attempt: F) -> Result<(T, u32), E>
where
    E: Retry,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut retries = 0;
    loop {
        match attempt().await {
            Err(e) if e.retryable() && retries < MAX_RETRIES => {
                retries += 1;
                backoff(retries).await;
            }
            Ok(value) => return Ok((value, retries + 1)),
            Err(e) => return Err(e),
        }
    }
}

/// Begins a transaction, recording how long the pool made us wait for a connection.
pub async fn begin(pool: &MySqlPool) -> Result<sqlx::Transaction<'static, MySql>, sqlx::Error> {
    let acquiring = std::time::Instant::now();
    let tx = pool.begin().await?;
    metrics::histogram!("db_pool_acquire_duration_seconds")
        .record(acquiring.elapsed().as_secs_f64());
    Ok(tx)
}

/// The pause before retry number `attempt` (1-based), counted in `db_transaction_retries_total`.
pub async fn backoff(attempt: u32) {
    metrics::counter!("db_transaction_retries_total").increment(1);
    tracing::debug!(
        attempt,
        "retrying a transaction after a deadlock or lock wait"
    );
    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
}

/// Where catalog loads read: a MySQL replica (`DATABASE_READ_URL`) while it answers and is
/// no further behind than the bound, else the primary. Everything that writes, or reads to
/// decide a write, uses the primary pool directly.
///
/// Freshness is measured end to end: the monitor writes a heartbeat row on the primary and
/// reads it back from the replica, every [`HEARTBEAT_EVERY`]; the replica is used while the
/// heartbeat it shows is at most `max_lag` old.
#[derive(Clone)]
pub struct Reader {
    primary: MySqlPool,
    replica: Option<MySqlPool>,
    fresh: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How often the replica's freshness is measured.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

impl Reader {
    /// Reads from the primary only.
    pub fn primary(pool: MySqlPool) -> Self {
        Self {
            primary: pool,
            replica: None,
            fresh: std::sync::Arc::default(),
        }
    }

    /// Reads from `replica` once the monitor has found it fresh.
    pub fn with_replica(primary: MySqlPool, replica: MySqlPool) -> Self {
        Self {
            primary,
            replica: Some(replica),
            fresh: std::sync::Arc::default(),
        }
    }

    /// The pool a catalog load should use now.
    pub fn pool(&self) -> &MySqlPool {
        match &self.replica {
            Some(replica) if self.fresh.load(std::sync::atomic::Ordering::Relaxed) => replica,
            _ => &self.primary,
        }
    }

    /// Runs a catalog load on [`Reader::pool`]; when that was the replica and it failed as
    /// unavailable (it died between two heartbeats), stops using it and asks the primary.
    pub async fn read<T, F, Fut>(&self, load: F) -> Result<T, sqlx::Error>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        if !self.on_replica() {
            return load(self.primary.clone()).await;
        }
        match load(self.pool().clone()).await {
            Err(e) if is_unavailable(&e) => {
                self.fresh
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("db_replica_fallbacks_total").increment(1);
                load(self.primary.clone()).await
            }
            other => other,
        }
    }

    /// The primary, for what must not read a replica (readiness of the primary itself).
    pub fn primary_pool(&self) -> &MySqlPool {
        &self.primary
    }

    pub fn has_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// Whether loads go to the replica right now.
    pub fn on_replica(&self) -> bool {
        self.replica.is_some() && self.fresh.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Measures the replica's lag until the process ends (nothing without a replica).
    pub fn spawn_monitor(&self, max_lag: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let replica = self.replica.clone()?;
        let (primary, fresh) = (self.primary.clone(), self.fresh.clone());
        Some(tokio::spawn(async move {
            let mut was_fresh = false;
            loop {
                let lag = replica_lag(&primary, &replica).await;
                let now_fresh = lag.is_some_and(|lag| lag <= max_lag);
                fresh.store(now_fresh, std::sync::atomic::Ordering::Relaxed);
                metrics::gauge!("db_replica_lag_seconds")
                    .set(lag.map_or(-1.0, |l| l.as_secs_f64()));
                metrics::gauge!("db_replica_in_use").set(if now_fresh { 1.0 } else { 0.0 });
                if now_fresh != was_fresh {
                    tracing::warn!(
                        ?lag,
                        fresh = now_fresh,
                        "catalog reads switch {}",
                        if now_fresh {
                            "to the replica"
                        } else {
                            "to the primary"
                        }
                    );
                    was_fresh = now_fresh;
                }
                tokio::time::sleep(HEARTBEAT_EVERY).await;
            }
        }))
    }
}

/// Writes a heartbeat on the primary and reads it on the replica; `None` when either does
/// not answer in time.
async fn replica_lag(primary: &MySqlPool, replica: &MySqlPool) -> Option<Duration> {
    let bound = HEARTBEAT_EVERY * 2;
    let beat = tokio::time::timeout(
        bound,
        sqlx::query(
            "INSERT INTO replication_heartbeat (id, beat) VALUES (1, UTC_TIMESTAMP(6)) \
             ON DUPLICATE KEY UPDATE beat = VALUES(beat)",
        )
        .execute(primary),
    )
    .await;
    if !matches!(beat, Ok(Ok(_))) {
        return None;
    }
    let seen: NaiveDateTime = tokio::time::timeout(
        bound,
        sqlx::query_scalar("SELECT beat FROM replication_heartbeat WHERE id = 1")
            .fetch_optional(replica),
    )
    .await
    .ok()?
    .ok()??;
    Some((now() - seen).to_std().unwrap_or_default())
}
