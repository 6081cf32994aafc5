//! Admin use cases: create users and products, change a product, mint demo tokens. Every
//! write runs at most once per Idempotency-Key, like the user writes.

use chrono::NaiveDateTime;
use serde::Serialize;
use sqlx::{MySqlConnection, MySqlPool};

use crate::{
    catalog::{
        cache::Changed,
        domain::{ProductDetail, SaleWindow, PRODUCT_COLUMNS},
        service::Catalog,
    },
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

/// A product to create, validated.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub name: String,
    pub price: i64,
    pub stock: i64,
    pub per_user_limit: Option<i64>,
    pub window: SaleWindow,
}

pub async fn create_product(
    catalog: &Catalog,
    pool: &MySqlPool,
    product: NewProduct,
    claim: Option<&Claim>,
) -> Result<Outcome<ProductDetail, ()>, AppError> {
    let outcome = idempotency::run(pool, claim, |tx| {
        let p = product.clone();
        Box::pin(async move {
            let now = db::now();
            let id = sqlx::query(
                "INSERT INTO products (name, price, stock, per_user_limit, sale_starts_at, \
                 sale_ends_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&p.name)
            .bind(p.price)
            .bind(p.stock)
            .bind(p.per_user_limit)
            .bind(p.window.starts_at)
            .bind(p.window.ends_at)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .last_insert_id();
            let id = i64::try_from(id).map_err(anyhow::Error::from)?;
            let created = ProductDetail {
                id,
                name: p.name,
                price: p.price,
                stock: p.stock,
                sold: 0,
                per_user_limit: p.per_user_limit,
                sale_starts_at: p.window.starts_at,
                sale_ends_at: p.window.ends_at,
            };
            Ok((created, ()))
        })
    })
    .await?;
    if let Outcome::Done(created, ()) = &outcome {
        catalog.changed(Changed::Created(created.id)).await;
    }
    Ok(outcome)
}

/// Fields to change; `stock` is the new available quantity (unsold and unreserved). The
/// fairness fields are `None` to keep, `Some(None)` to clear, `Some(Some(v))` to set.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProductChange {
    pub name: Option<String>,
    pub price: Option<i64>,
    pub stock: Option<i64>,
    pub per_user_limit: Option<Option<i64>>,
    pub sale_starts_at: Option<Option<NaiveDateTime>>,
    pub sale_ends_at: Option<Option<NaiveDateTime>>,
}

/// Commits the change, then brings the stock gate to the new figures (its available stock
/// and its per-customer counts, under the product's row lock, see
/// [`crate::stock::StockGate::sync`]) and invalidates every cache that holds the product,
/// in this instance and the others.
pub async fn update_product(
    catalog: &Catalog,
    pool: &MySqlPool,
    id: i64,
    change: ProductChange,
    claim: Option<&Claim>,
) -> Result<Outcome<ProductDetail, ()>, AppError> {
    let gate_changed = change.stock.is_some() || change.per_user_limit.is_some();
    let outcome = idempotency::run(pool, claim, |tx| {
        let change = change.clone();
        Box::pin(async move { Ok((update_in(tx, id, change).await?, ())) })
    })
    .await?;
    if let Outcome::Done(..) = outcome {
        if gate_changed {
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
    // The window is judged whole: a new end must follow the start it will have.
    let current: Option<(Option<i64>, Option<NaiveDateTime>, Option<NaiveDateTime>)> =
        sqlx::query_as(
            "SELECT per_user_limit, sale_starts_at, sale_ends_at FROM products WHERE id = ? FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let (limit, starts_at, ends_at) = current.ok_or(AppError::ProductNotFound)?;
    let window = SaleWindow::new(
        change.sale_starts_at.unwrap_or(starts_at),
        change.sale_ends_at.unwrap_or(ends_at),
    )?;
    // Reserved units stay reserved, so the unsold stock becomes the new available
    // quantity plus what PENDING orders hold.
    sqlx::query(
        "UPDATE products SET name = COALESCE(?, name), price = COALESCE(?, price), \
         stock = COALESCE(reserved + ?, stock), per_user_limit = ?, sale_starts_at = ?, \
         sale_ends_at = ?, updated_at = ? WHERE id = ?",
    )
    .bind(change.name)
    .bind(change.price)
    .bind(change.stock)
    .bind(change.per_user_limit.unwrap_or(limit))
    .bind(window.starts_at)
    .bind(window.ends_at)
    .bind(db::now())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    // The product as committed (the answer, and the one replayed for the same key).
    sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(AppError::ProductNotFound)
}
