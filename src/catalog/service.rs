//! Catalog use cases. `stock` in every answer is what can still be ordered:
//! unsold units minus those reserved by PENDING orders.

use std::sync::Arc;

use chrono::{Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

use super::{
    cache::CatalogCache,
    domain::{rank, total_pages, PAGE_SIZE, TOP_N},
    ranking::Ranking,
};
use crate::{
    error::AppError,
    stock::{Live, StockGate},
};

/// What the catalog reads from: MySQL behind the caches, the stock gate's live counters,
/// and the ranking's sorted sets.
#[derive(Clone)]
pub struct Catalog {
    pub db: MySqlPool,
    pub cache: CatalogCache,
    pub stock: StockGate,
    pub ranking: Ranking,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProductSummary {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProductDetail {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock: i64,
    pub sold: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProductPage {
    pub page: i64,
    pub page_size: i64,
    pub total_items: i64,
    pub total_pages: i64,
    pub items: Vec<ProductSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TopItem {
    pub rank: i64,
    pub product_id: i64,
    pub name: String,
    pub price: i64,
    pub sold: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopSellers {
    pub days: i64,
    pub items: Vec<TopItem>,
}

/// A listing page (cached; each product's `stock` as of the page's load, at most a few
/// seconds old).
pub async fn list(catalog: &Catalog, page: i64) -> Result<axum::body::Bytes, AppError> {
    catalog.cache.page(page, load_page(catalog, page)).await
}

async fn load_page(catalog: &Catalog, page: i64) -> Result<ProductPage, AppError> {
    let index = catalog.cache.index(load_index(&catalog.db)).await?;
    let total_items = index.len() as i64;
    let start = usize::try_from((page - 1).saturating_mul(PAGE_SIZE)).unwrap_or(usize::MAX);
    let ids = index.get(start..).unwrap_or_default();
    let ids = &ids[..ids.len().min(PAGE_SIZE as usize)];
    let items = match (ids.first(), ids.last()) {
        (Some(first), Some(last)) => {
            sqlx::query_as(
                "SELECT id, name, price, stock - reserved AS stock FROM products \
                 WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?",
            )
            .bind(first)
            .bind(last)
            .bind(PAGE_SIZE)
            .fetch_all(&catalog.db)
            .await?
        }
        _ => Vec::new(),
    };
    Ok(ProductPage {
        page,
        page_size: PAGE_SIZE,
        total_items,
        total_pages: total_pages(total_items),
        items,
    })
}

async fn load_index(pool: &MySqlPool) -> Result<Vec<i64>, AppError> {
    Ok(sqlx::query_scalar("SELECT id FROM products ORDER BY id")
        .fetch_all(pool)
        .await?)
}

/// A product with live `stock` and `sold`: the cached row supplies name and price, the
/// stock gate's counter the figures (MySQL when Redis cannot answer; the cached row when
/// the product has no counter, i.e. no reservation since Redis last lost it).
pub async fn detail(catalog: &Catalog, id: i64) -> Result<ProductDetail, AppError> {
    let cached = catalog
        .cache
        .product(id, load_detail(&catalog.db, id))
        .await?;
    let (stock, sold) = match catalog.stock.live(id).await {
        Live::Counter { avail, sold } => (avail, sold),
        Live::NoCounter => (cached.stock, cached.sold),
        Live::Unavailable => live_from_mysql(&catalog.db, id).await?,
    };
    Ok(ProductDetail {
        stock,
        sold,
        ..(*cached).clone()
    })
}

/// A product as MySQL has it now.
pub async fn load_detail(pool: &MySqlPool, id: i64) -> Result<ProductDetail, AppError> {
    sqlx::query_as(
        "SELECT id, name, price, stock - reserved AS stock, sold FROM products WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(AppError::ProductNotFound)
}

async fn live_from_mysql(pool: &MySqlPool, id: i64) -> Result<(i64, i64), AppError> {
    let detail = load_detail(pool, id).await?;
    Ok((detail.stock, detail.sold))
}

/// First UTC day of a ranking window of `days` days ending today.
pub fn window_start(days: i64) -> NaiveDate {
    Utc::now().date_naive() - Duration::days(days - 1)
}

/// Top `TOP_N` by units sold in PAID orders over the window, ties by lower product id:
/// from the ranking's sorted sets, or from MySQL when Redis cannot answer; held in L1 for
/// a couple of seconds.
pub async fn top(catalog: &Catalog, days: i64) -> Result<Arc<TopSellers>, AppError> {
    catalog.cache.top(days, load_top(catalog, days)).await
}

async fn load_top(catalog: &Catalog, days: i64) -> Result<TopSellers, AppError> {
    let totals = match catalog.ranking.top(days).await {
        Ok(totals) => totals,
        Err(e) => {
            tracing::debug!(error = %e, "ranking from MySQL");
            top_from_mysql(&catalog.db, days).await?
        }
    };
    let mut items = Vec::with_capacity(totals.len());
    for (product_id, sold) in totals {
        let product = catalog
            .cache
            .product(product_id, load_detail(&catalog.db, product_id))
            .await?;
        items.push(TopItem {
            rank: items.len() as i64 + 1,
            product_id,
            name: product.name.clone(),
            price: product.price,
            sold,
        });
    }
    Ok(TopSellers { days, items })
}

async fn top_from_mysql(pool: &MySqlPool, days: i64) -> Result<Vec<(i64, i64)>, AppError> {
    let totals: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT product_id, CAST(SUM(quantity) AS SIGNED) AS sold FROM daily_sales WHERE day >= ? \
         GROUP BY product_id ORDER BY sold DESC, product_id ASC LIMIT ?",
    )
    .bind(window_start(days))
    .bind(TOP_N)
    .fetch_all(pool)
    .await?;
    Ok(rank(totals))
}
