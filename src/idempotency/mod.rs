//! Idempotency keys (SPEC §2), stored in MySQL.
//!
//! A request with a key first claims `(scope, key)` by inserting an IN_PROGRESS row. The
//! success response is written into that row inside the transaction that makes the change
//! (see [`crate::db::transact`]), so a crash can never leave a change without its stored
//! answer. A 4xx answer is stored after the rollback; a 5xx releases the key for a retry.
//! A claim left behind by a crashed process expires after `LEASE`.

use std::time::Duration;

use axum::{
    extract::FromRequestParts,
    http::{request::Parts, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::TimeDelta;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{MySqlConnection, MySqlPool};

use crate::{
    db::{self, ER_DUP_ENTRY},
    error::{problem_response, AppError},
};

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
pub const MAX_KEY_LEN: usize = 128;
/// How long a stored answer is replayed.
pub const RETENTION: TimeDelta = TimeDelta::hours(24);
/// How long an IN_PROGRESS claim protects a request that may have died.
const LEASE: TimeDelta = TimeDelta::seconds(30);
/// A concurrent request with the same key waits up to `WAIT_STEP × WAIT_STEPS` for the
/// first one's answer, then gets `IDEMPOTENCY_IN_PROGRESS`.
const WAIT_STEP: Duration = Duration::from_millis(20);
const WAIT_STEPS: u32 = 150;

/// The optional `Idempotency-Key` header: 1–128 visible ASCII characters.
#[derive(Clone, Debug)]
pub struct IdempotencyKey(pub Option<String>);

impl IdempotencyKey {
    pub fn parse(value: Option<&HeaderValue>) -> Result<Self, AppError> {
        let Some(value) = value else {
            return Ok(Self(None));
        };
        let bytes = value.as_bytes();
        if bytes.is_empty()
            || bytes.len() > MAX_KEY_LEN
            || !bytes.iter().all(|b| b.is_ascii_graphic())
        {
            return Err(AppError::Validation(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            )));
        }
        Ok(Self(Some(String::from_utf8_lossy(bytes).into_owned())))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        Self::parse(parts.headers.get(HEADER))
    }
}

/// A claimed key: where the answer of the request that holds it is stored.
#[derive(Clone, Debug)]
pub struct Recorder {
    scope: String,
    key: String,
    status: StatusCode,
}

impl Recorder {
    /// Stores the success answer; called inside the transaction that made the change.
    pub async fn record_success<T: Serialize>(
        &self,
        conn: &mut MySqlConnection,
        body: &T,
    ) -> Result<(), AppError> {
        let body = serde_json::to_string(body).map_err(anyhow::Error::from)?;
        self.store(conn, self.status, &body).await
    }

    async fn store(
        &self,
        conn: &mut MySqlConnection,
        status: StatusCode,
        body: &str,
    ) -> Result<(), AppError> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = 'DONE', response_status = ?, response_body = ? \
             WHERE scope = ? AND idem_key = ?",
        )
        .bind(i16::try_from(status.as_u16()).unwrap_or(i16::MAX))
        .bind(body)
        .bind(&self.scope)
        .bind(&self.key)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// After a failed request: a client error is the answer to replay; an infrastructure
    /// failure releases the key so that a retry runs again.
    async fn record_failure(&self, pool: &MySqlPool, error: &AppError) {
        let (status, _) = error.status_and_code();
        let result = if status.is_server_error() {
            sqlx::query("DELETE FROM idempotency_keys WHERE scope = ? AND idem_key = ? AND status = 'IN_PROGRESS'")
                .bind(&self.scope)
                .bind(&self.key)
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(AppError::from)
        } else {
            match (
                pool.acquire().await,
                serde_json::to_string(&error.problem()),
            ) {
                (Ok(mut conn), Ok(body)) => self.store(&mut conn, status, &body).await,
                (Err(e), _) => Err(e.into()),
                (_, Err(e)) => Err(anyhow::Error::from(e).into()),
            }
        };
        if let Err(e) = result {
            // The claim's lease runs out and a retry executes: nothing was changed.
            tracing::warn!(error = %e, "could not store the idempotent failure");
        }
    }
}

enum Claim {
    Proceed(Recorder),
    Replay(Response),
}

/// Runs `operation` at most once per `(scope, key)`.
///
/// `request` is what makes two requests "the same": the path ids and the parsed body.
/// Without a key the operation simply runs.
pub async fn run<T, Fut>(
    pool: &MySqlPool,
    key: IdempotencyKey,
    scope: String,
    request: &impl Serialize,
    status: StatusCode,
    operation: impl FnOnce(Option<Recorder>) -> Fut,
) -> Result<Response, AppError>
where
    T: Serialize,
    Fut: std::future::Future<Output = Result<T, AppError>>,
{
    let recorder = match key.0 {
        None => None,
        Some(key) => {
            let hash = request_hash(request)?;
            match claim(pool, Recorder { scope, key, status }, &hash).await? {
                Claim::Replay(response) => return Ok(response),
                Claim::Proceed(recorder) => Some(recorder),
            }
        }
    };
    match operation(recorder.clone()).await {
        Ok(value) => Ok((status, axum::Json(value)).into_response()),
        Err(error) => {
            if let Some(recorder) = recorder {
                recorder.record_failure(pool, &error).await;
            }
            Err(error)
        }
    }
}

