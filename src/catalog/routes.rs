//! HTTP routes of the catalog (public).

use axum::{extract::State, routing::get, Json, Router};
use serde::Deserialize;

use super::{domain, service};
use crate::{
    app::AppState,
    error::AppError,
    http::{AppPath, AppQuery, Id},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/products", get(list))
        .route("/v1/products/top", get(top))
        .route("/v1/products/{product_id}", get(detail))
}

#[derive(Debug, Deserialize)]
struct ListParams {
    page: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    AppQuery(params): AppQuery<ListParams>,
) -> Result<Json<service::ProductPage>, AppError> {
    let page = domain::page(params.page)?;
    Ok(Json(service::list(&state.db, page).await?))
}

async fn detail(
    State(state): State<AppState>,
    AppPath(id): AppPath<Id>,
) -> Result<Json<service::ProductDetail>, AppError> {
    Ok(Json(service::detail(&state.db, id.get()).await?))
}

#[derive(Debug, Deserialize)]
struct TopParams {
    days: Option<i64>,
}

async fn top(
    State(state): State<AppState>,
    AppQuery(params): AppQuery<TopParams>,
) -> Result<Json<service::TopSellers>, AppError> {
    let days = domain::top_days(params.days)?;
    Ok(Json(service::top(&state.db, days).await?))
}
