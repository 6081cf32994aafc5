//! MySQL access: connecting (creating the database when missing), embedded migrations,
//! and `transact`, the runner every write goes through.

use std::{future::Future, pin::Pin, time::Duration};

use chrono::{NaiveDateTime, Utc};
use serde::Serialize;
use sqlx::{
    migrate::{MigrateDatabase, Migrator},
    mysql::{MySqlDatabaseError, MySqlPoolOptions},
    Executor, MySql, MySqlConnection, MySqlPool,
};

use crate::{error::AppError, idempotency::Recorder};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How often a transaction that lost a deadlock or a lock wait is tried again.
const MAX_RETRIES: u32 = 5;
/// MySQL error numbers worth a retry: deadlock victim, lock wait timeout.
const ER_LOCK_DEADLOCK: u16 = 1213;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The current time as stored in DATETIME(6) columns (UTC).
pub fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
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
    let pool = MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                // A row lock not granted within this is an error (1205, retried by
                // `transact`), not a request stuck for InnoDB's default 50 s.
                conn.execute("SET SESSION innodb_lock_wait_timeout = 5")
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Runs `work` in one transaction and commits it; on a deadlock or lock-wait timeout the
/// whole transaction is rolled back and run again, at most `MAX_RETRIES` times.
///
/// With a `recorder`, the response is stored under its Idempotency-Key inside the same
/// transaction, so the effect and the stored answer commit together or not at all.
pub async fn transact<T, F>(
    pool: &MySqlPool,
    recorder: Option<&Recorder>,
    mut work: F,
) -> Result<T, AppError>
where
    T: Serialize + Send,
    F: for<'c> FnMut(&'c mut MySqlConnection) -> BoxFuture<'c, Result<T, AppError>>,
{
    let mut attempt = 0;
    loop {
        let acquiring = std::time::Instant::now();
        let mut tx = pool.begin().await?;
        metrics::histogram!("db_pool_acquire_duration_seconds")
            .record(acquiring.elapsed().as_secs_f64());
        let outcome = match work(&mut tx).await {
            Ok(value) => match recorder {
                Some(r) => r.record_success(&mut tx, &value).await.map(|()| value),
                None => Ok(value),
            },
            Err(e) => Err(e),
        };
        let result = match outcome {
            Ok(value) => tx.commit().await.map(|()| value).map_err(AppError::from),
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        };
        match result {
            Err(AppError::Database(e)) if is_retryable(&e) && attempt < MAX_RETRIES => {
                attempt += 1;
                metrics::counter!("db_transaction_retries_total").increment(1);
                tracing::debug!(attempt, error = %e, "retrying transaction");
                tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

/// A deadlock victim or a lock-wait timeout: the transaction did nothing and may run again.
pub fn is_retryable(e: &sqlx::Error) -> bool {
    mysql_error_number(e).is_some_and(|n| n == ER_LOCK_DEADLOCK || n == ER_LOCK_WAIT_TIMEOUT)
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

/// Duplicate entry for a unique key.
pub const ER_DUP_ENTRY: u16 = 1062;
