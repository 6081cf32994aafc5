//! The payment use case.
//!
//! One transaction locks, in the fixed order **order → user → product**, then writes every
//! effect or none: the balance drops (USE history row), stock drops, sold rises, the order
//! becomes PAID, a payment row is written, the day's sales grow, and an `order.paid` event
//! enters the outbox. Deadlock victims are retried by [`db::transact`].

use chrono::NaiveDateTime;
use serde::Serialize;
use sqlx::{MySqlConnection, MySqlPool};

use crate::{
    auth::Caller,
    catalog::ranking::Ranking,
    db,
    error::AppError,
    events::{self, OrderPaid},
    idempotency::Recorder,
    orders::{domain::OrderStatus, service as orders},
    points::{
        domain::{Balance, PointKind},
        service as points,
    },
    stock::{Finish, Hold, StockGate},
};

pub const COMPLETED: &str = "COMPLETED";

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PaymentView {
    #[sqlx(rename = "id")]
    pub payment_id: i64,
    pub order_id: i64,
    pub user_id: i64,
    pub amount: i64,
    pub status: String,
    pub balance_after: i64,
    #[sqlx(rename = "created_at")]
    #[serde(serialize_with = "crate::http::utc")]
    #[schema(value_type = String, format = DateTime)]
    pub paid_at: NaiveDateTime,
    /// What the stock gate and the ranking learn once the payment committed (internal).
    #[serde(skip)]
    #[sqlx(skip)]
    pub sale: Option<Sale>,
}

#[derive(Debug, Clone, Default)]
pub struct Sale {
    pub product_id: i64,
    pub quantity: i64,
    pub hold: String,
}

/// After the commit the reserved units become sold in the stock gate and the sale enters
/// today's ranking; both are best effort, repaired from MySQL by the reconciler.
#[tracing::instrument(skip(pool, stock, ranking, recorder))]
pub async fn pay(
    pool: &MySqlPool,
    stock: &StockGate,
    ranking: &Ranking,
    caller: Caller,
    order_id: i64,
    recorder: Option<&Recorder>,
) -> Result<PaymentView, AppError> {
    let result = db::transact(pool, recorder, |tx| Box::pin(pay_in(tx, caller, order_id))).await;
    let outcome = match &result {
        Ok(_) => "completed",
        Err(e) => e.status_and_code().1,
    };
    metrics::counter!("payments_total", "outcome" => outcome).increment(1);
    if let Ok(PaymentView {
        sale: Some(sale),
        paid_at,
        ..
    }) = &result
    {
        let hold = Hold::stored(sale.hold.clone());
        stock.finish(sale.product_id, &hold, Finish::Paid).await;
        ranking
            .record(paid_at.date(), sale.product_id, sale.quantity)
            .await;
    }
    result
}

async fn pay_in(
    tx: &mut MySqlConnection,
    caller: Caller,
    order_id: i64,
) -> Result<PaymentView, AppError> {
    let now = db::now();
    // 1. order
    let order = orders::lock(tx, caller, order_id).await?;
    OrderStatus::parse(&order.status)?.pay(order.expires_at <= now)?;
    // 2. user
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM users WHERE id = ? FOR UPDATE")
        .bind(order.user_id)
        .fetch_one(&mut *tx)
        .await?;
    let after = Balance::new(balance).pay(order.total_amount)?;
    // 3. product: the reserved units become sold; the condition refuses what is not there.
    let q = order.quantity;
    let moved = sqlx::query(
        "UPDATE products SET stock = stock - ?, reserved = reserved - ?, sold = sold + ?, updated_at = ? \
         WHERE id = ? AND stock >= ? AND reserved >= ?",
    )
    .bind(q)
    .bind(q)
    .bind(q)
    .bind(now)
    .bind(order.product_id)
    .bind(q)
    .bind(q)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 0 {
        let available: i64 = sqlx::query_scalar("SELECT stock FROM products WHERE id = ?")
            .bind(order.product_id)
            .fetch_one(&mut *tx)
            .await?;
        return Err(AppError::OutOfStock {
            available,
            requested: q,
        });
    }
    // Effects, all under the locks taken above.
    sqlx::query("UPDATE users SET balance = ? WHERE id = ?")
        .bind(after.get())
        .bind(order.user_id)
        .execute(&mut *tx)
        .await?;
    points::record(
        tx,
        order.user_id,
        PointKind::Use,
        order.total_amount,
        after.get(),
        Some(order.order_id),
    )
    .await?;
    sqlx::query("UPDATE orders SET status = 'PAID', paid_at = ?, updated_at = ? WHERE id = ?")
        .bind(now)
        .bind(now)
        .bind(order.order_id)
        .execute(&mut *tx)
        .await?;
    let payment_id = sqlx::query(
        "INSERT INTO payments (order_id, user_id, amount, status, balance_after, created_at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(order.order_id)
    .bind(order.user_id)
    .bind(order.total_amount)
    .bind(COMPLETED)
    .bind(after.get())
    .bind(now)
    .execute(&mut *tx)
    .await?
    .last_insert_id();
    let payment_id = i64::try_from(payment_id).map_err(anyhow::Error::from)?;
    sqlx::query(
        "INSERT INTO daily_sales (day, product_id, quantity) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE quantity = quantity + ?",
    )
    .bind(now.date())
    .bind(order.product_id)
    .bind(q)
    .bind(q)
    .execute(&mut *tx)
    .await?;
    let event = OrderPaid {
        order_id: order.order_id,
        payment_id,
        user_id: order.user_id,
        product_id: order.product_id,
        quantity: q,
        amount: order.total_amount,
        paid_at: now,
    };
    events::record_order_paid(tx, &event).await?;
    Ok(PaymentView {
        payment_id,
        order_id: order.order_id,
        user_id: order.user_id,
        amount: order.total_amount,
        status: COMPLETED.into(),
        balance_after: after.get(),
        paid_at: now,
        sale: Some(Sale {
            product_id: order.product_id,
            quantity: q,
            hold: order.hold,
        }),
    })
}

/// The caller's payment; another user's is `PAYMENT_NOT_FOUND`, like a missing one.
pub async fn get(
    pool: &MySqlPool,
    caller: Caller,
    payment_id: i64,
) -> Result<PaymentView, AppError> {
    let payment: Option<PaymentView> = sqlx::query_as(
        "SELECT id, order_id, user_id, amount, status, balance_after, created_at FROM payments WHERE id = ?",
    )
    .bind(payment_id)
    .fetch_optional(pool)
    .await?;
    payment
        .filter(|p| caller.owns(p.user_id))
        .ok_or(AppError::PaymentNotFound)
}
