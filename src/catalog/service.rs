//! Catalog use cases. A product's static part (name, price, limit, sale window) comes from
//! the catalog in process ([`CatalogStore`]); its `stock` (what can still be ordered:
//! unsold units minus those reserved by PENDING orders) and `sold` from the stock gate's
//! live figures, which are in memory too. MySQL (or its replica, [`Reader`]) answers only
//! what neither has: a product created a moment ago on another instance, the figures while
//! Redis cannot give them. Nothing here decides a write.

use axum::body::Bytes;
use chrono::Utc;

use super::{
    cache::{CatalogCache, Changed},
    domain::{
        rank, total_pages, window_start, ProductDetail, ProductPage, ProductSummary, TopItem,
        TopSellers, PAGE_SIZE, TOP_N,
    },
    ranking::Ranking,
};
use crate::{
    db::Reader,
    error::AppError,
    http::caching::Tagged,
    stock::{Live, StockGate},
};

/// What the catalog reads from: the catalog in process and its rendered answers, the stock
/// gate's live figures, the ranking's sorted sets, and MySQL behind them. One `Arc`:
/// every request of a catalog route takes a copy.
#[derive(Clone)]
pub struct Catalog(std::sync::Arc<CatalogParts>);

pub struct CatalogParts {
    pub db: Reader,
    pub cache: CatalogCache,
    pub stock: StockGate,
    pub ranking: Ranking,
}

impl std::ops::Deref for Catalog {
    type Target = CatalogParts;

    fn deref(&self) -> &CatalogParts {
        &self.0
    }
}

impl Catalog {
    pub fn new(parts: CatalogParts) -> Self {
        Self(std::sync::Arc::new(parts))
    }

    /// After a product changed (admin write): every instance's copy of it, and every
    /// answer that shows it.
    pub async fn changed(&self, changed: Changed) {
        self.cache.invalidate(changed).await;
    }

    /// A product's static part: from the catalog in process; one that is not there (created
    /// a moment ago on another instance, or no such product) is asked of MySQL once, and
    /// an id found missing is answered from memory for a while.
    pub async fn product(&self, id: i64) -> Result<ProductDetail, AppError> {
        let store = &self.cache.store;
        store.loaded().await;
        if let Some(product) = store.get(id) {
            return Ok(product);
        }
        if self.cache.known_missing(id).await {
            return Err(AppError::ProductNotFound);
        }
        store.refresh(id).await?;
        match store.get(id) {
            Some(product) => Ok(product),
            None => {
                self.cache.remember_missing(id).await;
                Err(AppError::ProductNotFound)
            }
        }
    }
}

/// A listing page (rendered once and kept until a product on it changes).
pub async fn list(catalog: &Catalog, page: i64) -> Result<Tagged, AppError> {
    catalog.cache.store.loaded().await;
    catalog
        .cache
        .page(page, || Box::pin(render_page(catalog, page)))
        .await
}

async fn render_page(catalog: &Catalog, page: i64) -> Result<Bytes, AppError> {
    let start = usize::try_from((page - 1).saturating_mul(PAGE_SIZE)).unwrap_or(usize::MAX);
    let (products, total_items) = catalog
        .cache
        .store
        .read(|all| {
            let from = start.min(all.len());
            let to = from.saturating_add(PAGE_SIZE as usize).min(all.len());
            (all[from..to].to_vec(), all.len() as i64)
        })
        .unwrap_or_default();
    let figures = figures(catalog, &products).await?;
    let items = products
        .into_iter()
        .zip(figures)
        .map(|(p, (stock, _))| ProductSummary {
            id: p.id,
            name: p.name,
            price: p.price,
            stock,
            per_user_limit: p.per_user_limit,
            sale_starts_at: p.sale_starts_at,
            sale_ends_at: p.sale_ends_at,
        })
        .collect();
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

/// `(stock, sold)` of each product: the live figures; the row as loaded for a product
/// without a counter (no change since Redis last lost it); MySQL for those Redis cannot
/// answer for (one query for all of them).
async fn figures(
    catalog: &Catalog,
    products: &[ProductDetail],
) -> Result<Vec<(i64, i64)>, AppError> {
    let ids: Vec<i64> = products.iter().map(|p| p.id).collect();
    let live = catalog.stock.live_many(&ids).await;
    let unavailable: Vec<i64> = ids
        .iter()
        .zip(&live)
        .filter(|(_, l)| **l == Live::Unavailable)
        .map(|(id, _)| *id)
        .collect();
    let from_mysql = figures_from_mysql(&catalog.db, &unavailable).await?;
    Ok(products
        .iter()
        .zip(live)
        .map(|(p, live)| match live {
            Live::Counter { avail, sold } => (avail.max(0), sold),
            Live::NoCounter => (p.stock.max(0), p.sold),
            Live::Unavailable => from_mysql
                .get(&p.id)
                .copied()
                .unwrap_or((p.stock.max(0), p.sold)),
        })
        .collect())
}

async fn figures_from_mysql(
    db: &Reader,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, (i64, i64)>, AppError> {
    let (Some(first), Some(last)) = (ids.first().copied(), ids.last().copied()) else {
        return Ok(Default::default());
    };
    let rows: Vec<(i64, i64, i64)> = db
        .read(|pool| async move {
            sqlx::query_as(
                "SELECT id, stock - reserved, sold FROM products WHERE id BETWEEN ? AND ?",
            )
            .bind(first)
            .bind(last)
            .fetch_all(&pool)
            .await
        })
        .await?;
    Ok(rows
        .into_iter()
        .filter(|(id, ..)| ids.contains(id))
        .map(|(id, stock, sold)| (id, (stock, sold)))
        .collect())
}

/// A product with its live `stock` and `sold`: no I/O for a product in memory whose
/// figures the feed brought, one Redis round trip the first time this instance shows it.
pub async fn detail(catalog: &Catalog, id: i64) -> Result<ProductDetail, AppError> {
    let product = catalog.product(id).await?;
    let (stock, sold) = figures(catalog, std::slice::from_ref(&product))
        .await?
        .pop()
        .unwrap_or((product.stock, product.sold));
    Ok(ProductDetail {
        stock,
        sold,
        ..product
    })
}

/// Top `TOP_N` by units sold (net of refunds) in PAID orders over the window, ties by
/// lower product id: from the ranking's sorted sets, or from MySQL when Redis cannot
/// answer; held for a couple of seconds, as the JSON to send.
pub async fn top(catalog: &Catalog, days: i64) -> Result<Tagged, AppError> {
    // Boxed (moved into the cache's single-flight by value), and only on a miss.
    catalog
        .cache
        .top(days, || Box::pin(load_top(catalog, days)))
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
        let product = catalog.product(product_id).await?;
        items.push(TopItem {
            rank: items.len() as i64 + 1,
            product_id,
            name: product.name,
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
