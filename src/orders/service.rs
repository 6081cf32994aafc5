//! Order use cases outside the checkout: reading, cancelling, refunding.
//!
//! Lock order, shared with the checkout batches and the expiry sweeper so that no two
//! transactions wait on each other in a circle: idempotency key → **order** (its own row,
//! then its further lines, ids ascending) **→ payment → user → products** (ids ascending)
//! → the day's `daily_sales` rows. A cancel takes order, user (its points hold),
//! products; a refund takes every one of them, in that order.
//!
//! After the commit, Redis follows: a cancel gives its reservation back (announcing units
//! back to every instance); a refund re-syncs the product's counter from MySQL and takes
//! its units off its payment day's ranking.

use std::collections::HashMap;

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

/// The caller's order, its own row first, then its further lines; another user's order
/// is `ORDER_NOT_FOUND`, exactly like a missing one (same query, same answer), and so is
/// the id of a further line (it is no order).
pub async fn get(pool: &MySqlPool, caller: Caller, order_id: i64) -> Result<Vec<Order>, AppError> {
    let order: Option<Order> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = ? AND parent_id IS NULL"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    let order = order
        .filter(|o| caller.owns(o.user_id))
        .ok_or(AppError::OrderNotFound)?;
    let mut rows = vec![order];
    if rows[0].has_lines() {
        rows.extend(lines_of(pool, &[order_id]).await?);
    }
    Ok(rows)
}

/// The further lines of `orders`, in id order.
async fn lines_of(pool: &MySqlPool, orders: &[i64]) -> Result<Vec<Order>, AppError> {
    let mut q = sqlx::QueryBuilder::new(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE parent_id IN ("
    ));
    let mut ids = q.separated(", ");
    for id in orders {
        ids.push_bind(*id);
    }
    q.push(") ORDER BY id");
    Ok(q.build_query_as().fetch_all(pool).await?)
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
        "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = ? AND parent_id IS NULL AND id < ? \
         ORDER BY id DESC LIMIT ?"
    ))
    .bind(user_id)
    .bind(page.before)
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    let several: Vec<i64> = rows
        .iter()
        .filter(|o| o.has_lines())
        .map(|o| o.id)
        .collect();
    let mut lines: HashMap<i64, Vec<Order>> = HashMap::new();
    if !several.is_empty() {
        for line in lines_of(pool, &several).await? {
            if let Some(parent) = line.parent_id {
                lines.entry(parent).or_default().push(line);
            }
        }
    }
    let views = rows
        .iter()
        .map(|o| OrderView::of(o, lines.get(&o.id).map(Vec::as_slice).unwrap_or_default()))
        .collect();
    Ok(CursorPage::from_rows(views, page, |o: &OrderView| {
        o.order_id
    }))
}

/// PENDING → CANCELLED, every line at once; the units return to available stock, once.
#[tracing::instrument(skip(pool, stock, claim))]
pub async fn cancel(
    pool: &MySqlPool,
    stock: &StockGate,
    caller: Caller,
    order_id: i64,
    claim: Option<&Claim>,
) -> Result<Outcome<OrderView, Vec<Order>>, AppError> {
    let outcome = idempotency::run(pool, claim, |tx| {
        Box::pin(async move {
            let mut rows = lock(tx, caller, order_id).await?;
            let next = rows[0].status.cancel()?;
            release(tx, &rows, next).await?;
            for row in &mut rows {
                row.status = next;
            }
            let view = OrderView::of_rows(&rows).ok_or(AppError::OrderNotFound)?;
            Ok((view, rows))
        })
    })
    .await?;
    if let Outcome::Done(_, rows) = &outcome {
        for row in rows {
            stock
                .finish(
                    row.product_id,
                    &[Hold::stored(row.hold.clone())],
                    Finish::Cancelled,
                )
                .await;
        }
    }
    Ok(outcome)
}

/// What a committed refund leaves for Redis to learn.
#[derive(Debug, Clone)]
pub struct Refunded {
    /// Units back per product, in product order.
    pub lines: Vec<(i64, i64)>,
    /// The day of the payment, whose sales the refund takes back.
    pub paid_day: NaiveDate,
}

