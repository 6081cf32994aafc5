//! Admin use cases: create users and products, change a product, mint demo tokens. Every
//! write runs at most once per Idempotency-Key, like the user writes.

use serde::Serialize;
use sqlx::{MySqlConnection, MySqlPool};

use crate::{
    catalog::{cache::Changed, domain::ProductDetail, service::Catalog},
    db,
    error::AppError,
    idempotency::{self, Claim, Outcome},
};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: i64,
    pub name: String,
    pub balance: i64,
}

pub async fn create_user(
    pool: &MySqlPool,
    name: String,
    claim: Option<&Claim>,
) -> Result<Outcome<UserView, ()>, AppError> {
    idempotency::run(pool, claim, |tx| {
        let name = name.clone();
        Box::pin(async move {
            let id = sqlx::query("INSERT INTO users (name, balance, created_at) VALUES (?, 0, ?)")
                .bind(&name)
                .bind(db::now())
                .execute(&mut *tx)
                .await?
                .last_insert_id();
            let id = i64::try_from(id).map_err(anyhow::Error::from)?;
            Ok((
                UserView {
                    id,
                    name,
                    balance: 0,
                },
                (),
            ))
        })
    })
    .await
}

pub async fn create_product(
    catalog: &Catalog,
    pool: &MySqlPool,
    name: String,
    price: i64,
    stock: i64,
    claim: Option<&Claim>,
) -> Result<Outcome<ProductDetail, ()>, AppError> {
    let outcome = idempotency::run(pool, claim, |tx| {
        let name = name.clone();
        Box::pin(async move {
            let now = db::now();
            let id = sqlx::query(
                "INSERT INTO products (name, price, stock, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&name)
            .bind(price)
            .bind(stock)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .last_insert_id();
            let id = i64::try_from(id).map_err(anyhow::Error::from)?;
            Ok((ProductDetail { id, name, price, stock, sold: 0 }, ()))
        })
    })
    .await?;
    if let Outcome::Done(..) = outcome {
        catalog.changed(Changed::Pages).await;
    }
    Ok(outcome)
}

/// Fields to change; `stock` is the new available quantity (unsold and unreserved).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProductChange {
    pub name: Option<String>,
    pub price: Option<i64>,
    pub stock: Option<i64>,
}

/// Commits the change, then brings Redis's available stock to the new figure (under the
/// product's row lock, see [`crate::stock::StockGate::sync`]) and invalidates every cache
/// that holds the product, in this instance and the others.
pub async fn update_product(
    catalog: &Catalog,
    pool: &MySqlPool,
    id: i64,
    change: ProductChange,
    claim: Option<&Claim>,
) -> Result<Outcome<ProductDetail, ()>, AppError> {
    let stock_changed = change.stock.is_some();
    let outcome = idempotency::run(pool, claim, |tx| {
        let change = change.clone();
        Box::pin(async move { Ok((update_in(tx, id, change).await?, ())) })
    })
    .await?;
    if let Outcome::Done(..) = outcome {
        if stock_changed {
            if let Err(e) = catalog.stock.sync(&[id]).await {
                tracing::warn!(product_id = id, error = %e, "stock not synced to Redis; the reconciler will");
            }
        }
        catalog.changed(Changed::Product(id)).await;
    }
    Ok(outcome)
}

async fn update_in(
    tx: &mut MySqlConnection,
    id: i64,
    change: ProductChange,
) -> Result<ProductDetail, AppError> {
    // One statement under the row lock: reserved units stay reserved, so the unsold stock
    // becomes the new available quantity plus what PENDING orders hold.
    sqlx::query(
        "UPDATE products SET name = COALESCE(?, name), price = COALESCE(?, price), \
         stock = COALESCE(reserved + ?, stock), updated_at = ? WHERE id = ?",
    )
    .bind(change.name)
    .bind(change.price)
    .bind(change.stock)
    .bind(db::now())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    // The product as committed (the answer, and the one replayed for the same key).
    sqlx::query_as(
        "SELECT id, name, price, stock - reserved AS stock, sold FROM products WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(AppError::ProductNotFound)
}
