//! HTTP routes of the orders feature.

use axum::{
    extract::State, http::StatusCode, response::Response, routing::get, routing::post, Json, Router,
};
use serde::{Deserialize, Serialize};

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

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/orders", post(place))
        .route("/v1/orders/{order_id}", get(get_one))
        .route("/v1/orders/{order_id}/cancel", post(cancel))
        .route("/v1/users/{user_id}/orders", get(list))
}

#[derive(Debug, Deserialize, Serialize)]
pub struct PlaceOrderRequest {
    pub user_id: Id,
    pub product_id: Id,
    pub quantity: i64,
    pub price: i64,
}

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
    let db = &state.db;
    idempotency::run(
        db,
        key,
        caller.scope("order"),
        &body,
        StatusCode::CREATED,
        |recorder| async move { service::place(db, caller, order, ttl, recorder.as_ref()).await },
    )
    .await
}

async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(order_id): AppPath<Id>,
) -> Result<Json<OrderView>, AppError> {
    Ok(Json(service::get(&state.db, caller, order_id.get()).await?))
}

async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(order_id): AppPath<Id>,
) -> Result<Json<OrderView>, AppError> {
    Ok(Json(
        service::cancel(&state.db, caller, order_id.get()).await?,
    ))
}

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
