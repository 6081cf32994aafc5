//! Bringing Redis back to MySQL: a product's key rebuilt on a miss or before a sale,
//! the repairs of products whose bookkeeping failed, and the periodic reconcile. A sync
//! holds the products' shared row locks for one pipelined round trip while it rewrites
//! their hashes, so no order of those products commits halfway through.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::TryStreamExt;
use sqlx::{MySqlConnection, QueryBuilder};

use super::{
    domain::{product_of_key, Hold},
    Dirty, StockGate,
};
use crate::{db, error::AppError};

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

impl StockGate {
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

    pub(super) fn mark_dirty(&self, product_id: i64) {
        self.mark_ended(product_id, &[]);
    }

    /// Marks the product for a re-sync that also drops `holds`' reservations: their orders
    /// have ended in MySQL, and a reservation Redis still has for one of them (its settle
    /// failed as well) would otherwise count as in flight until its deadline.
    pub(super) fn mark_ended(&self, product_id: i64, holds: &[Hold]) {
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
    pub(super) async fn rebuild(&self, product_id: i64) -> Result<(), Arc<AppError>> {
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
