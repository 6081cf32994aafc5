//! Operational routes: liveness, readiness, metrics, the OpenAPI document and its page,
//! and the problem-type pages. Readiness and metrics ([`probes`]) can be served on a
//! listener of their own (`OPS_BIND_ADDR`), away from the public one.

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
/// How old an answer of `/readyz` may be: however often it is asked, MySQL and Redis are
/// probed at most once a second.
const READY_FOR: Duration = Duration::from_secs(1);

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
    /// The last readiness answer and when it was found (one probe at a time).
    pub readiness: std::sync::Arc<tokio::sync::Mutex<Option<(std::time::Instant, Readiness)>>>,
}

/// A readiness probe's finding: the body of a 200, or what is down.
#[derive(Clone, Debug)]
pub enum Readiness {
    Ready(serde_json::Value),
    Down(&'static str),
}

/// OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(paths(healthz, readyz, metrics, openapi_json))]
pub struct Api;

/// The public operational routes.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Ops: FromRef<S>,
{
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi_json))
        .merge(docs())
        .route(crate::error::PROBLEMS_PATH, get(problems::index))
        .route(
            &format!("{}/{{slug}}", crate::error::PROBLEMS_PATH),
            get(problems::show),
        )
}

/// Readiness and metrics: on the public listener, or on `OPS_BIND_ADDR` alone.
pub fn probes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Ops: FromRef<S>,
{
    Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document", content_type = "application/json")))]
async fn openapi_json(State(ops): State<Ops>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], ops.openapi).into_response()
}

/// `/docs`: the standard Swagger UI over `/openapi.json`, its files inside the binary
/// (`utoipa-swagger-ui`'s vendored copy: nothing is fetched, at build or at run time), with
/// a Content-Security-Policy that lets the page run its own scripts only.
fn docs<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let ui = utoipa_swagger_ui::SwaggerUi::new("/docs")
        .config(utoipa_swagger_ui::Config::new(["/openapi.json"]));
    Router::from(ui).layer(axum::middleware::from_fn(content_security_policy))
}

/// The policy of `/docs`: scripts, styles, images and requests from this origin only
/// (Swagger UI sets inline style attributes, and draws icons as `data:` images).
const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; \
     frame-ancestors 'none'";

async fn content_security_policy(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(req).await;
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(DOCS_CSP),
    );
    response
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
    let mut last = ops.readiness.lock().await;
    let readiness = match &*last {
        Some((at, readiness)) if at.elapsed() < READY_FOR => readiness.clone(),
        _ => {
            let readiness = probe(&ops).await;
            *last = Some((std::time::Instant::now(), readiness.clone()));
            readiness
        }
    };
    drop(last);
    match readiness {
        Readiness::Ready(body) => Ok(Json(body)),
        Readiness::Down(what) => Err(AppError::DependencyUnavailable(what.into())),
    }
}

/// Asks MySQL and Redis once.
async fn probe(ops: &Ops) -> Readiness {
    let mysql = tokio::time::timeout(
        PROBE_TIMEOUT,
        sqlx::query("SELECT 1").execute(ops.db.primary_pool()),
    )
    .await;
    if !matches!(mysql, Ok(Ok(_))) {
        return Readiness::Down("mysql");
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
    Readiness::Ready(body)
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
