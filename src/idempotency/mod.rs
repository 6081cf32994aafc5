//! Idempotency keys (SPEC §2), kept in MySQL inside the transaction that makes the change.
//!
//! A request with a key first inserts its claim row `(scope, key, request hash)` in its
//! business transaction, then does its work, then writes its answer into the same row, and
//! commits all of it at once. So:
//! - a concurrent duplicate's insert waits on the claim's row lock; when the first commits
//!   it finds the answer and replays it, when the first rolls back it runs itself;
//! - a request that died (a crash, a dropped connection) leaves nothing behind: MySQL rolls
//!   its transaction back, claim included, and a retry runs at once;
//! - a client error (4xx) is an answer too: the work is rolled back to a savepoint taken
//!   after the claim, and the problem is stored and replayed like a success. A 5xx stores
//!   nothing, so a retry runs again; neither does a refusal that says when to come back
//!   (`SALE_NOT_STARTED`, see [`AppError::is_kept`]).
//!
//! A duplicate that waits longer than the lock-wait bound gets `IDEMPOTENCY_IN_PROGRESS`.
//! The checkout batches use [`claim`] and [`record`] directly, for many keys in one
//! transaction.

use axum::{
    extract::FromRequestParts,
    http::{request::Parts, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::TimeDelta;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

use crate::{
    db::{self, ER_DUP_ENTRY, ER_LOCK_WAIT_TIMEOUT},
    error::{problem_response, AppError, Problem},
};

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
pub const MAX_KEY_LEN: usize = 128;
/// How long a stored answer is replayed.
pub const RETENTION: TimeDelta = TimeDelta::hours(24);

/// The optional `Idempotency-Key` header: 1–128 visible ASCII characters.
#[derive(Clone, Debug, Default)]
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

    /// The claim of a request with this key: `scope` (the caller and the operation), what
    /// makes two requests "the same" (path ids and parsed body), and the success status.
    pub fn claim(
        &self,
        scope: String,
        request: &impl Serialize,
        status: StatusCode,
    ) -> Result<Option<Claim>, AppError> {
        let Some(key) = &self.0 else {
            return Ok(None);
        };
        let bytes = serde_json::to_vec(request).map_err(anyhow::Error::from)?;
        Ok(Some(Claim {
            scope,
            key: key.clone(),
            hash: hex::encode(Sha256::digest(bytes)),
            status,
        }))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        Self::parse(parts.headers.get(HEADER))
    }
}

/// A keyed request: its key, in its scope, for this request hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub scope: String,
    pub key: String,
    pub hash: String,
    /// The status of a success answer (200 or 201).
    pub status: StatusCode,
}

/// An answer kept under a key.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Stored {
    #[sqlx(rename = "response_status")]
    pub status: i16,
    #[sqlx(rename = "response_body")]
    pub body: String,
}

impl Stored {
    /// The success answer of `claim`'s request.
    pub fn success<T: Serialize>(claim: &Claim, value: &T) -> Self {
        Self {
            status: claim.status.as_u16() as i16,
            body: serde_json::to_string(value).unwrap_or_default(),
        }
    }

    /// [`Stored::success`] when there is a claim to keep it under.
    pub fn success_of<T: Serialize>(claim: Option<&Claim>, value: &T) -> Option<Self> {
        claim.map(|c| Self::success(c, value))
    }

    /// A refusal (4xx) as its problem document.
    pub fn failure(error: &AppError) -> Self {
        Self {
            status: error.status().as_u16() as i16,
            body: serde_json::to_string(&error.problem()).unwrap_or_default(),
        }
    }

