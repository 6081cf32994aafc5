//! A consumer of `commerce.order-paid` that plays the data platform (`commerce-api
//! consume`), and the example for real consumers: delivery is at-least-once, so it applies
//! each event in one transaction together with a record of its `event_id`, and a
//! redelivered event finds that record and changes nothing. It understands `order.paid`
//! (a paid order appears) and `order.refunded` (it is marked refunded); both share the
//! order id as key, so they arrive in that order. Offsets are committed after
//! the event is applied; a consumer that dies in between sees the event again.
//!
//! Its tables (`platform_events_seen`, `platform_paid_orders`) stand for the platform's
//! own store; they live in the service's database only to keep the example whole.

use std::{future::Future, time::Duration};

use chrono::NaiveDateTime;
use rdkafka::{
    config::ClientConfig,
    consumer::{CommitMode, Consumer, StreamConsumer},
    Message,
};
use serde::Deserialize;
use sqlx::{MySqlConnection, MySqlPool};

use super::{relay::kafka_error, OrderEvent, ORDER_PAID, ORDER_REFUNDED};
use crate::{db, error::AppError};

#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    pub brokers: String,
    pub topic: String,
    pub group: String,
}

#[derive(Debug, Deserialize)]
struct Event {
    event_id: String,
    event_type: String,
    data: OrderEvent,
}

/// Whether an event changed the platform's data or was a redelivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    New,
    Duplicate,
}

/// Consumes until `shutdown` resolves.
pub async fn run(
    db: MySqlPool,
    config: ConsumerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create()
        .map_err(kafka_error)?;
    consumer
        .subscribe(&[config.topic.as_str()])
        .map_err(kafka_error)?;
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "kafka receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let payload = message.payload().unwrap_or_default();
        match apply(&db, payload).await {
            Ok(applied) => tracing::debug!(?applied, offset = message.offset(), "event applied"),
            // A malformed event is skipped (and logged); retrying it would never succeed.
            Err(AppError::Validation(why)) => tracing::error!(%why, "skipping a malformed event"),
            // The database is away: stop without committing; the event comes again.
            Err(e) => return Err(e),
        }
        consumer
            .commit_message(&message, CommitMode::Async)
            .map_err(kafka_error)?;
    }
}

/// Applies one event payload exactly once per `event_id`.
pub async fn apply(db: &MySqlPool, payload: &[u8]) -> Result<Applied, AppError> {
    let event: Event = serde_json::from_slice(payload)
        .map_err(|e| AppError::Validation(format!("not an order event: {e}")))?;
    if ![ORDER_PAID, ORDER_REFUNDED].contains(&event.event_type.as_str()) {
        return Err(AppError::Validation(format!(
            "unexpected event type {}",
            event.event_type
        )));
    }
    let mut tx = db.begin().await?;
    let applied = apply_in(&mut tx, &event).await?;
    tx.commit().await?;
    metrics::counter!("events_consumed_total", "applied" => match applied {
        Applied::New => "new",
        Applied::Duplicate => "duplicate",
    })
    .increment(1);
    Ok(applied)
}

async fn apply_in(tx: &mut MySqlConnection, event: &Event) -> Result<Applied, AppError> {
    let now = db::now();
    let first = sqlx::query(
        "INSERT IGNORE INTO platform_events_seen (event_id, deliveries, first_seen_at) VALUES (?, 1, ?)",
    )
    .bind(&event.event_id)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !first {
        sqlx::query(
            "UPDATE platform_events_seen SET deliveries = deliveries + 1 WHERE event_id = ?",
        )
        .bind(&event.event_id)
        .execute(&mut *tx)
        .await?;
        return Ok(Applied::Duplicate);
    }
    let d = &event.data;
    if event.event_type == ORDER_REFUNDED {
        let at: NaiveDateTime = d.refunded_at.unwrap_or(now);
        sqlx::query("UPDATE platform_paid_orders SET refunded_at = ? WHERE order_id = ?")
            .bind(at)
            .bind(d.order_id)
            .execute(&mut *tx)
            .await?;
        return Ok(Applied::New);
    }
    sqlx::query(
        "INSERT INTO platform_paid_orders (order_id, event_id, user_id, product_id, quantity, amount, paid_at, applied_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(d.order_id)
    .bind(&event.event_id)
    .bind(d.user_id)
    .bind(d.product_id)
    .bind(d.quantity)
    .bind(d.amount)
    .bind(d.paid_at)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(Applied::New)
}