/// PAID → REFUNDED within the refund window (R1–R4), in one transaction: the order (every
/// line) and its payment REFUNDED, the points back (REFUND history row), each line's units
/// back to available stock, `sold` and the payment day's sales down per product,
/// `order.refunded` in the outbox.
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
        // The counters from MySQL (exact and idempotent, unlike an increment), then the
        // ranking of the payment's day.
        let products: Vec<i64> = r.lines.iter().map(|(p, _)| *p).collect();
        if let Err(e) = stock.sync(&products).await {
            tracing::warn!(?products, error = %e, "stock not synced after a refund; the repairs will");
            for product_id in &products {
                stock.resync_soon(*product_id);
            }
        }
        for (product_id, quantity) in &r.lines {
            ranking.record(r.paid_day, *product_id, -quantity).await;
        }
    }
    Ok(outcome)
}

async fn refund_in(
    tx: &mut MySqlConnection,
    caller: Caller,
    order_id: i64,
    window: chrono::Duration,
) -> Result<(OrderView, Refunded), AppError> {
    // 1. the order's rows, and MySQL's clock: the window runs from `paid_at`, which the
    // payment's batch took from MySQL's clock too (one clock per decision).
    let mut rows = lock(tx, caller, order_id).await?;
    let now: chrono::NaiveDateTime = sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
        .fetch_one(&mut *tx)
        .await?;
    let order = rows[0].clone();
    let next = order.status.refund(order.paid_at, now, window)?;
    let paid_at = order
        .paid_at
        .ok_or_else(|| anyhow::anyhow!("a PAID order without paid_at"))?;
    let amount: i64 = rows.iter().map(|o| o.total_amount).sum();
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
    let after = Balance::new(balance).credit(amount)?;
    // 4. products, in id order: the units are available again, and no longer sold.
    let mut lines: Vec<(i64, i64)> = rows.iter().map(|o| (o.product_id, o.quantity)).collect();
    lines.sort_unstable();
    for (product_id, q) in &lines {
        sqlx::query(
            "UPDATE products SET stock = stock + ?, sold = sold - ?, updated_at = ? WHERE id = ?",
        )
        .bind(q)
        .bind(q)
        .bind(now)
        .bind(product_id)
        .execute(&mut *tx)
        .await?;
    }
    // 5. the payment day's sales (the ranking counts net sales), in product order
    for (product_id, q) in &lines {
        sqlx::query(
            "UPDATE daily_sales SET quantity = quantity - ? WHERE day = ? AND product_id = ? AND quantity >= ?",
        )
        .bind(q)
        .bind(paid_at.date())
        .bind(product_id)
        .bind(q)
        .execute(&mut *tx)
        .await?;
    }
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
            amount,
            after.get(),
            Some(order.id),
        )],
    )
    .await?;
    let mut update = sqlx::QueryBuilder::new("UPDATE orders SET status = ");
    update
        .push_bind(next.as_str())
        .push(", updated_at = ")
        .push_bind(now)
        .push(" WHERE id IN (");
    let mut ids = update.separated(", ");
    for row in &rows {
        ids.push_bind(row.id);
    }
    update.push(")");
    update.build().execute(&mut *tx).await?;
    sqlx::query("UPDATE payments SET status = ? WHERE id = ?")
        .bind(PaymentStatus::Refunded.as_str())
        .bind(payment_id)
        .execute(&mut *tx)
        .await?;
    let event = OrderEvent::of_rows(&rows, payment_id, paid_at);
    events::record(tx, &[Event::order_refunded(event, now)]).await?;
    for row in &mut rows {
        row.status = next;
    }
    let view = OrderView::of_rows(&rows).ok_or(AppError::OrderNotFound)?;
    Ok((
        view,
        Refunded {
            lines,
            paid_day: paid_at.date(),
        },
    ))
}

/// Locks the caller's order (first in the lock order): its own row, then its further
/// lines (ids ascending: they were written after it). Returns them in that order.
pub async fn lock(
    tx: &mut MySqlConnection,
    caller: Caller,
    order_id: i64,
) -> Result<Vec<Order>, AppError> {
    let order: Option<Order> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = ? AND parent_id IS NULL FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?;
    let order = order
        .filter(|o| caller.owns(o.user_id))
        .ok_or(AppError::OrderNotFound)?;
    let several = order.has_lines();
    let mut rows = vec![order];
    if several {
        let lines: Vec<Order> = sqlx::query_as(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE parent_id = ? ORDER BY id FOR UPDATE"
        ))
        .bind(order_id)
        .fetch_all(&mut *tx)
        .await?;
        rows.extend(lines);
    }
    Ok(rows)
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
