//! HTTP routes of the catalog (public).

use axum::{extract::State, response::IntoResponse, routing::get, Json, Router};
use serde::Deserialize;
use utoipa::OpenApi;

use super::{domain, service};
use crate::{
    app::AppState,
    error::AppError,
    http::{AppPath, AppQuery, Id},
};

/// OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(list, top, detail),
    components(schemas(
        service::ProductPage,
        service::ProductSummary,
        service::ProductDetail,
        service::TopSellers,
        service::TopItem
    ))
)]
pub struct Api;

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

#[utoipa::path(get, path = "/v1/products", tag = "catalog",
    params(("page" = Option<i64>, Query, minimum = 1, description = "1-based; 20 products a page")),
    responses((status = 200, body = service::ProductPage), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn list(
    State(state): State<AppState>,
    AppQuery(params): AppQuery<ListParams>,
) -> Result<axum::response::Response, AppError> {
    let page = domain::page(params.page)?;
    let json = service::list(&state.catalog, page).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/products/{product_id}", tag = "catalog",
    params(("product_id" = i64, Path, minimum = 1)),
    responses((status = 200, body = service::ProductDetail), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "PRODUCT_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn detail(
    State(state): State<AppState>,
    AppPath(id): AppPath<Id>,
) -> Result<Json<service::ProductDetail>, AppError> {
    Ok(Json(service::detail(&state.catalog, id.get()).await?))
}

#[derive(Debug, Deserialize)]
struct TopParams {
    days: Option<i64>,
}

#[utoipa::path(get, path = "/v1/products/top", tag = "catalog",
    params(("days" = Option<i64>, Query, minimum = 1, maximum = 30, description = "UTC days, today included; default 3")),
    responses((status = 200, body = service::TopSellers), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn top(
    State(state): State<AppState>,
    AppQuery(params): AppQuery<TopParams>,
) -> Result<Json<std::sync::Arc<service::TopSellers>>, AppError> {
    let days = domain::top_days(params.days)?;
    Ok(Json(service::top(&state.catalog, days).await?))
}