    /// The stored answer again, marked `Idempotent-Replayed: true`. A problem carries the
    /// id of the request that gets it now, like every problem.
    pub fn replay(self) -> Response {
        let status = u16::try_from(self.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let mut response = if status.is_client_error() || status.is_server_error() {
            match serde_json::from_str::<Problem>(&self.body) {
                Ok(problem) => problem_response(status, problem),
                Err(_) => (status, self.body).into_response(),
            }
        } else {
            let mut r = (status, self.body).into_response();
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
}

/// What a claim found.
#[derive(Debug)]
pub enum Claimed {
    /// The key is this transaction's now: do the work, then [`record`] its answer.
    New,
    /// The same request already has an answer: replay it, change nothing.
    Replay(Stored),
}

#[derive(sqlx::FromRow)]
struct Row {
    request_hash: String,
    response_status: Option<i16>,
    response_body: Option<String>,
    created_at: chrono::NaiveDateTime,
}

/// Claims `claim`'s key inside the caller's transaction. A key held by another transaction
/// that is still running makes this wait on its row lock; when that lock is not granted
/// within the lock-wait bound the answer is `IDEMPOTENCY_IN_PROGRESS`. The same key with
/// another request is `IDEMPOTENCY_KEY_REUSED`.
pub async fn claim(tx: &mut MySqlConnection, claim: &Claim) -> Result<Claimed, AppError> {
    let now = db::now();
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, idem_key, request_hash, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(&claim.hash)
    .bind(now)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => return Ok(Claimed::New),
        Err(e) if db::mysql_error_number(&e) == Some(ER_DUP_ENTRY) => {}
        Err(e) if db::mysql_error_number(&e) == Some(ER_LOCK_WAIT_TIMEOUT) => {
            return Err(AppError::IdempotencyInProgress)
        }
        Err(e) => return Err(e.into()),
    }
    // A committed answer (the duplicate-key check waited for its transaction).
    let row: Row = sqlx::query_as(
        "SELECT request_hash, response_status, response_body, created_at FROM idempotency_keys \
         WHERE scope = ? AND idem_key = ?",
    )
    .bind(&claim.scope)
    .bind(&claim.key)
    .fetch_one(&mut *tx)
    .await?;
    let answer = match (row.response_status, row.response_body) {
        (Some(status), Some(body)) if row.created_at + RETENTION >= now => {
            Some(Stored { status, body })
        }
        _ => None,
    };
    let Some(answer) = answer else {
        // Past the retention (or a row without an answer): the key is free again.
        sqlx::query(
            "UPDATE idempotency_keys SET request_hash = ?, response_status = NULL, response_body = NULL, \
             created_at = ? WHERE scope = ? AND idem_key = ?",
        )
        .bind(&claim.hash)
        .bind(now)
        .bind(&claim.scope)
        .bind(&claim.key)
        .execute(&mut *tx)
        .await?;
        return Ok(Claimed::New);
    };
    if row.request_hash != claim.hash {
        return Err(AppError::IdempotencyKeyReused);
    }
    Ok(Claimed::Replay(answer))
}

/// Gives up a claim made in this transaction (its request will not run): the key is free
/// once the transaction ends.
pub async fn release(tx: &mut MySqlConnection, claim: &Claim) -> Result<(), AppError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE scope = ? AND idem_key = ?")
        .bind(&claim.scope)
        .bind(&claim.key)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Writes the answers of claimed keys, in the transaction that claimed them (one statement
/// for any number of keys).
pub async fn record(
    tx: &mut MySqlConnection,
    answers: &[(&Claim, Stored)],
) -> Result<(), AppError> {
    if answers.is_empty() {
        return Ok(());
    }
    let now = db::now();
    let mut insert = QueryBuilder::new(
        "INSERT INTO idempotency_keys (scope, idem_key, request_hash, response_status, response_body, created_at) ",
    );
    insert.push_values(answers, |mut row, (claim, stored)| {
        row.push_bind(&claim.scope)
            .push_bind(&claim.key)
            .push_bind(&claim.hash)
            .push_bind(stored.status)
            .push_bind(&stored.body)
            .push_bind(now);
    });
    insert.push(
        " ON DUPLICATE KEY UPDATE response_status = VALUES(response_status), response_body = VALUES(response_body)",
    );
    insert.build().execute(&mut *tx).await?;
    Ok(())
}

/// A use case's result: done now, or the replay of an earlier answer.
pub enum Outcome<V, X> {
    /// Done by this request: the answer `V` (what the client sees) and `X`, what the
    /// caller does after the commit (Redis, caches).
    Done(V, X),
    Replayed(Response),
}

impl<V: Serialize, X> Outcome<V, X> {
    /// The response: `status` and the JSON of `V`, or the replay.
    pub fn respond(self, status: StatusCode) -> Response {
        match self {
            Outcome::Done(view, _) => (status, axum::Json(view)).into_response(),
            Outcome::Replayed(response) => response,
        }
    }
}

/// Runs `work` in one transaction, at most once per key: with a key, the claim comes first
/// and the answer (success or 4xx problem) is written before the commit. Deadlocks and
/// lock-wait timeouts run the whole transaction again.
pub async fn run<V, X, F>(
    pool: &MySqlPool,
    claim: Option<&Claim>,
    mut work: F,
) -> Result<Outcome<V, X>, AppError>
where
    V: Serialize + Send,
    X: Send,
    F: for<'c> FnMut(&'c mut MySqlConnection) -> db::BoxFuture<'c, Result<(V, X), AppError>>,
{
    let Some(claim) = claim else {
        let (view, after) = db::transact(pool, work).await?;
        return Ok(Outcome::Done(view, after));
    };
    let mut attempt = 0;
    loop {
        match once(pool, claim, &mut work).await {
            Err(AppError::Database(e)) if db::is_retryable(&e) && attempt < db::MAX_RETRIES => {
                attempt += 1;
                db::backoff(attempt).await;
            }
            other => return other,
        }
    }
}

async fn once<V, X, F>(
    pool: &MySqlPool,
    claim: &Claim,
    work: &mut F,
) -> Result<Outcome<V, X>, AppError>
where
    V: Serialize + Send,
    X: Send,
    F: for<'c> FnMut(&'c mut MySqlConnection) -> db::BoxFuture<'c, Result<(V, X), AppError>>,
{
    let mut tx = db::begin(pool).await?;
    match self::claim(&mut tx, claim).await? {
        Claimed::Replay(stored) => {
            tx.rollback().await?;
            return Ok(Outcome::Replayed(stored.replay()));
        }
        Claimed::New => {}
    }
    sqlx::query("SAVEPOINT work").execute(&mut *tx).await?;
    let done = work(&mut tx).await;
    let answer = match &done {
        Ok((view, _)) => Stored::success(claim, view),
        Err(e) if e.is_kept() => {
            sqlx::query("ROLLBACK TO SAVEPOINT work")
                .execute(&mut *tx)
                .await?;
            Stored::failure(e)
        }
        Err(_) => {
            let _ = tx.rollback().await;
            return done.map(|(view, after)| Outcome::Done(view, after));
        }
    };
    record(&mut tx, &[(claim, answer)]).await?;
    tx.commit().await?;
    done.map(|(view, after)| Outcome::Done(view, after))
}

/// Deletes every answer older than the retention (in chunks); returns how many.
pub async fn prune(pool: &MySqlPool) -> Result<u64, AppError> {
    Ok(db::delete_all_before(
        pool,
        "DELETE FROM idempotency_keys WHERE created_at < ? LIMIT ?",
        db::now() - RETENTION,
    )
    .await?)
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
        let key = IdempotencyKey(Some("k".into()));
        let claim = |body: serde_json::Value| {
            key.claim("s".into(), &body, StatusCode::OK)
                .unwrap()
                .unwrap()
                .hash
        };
        assert_eq!(
            claim(serde_json::json!({"amount": 5})),
            claim(serde_json::json!({"amount": 5}))
        );
        assert_ne!(
            claim(serde_json::json!({"amount": 5})),
            claim(serde_json::json!({"amount": 6}))
        );
        assert!(IdempotencyKey(None)
            .claim("s".into(), &1, StatusCode::OK)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_stored_problem_replays_with_its_status() {
        let claim = IdempotencyKey(Some("k".into()))
            .claim("s".into(), &1, StatusCode::CREATED)
            .unwrap()
            .unwrap();
        let stored = Stored::failure(&AppError::OutOfStock {
            available: 0,
            requested: 1,
        });
        assert_eq!(stored.status, 409);
        let response = stored.replay();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[REPLAYED_HEADER], "true");
        let ok = Stored::success(&claim, &serde_json::json!({"a": 1}));
        assert_eq!((ok.status, ok.body.as_str()), (201, r#"{"a":1}"#));
    }
}
