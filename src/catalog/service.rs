//! Catalog use cases. `stock` in every answer is what can still be ordered:
//! unsold units minus those reserved by PENDING orders.

use chrono::{Duration, NaiveDate, Utc};
use serde::Serialize;
use sqlx::MySqlPool;

use super::domain::{total_pages, PAGE_SIZE, TOP_N};
use crate::error::AppError;

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProductSummary {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProductDetail {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock: i64,
    pub sold: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProductPage {
    pub page: i64,
    pub page_size: i64,
    pub total_items: i64,
    pub total_pages: i64,
    pub items: Vec<ProductSummary>,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TopItem {
    pub rank: i64,
    pub product_id: i64,
    pub name: String,
    pub price: i64,
    pub sold: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopSellers {
    pub days: i64,
    pub items: Vec<TopItem>,
}

pub async fn list(pool: &MySqlPool, page: i64) -> Result<ProductPage, AppError> {
    let total_items: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products")
        .fetch_one(pool)
        .await?;
    let total_pages = total_pages(total_items);
    let items = if page > total_pages {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT id, name, price, stock - reserved AS stock FROM products ORDER BY id LIMIT ? OFFSET ?",
        )
        .bind(PAGE_SIZE)
        .bind((page - 1) * PAGE_SIZE)
        .fetch_all(pool)
        .await?
    };
    Ok(ProductPage {
        page,
        page_size: PAGE_SIZE,
        total_items,
        total_pages,
        items,
    })
}

pub async fn detail(pool: &MySqlPool, id: i64) -> Result<ProductDetail, AppError> {
    sqlx::query_as(
        "SELECT id, name, price, stock - reserved AS stock, sold FROM products WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(AppError::ProductNotFound)
}

/// First UTC day of a ranking window of `days` days ending today.
pub fn window_start(days: i64) -> NaiveDate {
    Utc::now().date_naive() - Duration::days(days - 1)
}

/// Top `TOP_N` by units sold in PAID orders over the window, ties by lower product id.
pub async fn top(pool: &MySqlPool, days: i64) -> Result<TopSellers, AppError> {
    let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
        "SELECT s.product_id, p.name, p.price, CAST(s.sold AS SIGNED) AS sold \
         FROM (SELECT product_id, SUM(quantity) AS sold FROM daily_sales WHERE day >= ? \
               GROUP BY product_id ORDER BY sold DESC, product_id ASC LIMIT ?) s \
         JOIN products p ON p.id = s.product_id \
         ORDER BY s.sold DESC, s.product_id ASC",
    )
    .bind(window_start(days))
    .bind(TOP_N)
    .fetch_all(pool)
    .await?;
    let items = rows
        .into_iter()
        .zip(1..)
        .map(|((product_id, name, price, sold), rank)| TopItem {
            rank,
            product_id,
            name,
            price,
            sold,
        })
        .collect();
    Ok(TopSellers { days, items })
}
