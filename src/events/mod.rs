//! Domain events leave through the transactional outbox: they are written in the same
//! transaction as the change that caused them, and published to Kafka later by the
//! [`relay`]; [`consumer`] is the example consumer (the data platform).

pub mod consumer;
pub mod relay;

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};
use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

use crate::{db, error::AppError};

pub const ORDER_PAID: &str = "order.paid";
pub const ORDER_REFUNDED: &str = "order.refunded";

/// One line of an order in an event: what moved for one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLine {
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
}

/// The data of `order.paid` and `order.refunded`: the order, its payment and what moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub order_id: i64,
    pub payment_id: i64,
    pub user_id: i64,
    /// The first line's product (the only one of a one-line order); `lines` has them all.
    pub product_id: i64,
    /// Units over every line.
    pub quantity: i64,
    pub amount: i64,
    /// Every line of the order, in product order (SPEC L4).
    #[serde(default)]
    pub lines: Vec<EventLine>,
    /// When the order was paid (both events carry it: a refund names the payment's day).
    #[serde(serialize_with = "crate::http::utc")]
    #[serde(deserialize_with = "rfc3339")]
    pub paid_at: NaiveDateTime,
    /// `order.refunded` only.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "utc_opt",
        deserialize_with = "rfc3339_opt"
    )]
    pub refunded_at: Option<NaiveDateTime>,
}

/// One event for the outbox: its type, and what happened.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_type: &'static str,
    pub occurred_at: NaiveDateTime,
    pub data: OrderEvent,
}

impl OrderEvent {
    /// The event of an order whose rows are `rows` (its own first): lines and totals.
    pub fn of_rows(
        rows: &[crate::orders::domain::Order],
        payment_id: i64,
        paid_at: NaiveDateTime,
    ) -> Self {
        let mut lines: Vec<EventLine> = rows
            .iter()
            .map(|o| EventLine {
                product_id: o.product_id,
                quantity: o.quantity,
                unit_price: o.unit_price,
            })
            .collect();
        lines.sort_unstable_by_key(|l| l.product_id);
        let first = rows.first();
        Self {
            order_id: first.map_or(0, |o| o.id),
            payment_id,
            user_id: first.map_or(0, |o| o.user_id),
            product_id: lines.first().map_or(0, |l| l.product_id),
            quantity: rows.iter().map(|o| o.quantity).sum(),
            amount: rows.iter().map(|o| o.total_amount).sum(),
            lines,
            paid_at,
            refunded_at: None,
        }
    }
}

impl Event {
    pub fn order_paid(data: OrderEvent) -> Self {
        Self {
            event_type: ORDER_PAID,
            occurred_at: data.paid_at,
            data,
        }
    }

    pub fn order_refunded(data: OrderEvent, at: NaiveDateTime) -> Self {
        Self {
            event_type: ORDER_REFUNDED,
            occurred_at: at,
            data: OrderEvent {
                refunded_at: Some(at),
                ..data
            },
        }
    }

    /// Unique per event: consumers de-duplicate redeliveries by it.
    pub fn event_id(&self) -> String {
        format!(
            "{}-{}",
            self.event_type.replace('.', "-"),
            self.data.order_id
        )
    }

    fn payload(&self) -> String {
        serde_json::json!({
            "event_id": self.event_id(),
            "event_type": self.event_type,
            "occurred_at": self.occurred_at.and_utc().to_rfc3339(),
            "data": self.data,
        })
        .to_string()
    }
}

/// Records events in the outbox (one statement for any number); the caller's transaction
/// commits them with the change that caused them.
pub async fn record(tx: &mut MySqlConnection, events: &[Event]) -> Result<(), AppError> {
    if events.is_empty() {
        return Ok(());
    }
    let now = db::now();
    let mut insert =
        QueryBuilder::new("INSERT INTO outbox (aggregate_id, event_type, payload, created_at) ");
    insert.push_values(events, |mut row, event| {
        row.push_bind(event.data.order_id)
            .push_bind(event.event_type)
            .push_bind(event.payload())
            .push_bind(now);
    });
    insert.build().execute(&mut *tx).await?;
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

fn utc_opt<S: serde::Serializer>(value: &Option<NaiveDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => crate::http::utc(v, s),
        None => s.serialize_none(),
    }
}

fn rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NaiveDateTime, D::Error> {
    let text = String::deserialize(d)?;
    chrono::DateTime::parse_from_rfc3339(&text)
        .map(|t| t.naive_utc())
        .map_err(serde::de::Error::custom)
}

fn rfc3339_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<NaiveDateTime>, D::Error> {
    rfc3339(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_have_stable_ids() {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 123_000_000)
            .unwrap()
            .naive_utc();
        let data = OrderEvent {
            order_id: 42,
            payment_id: 40,
            user_id: 7,
            product_id: 3,
            quantity: 2,
            amount: 2400,
            lines: vec![EventLine {
                product_id: 3,
                quantity: 2,
                unit_price: 1200,
            }],
            paid_at: at,
            refunded_at: None,
        };
        let paid = Event::order_paid(data.clone());
        assert_eq!(paid.event_id(), "order-paid-42");
        let refunded = Event::order_refunded(data.clone(), at);
        assert_eq!(refunded.event_id(), "order-refunded-42");
        let json: serde_json::Value = serde_json::from_str(&refunded.payload()).unwrap();
        assert_eq!(json["event_type"], "order.refunded");
        let back: OrderEvent = serde_json::from_value(json["data"].clone()).unwrap();
        assert_eq!(back.refunded_at, Some(at));
        let paid_back: OrderEvent = serde_json::from_value(
            serde_json::from_str::<serde_json::Value>(&paid.payload()).unwrap()["data"].clone(),
        )
        .unwrap();
        assert_eq!(paid_back, data);
    }
}
