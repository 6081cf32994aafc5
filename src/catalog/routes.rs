//! HTTP routes of the catalog (public, HTTP-cacheable: strong ETag, Cache-Control, 304).

use axum::{
    extract::{FromRef, State},
    response::Response,
    routing::get,
    Router,
};
use serde::Deserialize;
use utoipa::OpenApi;

use super::{
    cache::{PAGE_MAX_AGE_SECS, TOP_TTL},
    domain::{self, ProductDetail, ProductPage, ProductSummary, TopItem, TopSellers},
    service::{self, Catalog},
};
use crate::{
    error::AppError,
    http::{
        caching::{IfNoneMatch, Tagged},
        AppPath, AppQuery, Id,
    },
};

/// `max-age` of a listing page.
pub const PAGE_MAX_AGE: u64 = PAGE_MAX_AGE_SECS;
/// `max-age` of the best sellers: their L1 lifetime.
pub const TOP_MAX_AGE: u64 = TOP_TTL.as_secs();
/// `max-age` of a detail: its `stock` is live, so a cache must revalidate (with the ETag,
/// a 304 costs no body).
pub const DETAIL_MAX_AGE: u64 = 0;

/// OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(list, top, detail),
    components(schemas(ProductPage, ProductSummary, ProductDetail, TopSellers, TopItem))
)]
pub struct Api;

pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Catalog: FromRef<S>,
{
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
    params(("page" = Option<i64>, Query, minimum = 1, description = "1-based; 20 products a page"),
        ("If-None-Match" = Option<String>, Header, description = "an ETag of an earlier answer: 304 when still current")),
    responses((status = 200, body = ProductPage, headers(("ETag" = String), ("Cache-Control" = String, description = "public, max-age=1"))),
        (status = 304, description = "not modified: the If-None-Match tag is current", headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn list(
    State(catalog): State<Catalog>,
    headers: IfNoneMatch,
    AppQuery(params): AppQuery<ListParams>,
) -> Result<Response, AppError> {
    let page = domain::page(params.page)?;
    let tagged = service::list(&catalog, page).await?;
    Ok(tagged.respond(&headers, PAGE_MAX_AGE))
}

#[utoipa::path(get, path = "/v1/products/{product_id}", tag = "catalog",
    params(("product_id" = i64, Path, minimum = 1),
        ("If-None-Match" = Option<String>, Header, description = "an ETag of an earlier answer: 304 when still current")),
    responses((status = 200, body = ProductDetail, headers(("ETag" = String), ("Cache-Control" = String, description = "public, max-age=0: stock is live"))),
        (status = 304, description = "not modified: the If-None-Match tag is current", headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "PRODUCT_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn detail(
    State(catalog): State<Catalog>,
    headers: IfNoneMatch,
    AppPath(id): AppPath<Id>,
) -> Result<Response, AppError> {
    let product = service::detail(&catalog, id.get()).await?;
    let json = serde_json::to_vec(&product).map_err(anyhow::Error::from)?;
    Ok(Tagged::new(json).respond(&headers, DETAIL_MAX_AGE))
}

#[derive(Debug, Deserialize)]
struct TopParams {
    days: Option<i64>,
}

#[utoipa::path(get, path = "/v1/products/top", tag = "catalog",
    params(("days" = Option<i64>, Query, minimum = 1, maximum = 30, description = "UTC days, today included; default 3"),
        ("If-None-Match" = Option<String>, Header, description = "an ETag of an earlier answer: 304 when still current")),
    responses((status = 200, body = TopSellers, headers(("ETag" = String), ("Cache-Control" = String, description = "public, max-age=2"))),
        (status = 304, description = "not modified: the If-None-Match tag is current", headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn top(
    State(catalog): State<Catalog>,
    headers: IfNoneMatch,
    AppQuery(params): AppQuery<TopParams>,
) -> Result<Response, AppError> {
    let days = domain::top_days(params.days)?;
    let tagged = service::top(&catalog, days).await?;
    Ok(tagged.respond(&headers, TOP_MAX_AGE))
}
