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

use super::service::{self, ProductChange, UserView};
use crate::{
    auth::{Admin, Auth, MintedToken},
    catalog::{
        domain::{self, ProductDetail},
        service::Catalog,
    },
    error::AppError,
    http::{AppJson, AppPath, Id},
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
    let name = domain::name(&body.name)?;
    let price = domain::price(body.price)?;
    let stock = domain::stock(body.stock)?;
    let claim = key.claim(scope("create_product"), &body, StatusCode::CREATED)?;
    let outcome =
        service::create_product(&catalog, &db, name, price, stock, claim.as_ref()).await?;
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
    let claim = key.claim(scope("update_product"), &(id, &body), StatusCode::OK)?;
    let outcome = service::update_product(&catalog, &db, id.get(), change, claim.as_ref()).await?;
    Ok(outcome.respond(StatusCode::OK))
}
