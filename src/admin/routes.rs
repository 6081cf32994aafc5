//! HTTP routes of the admin feature.

use axum::{extract::State, http::StatusCode, routing::patch, routing::post, Json, Router};
use serde::Deserialize;
use utoipa::OpenApi;

use super::service::{self, ProductChange, UserView};
use crate::{
    app::AppState,
    auth::{Admin, MintedToken},
    catalog::{domain, service::ProductDetail},
    error::AppError,
    http::{AppJson, AppPath, Id},
    points::service::ensure_user,
};

/// OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(create_user, mint_token, create_product, update_product),
    components(schemas(CreateUser, CreateProduct, UpdateProduct, UserView, MintedToken))
)]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/users", post(create_user))
        .route("/v1/admin/users/{user_id}/tokens", post(mint_token))
        .route("/v1/admin/products", post(create_product))
        .route("/v1/admin/products/{product_id}", patch(update_product))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct CreateUser {
    name: String,
}

#[utoipa::path(post, path = "/v1/admin/users", tag = "admin", security(("admin" = [])), request_body = CreateUser,
    responses((status = 201, body = UserView), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or wrong admin token", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn create_user(
    State(state): State<AppState>,
    _: Admin,
    AppJson(body): AppJson<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), AppError> {
    let name = domain::name(&body.name)?;
    Ok((
        StatusCode::CREATED,
        Json(service::create_user(&state.db, name).await?),
    ))
}

#[utoipa::path(post, path = "/v1/admin/users/{user_id}/tokens", tag = "admin", security(("admin" = [])),
    params(("user_id" = i64, Path, minimum = 1)),
    responses((status = 201, body = MintedToken), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or wrong admin token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "USER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn mint_token(
    State(state): State<AppState>,
    _: Admin,
    AppPath(user_id): AppPath<Id>,
) -> Result<(StatusCode, Json<MintedToken>), AppError> {
    ensure_user(&state.db, user_id.get()).await?;
    Ok((StatusCode::CREATED, Json(state.tokens.mint(user_id.get())?)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct CreateProduct {
    name: String,
    price: i64,
    stock: i64,
}

#[utoipa::path(post, path = "/v1/admin/products", tag = "admin", security(("admin" = [])), request_body = CreateProduct,
    responses((status = 201, body = ProductDetail), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or wrong admin token", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn create_product(
    State(state): State<AppState>,
    _: Admin,
    AppJson(body): AppJson<CreateProduct>,
) -> Result<(StatusCode, Json<ProductDetail>), AppError> {
    let name = domain::name(&body.name)?;
    let price = domain::price(body.price)?;
    let stock = domain::stock(body.stock)?;
    Ok((
        StatusCode::CREATED,
        Json(service::create_product(&state.catalog, name, price, stock).await?),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateProduct {
    name: Option<String>,
    price: Option<i64>,
    stock: Option<i64>,
}

#[utoipa::path(patch, path = "/v1/admin/products/{product_id}", tag = "admin", security(("admin" = [])),
    params(("product_id" = i64, Path, minimum = 1)), request_body = UpdateProduct,
    responses((status = 200, body = ProductDetail), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or wrong admin token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "PRODUCT_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn update_product(
    State(state): State<AppState>,
    _: Admin,
    AppPath(id): AppPath<Id>,
    AppJson(body): AppJson<UpdateProduct>,
) -> Result<Json<ProductDetail>, AppError> {
    if body.name.is_none() && body.price.is_none() && body.stock.is_none() {
        return Err(AppError::Validation(
            "give at least one of name, price, stock".into(),
        ));
    }
    let change = ProductChange {
        name: body.name.as_deref().map(domain::name).transpose()?,
        price: body.price.map(domain::price).transpose()?,
        stock: body.stock.map(domain::stock).transpose()?,
    };
    Ok(Json(
        service::update_product(&state.catalog, id.get(), change).await?,
    ))
}
