//! Order use cases.
//!
//! Lock order, shared with payments and the expiry sweeper so that no two transactions
//! wait on each other in a circle: **order → user → product**. Placing an order has no
//! order row yet; it takes user (shared) then product.
//!
//! The stock gate (Redis) answers first: a refusal there ends the request without MySQL.
//! What it reserves is settled once the order commits, or given back if MySQL refuses;
//! a cancel or an expiry gives it back after its own commit (see [`crate::stock`]).

use std::time::Duration;

use chrono::NaiveDateTime;
use serde::Serialize;
use sqlx::{MySqlConnection, MySqlPool};

use super::domain::{check_price, total, OrderStatus, Quantity};
use crate::{
    auth::Caller,
    db,
    error::AppError,
    http::pagination::{CursorPage, CursorQuery},
    idempotency::Recorder,
    stock::{Finish, Gate, Hold, StockGate},
};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OrderView {
    #[sqlx(rename = "id")]
    pub order_id: i64,
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
    pub total_amount: i64,
    #[schema(example = "PENDING")]
    pub status: String,
    #[serde(serialize_with = "crate::http::utc")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: NaiveDateTime,
    #[serde(serialize_with = "crate::http::utc")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: NaiveDateTime,
    /// The stock gate's reservation token (internal).
    #[serde(skip)]
    pub hold: String,
}

impl OrderView {
    pub fn hold(&self) -> Hold {
        Hold::stored(self.hold.clone())
    }
}

const ORDER_COLUMNS: &str =
    "id, user_id, product_id, quantity, unit_price, total_amount, status, created_at, expires_at, hold";

/// What a buyer asks for: the unit price they saw and how many.
#[derive(Debug, Clone, Copy)]
pub struct NewOrder {
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: Quantity,
    pub price: i64,
}

#[tracing::instrument(skip(pool, stock, recorder))]
pub async fn place(
    pool: &MySqlPool,
    stock: &StockGate,
    caller: Caller,
    order: NewOrder,
    ttl: Duration,
    recorder: Option<&Recorder>,
) -> Result<OrderView, AppError> {
    let ttl = chrono::Duration::from_std(ttl).map_err(anyhow::Error::from)?;
    caller.act_for(order.user_id)?;
    let quantity = order.quantity.get();
    let hold = Hold::new();
    if let Gate::Refused { available } = stock.reserve(order.product_id, quantity, &hold).await {
        return Err(AppError::OutOfStock {
            available,
            requested: quantity,
        });
    }
    // The order must commit within the reservation's deadline, after which the reconciler
    // would give the units back.
    let token = hold.as_str();
    let write = db::transact(pool, recorder, |tx| {
        Box::pin(place_in(tx, order, ttl, token.to_string()))
    });
    let placed = tokio::time::timeout(stock.hold_window(), write)
        .await
        .unwrap_or_else(|_| Err(AppError::DependencyUnavailable("mysql".into())));
    match &placed {
        Ok(_) => stock.settle(order.product_id, &hold, quantity).await,
        Err(_) => {
            stock
                .finish(order.product_id, &hold, Finish::Abandoned)
                .await
        }
    }
    placed
}

