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

/// Expires one batch of overdue orders, then gives their units back in Redis (one call per
/// product); returns how many.
pub async fn sweep(pool: &MySqlPool, stock: &StockGate) -> Result<usize, AppError> {
    let expired = db::transact(pool, |tx| Box::pin(sweep_in(tx))).await?;
    if !expired.is_empty() {
        metrics::counter!("orders_expired_total").increment(expired.len() as u64);
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
    Ok(expired.len())
}

async fn sweep_in(tx: &mut MySqlConnection) -> Result<Vec<Order>, AppError> {
    let mut overdue: Vec<Order> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE status = 'PENDING' AND expires_at <= ? \
         ORDER BY expires_at LIMIT ? FOR UPDATE SKIP LOCKED"
    ))
    .bind(db::now())
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    // `release` locks their products in id order, so two sweepers never lock two products
    // in opposite orders.
    overdue.sort_by_key(|o| (o.product_id, o.id));
    release(tx, &overdue, OrderStatus::Expired).await?;
    Ok(overdue)
}
