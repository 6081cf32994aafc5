//! Order use cases outside the checkout: reading, cancelling, refunding.
//!
//! Lock order, shared with the checkout batches and the expiry sweeper so that no two
//! transactions wait on each other in a circle: idempotency key → **order → payment →
//! user → product** → the day's `daily_sales` row. A cancel takes order, user (its points
//! hold), product; a refund takes every one of them, in that order.
//!
//! After the commit, Redis follows: a cancel gives its reservation back (announcing units
//! back to every instance); a refund re-syncs the product's counter from MySQL and takes
//! its units off its payment day's ranking.

use chrono::NaiveDate;
use sqlx::{MySqlConnection, MySqlPool};

use super::domain::{Order, OrderStatus, OrderView, ORDER_COLUMNS};
use crate::{
    auth::Caller,
    catalog::ranking::Ranking,
    db,
    error::AppError,
    events::{self, Event, OrderEvent},
    http::pagination::{CursorPage, CursorQuery},
    idempotency::{self, Claim, Outcome},
    payments::domain::PaymentStatus,
    points::{
        domain::{Balance, PointKind},
        service as points,
    },
    stock::{Finish, Hold, StockGate},
};

/// What the order routes work with.
#[derive(Clone)]
pub struct Orders {
    pub db: MySqlPool,
    pub stock: StockGate,
    pub ranking: Ranking,
    /// `REFUND_WINDOW_SECS`.
    pub refund_window: std::time::Duration,
}

/// The caller's order; another user's order is `ORDER_NOT_FOUND`, exactly like a missing
/// one (same query, same answer).
pub async fn get(pool: &MySqlPool, caller: Caller, order_id: i64) -> Result<Order, AppError> {
    let order: Option<Order> =
        sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?"))
            .bind(order_id)
            .fetch_optional(pool)
            .await?;
    order
        .filter(|o| caller.owns(o.user_id))
        .ok_or(AppError::OrderNotFound)
}

pub async fn list_for_user(
    pool: &MySqlPool,
    caller: Caller,
    user_id: i64,
    page: CursorQuery,
) -> Result<CursorPage<OrderView>, AppError> {
    caller.act_for(user_id)?;
    points::ensure_user(pool, user_id).await?;
    let rows: Vec<Order> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = ? AND id < ? ORDER BY id DESC LIMIT ?"
    ))
    .bind(user_id)
    .bind(page.before)
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    let views = rows.iter().map(OrderView::from).collect();
    Ok(CursorPage::from_rows(views, page, |o: &OrderView| {
        o.order_id
    }))
}

/// PENDING → CANCELLED; the units return to available stock, once.
#[tracing::instrument(skip(pool, stock, claim))]
pub async fn cancel(
    pool: &MySqlPool,
    stock: &StockGate,
    caller: Caller,
    order_id: i64,
    claim: Option<&Claim>,
) -> Result<Outcome<OrderView, Option<Order>>, AppError> {
    let outcome = idempotency::run(pool, claim, |tx| {
        Box::pin(async move {
            let mut order = lock(tx, caller, order_id).await?;
            let next = order.status.cancel()?;
            release(tx, std::slice::from_ref(&order), next).await?;
            order.status = next;
            Ok((OrderView::from(&order), Some(order)))
        })
    })
    .await?;
    if let Outcome::Done(_, Some(order)) = &outcome {
        stock
            .finish(
                order.product_id,
                &[Hold::stored(order.hold.clone())],
                Finish::Cancelled,
            )
            .await;
    }
    Ok(outcome)
}

/// What a committed refund leaves for Redis to learn.
#[derive(Debug, Clone, Copy)]
pub struct Refunded {
    pub product_id: i64,
    pub quantity: i64,
    /// The day of the payment, whose sales the refund takes back.
    pub paid_day: NaiveDate,
}

/// PAID → REFUNDED within the refund window (R1–R4), in one transaction: the order and its
/// payment REFUNDED, the points back (REFUND history row), the units back to available
/// stock, `sold` and the payment day's sales down, `order.refunded` in the outbox.
#[tracing::instrument(skip(pool, stock, ranking, claim))]
pub async fn refund(
    pool: &MySqlPool,
    stock: &StockGate,
    ranking: &Ranking,
    caller: Caller,
    order_id: i64,
    window: std::time::Duration,
    claim: Option<&Claim>,
) -> Result<Outcome<OrderView, Option<Refunded>>, AppError> {
    let window = chrono::Duration::from_std(window).map_err(anyhow::Error::from)?;
    let outcome = idempotency::run(pool, claim, |tx| {
        Box::pin(async move {
            let (view, refunded) = refund_in(tx, caller, order_id, window).await?;
            Ok((view, Some(refunded)))
        })
    })
    .await?;
    if let Outcome::Done(_, Some(r)) = &outcome {
        // The counter from MySQL (exact and idempotent, unlike an increment), then the
        // ranking of the payment's day.
        if let Err(e) = stock.sync(&[r.product_id]).await {
            tracing::warn!(product_id = r.product_id, error = %e, "stock not synced after a refund; the repairs will");
            stock.resync_soon(r.product_id);
        }
        ranking.record(r.paid_day, r.product_id, -r.quantity).await;
    }
    Ok(outcome)
}

