//! HTTP routes of the points feature.

use axum::{
    extract::State, http::StatusCode, response::Response, routing::get, routing::post, Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{domain::Amount, service};
use crate::{
    app::AppState,
    auth::Caller,
    error::AppError,
    http::{pagination::CursorParams, AppJson, AppPath, AppQuery, Id},
    idempotency::{self, IdempotencyKey},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/users/{user_id}/points", get(balance))
        .route("/v1/users/{user_id}/points/charge", post(charge))
        .route("/v1/users/{user_id}/points/history", get(history))
}

async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(user_id): AppPath<Id>,
) -> Result<Json<service::PointsView>, AppError> {
    Ok(Json(
        service::balance(&state.db, caller, user_id.get()).await?,
    ))
}

#[derive(Debug, Deserialize, Serialize)]
pub struct ChargeRequest {
    /// Kept as raw JSON so that any non-integer answers `INVALID_AMOUNT`, not a type error.
    pub amount: Value,
}

async fn charge(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(user_id): AppPath<Id>,
    key: IdempotencyKey,
    AppJson(body): AppJson<ChargeRequest>,
) -> Result<Response, AppError> {
    let amount = Amount::parse(&body.amount)?;
    let request = (user_id, amount.get());
    let db = &state.db;
    idempotency::run(
        db,
        key,
        caller.scope("charge"),
        &request,
        StatusCode::OK,
        |recorder| async move {
            service::charge(db, caller, user_id.get(), amount, recorder.as_ref()).await
        },
    )
    .await
}

async fn history(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(user_id): AppPath<Id>,
    AppQuery(params): AppQuery<CursorParams>,
) -> Result<Json<crate::http::pagination::CursorPage<service::HistoryRow>>, AppError> {
    let page = params.parse()?;
    Ok(Json(
        service::history(&state.db, caller, user_id.get(), page).await?,
    ))
}
