//! Payment reads. Paying is the checkout's work (one batch per product); refunds are the
//! orders feature's.

use sqlx::MySqlPool;

use super::domain::{PaymentView, PAYMENT_COLUMNS};
use crate::{
    auth::Caller,
    error::AppError,
    http::pagination::{CursorPage, CursorQuery},
    points::service::ensure_user,
};

/// The caller's payment; another user's is `PAYMENT_NOT_FOUND`, like a missing one.
pub async fn get(
    pool: &MySqlPool,
    caller: Caller,
    payment_id: i64,
) -> Result<PaymentView, AppError> {
    let payment: Option<PaymentView> = sqlx::query_as(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ?"
    ))
    .bind(payment_id)
    .fetch_optional(pool)
    .await?;
    payment
        .filter(|p| caller.owns(p.user_id))
        .ok_or(AppError::PaymentNotFound)
}

/// A user's payments, newest first, by cursor.
pub async fn list_for_user(
    pool: &MySqlPool,
    caller: Caller,
    user_id: i64,
    page: CursorQuery,
) -> Result<CursorPage<PaymentView>, AppError> {
    caller.act_for(user_id)?;
    ensure_user(pool, user_id).await?;
    let rows: Vec<PaymentView> = sqlx::query_as(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE user_id = ? AND id < ? ORDER BY id DESC LIMIT ?"
    ))
    .bind(user_id)
    .bind(page.before)
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(CursorPage::from_rows(rows, page, |p| p.payment_id))
}
