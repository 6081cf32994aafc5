//! The stock gate: available stock per product in Redis, reserved and released by Lua
//! scripts, so that a buyer who cannot be served is refused by Redis alone — or, once this
//! instance has heard that a product is sold out, from memory — and a sold-out product
//! absorbs a flash crowd without touching MySQL. An infrastructure adapter: it imports no
//! feature.
//!
//! MySQL stays the record: an order is written under the product's row lock, a payment's
//! stock check still decides, and Redis is rebuilt from MySQL whenever it lost a key. Every
//! product lives in one hash, `<prefix>{p<id>}`: `avail` (MySQL stock − reserved −
//! in-flight), `sold`, `r:<hold>` = `"q:deadline_ms:user"` for reservations whose order is
//! being written, `h:<hold>` = `"q:user"` for PENDING orders; beside it, in the same slot,
//! `<prefix>{p<id>}:x`, the short-lived tombstones of reservations whose order ended before
//! they were settled (a sorted set that prunes itself and expires when idle). A product with a
//! per-customer limit (SPEC F2) also has `limit` and `u:<user>` = the units the user holds
//! (PENDING, PAID, in flight), checked and counted by the same script that takes the units.
//!
//! The order of a placement: reserve in Redis (refusal ends here) → write the order in
//! MySQL with its hold token → settle the reservation (or give it back if MySQL refused).
//! A crash between the first two leaves an in-flight reservation that the reconciler drops
//! once its deadline passes; every other drift is repaired by [`StockGate::sync`], which
//! holds the products' shared row locks for one pipelined round trip while it rewrites
//! their hashes, so no order of those products commits halfway through. A product whose
//! bookkeeping call failed (a Redis timeout), or found the key missing, is re-synced within
//! a second, not at the next full reconcile.
//!
//!
//! The module is split by job: [`gate`] the calls a request makes (reserve, settle,
//! finish), [`feed`] the live figures in memory and the subscription that keeps them,
//! [`reconcile`] everything that brings Redis back to MySQL (rebuilds, repairs, reconcile).

pub mod domain;
mod feed;
mod gate;
pub mod live;
mod reconcile;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::MySqlPool;

pub use domain::{Finish, Gate, Hold, Live};
pub use live::LiveChange;
use live::LiveFigures;

use crate::{
    error::AppError,
    redis_store::{KvError, RedisStore},
};

/// Product → the holds that ended in MySQL while Redis was not told.
type Dirty = HashMap<i64, Vec<String>>;

struct Scripts {
    reserve: redis::Script,
    settle: redis::Script,
    finish: redis::Script,
    sync: redis::Script,
}

#[derive(Clone)]
pub struct StockGate {
    /// The lane its calls take: the request lane, or the background one
    /// ([`StockGate::background`]).
    redis: RedisStore,
    shared: Arc<Shared>,
}

/// What every copy of a gate shares (one `Arc`: a request's copy costs one increment).
pub struct Shared {
    db: MySqlPool,
    enabled: bool,
    hold_window: Duration,
    scripts: Scripts,
    /// One rebuild per product at a time in this instance; concurrent misses wait for it.
    rebuilds: moka::future::Cache<i64, ()>,
    /// Products the gate said were sold out, answered from memory until the feed shows
    /// units again or the entry's lifetime ends.
    sold_out: Option<moka::future::Cache<i64, ()>>,
    /// The products' figures in memory, fed by the scripts.
    live: LiveFigures,
    /// Reads of figures this instance had to ask Redis for (not in memory).
    live_asked: std::sync::atomic::AtomicU64,
    /// Products whose Redis bookkeeping failed, to re-sync from MySQL, with the holds whose
    /// end (paid, cancelled, expired, refused) Redis may not have heard of.
    dirty: Mutex<Dirty>,
    /// Keys this instance rebuilt because a buyer found them missing.
    rebuilt: std::sync::atomic::AtomicU64,
    /// Buyers waiting on reservations in flight ([`StockGate::reserve_when_settled`]).
    waiting: std::sync::atomic::AtomicUsize,
}

impl std::ops::Deref for StockGate {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl StockGate {
    /// `enabled = false` (STOCK_GATE=mysql) leaves every decision to MySQL;
    /// `sold_out_memory` zero turns the local sold-out answer off.
    pub fn new(
        redis: RedisStore,
        db: MySqlPool,
        enabled: bool,
        hold_window: Duration,
        sold_out_memory: Duration,
    ) -> Self {
        Self {
            redis,
            shared: Arc::new(Shared {
                db,
                enabled,
                hold_window,
                scripts: Scripts {
                    reserve: with_feed(include_str!("lua/reserve.lua")),
                    settle: with_feed(include_str!("lua/settle.lua")),
                    finish: with_feed(include_str!("lua/finish.lua")),
                    sync: with_feed(include_str!("lua/sync.lua")),
                },
                rebuilds: moka::future::Cache::builder()
                    .max_capacity(10_000)
                    .time_to_live(Duration::from_millis(200))
                    .build(),
                sold_out: (!sold_out_memory.is_zero()).then(|| {
                    moka::future::Cache::builder()
                        .max_capacity(100_000)
                        .time_to_live(sold_out_memory)
                        .build()
                }),
                dirty: Mutex::default(),
                rebuilt: Default::default(),
                waiting: Default::default(),
                live: LiveFigures::default(),
                live_asked: Default::default(),
            }),
        }
    }

    /// How many keys this instance rebuilt for a buyer who found them missing, since start.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilt.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The same gate on Redis's background lane, for work no request waits for (the
    /// sweeper's releases).
    pub fn background(&self) -> Self {
        Self {
            redis: self.redis.background(),
            ..self.clone()
        }
    }

    /// The key of a product's hash.
    pub fn product_key(&self, product_id: i64) -> String {
        self.redis.key(&domain::product_tag(product_id))
    }

    /// The key of a product's tombstones: holds ended before they were settled, scored by
    /// when they stop mattering (in the product's slot).
    pub fn graves_key(&self, product_id: i64) -> String {
        format!("{}:x", self.product_key(product_id))
    }
}

/// A script with the feed's prelude (`lua/live.lua`) before it.
fn with_feed(script: &str) -> redis::Script {
    redis::Script::new(&format!("{}\n{script}", include_str!("lua/live.lua")))
}

impl From<KvError> for AppError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Unavailable => AppError::DependencyUnavailable("redis".into()),
            KvError::Command(e) => AppError::Internal(e.into()),
        }
    }
}