async fn place_in(
    tx: &mut MySqlConnection,
    order: NewOrder,
    ttl: chrono::Duration,
    hold: String,
) -> Result<OrderView, AppError> {
    // 1. user, shared: it must exist and stay while the order row points at it.
    let user: Option<i64> =
        sqlx::query_scalar("SELECT id FROM users WHERE id = ? LOCK IN SHARE MODE")
            .bind(order.user_id)
            .fetch_optional(&mut *tx)
            .await?;
    user.ok_or(AppError::UserNotFound)?;
    // 2. product, exclusive: availability is decided under this lock.
    let product: Option<(i64, i64)> =
        sqlx::query_as("SELECT price, stock - reserved FROM products WHERE id = ? FOR UPDATE")
            .bind(order.product_id)
            .fetch_optional(&mut *tx)
            .await?;
    let (price, available) = product.ok_or(AppError::ProductNotFound)?;
    check_price(order.price, price)?;
    let quantity = order.quantity.get();
    if quantity > available {
        return Err(AppError::OutOfStock {
            available,
            requested: quantity,
        });
    }
    let now = db::now();
    sqlx::query("UPDATE products SET reserved = reserved + ?, updated_at = ? WHERE id = ?")
        .bind(quantity)
        .bind(now)
        .bind(order.product_id)
        .execute(&mut *tx)
        .await?;
    let total_amount = total(price, order.quantity)?;
    let expires_at = now + ttl;
    let id = sqlx::query(
        "INSERT INTO orders (user_id, product_id, quantity, unit_price, total_amount, status, created_at, \
         expires_at, updated_at, hold) VALUES (?, ?, ?, ?, ?, 'PENDING', ?, ?, ?, ?)",
    )
    .bind(order.user_id)
    .bind(order.product_id)
    .bind(quantity)
    .bind(price)
    .bind(total_amount)
    .bind(now)
    .bind(expires_at)
    .bind(now)
    .bind(&hold)
    .execute(&mut *tx)
    .await?
    .last_insert_id();
    Ok(OrderView {
        order_id: i64::try_from(id).map_err(anyhow::Error::from)?,
        user_id: order.user_id,
        product_id: order.product_id,
        quantity,
        unit_price: price,
        total_amount,
        status: OrderStatus::Pending.as_str().into(),
        created_at: now,
        expires_at,
        hold,
    })
}

/// The caller's order; another user's order is `ORDER_NOT_FOUND`, exactly like a missing
/// one (same query, same answer).
pub async fn get(pool: &MySqlPool, caller: Caller, order_id: i64) -> Result<OrderView, AppError> {
    let order: Option<OrderView> =
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
    crate::points::service::ensure_user(pool, user_id).await?;
    let rows: Vec<OrderView> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = ? AND id < ? ORDER BY id DESC LIMIT ?"
    ))
    .bind(user_id)
    .bind(page.before)
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(CursorPage::from_rows(rows, page, |o| o.order_id))
}

#[tracing::instrument(skip(pool, stock))]
pub async fn cancel(
    pool: &MySqlPool,
    stock: &StockGate,
    caller: Caller,
    order_id: i64,
) -> Result<OrderView, AppError> {
    let order = db::transact(pool, None, |tx| Box::pin(cancel_in(tx, caller, order_id))).await?;
    stock
        .finish(order.product_id, &order.hold(), Finish::Cancelled)
        .await;
    Ok(order)
}

async fn cancel_in(
    tx: &mut MySqlConnection,
    caller: Caller,
    order_id: i64,
) -> Result<OrderView, AppError> {
    let mut order = lock(tx, caller, order_id).await?;
    let next = OrderStatus::parse(&order.status)?.cancel()?;
    release(tx, order.order_id, order.product_id, order.quantity, next).await?;
    order.status = next.as_str().into();
    Ok(order)
}

/// Locks the caller's order row (first in the lock order).
pub async fn lock(
    tx: &mut MySqlConnection,
    caller: Caller,
    order_id: i64,
) -> Result<OrderView, AppError> {
    let order: Option<OrderView> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = ? FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?;
    order
        .filter(|o| caller.owns(o.user_id))
        .ok_or(AppError::OrderNotFound)
}

/// Ends a PENDING order without payment and gives its units back to available stock.
/// The caller holds the order's row lock and has checked that it is PENDING, so the
/// units return exactly once however many cancels and sweeps race.
pub async fn release(
    tx: &mut MySqlConnection,
    order_id: i64,
    product_id: i64,
    quantity: i64,
    status: OrderStatus,
) -> Result<(), AppError> {
    let now = db::now();
    sqlx::query("UPDATE orders SET status = ?, updated_at = ? WHERE id = ? AND status = 'PENDING'")
        .bind(status.as_str())
        .bind(now)
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE products SET reserved = reserved - ?, updated_at = ? WHERE id = ?")
        .bind(quantity)
        .bind(now)
        .bind(product_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
