//! Catalog caches: Moka in this process (L1, bounded, short TTL) over Redis (L2, shared by
//! every instance) over MySQL. Concurrent misses of one key load it once (`try_get_with`).
//!
//! Coherence: a write that changes a product deletes its L2 entries, evicts this instance's
//! L1 entries, and publishes on `<prefix>events:invalidate`; every instance listening there
//! evicts the same L1 entries. A listener that lost its subscription drops its whole L1 on
//! reconnect (it may have missed messages). The write repeats the L2 delete and the message
//! shortly after, for a reader that loaded the old row just before the write committed.
//!
//! What is cached is what changes only through those writes (names, prices, pages). Live
//! stock and sold on a detail come from the stock gate, not from here.

use std::{future::Future, hash::Hash, sync::Arc, time::Duration};

use axum::body::Bytes;
use futures_util::StreamExt;
use moka::future::Cache;
use serde::{de::DeserializeOwned, Serialize};

use super::service::{ProductDetail, ProductPage, TopSellers};
use crate::{error::AppError, redis_store::RedisStore};

/// L1 lifetimes: the bound on staleness when an invalidation message is lost (and, for
/// pages, on the age of the `stock` they show).
const PRODUCT_TTL: Duration = Duration::from_secs(10);
const PAGE_TTL: Duration = Duration::from_secs(3);
const TOP_TTL: Duration = Duration::from_secs(2);
/// The page index: every product id in order (8 bytes a product), so that any page is one
/// primary-key range read instead of an OFFSET scan and a COUNT(*).
const INDEX_TTL: Duration = Duration::from_secs(60);
/// L2 lifetimes. Pages carry each product's available stock as of the load, so they live
/// briefly; a detail's static part lives until a write invalidates it.
const PRODUCT_L2_SECS: u64 = 60;
const PAGES_L2_SECS: u64 = 2;
/// The second, delayed invalidation of a write.
const REPEAT_AFTER: Duration = Duration::from_millis(500);
const CHANNEL: &str = "events:invalidate";

#[derive(Clone)]
pub struct CatalogCache {
    redis: RedisStore,
    products: Cache<i64, Arc<ProductDetail>>,
    pages: Cache<i64, Bytes>,
    top: Cache<i64, Arc<TopSellers>>,
    index: Cache<(), Arc<Vec<i64>>>,
}

/// What an invalidation message names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// One product's name, price or stock, and so the pages.
    Product(i64),
    /// The set of products (a new one): the pages.
    Pages,
}

impl Changed {
    fn encode(self) -> String {
        match self {
            Self::Product(id) => format!("product:{id}"),
            Self::Pages => "pages".into(),
        }
    }

    fn decode(message: &str) -> Option<Self> {
        match message {
            "pages" => Some(Self::Pages),
            _ => message
                .strip_prefix("product:")?
                .parse()
                .ok()
                .map(Self::Product),
        }
    }
}

impl CatalogCache {
    pub fn new(redis: RedisStore) -> Self {
        Self {
            redis,
            products: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(PRODUCT_TTL)
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

    fn product_key(&self, id: i64) -> String {
        self.redis.key(&format!("cache:product:{id}"))
    }

    fn pages_key(&self) -> String {
        self.redis.key("cache:pages")
    }

    /// A product's cached row (name, price; stock and sold as of the load).
    pub async fn product<F>(&self, id: i64, load: F) -> Result<Arc<ProductDetail>, AppError>
    where
        F: Future<Output = Result<ProductDetail, AppError>>,
    {
        let l2 = L2::Key(self.product_key(id), PRODUCT_L2_SECS);
        layered(&self.redis, "product", &self.products, id, l2, load).await
    }

    /// A listing page, as the JSON to send.
    pub async fn page<F>(&self, page: i64, load: F) -> Result<Bytes, AppError>
    where
        F: Future<Output = Result<ProductPage, AppError>>,
    {
        let l2 = L2::Field(self.pages_key(), page.to_string(), PAGES_L2_SECS);
        layered(&self.redis, "page", &self.pages, page, l2, load).await
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

    /// The best sellers of a window (L1 only: computed from Redis sorted sets).
    pub async fn top<F>(&self, days: i64, load: F) -> Result<Arc<TopSellers>, AppError>
    where
        F: Future<Output = Result<TopSellers, AppError>>,
    {
        if let Some(hit) = self.top.get(&days).await {
            count("top", "l1", "hit");
            return Ok(hit);
        }
        count("top", "l1", "miss");
        self.top
            .try_get_with(days, async { load.await.map(Arc::new) })
            .await
            .map_err(unshare)
    }

    /// After a write committed: drop the entries everywhere, now and once more shortly.
    pub async fn invalidate(&self, changed: Changed) {
        self.invalidate_once(changed).await;
        let again = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REPEAT_AFTER).await;
            again.invalidate_once(changed).await;
        });
    }