fn request_hash(request: &impl Serialize) -> Result<String, AppError> {
    let bytes = serde_json::to_vec(request).map_err(anyhow::Error::from)?;
    Ok(hex::encode(Sha256::digest(bytes)))
}

#[derive(sqlx::FromRow)]
struct Stored {
    request_hash: String,
    status: String,
    response_status: Option<i16>,
    response_body: Option<String>,
    locked_until: chrono::NaiveDateTime,
    created_at: chrono::NaiveDateTime,
}

async fn claim(pool: &MySqlPool, recorder: Recorder, hash: &str) -> Result<Claim, AppError> {
    for _ in 0..WAIT_STEPS {
        let now = db::now();
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (scope, idem_key, request_hash, status, locked_until, created_at) \
             VALUES (?, ?, ?, 'IN_PROGRESS', ?, ?)",
        )
        .bind(&recorder.scope)
        .bind(&recorder.key)
        .bind(hash)
        .bind(now + LEASE)
        .bind(now)
        .execute(pool)
        .await;
        match inserted {
            Ok(_) => return Ok(Claim::Proceed(recorder)),
            Err(e) if db::mysql_error_number(&e) == Some(ER_DUP_ENTRY) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(stored) = load(pool, &recorder).await? else {
            continue;
        };
        if stored.created_at + RETENTION < now {
            // Older than the retention: the key is free again.
            take_over(pool, &recorder, &stored, hash, now).await?;
            continue;
        }
        if stored.request_hash != hash {
            return Err(AppError::IdempotencyKeyReused);
        }
        if stored.status == "DONE" {
            return Ok(Claim::Replay(replay(stored)));
        }
        if stored.locked_until < now && take_over(pool, &recorder, &stored, hash, now).await? {
            // The holder died without committing anything: run the request now.
            return Ok(Claim::Proceed(recorder));
        }
        tokio::time::sleep(WAIT_STEP).await;
    }
    Err(AppError::IdempotencyInProgress)
}

async fn load(pool: &MySqlPool, recorder: &Recorder) -> Result<Option<Stored>, AppError> {
    Ok(sqlx::query_as(
        "SELECT request_hash, status, response_status, response_body, locked_until, created_at \
         FROM idempotency_keys WHERE scope = ? AND idem_key = ?",
    )
    .bind(&recorder.scope)
    .bind(&recorder.key)
    .fetch_optional(pool)
    .await?)
}

/// Re-claims a stale or expired row; true when this request won it.
async fn take_over(
    pool: &MySqlPool,
    recorder: &Recorder,
    stored: &Stored,
    hash: &str,
    now: chrono::NaiveDateTime,
) -> Result<bool, AppError> {
    let updated = sqlx::query(
        "UPDATE idempotency_keys SET request_hash = ?, status = 'IN_PROGRESS', response_status = NULL, \
         response_body = NULL, locked_until = ?, created_at = ? \
         WHERE scope = ? AND idem_key = ? AND locked_until = ? AND created_at = ?",
    )
    .bind(hash)
    .bind(now + LEASE)
    .bind(now)
    .bind(&recorder.scope)
    .bind(&recorder.key)
    .bind(stored.locked_until)
    .bind(stored.created_at)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

fn replay(stored: Stored) -> Response {
    let status = stored
        .response_status
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let body = stored.response_body.unwrap_or_default();
    let mut response = if status.is_client_error() || status.is_server_error() {
        problem_response(status, body)
    } else {
        let mut r = (status, body).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    response
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Deletes answers older than the retention, a batch at a time.
pub async fn prune(pool: &MySqlPool) -> Result<u64, AppError> {
    let cutoff = db::now() - RETENTION;
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ? LIMIT 1000")
        .bind(cutoff)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_up_to_128() {
        let ok = HeaderValue::from_static("order-2026-11-24_abc");
        assert!(IdempotencyKey::parse(Some(&ok)).unwrap().0.is_some());
        assert!(IdempotencyKey::parse(None).unwrap().0.is_none());
        let long = HeaderValue::from_str(&"k".repeat(129)).unwrap();
        assert!(IdempotencyKey::parse(Some(&long)).is_err());
        let spaced = HeaderValue::from_static("has space");
        assert!(IdempotencyKey::parse(Some(&spaced)).is_err());
        let empty = HeaderValue::from_static("");
        assert!(IdempotencyKey::parse(Some(&empty)).is_err());
    }

    #[test]
    fn equal_requests_hash_equal() {
        let a = request_hash(&serde_json::json!({"amount": 5})).unwrap();
        let b = request_hash(&serde_json::json!({"amount": 5})).unwrap();
        let c = request_hash(&serde_json::json!({"amount": 6})).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
