//! HTTP routes of the payments feature.

use axum::{
    extract::State, http::StatusCode, response::Response, routing::get, routing::post, Json, Router,
};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use super::service::{self, PaymentView};
use crate::{
    app::AppState,
    auth::Caller,
    error::AppError,
    http::{AppJson, AppPath, Id},
    idempotency::{self, IdempotencyKey},
};

/// OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(paths(pay, get_one), components(schemas(PayRequest, PaymentView)))]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/payments", post(pay))
        .route("/v1/payments/{payment_id}", get(get_one))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PayRequest {
    #[schema(value_type = i64, minimum = 1)]
    pub order_id: Id,
}

#[utoipa::path(post, path = "/v1/payments", tag = "payments", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header)),
    request_body = PayRequest,
    responses((status = 201, body = PaymentView),
        (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "ORDER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "INSUFFICIENT_POINTS, OUT_OF_STOCK, ORDER_NOT_PAYABLE or IDEMPOTENCY_IN_PROGRESS", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn pay(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKey,
    AppJson(body): AppJson<PayRequest>,
) -> Result<Response, AppError> {
    let order_id = body.order_id.get();
    let (db, stock, ranking) = (&state.db, &state.stock, &state.catalog.ranking);
    idempotency::run(
        db,
        key,
        caller.scope("pay"),
        &body,
        StatusCode::CREATED,
        |recorder| async move {
            service::pay(db, stock, ranking, caller, order_id, recorder.as_ref()).await
        },
    )
    .await
}

#[utoipa::path(get, path = "/v1/payments/{payment_id}", tag = "payments", security(("bearer" = [])),
    params(("payment_id" = i64, Path, minimum = 1)),
    responses((status = 200, body = PaymentView), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "PAYMENT_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(payment_id): AppPath<Id>,
) -> Result<Json<PaymentView>, AppError> {
    Ok(Json(
        service::get(&state.db, caller, payment_id.get()).await?,
    ))
}
