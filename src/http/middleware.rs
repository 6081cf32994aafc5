//! Request-level middleware: the request timeout, the request id every problem carries
//! (a client's own only when it is 1–64 visible ASCII characters), metrics labelled by
//! route template, the headers every answer carries (`X-Content-Type-Options: nosniff`)
//! and private ones do (`Cache-Control: no-store`), and the problem+json fallbacks for
//! unknown paths and methods.

use std::time::{Duration, Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::Span;

use crate::error::{AppError, REQUEST_ID};

/// `REQUEST_TIMEOUT_MS`, the state of [`timeout`].
#[derive(Clone, Copy, Debug)]
pub struct RequestTimeout(pub Duration);

/// Ends a request that runs past `REQUEST_TIMEOUT_MS` with a 503 problem. Dropping the
/// handler rolls back its open transaction (work already handed to a checkout batch
/// finishes there, and its answer is kept under the request's Idempotency-Key); a Redis
/// reservation it made is given back by the reconciler once its deadline passes.
pub async fn timeout(
    State(RequestTimeout(limit)): State<RequestTimeout>,
    req: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("http_request_timeouts_total").increment(1);
            AppError::Timeout(limit.as_millis()).into_response()
        }
    }
}

/// The longest request id a client may choose.
pub const MAX_REQUEST_ID: usize = 64;

/// Whether a client's `x-request-id` may stand for the request in logs and problems.
pub fn valid_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID && bytes.iter().all(u8::is_ascii_graphic)
}

/// Drops a client's `x-request-id` that is not 1–64 visible ASCII characters, so that the
/// request-id layer makes one (no log or problem spoofed with junk).
pub async fn sanitize_request_id(mut req: Request, next: Next) -> Response {
    if req
        .headers()
        .get("x-request-id")
        .is_some_and(|v| !valid_request_id(v))
    {
        req.headers_mut().remove("x-request-id");
    }
    next.run(req).await
}

/// Every answer: `X-Content-Type-Options: nosniff` (a browser must not guess a type).
pub async fn nosniff(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Private answers (a user's points, orders, payments; minted tokens): no cache keeps
/// them, whatever their status.
pub async fn no_store(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Makes the request id (set or accepted by the request-id layer) available to every
/// problem built while serving the request.
pub async fn scope_request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    REQUEST_ID.scope(id, next.run(req)).await
}

/// The span of one request: method, route template, request id; status and latency are
/// recorded when the response leaves. Headers (tokens) are never recorded.
pub fn request_span(req: &Request) -> Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %req.method(),
        route,
        request_id,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    )
}

pub fn record_response(response: &Response, latency: Duration, span: &Span) {
    span.record("status", response.status().as_u16());
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
    tracing::debug!("response");
}

/// Counts requests and records their latency by method, route template and status.
pub async fn track_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    metrics::gauge!("http_requests_in_flight").increment(1.0);
    let response = next.run(req).await;
    metrics::gauge!("http_requests_in_flight").decrement(1.0);
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

pub async fn not_found() -> AppError {
    AppError::NotFound("no such route".into())
}

pub async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
