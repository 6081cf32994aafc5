//! The one error type of the service and its `application/problem+json` form (RFC 9457).
//!
//! [`CODES`] is the table of SPEC §4: it gives every code its status, title and meaning, and
//! drives the problem documents, the pages their `type` URIs resolve to
//! (`GET /problems/{slug}`), and the OpenAPI document. Database and internal errors are
//! logged here and never shown to the client.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use crate::db;

/// One error code of SPEC §4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeDoc {
    pub code: &'static str,
    /// The usual status (`VALIDATION_FAILED` is also 415 for a non-JSON body).
    pub status: u16,
    pub title: &'static str,
    /// What it means and what a client can do about it.
    pub meaning: &'static str,
    /// The members a problem of this code carries beyond the standard ones.
    pub members: &'static [&'static str],
}

impl CodeDoc {
    /// `OUT_OF_STOCK` → `out-of-stock`, the last segment of its `type` URI.
    pub fn slug(&self) -> String {
        self.code.to_ascii_lowercase().replace('_', "-")
    }

    /// The problem's `type`: a path on this service that answers with this code's page.
    pub fn type_uri(&self) -> String {
        format!("{PROBLEMS_PATH}/{}", self.slug())
    }
}

/// Where the problem pages live.
pub const PROBLEMS_PATH: &str = "/problems";

macro_rules! codes {
    ($($name:ident = $code:literal, $status:literal, $title:literal, [$($member:literal),*], $meaning:literal;)*) => {
        /// The codes of SPEC §4, by name.
        pub mod code {
            use super::CodeDoc;
            $(pub const $name: CodeDoc = CodeDoc {
                code: $code, status: $status, title: $title, meaning: $meaning, members: &[$($member),*],
            };)*
        }
        /// Every code, in the order of SPEC §4.
        pub const CODES: &[CodeDoc] = &[$(code::$name),*];
    };
}

