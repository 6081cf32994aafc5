//! HTTP routes of the payments feature.

use axum::{
    extract::{FromRef, State},
    http::StatusCode,
    response::Response,
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;
use utoipa::OpenApi;

use super::{
    domain::{PaymentStatus, PaymentView},
    service,
};
use crate::{
    auth::{Auth, Caller},
    checkout::Checkout,
    error::AppError,
    http::{
        pagination::{CursorPage, CursorParams},
        AppJson, AppPath, AppQuery, Id,
    },
    idempotency::IdempotencyKey,
};

/// OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(pay, get_one, list),
    components(schemas(PayRequest, PaymentView, PaymentStatus))
)]
pub struct Api;

pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    MySqlPool: FromRef<S>,
    Checkout: FromRef<S>,
    Auth: FromRef<S>,
{
    Router::new()
        .route("/v1/payments", post(pay))
        .route("/v1/payments/{payment_id}", get(get_one))
        .route("/v1/users/{user_id}/payments", get(list))
        // Private answers: no cache (a browser, a CDN) keeps them.
        .route_layer(axum::middleware::from_fn(crate::http::middleware::no_store))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PayRequest {
    #[schema(value_type = i64, minimum = 1)]
    pub order_id: Id,
}

#[utoipa::path(post, path = "/v1/payments", tag = "payments", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1–128 visible ASCII characters; a retry with the same key and body replays the first answer")),
    request_body = PayRequest,
    responses((status = 201, body = PaymentView),
        (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "ORDER_NOT_FOUND (also another user's order)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "INSUFFICIENT_POINTS (balance, required), OUT_OF_STOCK (available, requested), ORDER_NOT_PAYABLE or IDEMPOTENCY_IN_PROGRESS", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn pay(
    State(checkout): State<Checkout>,
    caller: Caller,
    key: IdempotencyKey,
    AppJson(body): AppJson<PayRequest>,
) -> Result<Response, AppError> {
    let outcome = checkout
        .pay(caller, body.order_id.get(), &key, &body)
        .await?;
    Ok(outcome.respond(StatusCode::CREATED))
}

#[utoipa::path(get, path = "/v1/payments/{payment_id}", tag = "payments", security(("bearer" = [])),
    params(("payment_id" = i64, Path, minimum = 1)),
    responses((status = 200, body = PaymentView), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "PAYMENT_NOT_FOUND (also another user's payment)", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn get_one(
    State(db): State<MySqlPool>,
    caller: Caller,
    AppPath(payment_id): AppPath<Id>,
) -> Result<Json<PaymentView>, AppError> {
    Ok(Json(service::get(&db, caller, payment_id.get()).await?))
}

#[utoipa::path(get, path = "/v1/users/{user_id}/payments", tag = "payments", security(("bearer" = [])),
    params(("user_id" = i64, Path, minimum = 1), ("limit" = Option<i64>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = CursorPage<PaymentView>), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "FORBIDDEN: token of another user", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "USER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn list(
    State(db): State<MySqlPool>,
    caller: Caller,
    AppPath(user_id): AppPath<Id>,
    AppQuery(params): AppQuery<CursorParams>,
) -> Result<Json<CursorPage<PaymentView>>, AppError> {
    let page = params.parse()?;
    Ok(Json(
        service::list_for_user(&db, caller, user_id.get(), page).await?,
    ))
}
