//! HTTP routes of the admin feature.

use axum::{extract::State, http::StatusCode, routing::patch, routing::post, Json, Router};
use serde::Deserialize;

use super::service::{self, ProductChange, UserView};
use crate::{
    app::AppState,
    auth::{Admin, MintedToken},
    catalog::{domain, service::ProductDetail},
    error::AppError,
    http::{AppJson, AppPath, Id},
    points::service::ensure_user,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/users", post(create_user))
        .route("/v1/admin/users/{user_id}/tokens", post(mint_token))
        .route("/v1/admin/products", post(create_product))
        .route("/v1/admin/products/{product_id}", patch(update_product))
}

#[derive(Debug, Deserialize)]
struct CreateUser {
    name: String,
}

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

async fn mint_token(
    State(state): State<AppState>,
    _: Admin,
    AppPath(user_id): AppPath<Id>,
) -> Result<(StatusCode, Json<MintedToken>), AppError> {
    ensure_user(&state.db, user_id.get()).await?;
    Ok((StatusCode::CREATED, Json(state.tokens.mint(user_id.get())?)))
}

#[derive(Debug, Deserialize)]
struct CreateProduct {
    name: String,
    price: i64,
    stock: i64,
}

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
        Json(service::create_product(&state.db, name, price, stock).await?),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateProduct {
    name: Option<String>,
    price: Option<i64>,
    stock: Option<i64>,
}

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
        service::update_product(&state.db, id.get(), change).await?,
    ))
}
