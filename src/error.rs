//! The one error type of the service and its `application/problem+json` form (RFC 9457).
//! Database and internal errors are logged here and never shown to the client.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    InvalidAmount(String),
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("this token may not act for that user")]
    Forbidden,
    #[error("no user with that id")]
    UserNotFound,
    #[error("no product with that id")]
    ProductNotFound,
    #[error("no order with that id")]
    OrderNotFound,
    #[error("no payment with that id")]
    PaymentNotFound,
    #[error("{0}")]
    NotFound(String),
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    #[error("the balance after this charge would exceed {max}")]
    BalanceLimitExceeded { max: i64 },
    #[error("only {available} left, {requested} requested")]
    OutOfStock { available: i64, requested: i64 },
    #[error("the price is now {current}, not {seen}")]
    PriceMismatch { seen: i64, current: i64 },
    #[error("the balance {balance} does not cover {required}")]
    InsufficientPoints { balance: i64, required: i64 },
    #[error("the order is {0} and cannot be paid")]
    OrderNotPayable(&'static str),
    #[error("the order is {0} and cannot be cancelled")]
    OrderNotCancellable(&'static str),
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyInProgress,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("{0} is unavailable")]
    DependencyUnavailable(String),
    #[error("the request did not finish within {0} ms")]
    Timeout(u128),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    /// A copy for each request that waited on one shared load: the variants that carry
    /// only data are copied, any other becomes an internal error with the same message.
    pub fn duplicate(&self) -> AppError {
        match self {
            Self::ProductNotFound => Self::ProductNotFound,
            Self::Validation(m) => Self::Validation(m.clone()),
            Self::DependencyUnavailable(m) => Self::DependencyUnavailable(m.clone()),
            Self::Database(e) if is_unavailable(e) => {
                Self::DependencyUnavailable("the database".into())
            }
            other => Self::Internal(anyhow::anyhow!("{other}")),
        }
    }
}

/// An RFC 9457 problem document; `code` is the stable identifier of SPEC §4.
#[derive(Debug, Serialize, Deserialize, Clone, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub code: String,
    pub detail: String,
}

impl AppError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use AppError::*;
        match self {
            Validation(_) => (StatusCode::BAD_REQUEST, "VALIDATION_FAILED"),
            UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "VALIDATION_FAILED"),
            InvalidAmount(_) => (StatusCode::BAD_REQUEST, "INVALID_AMOUNT"),
            Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Forbidden => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            UserNotFound => (StatusCode::NOT_FOUND, "USER_NOT_FOUND"),
            ProductNotFound => (StatusCode::NOT_FOUND, "PRODUCT_NOT_FOUND"),
            OrderNotFound => (StatusCode::NOT_FOUND, "ORDER_NOT_FOUND"),
            PaymentNotFound => (StatusCode::NOT_FOUND, "PAYMENT_NOT_FOUND"),
            NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            BalanceLimitExceeded { .. } => (StatusCode::CONFLICT, "BALANCE_LIMIT_EXCEEDED"),
            OutOfStock { .. } => (StatusCode::CONFLICT, "OUT_OF_STOCK"),
            PriceMismatch { .. } => (StatusCode::CONFLICT, "PRICE_MISMATCH"),
            InsufficientPoints { .. } => (StatusCode::CONFLICT, "INSUFFICIENT_POINTS"),
            OrderNotPayable(_) => (StatusCode::CONFLICT, "ORDER_NOT_PAYABLE"),
            OrderNotCancellable(_) => (StatusCode::CONFLICT, "ORDER_NOT_CANCELLABLE"),
            IdempotencyInProgress => (StatusCode::CONFLICT, "IDEMPOTENCY_IN_PROGRESS"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED"),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            DependencyUnavailable(_) | Timeout(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
            }
            Database(e) if is_unavailable(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
            }
            Database(_) | Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }

    /// The problem document the client sees. Internal details stay in the log.
    pub fn problem(&self) -> Problem {
        let (status, code) = self.status_and_code();
        let detail = match self {
            AppError::Database(e) if is_unavailable(e) => "the database is unavailable".to_string(),
            AppError::Database(_) | AppError::Internal(_) => {
                "the server could not complete the request".to_string()
            }
            other => other.to_string(),
        };
        Problem {
            kind: format!("/problems/{}", code.to_ascii_lowercase().replace('_', "-")),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            code: code.to_string(),
            detail,
        }
    }
}

/// Connection-level failures: the database is away, not the request at fault.
fn is_unavailable(e: &sqlx::Error) -> bool {
    /// ER_CON_COUNT_ERROR: the server has no connection left for us.
    const TOO_MANY_CONNECTIONS: u16 = 1040;
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
    ) || crate::db::mysql_error_number(e) == Some(TOO_MANY_CONNECTIONS)
}

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Builds a problem response from a status and an already serialised problem body.
pub fn problem_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        match &self {
            AppError::Database(e) => tracing::error!(error = %e, "database error"),
            AppError::Internal(e) => tracing::error!(error = ?e, "internal error"),
            _ => {}
        }
        let mut response = (status, Json(self.problem())).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let AppError::RateLimited { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let err = AppError::Database(sqlx::Error::RowNotFound);
        let p = err.problem();
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("RowNotFound"));
    }

    #[test]
    fn problem_type_is_derived_from_the_code() {
        let p = AppError::OutOfStock {
            available: 0,
            requested: 1,
        }
        .problem();
        assert_eq!(p.code, "OUT_OF_STOCK");
        assert_eq!(p.kind, "/problems/out-of-stock");
        assert_eq!(p.status, 409);
    }
}
