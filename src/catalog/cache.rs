//! What the catalog keeps in this process besides the products themselves
//! ([`CatalogStore`]): answers rendered to the bytes they are sent as, with their ETag
//! ([`Tagged`]), and the ids recently found not to exist.
//!
//! - Listing pages: rendered from the store and the live figures, kept until a product on
//!   the page changes (its figures on the stock gate's feed, or an admin write). Each page
//!   has a generation, bumped by every such change; a rendered page carries the generation
//!   read before its render began, and is served only while that is still the page's: a
//!   change that crosses a render makes the render stale, never the cache.
//! - The best sellers: computed from the ranking's sorted sets, kept `TOP_TTL`.
//! - Unknown product ids, `MISS_TTL`, so that a client asking for ids that do not exist
//!   costs MySQL once per id and window; a product's creation ends its entry everywhere.
//!
//! Coherence: an admin write commits, then refreshes the product in this instance's store,
//! drops the rendered answers and publishes on `<prefix>events:invalidate`; every instance
//! listening there does the same. A listener that lost its subscription reloads the whole
//! catalog on reconnect (it may have missed messages). The write repeats the message
//! shortly after, for an instance that read the old row just before the commit (or from a
//! replica still behind: the repeat waits out the lag a replica is allowed).

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use axum::body::Bytes;
use moka::future::Cache;
use redis::PushKind;

use super::{domain::PAGE_SIZE, store::CatalogStore};
use crate::{
    error::AppError,
    http::caching::Tagged,
    redis_store::RedisStore,
    stock::{LiveChange, StockGate},
};

/// How old a listing page may be in an HTTP cache (its `max-age`): the service itself
/// answers with the figures a feed message behind Redis.
pub const PAGE_MAX_AGE_SECS: u64 = 1;
/// A rendered page unasked for this long is dropped (memory, not staleness: a change
/// invalidates it at once).
const PAGE_IDLE: Duration = Duration::from_secs(60);
pub const TOP_TTL: Duration = Duration::from_secs(2);
/// How long an unknown product id is answered 404 without asking MySQL.
const MISS_TTL: Duration = Duration::from_secs(2);
/// Bytes of rendered pages kept: every page of a 100,000-product catalog is ~12 MB.
const PAGE_BYTES: u64 = 32 * 1024 * 1024;
/// Unknown ids remembered (8 bytes and Moka's bookkeeping each).
const MISSES_KEPT: u64 = 100_000;
const CHANNEL: &str = "events:invalidate";

#[derive(Clone)]
pub struct CatalogCache {
    redis: RedisStore,
    stock: StockGate,
    /// The whole catalog in process, refreshed by the same messages.
    pub store: CatalogStore,
    pages: Cache<i64, Rendered>,
    generations: Arc<Generations>,
    top: Cache<i64, Tagged>,
    misses: Cache<i64, ()>,
    /// When a write's invalidation is repeated (past the staleness a load may bring back).
    repeat_after: Duration,
}

/// A page as sent, and the generation its page had when its render began.
#[derive(Clone)]
struct Rendered {
    generation: (u64, u64),
    tagged: Tagged,
}

/// Every page's generation (bumped when a product on it changes), and one for all of them
/// (bumped when any may have).
#[derive(Default)]
struct Generations {
    all: AtomicU64,
    pages: RwLock<Vec<AtomicU64>>,
}

impl Generations {
    fn of(&self, page: i64) -> (u64, u64) {
        let one = usize::try_from(page - 1)
            .ok()
            .and_then(|i| {
                let pages = self.pages.read().ok()?;
                pages.get(i).map(|g| g.load(Ordering::Acquire))
            })
            .unwrap_or(0);
        (self.all.load(Ordering::Acquire), one)
    }

    fn bump(&self, page: i64) {
        let Ok(i) = usize::try_from(page - 1) else {
            return;
        };
        let bumped = self
            .pages
            .read()
            .ok()
            .and_then(|pages| pages.get(i).map(|g| g.fetch_add(1, Ordering::AcqRel)));
        if bumped.is_some() {
            return;
        }
        if let Ok(mut pages) = self.pages.write() {
            if pages.len() <= i {
                pages.resize_with(i + 1, AtomicU64::default);
            }
            pages[i].fetch_add(1, Ordering::AcqRel);
        }
    }