    async fn invalidate_once(&self, changed: Changed) {
        self.evict_local(changed).await;
        let mut pipe = redis::pipe();
        if let Changed::Product(id) = changed {
            pipe.cmd("DEL").arg(self.product_key(id)).ignore();
        }
        pipe.cmd("DEL").arg(self.pages_key()).ignore();
        pipe.cmd("PUBLISH")
            .arg(self.redis.key(CHANNEL))
            .arg(changed.encode())
            .ignore();
        if let Err(e) = self.redis.pipe::<()>(&pipe).await {
            tracing::warn!(error = %e, ?changed, "invalidation not published; other instances catch up within the L1 TTL");
        }
    }

    async fn evict_local(&self, changed: Changed) {
        if let Changed::Product(id) = changed {
            self.products.invalidate(&id).await;
        } else {
            self.index.invalidate_all();
        }
        self.pages.invalidate_all();
    }

    fn evict_all(&self) {
        self.index.invalidate_all();
        self.products.invalidate_all();
        self.pages.invalidate_all();
        self.top.invalidate_all();
    }

    /// Listens for other instances' invalidations until the process ends, resubscribing
    /// after a lost connection.
    pub fn spawn_listener(&self) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = cache.listen().await {
                    tracing::debug!(error = %e, "invalidation listener lost its subscription");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    async fn listen(&self) -> redis::RedisResult<()> {
        let connect = self.redis.client().get_async_pubsub();
        let mut pubsub = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "timed out")))??;
        pubsub.subscribe(self.redis.key(CHANNEL)).await?;
        // Messages sent while nobody listened are lost: start from an empty L1.
        self.evict_all();
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let payload: String = message.get_payload()?;
            match Changed::decode(&payload) {
                Some(changed) => self.evict_local(changed).await,
                None => self.evict_all(),
            }
        }
        Ok(())
    }
}

/// Where a value lives in Redis: its own key, or a field of a hash that expires whole.
enum L2 {
    Key(String, u64),
    Field(String, String, u64),
}

/// How a value is kept in L1, given its JSON in L2 or its freshly loaded form.
trait Cached: Clone + Send + Sync + 'static {
    type Loaded;
    fn from_l2(json: Vec<u8>) -> Option<Self>;
    /// The L1 value and the JSON for L2.
    fn from_loaded(value: Self::Loaded) -> Result<(Self, Vec<u8>), AppError>;
}

/// A value read field by field (a product: its figures are replaced by live ones).
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Cached for Arc<T> {
    type Loaded = T;
    fn from_l2(json: Vec<u8>) -> Option<Self> {
        serde_json::from_slice(&json).ok().map(Arc::new)
    }
    fn from_loaded(value: T) -> Result<(Self, Vec<u8>), AppError> {
        let json = serde_json::to_vec(&value).map_err(anyhow::Error::from)?;
        Ok((Arc::new(value), json))
    }
}

/// A value served as is (a listing page): kept as its JSON, never serialised twice.
/// Profiling random pages showed JSON serialisation as the first user-space cost.
impl Cached for Bytes {
    type Loaded = ProductPage;
    fn from_l2(json: Vec<u8>) -> Option<Self> {
        Some(Bytes::from(json))
    }
    fn from_loaded(page: ProductPage) -> Result<(Self, Vec<u8>), AppError> {
        let json = serde_json::to_vec(&page).map_err(anyhow::Error::from)?;
        Ok((Bytes::from(json.clone()), json))
    }
}

async fn layered<K, V, F>(
    redis: &RedisStore,
    name: &'static str,
    l1: &Cache<K, V>,
    key: K,
    l2: L2,
    load: F,
) -> Result<V, AppError>
where
    K: Hash + Eq + Send + Sync + Clone + 'static,
    V: Cached,
    F: Future<Output = Result<V::Loaded, AppError>>,
{
    if let Some(hit) = l1.get(&key).await {
        count(name, "l1", "hit");
        return Ok(hit);
    }
    count(name, "l1", "miss");
    l1.try_get_with(key, async {
        let get = match &l2 {
            L2::Key(key, _) => redis::cmd("GET").arg(key).clone(),
            L2::Field(key, field, _) => redis::cmd("HGET").arg(key).arg(field).clone(),
        };
        let cached: Option<Vec<u8>> = redis.cmd(&get).await.ok().flatten();
        if let Some(value) = cached.and_then(V::from_l2) {
            count(name, "l2", "hit");
            return Ok(value);
        }
        count(name, "l2", "miss");
        let (value, bytes) = V::from_loaded(load.await?)?;
        {
            let mut pipe = redis::pipe();
            match &l2 {
                L2::Key(key, secs) => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(bytes)
                        .arg("EX")
                        .arg(*secs)
                        .ignore();
                }
                L2::Field(key, field, secs) => {
                    pipe.cmd("HSET").arg(key).arg(field).arg(bytes).ignore();
                    pipe.cmd("EXPIRE").arg(key).arg(*secs).arg("NX").ignore();
                }
            }
            let _ = redis.pipe::<()>(&pipe).await;
        }
        Ok::<_, AppError>(value)
    })
    .await
    .map_err(unshare)
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
        for c in [Changed::Product(42), Changed::Pages] {
            assert_eq!(Changed::decode(&c.encode()), Some(c));
        }
        assert_eq!(Changed::decode("product:x"), None);
    }
}