codes! {
    VALIDATION_FAILED = "VALIDATION_FAILED", 400, "Validation failed", [],
        "The request is malformed: invalid JSON, a wrong type, a missing or out-of-range field or query parameter, an unknown field where none is allowed. With status 415: a body sent with a Content-Type other than application/json. Fix the request; retrying it unchanged will fail the same way.";
    INVALID_AMOUNT = "INVALID_AMOUNT", 400, "Invalid amount", [],
        "A charge amount must be a whole number of points of at least 1 within 64-bit range.";
    UNAUTHORIZED = "UNAUTHORIZED", 401, "Unauthorized", [],
        "The route needs a valid bearer token: a user JWT (HS256, `sub` = user id, `exp`) or, on /v1/admin, the admin token. It was missing, malformed, expired or wrongly signed.";
    FORBIDDEN = "FORBIDDEN", 403, "Forbidden", [],
        "The token is valid but acts for another user than the one named in the path or body.";
    USER_NOT_FOUND = "USER_NOT_FOUND", 404, "User not found", [],
        "No user has that id.";
    PRODUCT_NOT_FOUND = "PRODUCT_NOT_FOUND", 404, "Product not found", [],
        "No product has that id.";
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND", 404, "Order not found", [],
        "No order of yours has that id (another user's order answers exactly like a missing one).";
    PAYMENT_NOT_FOUND = "PAYMENT_NOT_FOUND", 404, "Payment not found", [],
        "No payment of yours has that id (another user's payment answers exactly like a missing one).";
    NOT_FOUND = "NOT_FOUND", 404, "Not found", [],
        "No route has this path (or the admin routes are disabled because ADMIN_TOKEN is unset).";
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED", 405, "Method not allowed", [],
        "The path exists but not with this HTTP method.";
    BALANCE_LIMIT_EXCEEDED = "BALANCE_LIMIT_EXCEEDED", 409, "Balance limit exceeded", ["balance", "max_balance"],
        "The balance after this charge or refund would pass the cap of 1,000,000 points. `balance` is the balance now, `max_balance` the cap; nothing changed.";
    OUT_OF_STOCK = "OUT_OF_STOCK", 409, "Out of stock", ["available", "requested"],
        "The product has fewer units available than requested. `available` is how many can still be ordered, `requested` how many were asked for; nothing changed.";
    PRICE_MISMATCH = "PRICE_MISMATCH", 409, "Price mismatch", ["current_price"],
        "The price in the order is not the product's current price (`current_price`). Show the buyer the new price and order again.";
    INSUFFICIENT_POINTS = "INSUFFICIENT_POINTS", 409, "Insufficient points", ["balance", "required", "available"],
        "The user's points do not cover the order's total. When placing an order: `available` (the balance less what the user's PENDING orders hold) is below `required`, the total; nothing was reserved. When paying (only orders placed before points were held at placement): the balance does not cover it, the order stays PENDING. `balance` is the balance now. Charge points, or cancel a PENDING order, and try again.";
    PURCHASE_LIMIT_REACHED = "PURCHASE_LIMIT_REACHED", 409, "Purchase limit reached", ["limit", "held"],
        "The order would take the user past the product's `per_user_limit` (`limit`): `held` is how many units the user already holds in PENDING and PAID orders of it. Cancelled, expired and refunded orders free their units.";
    SALE_NOT_STARTED = "SALE_NOT_STARTED", 409, "Sale not started", ["starts_at"],
        "The product cannot be ordered before its sale starts (`starts_at`, RFC 3339). The Retry-After header says in how many seconds; this answer is not kept for an Idempotency-Key, so the same request may be sent again then.";
    SALE_ENDED = "SALE_ENDED", 409, "Sale ended", ["ends_at"],
        "The product's sale ended at `ends_at` (RFC 3339); it can no longer be ordered. Orders placed before the end can still be paid until they expire.";
    ORDER_NOT_PAYABLE = "ORDER_NOT_PAYABLE", 409, "Order not payable", [],
        "Only a PENDING order whose reservation has not expired can be paid; this one is PAID, CANCELLED, EXPIRED or REFUNDED.";
    ORDER_NOT_CANCELLABLE = "ORDER_NOT_CANCELLABLE", 409, "Order not cancellable", [],
        "Only a PENDING order can be cancelled.";
    ORDER_NOT_REFUNDABLE = "ORDER_NOT_REFUNDABLE", 409, "Order not refundable", [],
        "Only a PAID order can be refunded, within REFUND_WINDOW_SECS of its payment.";
    IDEMPOTENCY_IN_PROGRESS = "IDEMPOTENCY_IN_PROGRESS", 409, "Idempotency key in progress", [],
        "Another request with the same Idempotency-Key is still running and did not finish while this one waited. Retry with the same key shortly: it will replay that request's answer.";
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE", 413, "Payload too large", [],
        "The request body is over 64 KiB.";
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED", 422, "Idempotency key reused", [],
        "This Idempotency-Key was already used, within 24 h, with a different request. Use a new key for a new request.";
    RATE_LIMITED = "RATE_LIMITED", 429, "Rate limited", ["retry_after"],
        "Too many requests from this client or user. Wait `retry_after` seconds (also in the Retry-After header).";
    DEPENDENCY_UNAVAILABLE = "DEPENDENCY_UNAVAILABLE", 503, "Dependency unavailable", [],
        "MySQL (or Redis where nothing can stand in for it) is unavailable, or the request ran past REQUEST_TIMEOUT_MS. Nothing was half done; retry, with the same Idempotency-Key for a write.";
    INTERNAL = "INTERNAL", 500, "Internal error", [],
        "The server failed in a way it did not expect. Nothing internal is shown; the request id finds it in the logs.";
}

/// The codes a line of an order of several products can fail with (SPEC L2): such an
/// order's problem lists every failing line under `lines`, each with one of these.
pub const LINE_CODES: &[&CodeDoc] = &[
    &code::SALE_NOT_STARTED,
    &code::SALE_ENDED,
    &code::OUT_OF_STOCK,
    &code::PURCHASE_LIMIT_REACHED,
    &code::PRICE_MISMATCH,
];