    fn bump_all(&self) {
        self.all.fetch_add(1, Ordering::AcqRel);
    }
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
            pages: Cache::builder()
                .weigher(|_, r: &Rendered| u32::try_from(r.tagged.body.len()).unwrap_or(u32::MAX))
                .max_capacity(PAGE_BYTES)
                .time_to_idle(PAGE_IDLE)
                .build(),
            generations: Arc::default(),
            top: Cache::builder()
                .max_capacity(64)
                .time_to_live(TOP_TTL)
                .build(),
            misses: Cache::builder()
                .max_capacity(MISSES_KEPT)
                .time_to_live(MISS_TTL)
                .build(),
        }
    }

    /// A listing page, as the JSON to send and its tag: the one rendered last while no
    /// product on it has changed since, else rendered now.
    /// `render` makes the render's future only on a miss: a hit allocates nothing.
    pub async fn page<R, F>(&self, page: i64, render: R) -> Result<Tagged, AppError>
    where
        R: FnOnce() -> F,
        F: Future<Output = Result<Bytes, AppError>>,
    {
        let generation = self.generations.of(page);
        if let Some(hit) = self.pages.get(&page).await {
            if hit.generation == generation {
                count("page", "hit");
                return Ok(hit.tagged);
            }
        }
        count("page", "miss");
        let tagged = Tagged::new(render().await?);
        // A page past the last one is answered but not kept: each would be an entry of
        // its own, and there is no end to them.
        let last = self
            .store
            .read(|products| (products.len() as i64 + PAGE_SIZE - 1) / PAGE_SIZE)
            .unwrap_or(0)
            .max(1);
        if page <= last {
            let rendered = Rendered {
                generation,
                tagged: tagged.clone(),
            };
            self.pages.insert(page, rendered).await;
        }
        Ok(tagged)
    }

    /// How many rendered pages are kept now.
    pub async fn pages_kept(&self) -> u64 {
        self.pages.run_pending_tasks().await;
        self.pages.entry_count()
    }

    /// The best sellers of a window as JSON.
    pub async fn top<L, F>(&self, days: i64, load: L) -> Result<Tagged, AppError>
    where
        L: FnOnce() -> F,
        F: Future<Output = Result<Bytes, AppError>>,
    {
        if let Some(hit) = self.top.get(&days).await {
            count("top", "hit");
            return Ok(hit);
        }
        count("top", "miss");
        self.top
            .try_get_with(days, async { load().await.map(Tagged::new) })
            .await
            .map_err(unshare)
    }

    /// Whether `id` was looked for lately and did not exist.
    pub async fn known_missing(&self, id: i64) -> bool {
        self.misses.contains_key(&id)
    }

    pub async fn remember_missing(&self, id: i64) {
        self.misses.insert(id, ()).await;
    }

    /// After a write committed: refresh the product and drop what shows it, here and on
    /// every instance, now and once more shortly.
    pub async fn invalidate(&self, changed: Changed) {
        self.invalidate_once(changed).await;
        let again = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(again.repeat_after).await;
            again.invalidate_once(changed).await;
        });
    }

    async fn invalidate_once(&self, changed: Changed) {
        self.evict_local(changed).await;
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.redis.key(CHANNEL)).arg(changed.encode());
        if self.redis.cmd::<i64>(&publish).await.is_err() {
            tracing::warn!(
                ?changed,
                "invalidation not published; other instances catch up when their listener reconnects"
            );
        }
    }

    async fn evict_local(&self, changed: Changed) {
        let id = changed.product();
        if let Err(e) = self.store.refresh(id).await {
            tracing::warn!(product_id = id, error = %e, "product not reloaded; reloading the catalog");
            self.store.spawn_load();
        }
        self.misses.invalidate(&id).await;
        self.generations.bump_all();
        self.top.invalidate_all();
    }

    fn evict_all(&self) {
        self.misses.invalidate_all();
        self.generations.bump_all();
        self.top.invalidate_all();
    }

    /// The page that shows `product_id`, if the store has it.
    fn page_of(&self, product_id: i64) -> Option<i64> {
        self.store
            .read(|products| {
                products
                    .binary_search_by_key(&product_id, |p| p.id)
                    .ok()
                    .map(|i| i as i64 / PAGE_SIZE + 1)
            })
            .flatten()
    }

    /// Listens for other instances' invalidations, and for the stock gate's figure changes
    /// (which drop the rendered page showing the product), until the process ends.
    pub fn spawn_listener(&self) -> tokio::task::JoinHandle<()> {
        let pages = self.clone();
        tokio::spawn(async move {
            let mut changes = pages.stock.changes();
            loop {
                match changes.recv().await {
                    Ok(LiveChange::Product(id)) => match pages.page_of(id) {
                        Some(page) => pages.generations.bump(page),
                        None => pages.generations.bump_all(),
                    },
                    Ok(LiveChange::All)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        pages.generations.bump_all()
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let cache = self.clone();
        let channel = self.redis.key(CHANNEL);
        tokio::spawn(async move {
            // Every subscription after the first may have missed messages: drop what was
            // rendered and reload the catalog (the first time, the start-up load does).
            let mut subscribed_before = false;
            loop {
                match cache.redis.subscribe(std::slice::from_ref(&channel)).await {
                    Ok(mut pushes) => {
                        while let Some(push) = pushes.recv().await {
                            match push.kind {
                                PushKind::Message => {
                                    let payload = push.data.last().and_then(|v| {
                                        redis::from_redis_value::<String>(v.clone()).ok()
                                    });
                                    match payload.as_deref().and_then(Changed::decode) {
                                        Some(changed) => cache.evict_local(changed).await,
                                        None => cache.reload(),
                                    }
                                }
                                PushKind::Subscribe => {
                                    if std::mem::replace(&mut subscribed_before, true) {
                                        cache.reload();
                                    } else {
                                        cache.evict_all();
                                    }
                                }
                                PushKind::Disconnection => cache.evict_all(),
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

    /// Everything again: the rendered answers dropped, the catalog reloaded.
    fn reload(&self) {
        self.evict_all();
        self.store.spawn_load();
    }
}

fn count(cache: &'static str, result: &'static str) {
    metrics::counter!("cache_requests_total", "cache" => cache, "layer" => "l1", "result" => result)
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
