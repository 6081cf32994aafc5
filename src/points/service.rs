//! Point use cases: read a balance, charge, list the history.

use chrono::NaiveDateTime;
use serde::Serialize;
use sqlx::{MySqlConnection, MySqlPool};

use super::domain::{Amount, Balance, PointKind, Points, MAX_BALANCE};
use crate::{
    auth::Caller,
    db,
    error::AppError,
    http::pagination::{CursorPage, CursorQuery},
    idempotency::{self, Claim, Outcome},
};

/// A charge's answer: the balance after it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PointsView {
    pub user_id: i64,
    pub balance: i64,
}

/// A user's points: the balance, what PENDING orders hold of it, and the rest, which new
/// orders may use (SPEC F1).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BalanceView {
    pub user_id: i64,
    pub balance: i64,
    pub held: i64,
    pub available: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct HistoryRow {
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub kind: PointKind,
    pub amount: i64,
    pub balance_after: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<i64>,
    #[serde(serialize_with = "crate::http::utc")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: NaiveDateTime,
}

pub async fn balance(
    pool: &MySqlPool,
    caller: Caller,
    user_id: i64,
) -> Result<BalanceView, AppError> {
    caller.act_for(user_id)?;
    let row: Option<(i64, i64)> = sqlx::query_as("SELECT balance, held FROM users WHERE id = ?")
        .bind(user_id)
        .fetch_optional(pool)
        .await?;
    let (balance, held) = row.ok_or(AppError::UserNotFound)?;
    let points = Points { balance, held };
    Ok(BalanceView {
        user_id,
        balance,
        held,
        available: points.available(),
    })
}

#[tracing::instrument(skip(pool, claim))]
pub async fn charge(
    pool: &MySqlPool,
    caller: Caller,
    user_id: i64,
    amount: Amount,
    claim: Option<&Claim>,
) -> Result<Outcome<PointsView, ()>, AppError> {
    caller.act_for(user_id)?;
    idempotency::run(pool, claim, |tx| {
        Box::pin(async move { Ok((charge_in(tx, user_id, amount).await?, ())) })
    })
    .await
}

/// One conditional UPDATE checks the cap and adds the amount under the row lock, so
/// concurrent charges serialise on the user row and none is lost; then the history row.
async fn charge_in(
    tx: &mut MySqlConnection,
    user_id: i64,
    amount: Amount,
) -> Result<PointsView, AppError> {
    let changed =
        sqlx::query("UPDATE users SET balance = balance + ? WHERE id = ? AND balance <= ? - ?")
            .bind(amount.get())
            .bind(user_id)
            .bind(MAX_BALANCE)
            .bind(amount.get())
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let balance: Option<i64> = sqlx::query_scalar("SELECT balance FROM users WHERE id = ?")
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
    let balance = balance.ok_or(AppError::UserNotFound)?;
    if changed == 0 {
        // The user exists, so the cap refused it; the domain says so in its words.
        Balance::new(balance).charge(amount)?;
        return Err(AppError::BalanceLimitExceeded {
            balance,
            max_balance: MAX_BALANCE,
        });
    }
    record(
        tx,
        &[(user_id, PointKind::Charge, amount.get(), balance, None)],
    )
    .await?;
    Ok(PointsView { user_id, balance })
}

/// One point-history row: user, kind, amount, balance after, order.
pub type Entry = (i64, PointKind, i64, i64, Option<i64>);

/// Appends point-history rows (one statement for any number); the caller holds the users'
/// row locks.
pub async fn record(tx: &mut MySqlConnection, entries: &[Entry]) -> Result<(), AppError> {
    if entries.is_empty() {
        return Ok(());
    }
    let now = db::now();
    let mut insert = sqlx::QueryBuilder::new(
        "INSERT INTO point_history (user_id, kind, amount, balance_after, order_id, created_at) ",
    );
    insert.push_values(entries, |mut row, (user, kind, amount, after, order)| {
        row.push_bind(user)
            .push_bind(kind.as_str())
            .push_bind(amount)
            .push_bind(after)
            .push_bind(order)
            .push_bind(now);
    });
    insert.build().execute(&mut *tx).await?;
    Ok(())
}

pub async fn history(
    pool: &MySqlPool,
    caller: Caller,
    user_id: i64,
    page: CursorQuery,
) -> Result<CursorPage<HistoryRow>, AppError> {
    caller.act_for(user_id)?;
    ensure_user(pool, user_id).await?;
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT id, kind, amount, balance_after, order_id, created_at FROM point_history \
         WHERE user_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
    )
    .bind(user_id)
    .bind(page.before)
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(CursorPage::from_rows(rows, page, |r| r.id))
}

/// `USER_NOT_FOUND` unless the user exists.
pub async fn ensure_user(pool: &MySqlPool, user_id: i64) -> Result<(), AppError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = ?")
        .bind(user_id)
        .fetch_optional(pool)
        .await?;
    found.map(|_| ()).ok_or(AppError::UserNotFound)
}