async fn refund_in(
    tx: &mut MySqlConnection,
    caller: Caller,
    order_id: i64,
    window: chrono::Duration,
) -> Result<(OrderView, Refunded), AppError> {
    let now = db::now();
    // 1. order
    let mut order = lock(tx, caller, order_id).await?;
    let next = order.status.refund(order.paid_at, now, window)?;
    let paid_at = order
        .paid_at
        .ok_or_else(|| anyhow::anyhow!("a PAID order without paid_at"))?;
    // 2. payment
    let payment_id: i64 =
        sqlx::query_scalar("SELECT id FROM payments WHERE order_id = ? FOR UPDATE")
            .bind(order.id)
            .fetch_one(&mut *tx)
            .await?;
    // 3. user: the points come back, unless that passes the cap (R3).
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM users WHERE id = ? FOR UPDATE")
        .bind(order.user_id)
        .fetch_one(&mut *tx)
        .await?;
    let after = Balance::new(balance).credit(order.total_amount)?;
    // 4. product: the units are available again, and no longer sold.
    let q = order.quantity;
    sqlx::query(
        "UPDATE products SET stock = stock + ?, sold = sold - ?, updated_at = ? WHERE id = ?",
    )
    .bind(q)
    .bind(q)
    .bind(now)
    .bind(order.product_id)
    .execute(&mut *tx)
    .await?;
    // 5. the payment day's sales (the ranking counts net sales)
    sqlx::query(
        "UPDATE daily_sales SET quantity = quantity - ? WHERE day = ? AND product_id = ? AND quantity >= ?",
    )
    .bind(q)
    .bind(paid_at.date())
    .bind(order.product_id)
    .bind(q)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE users SET balance = ? WHERE id = ?")
        .bind(after.get())
        .bind(order.user_id)
        .execute(&mut *tx)
        .await?;
    points::record(
        tx,
        &[(
            order.user_id,
            PointKind::Refund,
            order.total_amount,
            after.get(),
            Some(order.id),
        )],
    )
    .await?;
    sqlx::query("UPDATE orders SET status = ?, updated_at = ? WHERE id = ?")
        .bind(next.as_str())
        .bind(now)
        .bind(order.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE payments SET status = ? WHERE id = ?")
        .bind(PaymentStatus::Refunded.as_str())
        .bind(payment_id)
        .execute(&mut *tx)
        .await?;
    let event = OrderEvent {
        order_id: order.id,
        payment_id,
        user_id: order.user_id,
        product_id: order.product_id,
        quantity: q,
        amount: order.total_amount,
        paid_at,
        refunded_at: None,
    };
    events::record(tx, &[Event::order_refunded(event, now)]).await?;
    order.status = next;
    Ok((
        OrderView::from(&order),
        Refunded {
            product_id: order.product_id,
            quantity: q,
            paid_day: paid_at.date(),
        },
    ))
}

/// Locks the caller's order row (first in the lock order).
pub async fn lock(
    tx: &mut MySqlConnection,
    caller: Caller,
    order_id: i64,
) -> Result<Order, AppError> {
    let order: Option<Order> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = ? FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?;
    order
        .filter(|o| caller.owns(o.user_id))
        .ok_or(AppError::OrderNotFound)
}

/// Ends PENDING orders without payment: their units go back to available stock and their
/// points holds back to their users (SPEC F1). The caller holds the orders' row locks and
/// has checked that they are PENDING, so units and points return exactly once however
/// many cancels and sweeps race.
///
/// Users, then products, are locked (each in id order) *before* the orders change: an
/// order's status is in the index that backs its product foreign key, so changing it makes
/// InnoDB check the key with a shared lock on the product row; two releases holding that
/// shared lock and both wanting the exclusive one would deadlock.
pub async fn release(
    tx: &mut MySqlConnection,
    orders: &[Order],
    status: OrderStatus,
) -> Result<(), AppError> {
    if orders.is_empty() {
        return Ok(());
    }
    let now = db::now();
    let mut units: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
    let mut holds: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
    for order in orders {
        *units.entry(order.product_id).or_default() += order.quantity;
        *holds.entry(order.user_id).or_default() += order.total_amount;
    }
    let mut lock = sqlx::QueryBuilder::new("SELECT id FROM users WHERE id IN (");
    let mut ids = lock.separated(", ");
    for id in holds.keys() {
        ids.push_bind(*id);
    }
    lock.push(") ORDER BY id FOR UPDATE");
    lock.build().fetch_all(&mut *tx).await?;
    let mut lock = sqlx::QueryBuilder::new("SELECT id FROM products WHERE id IN (");
    let mut ids = lock.separated(", ");
    for id in units.keys() {
        ids.push_bind(*id);
    }
    lock.push(") ORDER BY id FOR UPDATE");
    lock.build().fetch_all(&mut *tx).await?;
    let mut update = sqlx::QueryBuilder::new("UPDATE orders SET status = ");
    update
        .push_bind(status.as_str())
        .push(", updated_at = ")
        .push_bind(now)
        .push(" WHERE status = 'PENDING' AND id IN (");
    let mut ids = update.separated(", ");
    for order in orders {
        ids.push_bind(order.id);
    }
    update.push(")");
    update.build().execute(&mut *tx).await?;
    // A hold never exceeds what is held (orders older than holds held nothing).
    let mut points = sqlx::QueryBuilder::new("UPDATE users SET held = GREATEST(held - CASE id");
    for (user, total) in &holds {
        points
            .push(" WHEN ")
            .push_bind(*user)
            .push(" THEN ")
            .push_bind(*total);
    }
    points.push(" END, 0) WHERE id IN (");
    let mut ids = points.separated(", ");
    for id in holds.keys() {
        ids.push_bind(*id);
    }
    points.push(")");
    points.build().execute(&mut *tx).await?;
    for (product_id, quantity) in units {
        sqlx::query("UPDATE products SET reserved = reserved - ?, updated_at = ? WHERE id = ?")
            .bind(quantity)
            .bind(now)
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
