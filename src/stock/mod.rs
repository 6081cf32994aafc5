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
//! being written, `h:<hold>` = `"q:user"` for PENDING orders, and short-lived tombstones
//! `x:<hold>` for reservations that ended before they were settled. A product with a
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
//! Every script that changes a product's figures also publishes them ([`live`]): each
//! instance keeps them in memory, so reading a product's stock costs no round trip, and a
//! sold-out product's "units are back" reaches every instance the same way.

pub mod domain;
pub mod live;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::TryStreamExt;
use redis::PushKind;
use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

use domain::{product_of_key, LiveMessage, ReserveReply};
pub use domain::{Finish, Gate, Hold, Live};
pub use live::LiveChange;
use live::LiveFigures;

use crate::{
    db,
    error::AppError,
    redis_store::{KvError, RedisStore},
};

/// Products rewritten per reconciliation transaction.
const SYNC_BATCH: usize = 100;
/// Held reservations one reconcile batch may rewrite (a script of ~10,000 takes Redis ~20 ms).
const SYNC_HOLDS: i64 = 10_000;
/// A product's PENDING orders are sent to a sync in chunks of this many once they pass it
/// (see [`Pending`]).
const SYNC_CHUNK: usize = 10_000;
/// How long a staging hash outlives a sync that died before using it.
const STAGED_FOR: Duration = Duration::from_secs(60);
/// How often products whose Redis bookkeeping failed are re-synced.
const REPAIR_EVERY: Duration = Duration::from_millis(200);
/// The channel of the figures the scripts publish (`lua/live.lua` names it the same).
const LIVE: &str = "events:live";

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
                live: LiveFigures::default(),
                live_asked: Default::default(),
            }),
        }
    }

    /// How many keys this instance rebuilt for a buyer who found them missing, since start.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilt.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Builds the keys of `ids` that Redis lacks (sales about to start), so that no buyer
    /// waits on a rebuild; returns how many were built.
    pub async fn prewarm(&self, ids: &[i64]) -> Result<usize, AppError> {
        if !self.enabled || ids.is_empty() {
            return Ok(0);
        }
        let redis = self.redis.background();
        let mut missing = Vec::new();
        for id in ids {
            let mut exists = redis::cmd("EXISTS");
            exists.arg(self.product_key(*id));
            if redis.cmd::<i64>(&exists).await? == 0 {
                missing.push(*id);
            }
        }
        if missing.is_empty() {
            return Ok(0);
        }
        let built = self.sync(&missing).await?;
        metrics::counter!("stock_prewarms_total").increment(built as u64);
        tracing::info!(products = ?missing, "pre-warmed the stock gate of upcoming sales");
        Ok(built)
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

    /// Tries to take `quantity` units for `hold`, ordered by `user_id`.
    pub async fn reserve(&self, product_id: i64, user_id: i64, quantity: i64, hold: &Hold) -> Gate {
        if !self.enabled {
            return Gate::Bypass;
        }
        if let Some(memory) = &self.sold_out {
            if memory.contains_key(&product_id) {
                return outcome(Gate::Refused { available: 0 }, "sold_out_local");
            }
        }
        // The Redis call and the rebuild are boxed: their futures are ~14 KB, and inline
        // they would make every caller's future (the order handler's included) that big,
        // copied at each step even when the sold-out memory answers.
        for attempt in 0..2 {
            let reply = Box::pin(
                self.redis.script::<Vec<i64>>(
                    self.scripts
                        .reserve
                        .key(self.product_key(product_id))
                        .arg(hold.as_str())
                        .arg(quantity)
                        .arg(self.hold_window.as_millis() as u64)
                        .arg(user_id),
                ),
            )
            .await;
            if let Ok(reply) = &reply {
                self.learn(product_id, reply, 2);
            }
            match reply.map(ReserveReply::parse) {
                Ok(ReserveReply::Reserved) => return outcome(Gate::Reserved, "reserved"),
                Ok(ReserveReply::Refused { available }) => {
                    if available <= 0 {
                        if let Some(memory) = &self.sold_out {
                            memory.insert(product_id, ()).await;
                        }
                    }
                    return outcome(
                        Gate::Refused {
                            available: available.max(0),
                        },
                        "sold_out",
                    );
                }
                Ok(ReserveReply::LimitReached { limit, held }) => {
                    return outcome(Gate::LimitReached { limit, held }, "limit_reached");
                }
                Ok(ReserveReply::Missing) => {
                    if attempt == 0 && Box::pin(self.rebuild(product_id)).await.is_ok() {
                        continue;
                    }
                    // The rebuild failed, or the key was lost again right after it (Redis
                    // flushed meanwhile): MySQL decides this one, and the repairs build the
                    // key once Redis and MySQL answer, so a sale that ends on the MySQL
                    // path does not leave the product without a counter.
                    self.mark_dirty(product_id);
                    break;
                }
                _ => break,
            }
        }
        outcome(Gate::Bypass, "mysql_fallback")
    }

    /// After orders committed as PENDING: their reservations (hold, units, user) are now
    /// held by them.
    pub async fn settle(&self, product_id: i64, holds: &[(Hold, i64, i64)]) {
        if !self.enabled || holds.is_empty() {
            return;
        }
        let mut call = self.scripts.settle.key(self.product_key(product_id));
        for (hold, quantity, user) in holds {
            call.arg(hold.as_str()).arg(*quantity).arg(*user);
        }
        let reply = self.redis.script::<Vec<i64>>(&call).await;
        if let Ok(reply) = &reply {
            self.learn(product_id, reply, 2);
        }
        match reply.as_deref() {
            // Units taken now that Redis had not reserved: a negative count means Redis
            // had drifted below MySQL; bring the product back from MySQL. No key: MySQL
            // changed without Redis; build it, so every instance hears the new figures.
            Ok([taken, avail, ..]) if *avail < 0 || *taken < 0 => self.mark_dirty(product_id),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(product_id, error = %e, "settling reservations failed; re-syncing the product");
                self.mark_dirty(product_id);
            }
        }
    }

    /// Ends reservations after MySQL committed their end (or refused their orders).
    /// Idempotent per hold.
    pub async fn finish(&self, product_id: i64, holds: &[Hold], how: Finish) {
        if !self.enabled || holds.is_empty() {
            return;
        }
        let mut call = self.scripts.finish.key(self.product_key(product_id));
        call.arg(how.field())
            .arg(self.hold_window.as_millis() as u64);
        for hold in holds {
            call.arg(hold.as_str());
        }
        let reply = self.redis.script::<Vec<i64>>(&call).await;
        if let Ok(reply) = &reply {
            self.learn(product_id, reply, 2);
        }
        match reply.as_deref() {
            // No key: MySQL changed without Redis; build it, so every instance hears the
            // new figures.
            Ok([0, -1, ..]) => self.mark_dirty(product_id),
            Ok([0, ..]) => {}
            Ok(_) => {
                metrics::counter!("stock_reservations_total", "outcome" => how.label())
                    .increment(holds.len() as u64);
                if how.returns_units() {
                    // This instance at once; the others (and this one again) by the feed.
                    self.forget_sold_out(product_id).await;
                }
            }
            Err(e) => {
                tracing::debug!(product_id, error = %e, "finishing reservations failed; re-syncing the product");
                self.mark_ended(product_id, holds);
            }
        }
    }

    /// Live `(available, sold)`: from memory when the feed has brought them (or a read
    /// before), else from the product's Redis hash (kept for the next read).
    ///
    /// A read does not build a missing key (a 100,000-product catalog browsed at random
    /// would turn every first view into a locking MySQL read): a product without a counter
    /// has had no change since Redis last lost it, so its row as loaded is current.
    pub async fn live(&self, product_id: i64) -> Live {
        self.live_many(&[product_id])
            .await
            .pop()
            .unwrap_or(Live::Unavailable)
    }

    /// [`Self::live`] of several products: from memory, and one round trip (pipelined on
    /// the connection) for the ones not there.
    pub async fn live_many(&self, ids: &[i64]) -> Vec<Live> {
        if !self.enabled {
            return vec![Live::Unavailable; ids.len()];
        }
        let mut found = self.live.get_many(ids);
        let hits = found.iter().filter(|l| l.is_some()).count();
        count_live("hit", hits);
        count_live("miss", ids.len() - hits);
        if hits == ids.len() {
            return found.into_iter().flatten().collect();
        }
        let epoch = self.live.epoch();
        self.live_asked.fetch_add(
            (ids.len() - hits) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let reads = ids
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(id, _)| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.product_key(*id))
                    .arg("avail")
                    .arg("sold")
                    .arg("v");
                async move { (*id, self.redis.cmd::<domain::Figures>(&cmd).await) }
            });
        let read: HashMap<i64, Live> = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .map(|(id, reply)| match reply {
                Ok(figures) => {
                    let (live, version) = Live::read(figures);
                    self.live.offer(id, live, version, epoch);
                    (id, live)
                }
                Err(_) => (id, Live::Unavailable),
            })
            .collect();
        for (slot, id) in found.iter_mut().zip(ids) {
            if slot.is_none() {
                *slot = read.get(id).copied();
            }
        }
        found
            .into_iter()
            .map(|l| l.unwrap_or(Live::Unavailable))
            .collect()
    }

    /// Products whose figures change, as the feed brings them (pages that show them).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<LiveChange> {
        self.live.changes()
    }

    /// What a script of this instance published (appended to its reply after its `base`
    /// own fields), known here at once rather than when the feed brings it back.
    fn learn(&self, product_id: i64, reply: &[i64], base: usize) {
        if let Some(m) = LiveMessage::appended(product_id, reply, base) {
            self.live.apply(m.product_id, m.avail, m.sold, m.version);
        }
    }

    async fn forget_sold_out(&self, product_id: i64) {
        if let Some(memory) = &self.sold_out {
            memory.invalidate(&product_id).await;
        }
    }

    /// Applies the scripts' messages to the figures in memory until the process ends,
    /// resubscribing after a lost connection (and starting from empty then: messages may
    /// have been missed). A message with units available also ends a sold-out answer.
    pub fn spawn_listener(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.enabled {
            return None;
        }
        let gate = self.clone();
        let channel = gate.redis.key(LIVE);
        Some(tokio::spawn(async move {
            loop {
                match gate.redis.subscribe(std::slice::from_ref(&channel)).await {
                    Ok(mut pushes) => {
                        while let Some(push) = pushes.recv().await {
                            match push.kind {
                                PushKind::Message => gate.on_message(&push.data).await,
                                PushKind::Subscribe => gate.on_feed(true),
                                PushKind::Disconnection => gate.on_feed(false),
                                _ => {}
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "live stock listener not subscribed"),
                }
                gate.on_feed(false);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }

    async fn on_message(&self, data: &[redis::Value]) {
        let text = data
            .last()
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
        match text.as_deref().and_then(LiveMessage::parse) {
            Some(m) => {
                metrics::counter!("stock_live_messages_total").increment(1);
                self.live.apply(m.product_id, m.avail, m.sold, m.version);
                if m.avail > 0 {
                    self.forget_sold_out(m.product_id).await;
                }
            }
            None => self.on_feed(true),
        }
    }

    /// The feed (re)started or stopped: what was in memory may be stale either way.
    fn on_feed(&self, up: bool) {
        self.live.reset(up);
        if let Some(memory) = &self.sold_out {
            memory.invalidate_all();
        }
        metrics::gauge!("stock_live_feed_up").set(if up { 1.0 } else { 0.0 });
    }

    /// How many products' figures this instance holds in memory, and how many reads of
    /// figures it has had to ask Redis for since start.
    pub fn live_counts(&self) -> (usize, u64) {
        (
            self.live.products(),
            self.live_asked.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Re-syncs the product from MySQL as soon as it answers (the repairs, every 200 ms),
    /// dropping the in-flight reservations of `holds` at once unless their orders exist:
    /// for a batch whose commit may or may not have happened.
    pub fn resync_ended(&self, product_id: i64, holds: &[Hold]) {
        self.mark_ended(product_id, holds);
    }

    /// Re-syncs the product from MySQL as soon as it answers (the repairs, every 200 ms):
    /// for a change committed in MySQL whose Redis follow-up failed.
    pub fn resync_soon(&self, product_id: i64) {
        self.mark_dirty(product_id);
    }

    fn mark_dirty(&self, product_id: i64) {
        self.mark_ended(product_id, &[]);
    }

    /// Marks the product for a re-sync that also drops `holds`' reservations: their orders
    /// have ended in MySQL, and a reservation Redis still has for one of them (its settle
    /// failed as well) would otherwise count as in flight until its deadline.
    fn mark_ended(&self, product_id: i64, holds: &[Hold]) {
        if let Ok(mut dirty) = self.dirty.lock() {
            dirty
                .entry(product_id)
                .or_default()
                .extend(holds.iter().map(|h| h.as_str().to_string()));
        }
    }

    /// Re-syncs the products whose bookkeeping failed, every `REPAIR_EVERY`, until the
    /// process ends; a product stays marked until its sync succeeds.
    pub fn spawn_repairs(&self) -> tokio::task::JoinHandle<()> {
        let gate = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REPAIR_EVERY).await;
                let products: Vec<(i64, Vec<String>)> = match gate.dirty.lock() {
                    Ok(mut dirty) => dirty.drain().collect(),
                    Err(_) => continue,
                };
                for batch in products.chunks(SYNC_BATCH) {
                    let ended: Dirty = batch.iter().cloned().collect();
                    let ids: Vec<i64> = ended.keys().copied().collect();
                    if let Err(e) = gate.sync_ending(&ids, &ended).await {
                        tracing::debug!(error = %e, "re-syncing products failed; trying again");
                        if let Ok(mut dirty) = gate.dirty.lock() {
                            for (id, holds) in ended {
                                dirty.entry(id).or_default().extend(holds);
                            }
                        }
                    }
                }
            }
        })
    }

    /// Builds one product's key from MySQL, once at a time per product in this instance.
    async fn rebuild(&self, product_id: i64) -> Result<(), Arc<AppError>> {
        self.rebuilds
            .try_get_with(product_id, async {
                self.sync(&[product_id]).await?;
                metrics::counter!("stock_rebuilds_total").increment(1);
                self.rebuilt
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok::<_, AppError>(())
            })
            .await
    }

    /// Rewrites the hashes of `ids` from MySQL under the products' shared row locks;
    /// returns how many products exist.
    pub async fn sync(&self, ids: &[i64]) -> Result<usize, AppError> {
        self.sync_ending(ids, &Dirty::new()).await
    }

    /// [`Self::sync`], also dropping the reservations of `ended` holds.
    async fn sync_ending(&self, ids: &[i64], ended: &Dirty) -> Result<usize, AppError> {
        if ids.is_empty() || !self.enabled {
            return Ok(0);
        }
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let gate = self.clone();
        let ended = Arc::new(ended.clone());
        db::transact(&self.db, move |tx| {
            let (gate, ids, ended) = (gate.clone(), ids.clone(), ended.clone());
            Box::pin(async move { gate.sync_in(tx, &ids, &ended).await })
        })
        .await
    }

    /// Rewrites the hashes (the scripts publish what changed); returns how many products
    /// exist.
    async fn sync_in(
        &self,
        tx: &mut MySqlConnection,
        ids: &[i64],
        ended: &Dirty,
    ) -> Result<usize, AppError> {
        let mut products = QueryBuilder::new(
            "SELECT id, stock - reserved, sold, per_user_limit FROM products WHERE id IN (",
        );
        push_ids(&mut products, ids);
        products.push(") ORDER BY id LOCK IN SHARE MODE");
        let products: Vec<(i64, i64, i64, Option<i64>)> =
            products.build_query_as().fetch_all(&mut *tx).await?;
        if products.is_empty() {
            return Ok(0);
        }
        let mut pending = QueryBuilder::new(
            "SELECT product_id, hold, quantity, user_id FROM orders WHERE status = 'PENDING' AND product_id IN (",
        );
        push_ids(&mut pending, ids);
        pending.push(")");
        // Streamed: a product's orders past SYNC_CHUNK go to Redis in chunks as they
        // arrive (staged), so a product of 100,000 PENDING orders costs this process one
        // chunk of memory, not the whole list three times over (rows, arguments, command).
        let mut by_product: HashMap<i64, Pending> = HashMap::new();
        {
            let mut rows = pending
                .build_query_as::<(i64, String, i64, i64)>()
                .fetch(&mut *tx);
            while let Some((product_id, hold, quantity, user)) = rows.try_next().await? {
                let entry = by_product.entry(product_id).or_default();
                entry.rows.push((hold, quantity, user));
                if entry.rows.len() >= SYNC_CHUNK {
                    self.stage(product_id, entry).await?;
                }
            }
        }
        for (product_id, entry) in by_product.iter_mut() {
            if entry.staged.is_some() && !entry.rows.is_empty() {
                self.stage(*product_id, entry).await?;
            }
        }
        // Under a per-customer limit the PAID units count too, per user.
        let limited: Vec<i64> = products
            .iter()
            .filter(|p| p.3.is_some())
            .map(|p| p.0)
            .collect();
        let mut paid: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        if !limited.is_empty() {
            let mut q = QueryBuilder::new(
                "SELECT product_id, user_id, CAST(SUM(quantity) AS SIGNED) FROM orders \
                 WHERE status = 'PAID' AND product_id IN (",
            );
            push_ids(&mut q, &limited);
            q.push(") GROUP BY product_id, user_id");
            let rows: Vec<(i64, i64, i64)> = q.build_query_as().fetch_all(&mut *tx).await?;
            for (product_id, user, units) in rows {
                paid.entry(product_id).or_default().push((user, units));
            }
        }
        let calls: Vec<_> = products
            .iter()
            .map(|(id, avail, sold, limit)| {
                let mut call = self.scripts.sync.key(self.product_key(*id));
                let ended = ended.get(id).map(Vec::as_slice).unwrap_or_default();
                call.arg(avail)
                    .arg(sold)
                    .arg(limit.map(|l| l.to_string()).unwrap_or_default())
                    .arg(ended.len());
                for hold in ended {
                    call.arg(hold);
                }
                match by_product.get(id) {
                    // -1: the script reads them from the staged hash (KEYS[2]).
                    Some(Pending {
                        staged: Some(staged),
                        ..
                    }) => {
                        call.key(staged).arg(-1);
                    }
                    pending => {
                        let rows = pending.map(|p| p.rows.as_slice()).unwrap_or_default();
                        call.arg(rows.len());
                        for (hold, quantity, user) in rows {
                            call.arg(hold).arg(quantity).arg(user);
                        }
                    }
                }
                if limit.is_some() {
                    for (user, units) in paid.get(id).into_iter().flatten() {
                        call.arg(user).arg(units);
                    }
                }
                call
            })
            .collect();
        // Every product's script in one pipelined round trip, while the locks are held.
        let replies: Vec<Vec<i64>> = self.redis.background().scripts(&calls).await?;
        metrics::counter!("stock_syncs_total").increment(products.len() as u64);
        for ((id, ..), reply) in products.iter().zip(replies) {
            self.learn(*id, &reply, 2);
            let (before, after) = match reply.as_slice() {
                [before, after, ..] => (*before, *after),
                _ => continue,
            };
            if before >= 0 && before != after {
                metrics::counter!("stock_drift_repaired_total").increment(1);
                tracing::info!(
                    product_id = id,
                    before,
                    after,
                    "repaired available stock in Redis"
                );
            }
        }
        Ok(products.len())
    }

    /// Writes a product's PENDING orders gathered so far into its staging hash (in the
    /// product's slot, named once per sync so two instances syncing the same product never
    /// share one; it expires on its own if the sync dies before its script consumes it).
    async fn stage(&self, product_id: i64, pending: &mut Pending) -> Result<(), AppError> {
        let key = pending
            .staged
            .get_or_insert_with(|| {
                format!(
                    "{}:sync:{}",
                    self.product_key(product_id),
                    Hold::new().as_str()
                )
            })
            .clone();
        let mut hset = redis::cmd("HSET");
        hset.arg(&key);
        for (hold, quantity, user) in pending.rows.drain(..) {
            hset.arg(hold).arg(format!("{quantity}:{user}"));
        }
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&key).arg(STAGED_FOR.as_millis() as u64);
        let _: Vec<i64> = self.redis.background().cmds(&[hset, expire]).await?;
        Ok(())
    }

    /// Repairs every product hash present in Redis (start-up, every interval, and when
    /// Redis comes back), on every master of a cluster, and builds the hash of every
    /// product with PENDING orders: their holds must be in Redis for a cancel or an expiry
    /// to give the units back there, and such a product may have lost its key while every
    /// order went to MySQL alone (Redis timing out, the process killed before its repairs).
    /// Other missing keys need nothing: they are built on first use.
    pub async fn reconcile(&self) -> Result<usize, AppError> {
        if !self.enabled {
            return Ok(0);
        }
        let redis = self.redis.background();
        let keys = redis.scan("{p*}").await?;
        let mut ids: Vec<i64> = keys
            .iter()
            .filter_map(|k| product_of_key(redis.prefix(), k))
            .collect();
        let holding: Vec<i64> =
            sqlx::query_scalar("SELECT DISTINCT product_id FROM orders WHERE status = 'PENDING'")
                .fetch_all(&self.db)
                .await?;
        ids.extend(holding);
        ids.sort_unstable();
        ids.dedup();
        let mut drifted = Vec::new();
        for batch in ids.chunks(SYNC_BATCH) {
            drifted.extend(self.disagreeing(batch).await?);
        }
        // Synced in batches of at most SYNC_BATCH products and SYNC_HOLDS held reservations:
        // a batch holds its products' locks for one round trip, and Redis runs its scripts
        // back to back, every other call waiting (a product past SYNC_HOLDS goes alone).
        let mut repaired = 0;
        let mut batch: Vec<i64> = Vec::new();
        let mut holds = 0;
        for (id, pending) in drifted {
            if !batch.is_empty() && (batch.len() == SYNC_BATCH || holds + pending > SYNC_HOLDS) {
                repaired += self.sync(&batch).await?;
                batch.clear();
                holds = 0;
            }
            batch.push(id);
            holds += pending;
        }
        repaired += self.sync(&batch).await?;
        Ok(repaired)
    }

    /// Of `ids`, the products whose hash may disagree with MySQL, told from their figures
    /// and counts alone (one `HMGET` each, no hash read whole): a missing key, other
    /// figures, another number of held reservations, a reservation in flight (whose
    /// deadline only a full sync can check), or another limit. A product of tens of
    /// thousands of PENDING orders that agrees costs Redis microseconds, not the tens of
    /// milliseconds of a sync that would stall every other call meanwhile.
    /// Returns them with their number of PENDING orders (distinct holds: one hash field
    /// each).
    async fn disagreeing(&self, ids: &[i64]) -> Result<Vec<(i64, i64)>, AppError> {
        let mut query = QueryBuilder::new(
            "SELECT p.id, p.stock - p.reserved, p.sold, p.per_user_limit, \
             (SELECT COUNT(DISTINCT o.hold) FROM orders o WHERE o.product_id = p.id AND o.status = 'PENDING') \
             FROM products p WHERE p.id IN (",
        );
        push_ids(&mut query, ids);
        query.push(")");
        let mysql: Vec<(i64, i64, i64, Option<i64>, i64)> =
            query.build_query_as().fetch_all(&self.db).await?;
        let reads: Vec<redis::Cmd> = mysql
            .iter()
            .map(|(id, ..)| {
                let mut hmget = redis::cmd("HMGET");
                hmget
                    .arg(self.product_key(*id))
                    .arg(&["avail", "sold", "nh", "nr", "limit"]);
                hmget
            })
            .collect();
        let redis: Vec<Vec<Option<i64>>> = self.redis.background().cmds(&reads).await?;
        Ok(mysql
            .iter()
            .zip(redis)
            .filter(|((_, avail, sold, limit, pending), hash)| {
                hash.as_slice() != [Some(*avail), Some(*sold), Some(*pending), Some(0), *limit]
            })
            .map(|((id, _, _, _, pending), _)| (*id, *pending))
            .collect())
    }
}

/// One product's PENDING orders for a sync: (hold, quantity, user) in the script's
/// arguments while they are few; past [`SYNC_CHUNK`], in a staging hash the script reads
/// (`staged`), `rows` then holding only the chunk not yet written.
#[derive(Default)]
struct Pending {
    rows: Vec<(String, i64, i64)>,
    staged: Option<String>,
}

fn push_ids(query: &mut QueryBuilder<'_, sqlx::MySql>, ids: &[i64]) {
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
}

/// A script with the feed's prelude (`lua/live.lua`) before it.
fn with_feed(script: &str) -> redis::Script {
    redis::Script::new(&format!("{}\n{script}", include_str!("lua/live.lua")))
}

fn count_live(result: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("cache_requests_total", "cache" => "stock", "layer" => "memory", "result" => result)
            .increment(n as u64);
    }
}

fn outcome(gate: Gate, label: &'static str) -> Gate {
    metrics::counter!("stock_reservations_total", "outcome" => label).increment(1);
    gate
}

impl From<KvError> for AppError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Unavailable => AppError::DependencyUnavailable("redis".into()),
            KvError::Command(e) => AppError::Internal(e.into()),
        }
    }
}
