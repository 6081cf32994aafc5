//! Order rules, free of I/O: quantity range, the price check, totals and status transitions.

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    Pending,
    Paid,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Paid => "PAID",
            OrderStatus::Cancelled => "CANCELLED",
            OrderStatus::Expired => "EXPIRED",
        }
    }

    pub fn parse(value: &str) -> Result<Self, AppError> {
        Ok(match value {
            "PENDING" => OrderStatus::Pending,
            "PAID" => OrderStatus::Paid,
            "CANCELLED" => OrderStatus::Cancelled,
            "EXPIRED" => OrderStatus::Expired,
            other => {
                return Err(AppError::Internal(anyhow::anyhow!(
                    "unknown order status {other}"
                )))
            }
        })
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
        assert_eq!(err.status_and_code().1, "PRICE_MISMATCH");
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
            assert_eq!(err.status_and_code().1, "ORDER_NOT_PAYABLE");
        }
    }

    #[test]
    fn only_pending_orders_can_be_cancelled() {
        use OrderStatus::*;
        assert_eq!(Pending.cancel().unwrap(), Cancelled);
        for status in [Paid, Cancelled, Expired] {
            assert_eq!(
                status.cancel().unwrap_err().status_and_code().1,
                "ORDER_NOT_CANCELLABLE"
            );
        }
        for s in [Pending, Paid, Cancelled, Expired] {
            assert_eq!(OrderStatus::parse(s.as_str()).unwrap(), s);
        }
    }
}
