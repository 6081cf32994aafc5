//! Operational routes: liveness, readiness, metrics.

use std::time::Duration;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;

use utoipa::OpenApi;

use crate::{app::AppState, error::AppError};

/// How long a readiness probe waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(paths(healthz, readyz, metrics, openapi_json))]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs))
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document_json(),
    )
        .into_response()
}

/// A human page over `/openapi.json`, self-contained (no CDN, nothing fetched at build).
async fn docs() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("docs.html"))
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "the process runs", body = Object, example = json!({"status": "ok"}))))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "MySQL answers; `redis` is `ok` or `degraded` (served from MySQL)", body = Object),
        (status = 503, description = "DEPENDENCY_UNAVAILABLE: MySQL is down", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    let mysql =
        tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&state.db)).await;
    if !matches!(mysql, Ok(Ok(_))) {
        return Err(AppError::DependencyUnavailable("mysql".into()));
    }
    if state.tokens.disabled() {
        tracing::warn!("AUTH_DISABLED=true: every user route is open");
    }
    // Without Redis the service still serves everything from MySQL, only slower.
    let redis = if ping_redis(&state).await {
        "ok"
    } else {
        "degraded"
    };
    let mut body = json!({"status": "ok", "mysql": "ok", "redis": redis});
    if state.tokens.disabled() {
        body["warning"] = json!("authentication is disabled (AUTH_DISABLED=true)");
    }
    Ok(Json(body))
}

async fn ping_redis(state: &AppState) -> bool {
    state.redis.cmd::<String>(&redis::cmd("PING")).await.is_ok()
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => {
            AppError::NotFound("metrics are not recorded by this instance".into()).into_response()
        }
    }
}
