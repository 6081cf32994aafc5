//! HTTP routes of the payments feature.

use axum::{
    extract::State, http::StatusCode, response::Response, routing::get, routing::post, Json, Router,
};
use serde::{Deserialize, Serialize};

use super::service::{self, PaymentView};
use crate::{
    app::AppState,
    auth::Caller,
    error::AppError,
    http::{AppJson, AppPath, Id},
    idempotency::{self, IdempotencyKey},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/payments", post(pay))
        .route("/v1/payments/{payment_id}", get(get_one))
}

#[derive(Debug, Deserialize, Serialize)]
pub struct PayRequest {
    pub order_id: Id,
}

async fn pay(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKey,
    AppJson(body): AppJson<PayRequest>,
) -> Result<Response, AppError> {
    let order_id = body.order_id.get();
    let db = &state.db;
    idempotency::run(
        db,
        key,
        caller.scope("pay"),
        &body,
        StatusCode::CREATED,
        |recorder| async move { service::pay(db, caller, order_id, recorder.as_ref()).await },
    )
    .await
}

async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(payment_id): AppPath<Id>,
) -> Result<Json<PaymentView>, AppError> {
    Ok(Json(
        service::get(&state.db, caller, payment_id.get()).await?,
    ))
}
