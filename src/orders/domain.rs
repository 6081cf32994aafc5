//! Order rules and shapes, free of I/O: quantity range, the price check, totals, status
//! transitions (refunds included), the stored order and the view of it a client gets.

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use crate::error::AppError;

pub const MIN_QUANTITY: i64 = 1;
pub const MAX_QUANTITY: i64 = 1000;

/// Units in one order: `MIN_QUANTITY..=MAX_QUANTITY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantity(i64);

impl Quantity {
    pub fn parse(value: i64) -> Result<Self, AppError> {
        if !(MIN_QUANTITY..=MAX_QUANTITY).contains(&value) {
            return Err(AppError::Validation(format!(
                "quantity must be between {MIN_QUANTITY} and {MAX_QUANTITY}"
            )));
        }
        Ok(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// The price the user saw must be the current price (SPEC O1, `PRICE_MISMATCH`).
pub fn check_price(seen: i64, current: i64) -> Result<(), AppError> {
    if seen != current {
        return Err(AppError::PriceMismatch { seen, current });
    }
    Ok(())
}

/// `unit_price × quantity`; prices and quantities are bounded so this cannot overflow,
/// but the check keeps it honest.
pub fn total(unit_price: i64, quantity: Quantity) -> Result<i64, AppError> {
    unit_price
        .checked_mul(quantity.get())
        .ok_or_else(|| AppError::Validation("order total is out of range".into()))
}

/// Where an order is in its life: `PENDING` → `PAID` | `CANCELLED` | `EXPIRED`;
/// `PAID` → `REFUNDED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Paid,
    Cancelled,
    Expired,
    Refunded,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Paid => "PAID",
            OrderStatus::Cancelled => "CANCELLED",
            OrderStatus::Expired => "EXPIRED",
            OrderStatus::Refunded => "REFUNDED",
        }
    }

    /// PENDING → PAID, if the reservation has not run out.
    pub fn pay(self, expired: bool) -> Result<OrderStatus, AppError> {
        match self {
            OrderStatus::Pending if !expired => Ok(OrderStatus::Paid),
            OrderStatus::Pending => Err(AppError::OrderNotPayable(OrderStatus::Expired.as_str())),
            other => Err(AppError::OrderNotPayable(other.as_str())),
        }
    }

    /// PENDING → CANCELLED.
    pub fn cancel(self) -> Result<OrderStatus, AppError> {
        match self {
            OrderStatus::Pending => Ok(OrderStatus::Cancelled),
            other => Err(AppError::OrderNotCancellable(other.as_str())),
        }
    }

    /// PAID → REFUNDED, within `window` of the payment (R1).
    pub fn refund(
        self,
        paid_at: Option<NaiveDateTime>,
        now: NaiveDateTime,
        window: chrono::Duration,
    ) -> Result<OrderStatus, AppError> {
        match (self, paid_at) {
            (OrderStatus::Paid, Some(paid)) if now <= paid + window => Ok(OrderStatus::Refunded),
            (OrderStatus::Paid, _) => Err(AppError::OrderNotRefundable(
                "the refund window of this order has passed".into(),
            )),
            (other, _) => Err(AppError::OrderNotRefundable(format!(
                "the order is {} and cannot be refunded",
                other.as_str()
            ))),
        }
    }
}

impl TryFrom<String> for OrderStatus {
    type Error = AppError;

    fn try_from(value: String) -> Result<Self, AppError> {
        Ok(match value.as_str() {
            "PENDING" => OrderStatus::Pending,
            "PAID" => OrderStatus::Paid,
            "CANCELLED" => OrderStatus::Cancelled,
            "EXPIRED" => OrderStatus::Expired,
            "REFUNDED" => OrderStatus::Refunded,
            other => {
                return Err(AppError::Internal(anyhow::anyhow!(
                    "unknown order status {other}"
                )))
            }
        })
    }
}

/// An order as stored, internal fields included.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Order {
    pub id: i64,
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
    pub total_amount: i64,
    #[sqlx(try_from = "String")]
    pub status: OrderStatus,
    pub created_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub paid_at: Option<NaiveDateTime>,
    /// The stock gate's reservation token: ties the Redis reservation to this row.
    pub hold: String,
}

/// The columns of [`Order`], in its field order.
pub const ORDER_COLUMNS: &str = "id, user_id, product_id, quantity, unit_price, total_amount, \
     status, created_at, expires_at, paid_at, hold";

/// An order as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub order_id: i64,
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
    pub total_amount: i64,
    pub status: OrderStatus,
    #[serde(serialize_with = "crate::http::utc")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: NaiveDateTime,
    #[serde(serialize_with = "crate::http::utc")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: NaiveDateTime,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> Self {
        Self {
            order_id: o.id,
            user_id: o.user_id,
            product_id: o.product_id,
            quantity: o.quantity,
            unit_price: o.unit_price,
            total_amount: o.total_amount,
            status: o.status,
            created_at: o.created_at,
            expires_at: o.expires_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_is_one_to_a_thousand() {
        assert!(Quantity::parse(0).is_err());
        assert!(Quantity::parse(-1).is_err());
        assert!(Quantity::parse(1001).is_err());
        assert_eq!(Quantity::parse(1000).unwrap().get(), 1000);
    }

    #[test]
    fn price_must_match() {
        assert!(check_price(1200, 1200).is_ok());
        let err = check_price(1000, 1200).unwrap_err();
        assert_eq!(err.code().code, "PRICE_MISMATCH");
    }

    #[test]
    fn total_is_price_times_quantity() {
        assert_eq!(total(1200, Quantity::parse(3).unwrap()).unwrap(), 3600);
    }

    #[test]
    fn only_pending_unexpired_orders_can_be_paid() {
        use OrderStatus::*;
        assert_eq!(Pending.pay(false).unwrap(), Paid);
        for (status, expired) in [
            (Pending, true),
            (Paid, false),
            (Cancelled, false),
            (Expired, false),
        ] {
            let err = status.pay(expired).unwrap_err();
            assert_eq!(err.code().code, "ORDER_NOT_PAYABLE");
        }
    }

    #[test]
    fn only_pending_orders_can_be_cancelled() {
        use OrderStatus::*;
        assert_eq!(Pending.cancel().unwrap(), Cancelled);
        for status in [Paid, Cancelled, Expired] {
            assert_eq!(
                status.cancel().unwrap_err().code().code,
                "ORDER_NOT_CANCELLABLE"
            );
        }
        for s in [Pending, Paid, Cancelled, Expired, Refunded] {
            assert_eq!(OrderStatus::try_from(s.as_str().to_string()).unwrap(), s);
        }
        assert!(OrderStatus::try_from("SHIPPED".to_string()).is_err());
    }

    #[test]
    fn only_paid_orders_within_the_window_can_be_refunded() {
        use OrderStatus::*;
        let paid = chrono::DateTime::from_timestamp(1_000_000, 0)
            .unwrap()
            .naive_utc();
        let week = chrono::Duration::days(7);
        assert_eq!(
            Paid.refund(Some(paid), paid + week, week).unwrap(),
            Refunded
        );
        let late = Paid
            .refund(Some(paid), paid + week + chrono::Duration::seconds(1), week)
            .unwrap_err();
        assert_eq!(late.code().code, "ORDER_NOT_REFUNDABLE");
        for status in [Pending, Cancelled, Expired, Refunded] {
            assert_eq!(
                status
                    .refund(Some(paid), paid, week)
                    .unwrap_err()
                    .code()
                    .code,
                "ORDER_NOT_REFUNDABLE"
            );
        }
    }
}
