//! Order rules and shapes, free of I/O: quantity range, the price check, totals, status
//! transitions (refunds included), the lines of an order, the stored rows and the view of
//! an order a client gets.

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use crate::error::AppError;

pub const MIN_QUANTITY: i64 = 1;
pub const MAX_QUANTITY: i64 = 1000;
/// `MAX_ORDER_LINES` when unset (SPEC L1).
pub const DEFAULT_MAX_LINES: usize = 20;

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

/// One line of a new order as the buyer asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineAsk {
    pub product_id: i64,
    pub quantity: Quantity,
    /// The unit price the buyer saw.
    pub price: i64,
}

/// The lines of a new order (SPEC L1): 1 to the most allowed, each product at most once,
/// kept in ascending product id — the order in which their rows are locked and their
/// units reserved, so that two orders of the same products never wait on each other in a
/// circle, whatever order their buyers listed them in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lines(Vec<LineAsk>);

impl Lines {
    /// `asked` in the buyer's order; a product named twice is refused naming both lines
    /// (`items[i]`, 0-based).
    pub fn parse(asked: Vec<LineAsk>, max: usize) -> Result<Self, AppError> {
        if asked.is_empty() || asked.len() > max {
            return Err(AppError::Validation(format!(
                "items must have between 1 and {max} lines"
            )));
        }
        // Sorted by product, a product named twice sits next to itself (no map, and no
        // allocation at all for the one-line orders of a flash sale).
        let mut lines = asked;
        if lines.len() > 1 {
            let mut order: Vec<(i64, usize)> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| (l.product_id, i))
                .collect();
            order.sort_unstable();
            if let Some(pair) = order.windows(2).find(|w| w[0].0 == w[1].0) {
                let (product, first, second) = (pair[0].0, pair[0].1, pair[1].1);
                return Err(AppError::Validation(format!(
                    "items[{first}] and items[{second}] are both product {product}: order each product once, with the quantity you want"
                )));
            }
        }
        lines.sort_unstable_by_key(|l| l.product_id);
        Ok(Self(lines))
    }

    pub fn get(&self) -> &[LineAsk] {
        &self.0
    }

    pub fn product_ids(&self) -> Vec<i64> {
        self.0.iter().map(|l| l.product_id).collect()
    }
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

/// A row of `orders` as stored, internal fields included: an order of one product, or one
/// line of an order of several (its first line is the order: `parent_id` is `None` and
/// `line_count` says how many lines it has; each further line names it in `parent_id`).
/// `total_amount` is the row's own amount (quantity × unit price).
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
    /// The stock gate's reservation token: ties the Redis reservation to this row (the
    /// lines of one order share it: each lives in its own product's hash).
    pub hold: String,
    /// The order this row is a further line of; `None` for an order's own row.
    pub parent_id: Option<i64>,
    /// On an order's own row, its number of lines; 0 on a further line.
    pub line_count: i32,
}

impl Order {
    /// Whether this order has further lines (rows of their own).
    pub fn has_lines(&self) -> bool {
        self.line_count > 1
    }
}

/// The columns of [`Order`], in its field order.
pub const ORDER_COLUMNS: &str = "id, user_id, product_id, quantity, unit_price, total_amount, \
     status, created_at, expires_at, paid_at, hold, parent_id, line_count";

/// One line of an order as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LineView {
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
    /// quantity × unit_price.
    pub line_amount: i64,
}

impl From<&Order> for LineView {
    fn from(o: &Order) -> Self {
        Self {
            product_id: o.product_id,
            quantity: o.quantity,
            unit_price: o.unit_price,
            line_amount: o.total_amount,
        }
    }
}

/// An order as the client sees it: its lines in ascending product id; an order of one
/// line also carries that line's `product_id`, `quantity` and `unit_price` at the top, as
/// before orders had lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub order_id: i64,
    pub user_id: i64,
    /// Orders of one line only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_id: Option<i64>,
    /// Orders of one line only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<i64>,
    /// Orders of one line only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<i64>,
    pub items: Vec<LineView>,
    /// The sum of the lines' amounts.
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
    /// The view of an order of one line.
    fn from(o: &Order) -> Self {
        Self::of(o, &[])
    }
}

impl OrderView {
    /// The view of an order from its rows, its own first (see [`OrderView::of`]).
    pub fn of_rows(rows: &[Order]) -> Option<Self> {
        let (order, lines) = rows.split_first()?;
        Some(Self::of(order, lines))
    }

    /// The view of the order whose own row is `order` and whose further lines are `lines`
    /// (its status and times are the order's own row's).
    pub fn of(order: &Order, lines: &[Order]) -> Self {
        let mut items: Vec<LineView> = std::iter::once(order)
            .chain(lines)
            .map(LineView::from)
            .collect();
        items.sort_unstable_by_key(|l| l.product_id);
        let single = lines.is_empty();
        Self {
            order_id: order.id,
            user_id: order.user_id,
            product_id: single.then_some(order.product_id),
            quantity: single.then_some(order.quantity),
            unit_price: single.then_some(order.unit_price),
            // Each line's amount is bounded (price × ≤ 1000), so the sum of ≤ the most
            // lines allowed cannot overflow; saturating keeps it total.
            total_amount: items
                .iter()
                .fold(0i64, |sum, l| sum.saturating_add(l.line_amount)),
            items,
            status: order.status,
            created_at: order.created_at,
            expires_at: order.expires_at,
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

    fn ask(product_id: i64, quantity: i64) -> LineAsk {
        LineAsk {
            product_id,
            quantity: Quantity::parse(quantity).unwrap(),
            price: 100,
        }
    }

    #[test]
    fn lines_are_one_to_the_most_allowed_each_product_once_in_product_order() {
        let lines = Lines::parse(vec![ask(9, 1), ask(3, 2), ask(5, 1)], 3).unwrap();
        assert_eq!(lines.product_ids(), [3, 5, 9]);
        assert!(Lines::parse(vec![], 3).is_err());
        let err = Lines::parse(vec![ask(1, 1), ask(2, 1), ask(3, 1), ask(4, 1)], 3).unwrap_err();
        assert_eq!(err.code().code, "VALIDATION_FAILED");
        let twice = Lines::parse(vec![ask(7, 3), ask(8, 1), ask(7, 3)], 20).unwrap_err();
        assert_eq!(twice.code().code, "VALIDATION_FAILED");
        let message = twice.to_string();
        assert!(
            message.contains("items[0]") && message.contains("items[2]"),
            "{message}"
        );
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