/// The code behind a `type` URI's last segment.
pub fn code_by_slug(slug: &str) -> Option<&'static CodeDoc> {
    CODES.iter().find(|c| c.slug() == slug)
}

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
    #[error("the balance {balance} would pass {max_balance}")]
    BalanceLimitExceeded { balance: i64, max_balance: i64 },
    #[error("only {available} left, {requested} requested")]
    OutOfStock { available: i64, requested: i64 },
    /// OUT_OF_STOCK while other orders' reservations are still being written: their units
    /// may come back, so the refusal is not final (not kept under a key; Retry-After).
    #[error("only {available} left, {requested} requested; units held by orders being placed may come back")]
    OutOfStockForNow { available: i64, requested: i64 },
    #[error("the price is now {current}, not {seen}")]
    PriceMismatch { seen: i64, current: i64 },
    #[error("{available} of the balance {balance} is available, {required} is required")]
    InsufficientPoints {
        balance: i64,
        required: i64,
        available: i64,
    },
    #[error("the limit is {limit} per customer and {held} are already held")]
    PurchaseLimitReached { limit: i64, held: i64 },
    #[error("the sale starts at {}", db::rfc3339(starts_at))]
    SaleNotStarted {
        starts_at: chrono::NaiveDateTime,
        /// Whole seconds until the start, at least 1 (the Retry-After header).
        retry_after_secs: u64,
    },
    #[error("the sale ended at {}", db::rfc3339(ends_at))]
    SaleEnded { ends_at: chrono::NaiveDateTime },
    #[error("the order is {0} and cannot be paid")]
    OrderNotPayable(&'static str),
    #[error("the order is {0} and cannot be cancelled")]
    OrderNotCancellable(&'static str),
    #[error("{0}")]
    OrderNotRefundable(String),
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
    /// Too much waits already (a bounded queue is full): retry in a second.
    #[error("{0} is busy; retry in a second")]
    Busy(String),
    #[error("the request did not finish within {0} ms")]
    Timeout(u128),
    /// An order of several lines refused (SPEC L2): `first` is the refusal the answer
    /// names (the first failing rule in SPEC's precedence), `lines` every failing line's
    /// product and refusal, in product order.
    #[error("{first}")]
    Lines {
        first: Box<AppError>,
        lines: Vec<(i64, AppError)>,
    },
    #[error("database error")]
    Database(sqlx::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        db::note(&e);
        AppError::Database(e)
    }
}

impl db::Retry for AppError {
    fn retryable(&self) -> bool {
        matches!(self, AppError::Database(e) if db::is_retryable(e))
    }
}

impl AppError {
    /// A copy for each request that waited on one shared piece of work (a cache load, a
    /// batch): data-only variants are copied, any other becomes an internal error with the
    /// same message (an unavailable database stays "unavailable").
    pub fn duplicate(&self) -> AppError {
        use AppError::*;
        match self {
            Validation(m) => Validation(m.clone()),
            UserNotFound => UserNotFound,
            ProductNotFound => ProductNotFound,
            OrderNotFound => OrderNotFound,
            OutOfStock {
                available,
                requested,
            } => OutOfStock {
                available: *available,
                requested: *requested,
            },
            &OutOfStockForNow {
                available,
                requested,
            } => OutOfStockForNow {
                available,
                requested,
            },
            &InsufficientPoints {
                balance,
                required,
                available,
            } => InsufficientPoints {
                balance,
                required,
                available,
            },
            &PurchaseLimitReached { limit, held } => PurchaseLimitReached { limit, held },
            &SaleNotStarted {
                starts_at,
                retry_after_secs,
            } => SaleNotStarted {
                starts_at,
                retry_after_secs,
            },
            &SaleEnded { ends_at } => SaleEnded { ends_at },
            &PriceMismatch { seen, current } => PriceMismatch { seen, current },
            IdempotencyInProgress => IdempotencyInProgress,
            DependencyUnavailable(m) => DependencyUnavailable(m.clone()),
            Busy(m) => Busy(m.clone()),
            Lines { first, lines } => Lines {
                first: Box::new(first.duplicate()),
                lines: lines.iter().map(|(p, e)| (*p, e.duplicate())).collect(),
            },
            Database(e) if db::is_unavailable(e) => DependencyUnavailable("mysql".into()),
            other => Internal(anyhow::anyhow!("{other}")),
        }
    }

    /// Whether a client caused this (4xx), as opposed to the infrastructure (5xx).
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }

    /// Whether this is an answer to keep under the request's Idempotency-Key and replay: a
    /// client error that will not change by waiting. A refusal that says when to come back
    /// (`SALE_NOT_STARTED`, with Retry-After) is not kept, like a 5xx: the same request
    /// sent again then runs.
    pub fn is_kept(&self) -> bool {
        match self {
            AppError::Lines { first, .. } => first.is_kept(),
            other => {
                other.is_client_error()
                    && !matches!(
                        other,
                        AppError::SaleNotStarted { .. } | AppError::OutOfStockForNow { .. }
                    )
            }
        }
    }

    pub fn code(&self) -> &'static CodeDoc {
        use AppError::*;
        match self {
            Validation(_) | UnsupportedMediaType(_) => &code::VALIDATION_FAILED,
            InvalidAmount(_) => &code::INVALID_AMOUNT,
            Unauthorized => &code::UNAUTHORIZED,
            Forbidden => &code::FORBIDDEN,
            UserNotFound => &code::USER_NOT_FOUND,
            ProductNotFound => &code::PRODUCT_NOT_FOUND,
            OrderNotFound => &code::ORDER_NOT_FOUND,
            PaymentNotFound => &code::PAYMENT_NOT_FOUND,
            NotFound(_) => &code::NOT_FOUND,
            MethodNotAllowed => &code::METHOD_NOT_ALLOWED,
            BalanceLimitExceeded { .. } => &code::BALANCE_LIMIT_EXCEEDED,
            OutOfStock { .. } | OutOfStockForNow { .. } => &code::OUT_OF_STOCK,
            PriceMismatch { .. } => &code::PRICE_MISMATCH,
            InsufficientPoints { .. } => &code::INSUFFICIENT_POINTS,
            PurchaseLimitReached { .. } => &code::PURCHASE_LIMIT_REACHED,
            SaleNotStarted { .. } => &code::SALE_NOT_STARTED,
            SaleEnded { .. } => &code::SALE_ENDED,
            OrderNotPayable(_) => &code::ORDER_NOT_PAYABLE,
            OrderNotCancellable(_) => &code::ORDER_NOT_CANCELLABLE,
            OrderNotRefundable(_) => &code::ORDER_NOT_REFUNDABLE,
            IdempotencyInProgress => &code::IDEMPOTENCY_IN_PROGRESS,
            PayloadTooLarge(_) => &code::PAYLOAD_TOO_LARGE,
            IdempotencyKeyReused => &code::IDEMPOTENCY_KEY_REUSED,
            RateLimited { .. } => &code::RATE_LIMITED,
            Lines { first, .. } => first.code(),
            DependencyUnavailable(_) | Busy(_) | Timeout(_) => &code::DEPENDENCY_UNAVAILABLE,
            Database(e) if db::is_unavailable(e) => &code::DEPENDENCY_UNAVAILABLE,
            Database(_) | Internal(_) => &code::INTERNAL,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Lines { first, .. } => first.status(),
            other => StatusCode::from_u16(other.code().status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// The problem document the client sees (without `request_id`, which belongs to the
    /// response that carries it). Internal details stay in the log.
    pub fn problem(&self) -> Problem {
        use AppError::*;
        if let Lines { first, lines } = self {
            let mut problem = first.problem();
            problem.lines = Some(
                lines
                    .iter()
                    .map(|(product_id, e)| LineProblem::of(*product_id, e))
                    .collect(),
            );
            return problem;
        }
        let code = self.code();
        let detail = match self {
            Database(e) if db::is_unavailable(e) => "the database is unavailable".to_string(),
            Database(_) | Internal(_) => "the server could not complete the request".to_string(),
            other => other.to_string(),
        };
        let mut problem = Problem {
            kind: code.type_uri(),
            title: code.title.to_string(),
            status: self.status().as_u16(),
            code: code.code.to_string(),
            detail,
            request_id: None,
            available: None,
            requested: None,
            balance: None,
            required: None,
            max_balance: None,
            current_price: None,
            retry_after: None,
            limit: None,
            held: None,
            starts_at: None,
            ends_at: None,
            lines: None,
            retry_header: None,
        };
        match *self {
            OutOfStock {
                available,
                requested,
            } => {
                problem.available = Some(available.max(0));
                problem.requested = Some(requested);
            }
            OutOfStockForNow {
                available,
                requested,
            } => {
                problem.available = Some(available.max(0));
                problem.requested = Some(requested);
                problem.retry_header = Some(1);
            }
            InsufficientPoints {
                balance,
                required,
                available,
            } => {
                problem.balance = Some(balance);
                problem.required = Some(required);
                problem.available = Some(available.max(0));
            }
            PurchaseLimitReached { limit, held } => {
                problem.limit = Some(limit);
                problem.held = Some(held);
            }
            SaleNotStarted {
                starts_at,
                retry_after_secs,
            } => {
                problem.starts_at = Some(db::rfc3339(&starts_at));
                problem.retry_header = Some(retry_after_secs);
            }
            SaleEnded { ends_at } => problem.ends_at = Some(db::rfc3339(&ends_at)),
            Busy(_) => problem.retry_header = Some(1),
            BalanceLimitExceeded {
                balance,
                max_balance,
            } => {
                problem.balance = Some(balance);
                problem.max_balance = Some(max_balance);
            }
            PriceMismatch { current, .. } => problem.current_price = Some(current),
            RateLimited { retry_after_secs } => {
                problem.retry_after = Some(retry_after_secs);
                problem.retry_header = Some(retry_after_secs);
            }
            _ => {}
        }
        problem
    }
}

/// An RFC 9457 problem document. `code` is the stable identifier of SPEC §4, `type` a path
/// on this service whose page explains it; the numbers a client acts on are members.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, utoipa::ToSchema)]
pub struct Problem {
    /// Resolves on this service to a short HTML page about the code.
    #[serde(rename = "type")]
    #[schema(example = "/problems/out-of-stock")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[schema(example = "OUT_OF_STOCK")]
    pub code: String,
    pub detail: String,
    /// The `x-request-id` of the response that carries this problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// OUT_OF_STOCK: units that can still be ordered; INSUFFICIENT_POINTS: the points not
    /// held by the user's PENDING orders.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
    /// OUT_OF_STOCK: units asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<i64>,
    /// INSUFFICIENT_POINTS, BALANCE_LIMIT_EXCEEDED: the balance now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
    /// INSUFFICIENT_POINTS: the order's total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<i64>,
    /// BALANCE_LIMIT_EXCEEDED: the cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_balance: Option<i64>,
    /// PRICE_MISMATCH: the product's price now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_price: Option<i64>,
    /// RATE_LIMITED: seconds to wait (as in Retry-After).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// PURCHASE_LIMIT_REACHED: the product's `per_user_limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// PURCHASE_LIMIT_REACHED: units the user holds in PENDING and PAID orders of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<i64>,
    /// SALE_NOT_STARTED: when the sale starts (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    /// SALE_ENDED: when the sale ended (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// An order of several lines: every failing line, with its rule's members (SPEC L2);
    /// empty when only the order's total failed (INSUFFICIENT_POINTS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<LineProblem>>,
    /// The `Retry-After` header's seconds, when a retry can help (not a member).
    #[serde(skip)]
    pub retry_header: Option<u64>,
}

/// One failing line of an order of several products: its product, the first rule it
/// breaks (`code`) and that rule's members.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, utoipa::ToSchema)]
pub struct LineProblem {
    pub product_id: i64,
    #[schema(example = "OUT_OF_STOCK")]
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_price: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
}

impl LineProblem {
    fn of(product_id: i64, e: &AppError) -> Self {
        let p = e.problem();
        Self {
            product_id,
            code: p.code,
            available: p.available,
            requested: p.requested,
            limit: p.limit,
            held: p.held,
            current_price: p.current_price,
            starts_at: p.starts_at,
            ends_at: p.ends_at,
        }
    }
}

pub const PROBLEM_JSON: &str = "application/problem+json";

tokio::task_local! {
    /// The request id of the request being served (set by the request-id middleware), so
    /// that every problem carries it.
    pub static REQUEST_ID: String;
}

/// The id of the request this task serves, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// A problem response: the document with this request's id, and its headers.
pub fn problem_response(status: StatusCode, mut problem: Problem) -> Response {
    problem.request_id = current_request_id();
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if let Some(seconds) = problem.retry_header.or(problem.retry_after) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            AppError::Database(e) => tracing::error!(error = %e, "database error"),
            AppError::Internal(e) => tracing::error!(error = ?e, "internal error"),
            _ => {}
        }
        problem_response(self.status(), self.problem())
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
    fn problem_type_and_title_come_from_the_code_table() {
        let p = AppError::OutOfStock {
            available: 0,
            requested: 1,
        }
        .problem();
        assert_eq!(p.code, "OUT_OF_STOCK");
        assert_eq!(p.kind, "/problems/out-of-stock");
        assert_eq!(p.title, "Out of stock");
        assert_eq!(p.status, 409);
        assert_eq!((p.available, p.requested), (Some(0), Some(1)));
    }

    #[test]
    fn an_order_of_several_lines_names_its_first_rule_and_lists_every_line() {
        let refusal = AppError::Lines {
            first: Box::new(AppError::OutOfStock {
                available: 1,
                requested: 2,
            }),
            lines: vec![
                (
                    3,
                    AppError::OutOfStock {
                        available: 1,
                        requested: 2,
                    },
                ),
                (
                    5,
                    AppError::PriceMismatch {
                        seen: 1,
                        current: 2,
                    },
                ),
            ],
        };
        assert_eq!(refusal.status(), StatusCode::CONFLICT);
        assert!(refusal.is_kept());
        let json = serde_json::to_value(refusal.duplicate().problem()).unwrap();
        assert_eq!(json["code"], "OUT_OF_STOCK");
        assert_eq!(
            (&json["available"], &json["requested"]),
            (&1.into(), &2.into())
        );
        assert_eq!(
            json["lines"],
            serde_json::json!([
                {"product_id": 3, "code": "OUT_OF_STOCK", "available": 1, "requested": 2},
                {"product_id": 5, "code": "PRICE_MISMATCH", "current_price": 2}
            ])
        );
        let waiting = AppError::Lines {
            first: Box::new(AppError::SaleNotStarted {
                starts_at: chrono::DateTime::from_timestamp(2_000_000_000, 0)
                    .unwrap()
                    .naive_utc(),
                retry_after_secs: 3,
            }),
            lines: Vec::new(),
        };
        assert!(
            !waiting.is_kept(),
            "SALE_NOT_STARTED is not kept, in a cart too"
        );
        assert_eq!(waiting.problem().retry_header, Some(3));
    }

    #[test]
    fn every_code_has_a_unique_slug_and_a_page() {
        let mut slugs: Vec<String> = CODES.iter().map(CodeDoc::slug).collect();
        slugs.sort();
        slugs.dedup();
        assert_eq!(slugs.len(), CODES.len());
        for c in CODES {
            assert_eq!(code_by_slug(&c.slug()), Some(c));
        }
    }

    #[test]
    fn members_named_in_the_table_are_the_members_set() {
        let cases = [
            AppError::OutOfStock {
                available: 2,
                requested: 3,
            },
            AppError::InsufficientPoints {
                balance: 1,
                required: 2,
                available: 0,
            },
            AppError::PurchaseLimitReached { limit: 1, held: 1 },
            AppError::SaleNotStarted {
                starts_at: chrono::DateTime::from_timestamp(2_000_000_000, 0)
                    .unwrap()
                    .naive_utc(),
                retry_after_secs: 3,
            },
            AppError::SaleEnded {
                ends_at: chrono::DateTime::from_timestamp(2_000_000_000, 0)
                    .unwrap()
                    .naive_utc(),
            },
            AppError::BalanceLimitExceeded {
                balance: 999_999,
                max_balance: 1_000_000,
            },
            AppError::PriceMismatch {
                seen: 1,
                current: 2,
            },
            AppError::RateLimited {
                retry_after_secs: 1,
            },
        ];
        for e in cases {
            let json = serde_json::to_value(e.problem()).unwrap();
            let extra: Vec<&str> = json
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|k| !["type", "title", "status", "code", "detail"].contains(k))
                .collect();
            let mut expected = e.code().members.to_vec();
            expected.sort();
            let mut extra = extra;
            extra.sort();
            assert_eq!(extra, expected, "{}", e.code().code);
        }
    }
}
