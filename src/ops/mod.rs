//! Operational routes: liveness, readiness, metrics, the OpenAPI document and its page,
//! and the problem-type pages.

pub mod problems;

use std::time::Duration;

use axum::{
    extract::{FromRef, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use utoipa::OpenApi;

use crate::{db::Reader, error::AppError, redis_store::RedisStore};

/// How long a readiness probe waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the operational routes look at.
#[derive(Clone)]
pub struct Ops {
    pub db: Reader,
    pub redis: RedisStore,
    /// Renders `/metrics`; `None` where no recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// `AUTH_DISABLED=true`: readiness carries a warning.
    pub auth_disabled: bool,
    /// The OpenAPI document served at `/openapi.json`, rendered once by the composition
    /// root (which knows every feature's operations).
    pub openapi: &'static str,
    /// Set when the instance is shutting down: readiness fails, so that a load balancer
    /// sends the traffic elsewhere while in-flight requests finish.
    pub draining: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(paths(healthz, readyz, metrics, openapi_json))]
pub struct Api;

pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Ops: FromRef<S>,
{
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs))
        .route(crate::error::PROBLEMS_PATH, get(problems::index))
        .route(
            &format!("{}/{{slug}}", crate::error::PROBLEMS_PATH),
            get(problems::show),
        )
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document", content_type = "application/json")))]
async fn openapi_json(State(ops): State<Ops>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], ops.openapi).into_response()
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
    responses((status = 200, description = "MySQL answers; `redis` is `ok` or `degraded` (served from MySQL); `replica` is `ok`, `primary` (behind or down: the primary serves reads) or `none`", body = Object),
        (status = 503, description = "DEPENDENCY_UNAVAILABLE: MySQL is down, or the instance is shutting down", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn readyz(State(ops): State<Ops>) -> Result<Json<serde_json::Value>, AppError> {
    if ops.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(AppError::DependencyUnavailable(
            "this instance (shutting down)".into(),
        ));
    }
    let mysql = tokio::time::timeout(
        PROBE_TIMEOUT,
        sqlx::query("SELECT 1").execute(ops.db.primary_pool()),
    )
    .await;
    if !matches!(mysql, Ok(Ok(_))) {
        return Err(AppError::DependencyUnavailable("mysql".into()));
    }
    // Without Redis the service still serves everything from MySQL, only slower.
    let redis = match ops.redis.cmd::<redis::Value>(&redis::cmd("PING")).await {
        Ok(_) => "ok",
        Err(_) => "degraded",
    };
    let replica = match (ops.db.has_replica(), ops.db.on_replica()) {
        (false, _) => "none",
        (true, true) => "ok",
        (true, false) => "primary",
    };
    let mut body = json!({"status": "ok", "mysql": "ok", "redis": redis, "replica": replica});
    if ops.auth_disabled {
        tracing::warn!("AUTH_DISABLED=true: every user route is open");
        body["warning"] = json!("authentication is disabled (AUTH_DISABLED=true)");
    }
    Ok(Json(body))
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
async fn metrics(State(ops): State<Ops>) -> Response {
    match &ops.metrics {
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
