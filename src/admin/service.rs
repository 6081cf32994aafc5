//! Admin use cases: create users and products, change a product.

use serde::Serialize;
use sqlx::{MySqlConnection, MySqlPool};

use crate::{
    catalog::{
        cache::Changed,
        service::{detail, Catalog, ProductDetail},
    },
    db,
    error::AppError,
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: i64,
    pub name: String,
    pub balance: i64,
}

pub async fn create_user(pool: &MySqlPool, name: String) -> Result<UserView, AppError> {
    let id = sqlx::query("INSERT INTO users (name, balance, created_at) VALUES (?, 0, ?)")
        .bind(&name)
        .bind(db::now())
        .execute(pool)
        .await?
        .last_insert_id();
    Ok(UserView {
        id: i64::try_from(id).map_err(anyhow::Error::from)?,
        name,
        balance: 0,
    })
}

pub async fn create_product(
    catalog: &Catalog,
    name: String,
    price: i64,
    stock: i64,
) -> Result<ProductDetail, AppError> {
    let now = db::now();
    let id = sqlx::query(
        "INSERT INTO products (name, price, stock, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&name)
    .bind(price)
    .bind(stock)
    .bind(now)
    .bind(now)
    .execute(&catalog.db)
    .await?
    .last_insert_id();
    catalog.cache.invalidate(Changed::Pages).await;
    Ok(ProductDetail {
        id: i64::try_from(id).map_err(anyhow::Error::from)?,
        name,
        price,
        stock,
        sold: 0,
    })
}

/// Fields to change; `stock` is the new available quantity (unsold and unreserved).
#[derive(Debug, Default, Clone)]
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
    id: i64,
    change: ProductChange,
) -> Result<ProductDetail, AppError> {
    let stock_changed = change.stock.is_some();
    db::transact(&catalog.db, None, |tx| {
        Box::pin(update_in(tx, id, change.clone()))
    })
    .await?;
    if stock_changed && catalog.stock.enabled() {
        if let Err(e) = catalog.stock.sync(&[id]).await {
            tracing::warn!(product_id = id, error = %e, "stock not synced to Redis; the reconciler will");
        }
    }
    catalog.cache.invalidate(Changed::Product(id)).await;
    detail(catalog, id).await
}

async fn update_in(
    tx: &mut MySqlConnection,
    id: i64,
    change: ProductChange,
) -> Result<(), AppError> {
    // One statement under the row lock: reserved units stay reserved, so the unsold stock
    // becomes the new available quantity plus what PENDING orders hold.
    let changed = sqlx::query(
        "UPDATE products SET name = COALESCE(?, name), price = COALESCE(?, price), \
         stock = COALESCE(reserved + ?, stock), updated_at = ? WHERE id = ?",
    )
    .bind(change.name)
    .bind(change.price)
    .bind(change.stock)
    .bind(db::now())
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 0 {
        let found: Option<i64> = sqlx::query_scalar("SELECT id FROM products WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        found.ok_or(AppError::ProductNotFound)?;
    }
    Ok(())
}
