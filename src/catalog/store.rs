//! The whole catalog in this process: every product as MySQL had it at its last load,
//! sorted by id. A product's name, price, limit and sale window change only through the
//! admin API, whose writes reach every instance on the invalidation channel
//! ([`super::cache`]); each message reloads that one product here, and a listener that lost
//! its subscription reloads everything (it may have missed messages).
//!
//! Loaded at start-up in the background, 10,000 rows a query in id order (from the replica
//! when one is fresh). Until the first load ends the store answers `None`, and a read that
//! needs it waits for it ([`CatalogStore::loaded`]); a product refreshed while a full load
//! runs is refreshed again after it, so the load cannot bring back an older row.
//!
//! The stock figures kept here are MySQL's as of the load: the live ones come from the
//! stock gate.

use std::{
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use chrono::NaiveDateTime;

use super::domain::{ProductDetail, PRODUCT_COLUMNS};
use crate::{db::Reader, error::AppError};

/// Rows per query of a full load.
const LOAD_CHUNK: i64 = 10_000;
/// Pause before a failed full load is tried again.
const RETRY_LOAD: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct CatalogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Reader,
    /// Every product, ascending by id.
    products: RwLock<Vec<ProductDetail>>,
    /// Whether the first full load has ended.
    loaded: tokio::sync::watch::Sender<bool>,
    /// While a full load runs: the products refreshed meanwhile.
    refreshed_during_load: Mutex<Option<Vec<i64>>>,
    /// One full load at a time.
    loading: tokio::sync::Mutex<()>,
    /// Products read from MySQL one at a time since start (writes, and ids not known).
    refreshes: std::sync::atomic::AtomicU64,
}

impl CatalogStore {
    pub fn new(db: Reader) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                products: RwLock::default(),
                loaded: tokio::sync::watch::Sender::new(false),
                refreshed_during_load: Mutex::default(),
                loading: tokio::sync::Mutex::new(()),
                refreshes: Default::default(),
            }),
        }
    }

    /// Whether the first full load has ended (before it, every lookup is `None`).
    pub fn is_loaded(&self) -> bool {
        *self.inner.loaded.borrow()
    }

    /// Waits for the first full load (at start-up, a second or so for 100,000 products;
    /// the request's own timeout bounds the wait when MySQL is down).
    pub async fn loaded(&self) {
        let mut loaded = self.inner.loaded.subscribe();
        let _ = loaded.wait_for(|l| *l).await;
    }

    /// The product with `id`, if loaded and known.
    pub fn get(&self, id: i64) -> Option<ProductDetail> {
        self.read(|products| {
            products
                .binary_search_by_key(&id, |p| p.id)
                .ok()
                .map(|i| products[i].clone())
        })
        .flatten()
    }

    /// Runs `f` on every product in id order; `None` until the first load ended.
    pub fn read<R>(&self, f: impl FnOnce(&[ProductDetail]) -> R) -> Option<R> {
        if !self.is_loaded() {
            return None;
        }
        let products = self.inner.products.read().ok()?;
        Some(f(&products))
    }

    /// The products whose sale starts after `now` and within `lead` of it.
    pub fn upcoming(&self, now: NaiveDateTime, lead: chrono::Duration) -> Vec<i64> {
        self.read(|products| {
            products
                .iter()
                .filter(|p| p.window().starts_within(now, lead))
                .map(|p| p.id)
                .collect()
        })
        .unwrap_or_default()
    }

    /// How many products were read from MySQL one at a time since start.
    pub fn refreshes(&self) -> u64 {
        self.inner
            .refreshes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads one product again (after a write to it, here or on another instance).
    pub async fn refresh(&self, id: i64) -> Result<(), AppError> {
        self.inner
            .refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut during) = self.inner.refreshed_during_load.lock() {
            if let Some(ids) = during.as_mut() {
                ids.push(id);
            }
        }
        let row: Option<ProductDetail> = self
            .inner
            .db
            .read(|pool| async move {
                sqlx::query_as(&format!(
                    "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = ?"
                ))
                .bind(id)
                .fetch_optional(&pool)
                .await
            })
            .await?;
        if let Ok(mut products) = self.inner.products.write() {
            match (products.binary_search_by_key(&id, |p| p.id), row) {
                (Ok(i), Some(row)) => products[i] = row,
                (Err(i), Some(row)) => {
                    // Room for an eighth more, not twice as much: a catalog of 100,000
                    // would otherwise take 20 MB for its 100,001st product.
                    let len = products.len();
                    if len == products.capacity() {
                        products.reserve_exact(len / 8 + 1);
                    }
                    products.insert(i, row)
                }
                (Ok(i), None) => {
                    products.remove(i);
                }
                (Err(_), None) => {}
            }
        }
        Ok(())
    }

    /// Loads every product, then swaps them in at once; returns how many.
    pub async fn load_all(&self) -> Result<usize, AppError> {
        let _one_at_a_time = self.inner.loading.lock().await;
        if let Ok(mut during) = self.inner.refreshed_during_load.lock() {
            *during = Some(Vec::new());
        }
        let loaded = self.load_rows().await;
        let refreshed = self
            .inner
            .refreshed_during_load
            .lock()
            .ok()
            .and_then(|mut d| d.take())
            .unwrap_or_default();
        let all = loaded?;
        let count = all.len();
        if let Ok(mut products) = self.inner.products.write() {
            *products = all;
        }
        self.inner.loaded.send_replace(true);
        for id in refreshed {
            self.refresh(id).await?;
        }
        Ok(count)
    }

    async fn load_rows(&self) -> Result<Vec<ProductDetail>, AppError> {
        let mut all: Vec<ProductDetail> = Vec::new();
        loop {
            let after = all.last().map_or(0, |p| p.id);
            let chunk: Vec<ProductDetail> = self
                .inner
                .db
                .read(|pool| async move {
                    sqlx::query_as(&format!(
                        "SELECT {PRODUCT_COLUMNS} FROM products WHERE id > ? ORDER BY id LIMIT ?"
                    ))
                    .bind(after)
                    .bind(LOAD_CHUNK)
                    .fetch_all(&pool)
                    .await
                })
                .await?;
            let done = (chunk.len() as i64) < LOAD_CHUNK;
            all.extend(chunk);
            if done {
                all.shrink_to_fit();
                return Ok(all);
            }
        }
    }

    /// Loads everything in the background, trying again until it succeeds.
    pub fn spawn_load(&self) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                match store.load_all().await {
                    Ok(count) => {
                        tracing::info!(products = count, "catalog loaded");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "loading the catalog failed; trying again")
                    }
                }
                tokio::time::sleep(RETRY_LOAD).await;
            }
        })
    }
}
