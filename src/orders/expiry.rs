//! The expiry sweeper: PENDING orders past `expires_at` become EXPIRED and their units
//! return to available stock. Several instances may sweep at once: each claims its rows
//! with `FOR UPDATE SKIP LOCKED`, so a row is handled by one of them, and a payment or a
//! cancel holding the row is simply skipped.

use std::{collections::BTreeMap, time::Duration};

use sqlx::{MySqlConnection, MySqlPool};

use super::{
    domain::{Order, OrderStatus, ORDER_COLUMNS},
    service::release,
};
use crate::{
    db,
    error::AppError,
    stock::{Finish, Hold, StockGate},
};

/// Orders handled per sweep transaction.
const BATCH: i64 = 200;

/// Runs the sweeper every `every` (validated non-zero at start-up) until the process ends.
pub fn spawn(pool: MySqlPool, stock: StockGate, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match sweep(&pool, &stock).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "expired unpaid orders"),
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
            }
        }
    })
}

/// Expires one batch of overdue orders (every line of each), then gives their units back in
/// Redis (one call per product); returns how many orders.
pub async fn sweep(pool: &MySqlPool, stock: &StockGate) -> Result<usize, AppError> {
    let expired = db::transact(pool, |tx| Box::pin(sweep_in(tx))).await?;
    let orders = expired.iter().filter(|o| o.parent_id.is_none()).count();
    if orders > 0 {
        metrics::counter!("orders_expired_total").increment(orders as u64);
    }
    let mut by_product: BTreeMap<i64, Vec<Hold>> = BTreeMap::new();
    for order in &expired {
        by_product
            .entry(order.product_id)
            .or_default()
            .push(Hold::stored(order.hold.clone()));
    }
    for (product_id, holds) in by_product {
        stock.finish(product_id, &holds, Finish::Expired).await;
    }
    Ok(orders)
}

async fn sweep_in(tx: &mut MySqlConnection) -> Result<Vec<Order>, AppError> {
    // Orders, not lines: an order's own row, skipped when another transaction holds it
    // (a payment, a cancel, another sweeper), then its further lines, which only the
    // holder of the order's own row ever locks — so an order expires whole or not at all.
    let mut overdue: Vec<Order> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE status = 'PENDING' AND expires_at <= UTC_TIMESTAMP(6) \
         AND parent_id IS NULL ORDER BY expires_at LIMIT ? FOR UPDATE SKIP LOCKED"
    ))
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let several: Vec<i64> = overdue
        .iter()
        .filter(|o| o.has_lines())
        .map(|o| o.id)
        .collect();
    if !several.is_empty() {
        let mut lines = sqlx::QueryBuilder::new(format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE parent_id IN ("
        ));
        let mut ids = lines.separated(", ");
        for id in &several {
            ids.push_bind(*id);
        }
        lines.push(") ORDER BY id FOR UPDATE");
        let lines: Vec<Order> = lines.build_query_as().fetch_all(&mut *tx).await?;
        overdue.extend(lines);
    }
    // `release` locks their products in id order, so two sweepers never lock two products
    // in opposite orders.
    overdue.sort_by_key(|o| (o.product_id, o.id));
    release(tx, &overdue, OrderStatus::Expired).await?;
    Ok(overdue)
}
