//! Catalog caches: Moka in this process (L1, bounded, short TTL) over Redis (L2, shared by
//! every instance) over MySQL (or its replica). Concurrent misses of one key load it once
//! (`try_get_with`).
//!
//! - Product rows: L1 `rows`; L2 `<prefix>{p<id>}:row`, in the stock hash's slot, so a
//!   detail reads the row and the live counter in one round trip even on an L1 miss.
//! - Listing pages and the best sellers: kept as the JSON bytes they are sent as, with
//!   their ETag ([`Tagged`]); pages also in the L2 hash `<prefix>cache:pages`.
//! - The page index: every product id in order (8 bytes a product, L1 only), so that any
//!   page is one primary-key range read instead of an OFFSET scan and a COUNT(*).
//!
//! Coherence: a write that changes a product deletes its L2 entries, evicts this instance's
//! L1 entries, and publishes on `<prefix>events:invalidate`; every instance listening there
//! evicts the same L1 entries. A listener that lost its subscription drops its whole L1 on
//! reconnect (it may have missed messages). The write repeats the L2 delete and the message
//! shortly after, for a reader that loaded the old row just before the write committed (or
//! from a replica still behind: the repeat waits out the lag a replica is allowed).

use std::{future::Future, sync::Arc, time::Duration};

use axum::body::Bytes;
use moka::future::Cache;
use redis::PushKind;

use super::{domain::ProductDetail, store::CatalogStore};
use crate::{error::AppError, http::caching::Tagged, redis_store::RedisStore, stock::StockGate};

/// L1 lifetimes: the bound on staleness when an invalidation message is lost (and, for
/// pages, on the age of the `stock` they show).
const ROW_TTL: Duration = Duration::from_secs(10);
pub const PAGE_TTL: Duration = Duration::from_secs(3);
pub const TOP_TTL: Duration = Duration::from_secs(2);
const INDEX_TTL: Duration = Duration::from_secs(60);
/// L2 lifetimes. Pages carry each product's available stock as of the load, so they live
/// briefly; a row lives until a write invalidates it.
const ROW_L2_SECS: u64 = 60;
pub const PAGES_L2_SECS: u64 = 2;
const CHANNEL: &str = "events:invalidate";

#[derive(Clone)]
pub struct CatalogCache {
    redis: RedisStore,
    stock: StockGate,
    /// The whole catalog in process, refreshed by the same messages.
    pub store: CatalogStore,
    rows: Cache<i64, Arc<ProductDetail>>,
    pages: Cache<i64, Tagged>,
    top: Cache<i64, Tagged>,
    index: Cache<(), Arc<Vec<i64>>>,
    /// When a write's invalidation is repeated (past the staleness a load may bring back).
    repeat_after: Duration,
}

/// What an invalidation message names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// One product's name, price, stock, limit or sale window, and so the pages.
    Product(i64),
    /// A new product: the set of products, and so the pages.
    Created(i64),
}

impl Changed {
    fn encode(self) -> String {
        match self {
            Self::Product(id) => format!("product:{id}"),
            Self::Created(id) => format!("created:{id}"),
        }
    }

    fn decode(message: &str) -> Option<Self> {
        let (kind, id) = message.split_once(':')?;
        let id = id.parse().ok()?;
        match kind {
            "product" => Some(Self::Product(id)),
            "created" => Some(Self::Created(id)),
            _ => None,
        }
    }

    fn product(self) -> i64 {
        match self {
            Self::Product(id) | Self::Created(id) => id,
        }
    }
}

