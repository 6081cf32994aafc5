//! Payment shapes, free of I/O: the statuses a payment goes through and the view a client
//! gets. The rules of paying are the checkout's (one batch of a product decides them).

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use crate::error::AppError;

/// `COMPLETED` when paid; `REFUNDED` once its order was refunded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Completed,
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Completed => "COMPLETED",
            PaymentStatus::Refunded => "REFUNDED",
        }
    }
}

impl TryFrom<String> for PaymentStatus {
    type Error = AppError;

    fn try_from(value: String) -> Result<Self, AppError> {
        match value.as_str() {
            "COMPLETED" => Ok(PaymentStatus::Completed),
            "REFUNDED" => Ok(PaymentStatus::Refunded),
            other => Err(AppError::Internal(anyhow::anyhow!(
                "unknown payment status {other}"
            ))),
        }
    }
}

/// A payment as the client sees it (and as stored: a payment has no internal fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PaymentView {
    #[sqlx(rename = "id")]
    pub payment_id: i64,
    pub order_id: i64,
    pub user_id: i64,
    pub amount: i64,
    #[sqlx(try_from = "String")]
    pub status: PaymentStatus,
    pub balance_after: i64,
    #[sqlx(rename = "created_at")]
    #[serde(serialize_with = "crate::http::utc")]
    #[schema(value_type = String, format = DateTime)]
    pub paid_at: NaiveDateTime,
}

/// The columns of [`PaymentView`].
pub const PAYMENT_COLUMNS: &str =
    "id, order_id, user_id, amount, status, balance_after, created_at";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_back_from_their_column() {
        for s in [PaymentStatus::Completed, PaymentStatus::Refunded] {
            assert_eq!(PaymentStatus::try_from(s.as_str().to_string()).unwrap(), s);
        }
        assert!(PaymentStatus::try_from("VOID".to_string()).is_err());
    }
}
