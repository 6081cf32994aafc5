//! HTTP routes of the points feature.

use axum::{
    extract::{FromRef, State},
    http::StatusCode,
    response::Response,
    routing::get,
    routing::post,
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::MySqlPool;
use utoipa::OpenApi;

use super::{domain::Amount, service};
use crate::{
    auth::{Auth, Caller},
    error::AppError,
    http::{pagination::CursorParams, AppJson, AppPath, AppQuery, Id},
    idempotency::IdempotencyKey,
};

/// OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(balance, charge, history),
    components(schemas(
        ChargeRequest,
        service::PointsView,
        service::BalanceView,
        service::HistoryRow
    ))
)]
pub struct Api;

pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    MySqlPool: FromRef<S>,
    Auth: FromRef<S>,
{
    Router::new()
        .route("/v1/users/{user_id}/points", get(balance))
        .route("/v1/users/{user_id}/points/charge", post(charge))
        .route("/v1/users/{user_id}/points/history", get(history))
        // Private answers: no cache (a browser, a CDN) keeps them.
        .route_layer(axum::middleware::from_fn(crate::http::middleware::no_store))
}

#[utoipa::path(get, path = "/v1/users/{user_id}/points", tag = "points", security(("bearer" = [])),
    params(("user_id" = i64, Path, minimum = 1)),
    responses((status = 200, body = service::BalanceView),
        (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "token of another user", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "USER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn balance(
    State(db): State<MySqlPool>,
    caller: Caller,
    AppPath(user_id): AppPath<Id>,
) -> Result<Json<service::BalanceView>, AppError> {
    Ok(Json(service::balance(&db, caller, user_id.get()).await?))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ChargeRequest {
    /// Kept as raw JSON so that any non-integer answers `INVALID_AMOUNT`, not a type error.
    #[schema(value_type = i64, minimum = 1)]
    pub amount: Value,
}

#[utoipa::path(post, path = "/v1/users/{user_id}/points/charge", tag = "points", security(("bearer" = [])),
    params(("user_id" = i64, Path, minimum = 1), ("Idempotency-Key" = Option<String>, Header)),
    request_body = ChargeRequest,
    responses((status = 200, body = service::PointsView),
        (status = 400, description = "INVALID_AMOUNT or VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "token of another user", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "USER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "BALANCE_LIMIT_EXCEEDED or IDEMPOTENCY_IN_PROGRESS", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn charge(
    State(db): State<MySqlPool>,
    caller: Caller,
    AppPath(user_id): AppPath<Id>,
    key: IdempotencyKey,
    AppJson(body): AppJson<ChargeRequest>,
) -> Result<Response, AppError> {
    let amount = Amount::parse(&body.amount)?;
    let claim = key.claim(
        caller.scope("charge"),
        &(user_id, amount.get()),
        StatusCode::OK,
    )?;
    let outcome = service::charge(&db, caller, user_id.get(), amount, claim.as_ref()).await?;
    Ok(outcome.respond(StatusCode::OK))
}

#[utoipa::path(get, path = "/v1/users/{user_id}/points/history", tag = "points", security(("bearer" = [])),
    params(("user_id" = i64, Path, minimum = 1), ("limit" = Option<i64>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = crate::http::pagination::CursorPage<service::HistoryRow>),
        (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "token of another user", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "USER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn history(
    State(db): State<MySqlPool>,
    caller: Caller,
    AppPath(user_id): AppPath<Id>,
    AppQuery(params): AppQuery<CursorParams>,
) -> Result<Json<crate::http::pagination::CursorPage<service::HistoryRow>>, AppError> {
    let page = params.parse()?;
    Ok(Json(
        service::history(&db, caller, user_id.get(), page).await?,
    ))
}
