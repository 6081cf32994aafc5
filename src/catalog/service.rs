//! Catalog use cases. `stock` in every answer is what can still be ordered: unsold units
//! minus those reserved by PENDING orders. Loads read the replica when one is configured
//! and fresh ([`Reader`]); nothing here decides a write.

use axum::body::Bytes;
use chrono::Utc;

use super::{
    cache::{CatalogCache, Changed},
    domain::{
        rank, total_pages, window_start, ProductDetail, ProductPage, TopItem, TopSellers,
        PAGE_SIZE, PRODUCT_COLUMNS, TOP_N,
    },
    ranking::Ranking,
};
use crate::{
    db::Reader,
    error::AppError,
    http::caching::Tagged,
    stock::{Live, StockGate},
};

/// What the catalog reads from: MySQL (or its replica) behind the caches, the stock gate's
/// live counters, and the ranking's sorted sets.
#[derive(Clone)]
pub struct Catalog {
    pub db: Reader,
    pub cache: CatalogCache,
    pub stock: StockGate,
    pub ranking: Ranking,
}

impl Catalog {
    /// After a product changed (admin write, refund): every cache that shows it.
    pub async fn changed(&self, changed: Changed) {
        self.cache.invalidate(changed).await;
    }
}

/// A listing page (cached; each product's `stock` as of the page's load, at most a few
/// seconds old).
pub async fn list(catalog: &Catalog, page: i64) -> Result<Tagged, AppError> {
    catalog
        .cache
        .page(page, Box::pin(load_page(catalog, page)))
        .await
}

async fn load_page(catalog: &Catalog, page: i64) -> Result<Bytes, AppError> {
    let index = catalog
        .cache
        .index(Box::pin(load_index(&catalog.db)))
        .await?;
    let total_items = index.len() as i64;
    let start = usize::try_from((page - 1).saturating_mul(PAGE_SIZE)).unwrap_or(usize::MAX);
    let ids = index.get(start..).unwrap_or_default();
    let ids = &ids[..ids.len().min(PAGE_SIZE as usize)];
    let items = match (ids.first().copied(), ids.last().copied()) {
        (Some(first), Some(last)) => {
            catalog
                .db
                .read(|pool| async move {
                    sqlx::query_as(
                        "SELECT id, name, price, stock - reserved AS stock, per_user_limit, \
                         sale_starts_at, sale_ends_at FROM products \
                         WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?",
                    )
                    .bind(first)
                    .bind(last)
                    .bind(PAGE_SIZE)
                    .fetch_all(&pool)
                    .await
                })
                .await?
        }
        _ => Vec::new(),
    };
    let page = ProductPage {
        page,
        page_size: PAGE_SIZE,
        total_items,
        total_pages: total_pages(total_items),
        items,
    };
    Ok(Bytes::from(
        serde_json::to_vec(&page).map_err(anyhow::Error::from)?,
    ))
}

async fn load_index(db: &Reader) -> Result<Vec<i64>, AppError> {
    Ok(db
        .read(|pool| async move {
            sqlx::query_scalar("SELECT id FROM products ORDER BY id")
                .fetch_all(&pool)
                .await
        })
        .await?)
}

/// A product with live `stock` and `sold`, in at most one Redis round trip: the cached row
/// supplies name and price, the stock gate's counter the figures (MySQL when Redis cannot
/// answer; the cached row when the product has no counter, i.e. no reservation since Redis
/// last lost it).
pub async fn detail(catalog: &Catalog, id: i64) -> Result<ProductDetail, AppError> {
    let (row, live) = match catalog.cache.cached_row(id).await {
        Some(row) => (row, catalog.stock.live(id).await),
        None => {
            let (live, l2) = catalog
                .stock
                .live_with(id, &catalog.cache.row_key(id))
                .await;
            let row = catalog
                .cache
                .row(id, l2, Box::pin(load_detail(&catalog.db, id)))
                .await?;
            (row, live)
        }
    };
    let (stock, sold) = match live {
        Live::Counter { avail, sold } => (avail, sold),
        Live::NoCounter => (row.stock, row.sold),
        Live::Unavailable => {
            let now = load_detail(&catalog.db, id).await?;
            (now.stock, now.sold)
        }
    };
    Ok(ProductDetail {
        stock: stock.max(0),
        sold,
        ..(*row).clone()
    })
}

/// A product as MySQL (or a fresh replica) has it now.
pub async fn load_detail(db: &Reader, id: i64) -> Result<ProductDetail, AppError> {
    db.read(|pool| async move {
        sqlx::query_as(&format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&pool)
        .await
    })
    .await?
    .ok_or(AppError::ProductNotFound)
}

/// Top `TOP_N` by units sold (net of refunds) in PAID orders over the window, ties by
/// lower product id: from the ranking's sorted sets, or from MySQL when Redis cannot
/// answer; held in L1 for a couple of seconds, as the JSON to send.
pub async fn top(catalog: &Catalog, days: i64) -> Result<Tagged, AppError> {
    // Boxed: loaders are moved into the cache's single-flight by value.
    catalog
        .cache
        .top(days, Box::pin(load_top(catalog, days)))
        .await
}

async fn load_top(catalog: &Catalog, days: i64) -> Result<Bytes, AppError> {
    let totals = match catalog.ranking.top(days).await {
        Ok(totals) => totals,
        Err(e) => {
            tracing::debug!(error = %e, "ranking from MySQL");
            top_from_mysql(&catalog.db, days).await?
        }
    };
    let mut items = Vec::with_capacity(totals.len());
    for (product_id, sold) in totals {
        let product = match catalog.cache.cached_row(product_id).await {
            Some(row) => row,
            None => {
                catalog
                    .cache
                    .row(
                        product_id,
                        None,
                        Box::pin(load_detail(&catalog.db, product_id)),
                    )
                    .await?
            }
        };
        items.push(TopItem {
            rank: items.len() as i64 + 1,
            product_id,
            name: product.name.clone(),
            price: product.price,
            sold,
        });
    }
    let top = TopSellers { days, items };
    Ok(Bytes::from(
        serde_json::to_vec(&top).map_err(anyhow::Error::from)?,
    ))
}

async fn top_from_mysql(db: &Reader, days: i64) -> Result<Vec<(i64, i64)>, AppError> {
    let start = window_start(Utc::now().date_naive(), days);
    let totals: Vec<(i64, i64)> = db
        .read(|pool| async move {
            sqlx::query_as(
                "SELECT product_id, CAST(SUM(quantity) AS SIGNED) AS sold FROM daily_sales \
                 WHERE day >= ? GROUP BY product_id ORDER BY sold DESC, product_id ASC LIMIT ?",
            )
            .bind(start)
            .bind(TOP_N)
            .fetch_all(&pool)
            .await
        })
        .await?;
    Ok(rank(totals))
}