impl CatalogCache {
    pub fn new(
        redis: RedisStore,
        stock: StockGate,
        store: CatalogStore,
        repeat_after: Duration,
    ) -> Self {
        Self {
            redis,
            stock,
            store,
            repeat_after,
            rows: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ROW_TTL)
                .build(),
            pages: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(PAGE_TTL)
                .build(),
            index: Cache::builder().time_to_live(INDEX_TTL).build(),
            top: Cache::builder()
                .max_capacity(64)
                .time_to_live(TOP_TTL)
                .build(),
        }
    }

    /// The L2 key of a product's row: next to its stock hash, in the same slot.
    pub fn row_key(&self, id: i64) -> String {
        format!("{}:row", self.stock.product_key(id))
    }

    fn pages_key(&self) -> String {
        self.redis.key("cache:pages")
    }

    /// A product's row from L1, if there.
    pub async fn cached_row(&self, id: i64) -> Option<Arc<ProductDetail>> {
        let hit = self.rows.get(&id).await;
        count("product", "l1", if hit.is_some() { "hit" } else { "miss" });
        hit
    }

    /// A product's row after an L1 miss: from `l2` (the row key's value, read by the
    /// caller together with the live counter), else from `load` (once for concurrent
    /// misses), written back to L2 without waiting.
    pub async fn row<F>(
        &self,
        id: i64,
        l2: Option<Vec<u8>>,
        load: F,
    ) -> Result<Arc<ProductDetail>, AppError>
    where
        F: Future<Output = Result<ProductDetail, AppError>>,
    {
        if let Some(row) = l2.and_then(|json| serde_json::from_slice::<ProductDetail>(&json).ok()) {
            count("product", "l2", "hit");
            let row = Arc::new(row);
            self.rows.insert(id, row.clone()).await;
            return Ok(row);
        }
        count("product", "l2", "miss");
        self.rows
            .try_get_with(id, async {
                let row = load.await?;
                if let Ok(json) = serde_json::to_vec(&row) {
                    let (redis, key) = (self.redis.clone(), self.row_key(id));
                    tokio::spawn(async move {
                        let mut set = redis::cmd("SET");
                        set.arg(key).arg(json).arg("EX").arg(ROW_L2_SECS);
                        let _ = redis.cmd::<()>(&set).await;
                    });
                }
                Ok::<_, AppError>(Arc::new(row))
            })
            .await
            .map_err(unshare)
    }

    /// A listing page, as the JSON to send and its tag.
    pub async fn page<F>(&self, page: i64, load: F) -> Result<Tagged, AppError>
    where
        F: Future<Output = Result<Bytes, AppError>>,
    {
        if let Some(hit) = self.pages.get(&page).await {
            count("page", "l1", "hit");
            return Ok(hit);
        }
        count("page", "l1", "miss");
        let (key, field) = (self.pages_key(), page.to_string());
        self.pages
            .try_get_with(page, async {
                let cached: Option<Vec<u8>> = self
                    .redis
                    .cmd(redis::cmd("HGET").arg(&key).arg(&field))
                    .await
                    .ok()
                    .flatten();
                if let Some(json) = cached {
                    count("page", "l2", "hit");
                    return Ok(Tagged::new(json));
                }
                count("page", "l2", "miss");
                let json = load.await?;
                let mut pipe = redis::pipe();
                pipe.cmd("HSET")
                    .arg(&key)
                    .arg(&field)
                    .arg(json.as_ref())
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(PAGES_L2_SECS)
                    .arg("NX")
                    .ignore();
                let _ = self.redis.pipe::<()>(&pipe).await;
                Ok::<_, AppError>(Tagged::new(json))
            })
            .await
            .map_err(unshare)
    }

    /// Every product id, ascending (L1 only, one load at a time).
    pub async fn index<F>(&self, load: F) -> Result<Arc<Vec<i64>>, AppError>
    where
        F: Future<Output = Result<Vec<i64>, AppError>>,
    {
        self.index
            .try_get_with((), async { load.await.map(Arc::new) })
            .await
            .map_err(unshare)
    }

    /// The best sellers of a window as JSON (L1 only: computed from Redis sorted sets).
    pub async fn top<F>(&self, days: i64, load: F) -> Result<Tagged, AppError>
    where
        F: Future<Output = Result<Bytes, AppError>>,
    {
        if let Some(hit) = self.top.get(&days).await {
            count("top", "l1", "hit");
            return Ok(hit);
        }
        count("top", "l1", "miss");
        self.top
            .try_get_with(days, async { load.await.map(Tagged::new) })
            .await
            .map_err(unshare)
    }

    /// After a write committed: drop the entries everywhere, now and once more shortly.
    pub async fn invalidate(&self, changed: Changed) {
        self.invalidate_once(changed).await;
        let again = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(again.repeat_after).await;
            again.invalidate_once(changed).await;
        });
    }

    /// The ranking shows names and prices: a changed product changes it too.
    pub fn evict_top(&self) {
        self.top.invalidate_all();
    }

    async fn invalidate_once(&self, changed: Changed) {
        self.evict_local(changed).await;
        // Separate commands: the keys live in different slots of a cluster.
        let row = async {
            if let Changed::Product(id) = changed {
                self.redis
                    .cmd::<()>(redis::cmd("DEL").arg(self.row_key(id)))
                    .await
            } else {
                Ok(())
            }
        };
        let mut del_pages = redis::cmd("DEL");
        del_pages.arg(self.pages_key());
        let pages = self.redis.cmd::<()>(&del_pages);
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.redis.key(CHANNEL)).arg(changed.encode());
        let publish = self.redis.cmd::<i64>(&publish);
        let (row, pages, publish) = tokio::join!(row, pages, publish);
        if row.is_err() || pages.is_err() || publish.is_err() {
            tracing::warn!(
                ?changed,
                "invalidation not published; other instances catch up within the L1 TTL"
            );
        }
    }

    async fn evict_local(&self, changed: Changed) {
        let id = changed.product();
        if let Err(e) = self.store.refresh(id).await {
            tracing::warn!(product_id = id, error = %e, "product not reloaded; reloading the catalog");
            self.store.spawn_load();
        }
        match changed {
            Changed::Product(id) => {
                self.rows.invalidate(&id).await;
                self.top.invalidate_all();
            }
            Changed::Created(_) => self.index.invalidate_all(),
        }
        self.pages.invalidate_all();
    }

    fn evict_all(&self) {
        self.index.invalidate_all();
        self.rows.invalidate_all();
        self.pages.invalidate_all();
        self.top.invalidate_all();
    }

    /// Listens for other instances' invalidations until the process ends, resubscribing
    /// after a lost connection.
    pub fn spawn_listener(&self) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        let channel = self.redis.key(CHANNEL);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                match cache.redis.subscribe(std::slice::from_ref(&channel)).await {
                    Ok(mut pushes) => {
                        // Messages sent while nobody listened are lost: start from an empty L1,
                        // and reload the catalog (the first time, the start-up load does).
                        cache.evict_all();
                        if !std::mem::take(&mut first) {
                            cache.store.spawn_load();
                        }
                        while let Some(push) = pushes.recv().await {
                            match push.kind {
                                PushKind::Message => {
                                    let payload = push.data.last().and_then(|v| {
                                        redis::from_redis_value::<String>(v.clone()).ok()
                                    });
                                    match payload.as_deref().and_then(Changed::decode) {
                                        Some(changed) => cache.evict_local(changed).await,
                                        None => {
                                            cache.evict_all();
                                            cache.store.spawn_load();
                                        }
                                    }
                                }
                                PushKind::Disconnection | PushKind::Subscribe => cache.evict_all(),
                                _ => {}
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "invalidation listener not subscribed")
                    }
                }
                cache.evict_all();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }
}

fn count(cache: &'static str, layer: &'static str, result: &'static str) {
    metrics::counter!("cache_requests_total", "cache" => cache, "layer" => layer, "result" => result)
        .increment(1);
}

/// A loader's error, shared by every request that waited on the same load.
fn unshare(e: Arc<AppError>) -> AppError {
    Arc::try_unwrap(e).unwrap_or_else(|shared| shared.duplicate())
}

#[cfg(test)]
mod tests {
    use super::Changed;

    #[test]
    fn invalidation_messages_round_trip() {
        for c in [Changed::Product(42), Changed::Created(7)] {
            assert_eq!(Changed::decode(&c.encode()), Some(c));
        }
        assert_eq!(Changed::decode("product:x"), None);
        assert_eq!(Changed::decode("pages"), None);
    }
}
