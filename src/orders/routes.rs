//! HTTP routes of the orders feature.

use axum::{
    extract::State, http::StatusCode, response::Response, routing::get, routing::post, Json, Router,
};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use super::{
    domain::Quantity,
    service::{self, NewOrder, OrderView},
};
use crate::{
    app::AppState,
    auth::Caller,
    error::AppError,
    http::{
        pagination::{CursorPage, CursorParams},
        AppJson, AppPath, AppQuery, Id,
    },
    idempotency::{self, IdempotencyKey},
};

/// OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(place, get_one, cancel, list),
    components(schemas(PlaceOrderRequest, OrderView))
)]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/orders", post(place))
        .route("/v1/orders/{order_id}", get(get_one))
        .route("/v1/orders/{order_id}/cancel", post(cancel))
        .route("/v1/users/{user_id}/orders", get(list))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PlaceOrderRequest {
    #[schema(value_type = i64, minimum = 1)]
    pub user_id: Id,
    #[schema(value_type = i64, minimum = 1)]
    pub product_id: Id,
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
    /// The unit price the user saw; it must be the current price.
    pub price: i64,
}

#[utoipa::path(post, path = "/v1/orders", tag = "orders", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header)),
    request_body = PlaceOrderRequest,
    responses((status = 201, body = OrderView),
        (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "token of another user", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "USER_NOT_FOUND or PRODUCT_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "OUT_OF_STOCK, PRICE_MISMATCH or IDEMPOTENCY_IN_PROGRESS", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn place(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKey,
    AppJson(body): AppJson<PlaceOrderRequest>,
) -> Result<Response, AppError> {
    let order = NewOrder {
        user_id: body.user_id.get(),
        product_id: body.product_id.get(),
        quantity: Quantity::parse(body.quantity)?,
        price: body.price,
    };
    if order.price < 0 {
        return Err(AppError::Validation("price must not be negative".into()));
    }
    let ttl = state.config.order_ttl;
    let (db, stock) = (&state.db, &state.stock);
    idempotency::run(
        db,
        key,
        caller.scope("order"),
        &body,
        StatusCode::CREATED,
        |recorder| async move { service::place(db, stock, caller, order, ttl, recorder.as_ref()).await },
    )
    .await
}

#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "orders", security(("bearer" = [])),
    params(("order_id" = i64, Path, minimum = 1)),
    responses((status = 200, body = OrderView), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "ORDER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(order_id): AppPath<Id>,
) -> Result<Json<OrderView>, AppError> {
    Ok(Json(service::get(&state.db, caller, order_id.get()).await?))
}

#[utoipa::path(post, path = "/v1/orders/{order_id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("order_id" = i64, Path, minimum = 1)),
    responses((status = 200, body = OrderView), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "ORDER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "ORDER_NOT_CANCELLABLE", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(order_id): AppPath<Id>,
) -> Result<Json<OrderView>, AppError> {
    Ok(Json(
        service::cancel(&state.db, &state.stock, caller, order_id.get()).await?,
    ))
}

#[utoipa::path(get, path = "/v1/users/{user_id}/orders", tag = "orders", security(("bearer" = [])),
    params(("user_id" = i64, Path, minimum = 1), ("limit" = Option<i64>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = CursorPage<OrderView>), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or invalid token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "token of another user", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "USER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(user_id): AppPath<Id>,
    AppQuery(params): AppQuery<CursorParams>,
) -> Result<Json<CursorPage<OrderView>>, AppError> {
    let page = params.parse()?;
    Ok(Json(
        service::list_for_user(&state.db, caller, user_id.get(), page).await?,
    ))
}
