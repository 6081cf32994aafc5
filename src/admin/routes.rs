//! HTTP routes of the admin feature.

use axum::{
    extract::{FromRef, State},
    http::StatusCode,
    response::Response,
    routing::{patch, post},
    Router,
};
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;
use utoipa::OpenApi;

use super::service::{self, NewProduct, ProductChange, UserView};
use crate::{
    auth::{Admin, Auth, MintedToken},
    catalog::{
        domain::{self, ProductDetail},
        service::Catalog,
    },
    error::AppError,
    http::{nullable, AppJson, AppPath, Id},
    idempotency::{self, IdempotencyKey},
};

/// The scope of the operator's idempotency keys.
fn scope(operation: &str) -> String {
    format!("admin|{operation}")
}

/// OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(create_user, mint_token, create_product, update_product),
    components(schemas(CreateUser, CreateProduct, UpdateProduct, UserView, MintedToken))
)]
pub struct Api;

pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    MySqlPool: FromRef<S>,
    Catalog: FromRef<S>,
    Auth: FromRef<S>,
{
    Router::new()
        .route("/v1/admin/users", post(create_user))
        .route("/v1/admin/users/{user_id}/tokens", post(mint_token))
        .route("/v1/admin/products", post(create_product))
        .route("/v1/admin/products/{product_id}", patch(update_product))
        // Private answers: no cache (a browser, a CDN) keeps them.
        .route_layer(axum::middleware::from_fn(crate::http::middleware::no_store))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
struct CreateUser {
    #[schema(min_length = 1, max_length = 100)]
    name: String,
}

#[utoipa::path(post, path = "/v1/admin/users", tag = "admin", security(("admin" = [])), request_body = CreateUser,
    params(("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key and body replays the first answer")),
    responses((status = 201, body = UserView), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or wrong admin token", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn create_user(
    State(db): State<MySqlPool>,
    _: Admin,
    key: IdempotencyKey,
    AppJson(body): AppJson<CreateUser>,
) -> Result<Response, AppError> {
    let name = domain::user_name(&body.name)?;
    let claim = key.claim(scope("create_user"), &body, StatusCode::CREATED)?;
    let outcome = service::create_user(&db, name, claim.as_ref()).await?;
    Ok(outcome.respond(StatusCode::CREATED))
}

#[utoipa::path(post, path = "/v1/admin/users/{user_id}/tokens", tag = "admin", security(("admin" = [])),
    params(("user_id" = i64, Path, minimum = 1), ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key replays the same token")),
    responses((status = 201, body = MintedToken), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or wrong admin token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "USER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn mint_token(
    State(db): State<MySqlPool>,
    State(auth): State<Auth>,
    _: Admin,
    key: IdempotencyKey,
    AppPath(user_id): AppPath<Id>,
) -> Result<Response, AppError> {
    let claim = key.claim(scope("mint_token"), &user_id, StatusCode::CREATED)?;
    let user_id = user_id.get();
    let outcome = idempotency::run(&db, claim.as_ref(), |tx| {
        let tokens = auth.tokens.clone();
        Box::pin(async move {
            let found: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = ?")
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
            found.ok_or(AppError::UserNotFound)?;
            Ok((tokens.mint(user_id)?, ()))
        })
    })
    .await?;
    Ok(outcome.respond(StatusCode::CREATED))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
struct CreateProduct {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    price: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    stock: i64,
    /// The most units one customer may hold in PENDING and PAID orders.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    per_user_limit: Option<i64>,
    /// RFC 3339: orders are refused before it (SALE_NOT_STARTED).
    #[schema(format = DateTime)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sale_starts_at: Option<String>,
    /// RFC 3339, after `sale_starts_at`: orders are refused from it (SALE_ENDED).
    #[schema(format = DateTime)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sale_ends_at: Option<String>,
}

#[utoipa::path(post, path = "/v1/admin/products", tag = "admin", security(("admin" = [])), request_body = CreateProduct,
    params(("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key and body replays the first answer")),
    responses((status = 201, body = ProductDetail), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or wrong admin token", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn create_product(
    State(db): State<MySqlPool>,
    State(catalog): State<Catalog>,
    _: Admin,
    key: IdempotencyKey,
    AppJson(body): AppJson<CreateProduct>,
) -> Result<Response, AppError> {
    let product = NewProduct {
        name: domain::name(&body.name)?,
        price: domain::price(body.price)?,
        stock: domain::stock(body.stock)?,
        per_user_limit: body
            .per_user_limit
            .map(domain::per_user_limit)
            .transpose()?,
        window: domain::SaleWindow::new(
            instant("sale_starts_at", body.sale_starts_at.as_deref())?,
            instant("sale_ends_at", body.sale_ends_at.as_deref())?,
        )?,
    };
    let claim = key.claim(scope("create_product"), &body, StatusCode::CREATED)?;
    let outcome = service::create_product(&catalog, &db, product, claim.as_ref()).await?;
    Ok(outcome.respond(StatusCode::CREATED))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateProduct {
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    price: Option<i64>,
    /// The new available quantity (unsold and unreserved).
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    stock: Option<i64>,
    /// `null` removes the limit.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1_000_000_000)]
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    per_user_limit: Option<Option<i64>>,
    /// RFC 3339; `null`: on sale from now.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    sale_starts_at: Option<Option<String>>,
    /// RFC 3339; `null`: no end.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    sale_ends_at: Option<Option<String>>,
}

/// An optional RFC 3339 field as UTC.
fn instant(field: &str, value: Option<&str>) -> Result<Option<chrono::NaiveDateTime>, AppError> {
    value.map(|v| domain::instant(field, v)).transpose()
}

#[utoipa::path(patch, path = "/v1/admin/products/{product_id}", tag = "admin", security(("admin" = [])),
    params(("product_id" = i64, Path, minimum = 1), ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key and body replays the first answer")), request_body = UpdateProduct,
    responses((status = 200, body = ProductDetail), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "missing or wrong admin token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "PRODUCT_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn update_product(
    State(db): State<MySqlPool>,
    State(catalog): State<Catalog>,
    _: Admin,
    key: IdempotencyKey,
    AppPath(id): AppPath<Id>,
    AppJson(body): AppJson<UpdateProduct>,
) -> Result<Response, AppError> {
    if body.name.is_none()
        && body.price.is_none()
        && body.stock.is_none()
        && body.per_user_limit.is_none()
        && body.sale_starts_at.is_none()
        && body.sale_ends_at.is_none()
    {
        return Err(AppError::Validation(
            "give at least one of name, price, stock, per_user_limit, sale_starts_at, sale_ends_at"
                .into(),
        ));
    }
    let change = ProductChange {
        name: body.name.as_deref().map(domain::name).transpose()?,
        price: body.price.map(domain::price).transpose()?,
        stock: body.stock.map(domain::stock).transpose()?,
        per_user_limit: body
            .per_user_limit
            .map(|l| l.map(domain::per_user_limit).transpose())
            .transpose()?,
        sale_starts_at: body
            .sale_starts_at
            .as_ref()
            .map(|t| instant("sale_starts_at", t.as_deref()))
            .transpose()?,
        sale_ends_at: body
            .sale_ends_at
            .as_ref()
            .map(|t| instant("sale_ends_at", t.as_deref()))
            .transpose()?,
    };
    let claim = key.claim(scope("update_product"), &(id, &body), StatusCode::OK)?;
    let outcome = service::update_product(&catalog, &db, id.get(), change, claim.as_ref()).await?;
    Ok(outcome.respond(StatusCode::OK))
}
