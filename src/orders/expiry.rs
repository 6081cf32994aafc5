//! The expiry sweeper: PENDING orders past `expires_at` become EXPIRED and their units
//! return to available stock. Several instances may sweep at once: each claims its rows
//! with `FOR UPDATE SKIP LOCKED`, so a row is handled by one of them, and a payment or a
//! cancel holding the row is simply skipped.

use std::time::Duration;

use sqlx::{MySqlConnection, MySqlPool};

use super::domain::OrderStatus;
use crate::{
    db,
    error::AppError,
    idempotency,
    stock::{Finish, Hold, StockGate},
};

/// Orders handled per sweep transaction.
const BATCH: i64 = 200;
/// Idempotency keys are pruned once every this many sweeps.
const PRUNE_EVERY: u64 = 240;

/// Runs the sweeper until the process ends.
pub fn spawn(pool: MySqlPool, stock: StockGate, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 0u64.. {
            ticker.tick().await;
            match sweep(&pool, &stock).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "expired unpaid orders"),
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
            }
            if round % PRUNE_EVERY == 0 {
                if let Err(e) = idempotency::prune(&pool).await {
                    tracing::warn!(error = %e, "pruning idempotency keys failed");
                }
            }
        }
    })
}

/// Expires one batch of overdue orders, then gives their units back in Redis; returns
/// how many.
pub async fn sweep(pool: &MySqlPool, stock: &StockGate) -> Result<usize, AppError> {
    let expired = db::transact(pool, None, |tx| Box::pin(sweep_in(tx))).await?;
    if !expired.is_empty() {
        metrics::counter!("orders_expired_total").increment(expired.len() as u64);
    }
    for (product_id, hold) in &expired {
        stock
            .finish(*product_id, &Hold::stored(hold.clone()), Finish::Expired)
            .await;
    }
    Ok(expired.len())
}

/// Returns the `(product_id, hold)` of each expired order.
async fn sweep_in(tx: &mut MySqlConnection) -> Result<Vec<(i64, String)>, AppError> {
    let overdue: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "SELECT id, product_id, quantity, hold FROM orders \
         WHERE status = 'PENDING' AND expires_at <= ? \
         ORDER BY expires_at LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(db::now())
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    // Products in id order, so two sweepers never lock two products in opposite orders.
    let mut by_product = overdue;
    by_product.sort_by_key(|(id, product_id, _, _)| (*product_id, *id));
    for (order_id, product_id, quantity, _) in &by_product {
        super::service::release(tx, *order_id, *product_id, *quantity, OrderStatus::Expired)
            .await?;
    }
    Ok(by_product
        .into_iter()
        .map(|(_, product_id, _, hold)| (product_id, hold))
        .collect())
}
