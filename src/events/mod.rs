//! Domain events leave through the transactional outbox: they are written in the same
//! transaction as the change that caused them, and published to Kafka later by the
//! [`relay`]; [`consumer`] is the example consumer (the data platform).

pub mod consumer;
pub mod relay;

use chrono::NaiveDateTime;
use serde::Serialize;
use sqlx::{MySqlConnection, MySqlPool};

use crate::{db, error::AppError};

pub const ORDER_PAID: &str = "order.paid";

/// Payload of `order.paid`; `event_id` lets consumers de-duplicate redeliveries.
#[derive(Debug, Serialize)]
pub struct OrderPaid {
    pub order_id: i64,
    pub payment_id: i64,
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i64,
    pub amount: i64,
    #[serde(serialize_with = "crate::http::utc")]
    pub paid_at: NaiveDateTime,
}

/// Records `order.paid` in the outbox; the caller's transaction commits it with the payment.
pub async fn record_order_paid(
    tx: &mut MySqlConnection,
    event: &OrderPaid,
) -> Result<(), AppError> {
    let payload = serde_json::json!({
        "event_id": format!("order-paid-{}", event.order_id),
        "event_type": ORDER_PAID,
        "occurred_at": event.paid_at.and_utc().to_rfc3339(),
        "data": event,
    });
    sqlx::query(
        "INSERT INTO outbox (aggregate_id, event_type, payload, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(event.order_id)
    .bind(ORDER_PAID)
    .bind(payload.to_string())
    .bind(db::now())
    .execute(tx)
    .await?;
    Ok(())
}

/// Unpublished events and the age in seconds of the oldest one (0 when none wait).
pub async fn backlog(pool: &MySqlPool) -> Result<(i64, f64), AppError> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await?;
    let oldest: Option<NaiveDateTime> = sqlx::query_scalar(
        "SELECT created_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let age = oldest.map_or(0.0, |t| (db::now() - t).as_seconds_f64().max(0.0));
    Ok((count, age))
}
