//! Request-level middleware: metrics labelled by route template, and the problem+json
//! fallbacks for unknown paths and methods.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};

use crate::error::AppError;

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
