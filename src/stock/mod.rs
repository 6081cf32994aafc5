//! The stock gate: available stock per product in Redis, reserved and released by Lua
//! scripts, so that a buyer who cannot be served is refused by Redis alone and a sold-out
//! product absorbs a flash crowd without touching MySQL.
//!
//! MySQL stays the record: an order is written under the product's row lock, a payment's
//! conditional stock `UPDATE` still decides, and Redis is rebuilt from MySQL whenever it
//! lost a key. Every product lives in one hash, `<prefix>{p<id>}`:
//! `avail` (MySQL stock − reserved − in-flight), `sold`, `r:<hold>` = `"q:deadline_ms"` for
//! reservations whose order is being written, `h:<hold>` = `q` for PENDING orders, and
//! short-lived tombstones `x:<hold>` for reservations that ended before they were settled.
//!
//! The order of a placement: reserve in Redis (refusal ends here) → write the order in
//! MySQL with its hold token → settle the reservation (or give it back if MySQL refused).
//! A crash between the first two leaves an in-flight reservation that the reconciler drops
//! once its deadline passes; every other drift is repaired by [`StockGate::sync`], which
//! holds the products' shared row locks while it rewrites their hashes, so no order of
//! those products commits halfway through.

pub mod domain;

use std::{collections::HashMap, sync::Arc, time::Duration};

use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

use domain::{product_of_key, ReserveReply};
pub use domain::{Finish, Gate, Hold};

use crate::{
    db,
    error::AppError,
    redis_store::{KvError, RedisStore},
};

/// Products rewritten per reconciliation transaction.
const SYNC_BATCH: usize = 100;
/// Keys asked for per `SCAN` step.
const SCAN_COUNT: usize = 1000;

struct Scripts {
    reserve: redis::Script,
    settle: redis::Script,
    finish: redis::Script,
    sync: redis::Script,
}

#[derive(Clone)]
pub struct StockGate {
    redis: RedisStore,
    db: MySqlPool,
    enabled: bool,
    hold_window: Duration,
    scripts: Arc<Scripts>,
    /// One rebuild per product at a time in this instance; concurrent misses wait for it.
    rebuilds: moka::future::Cache<i64, ()>,
}

impl StockGate {
    /// `enabled = false` (STOCK_GATE=mysql) leaves every decision to MySQL.
    pub fn new(redis: RedisStore, db: MySqlPool, enabled: bool, hold_window: Duration) -> Self {
        Self {
            redis,
            db,
            enabled,
            hold_window,
            scripts: Arc::new(Scripts {
                reserve: redis::Script::new(include_str!("lua/reserve.lua")),
                settle: redis::Script::new(include_str!("lua/settle.lua")),
                finish: redis::Script::new(include_str!("lua/finish.lua")),
                sync: redis::Script::new(include_str!("lua/sync.lua")),
            }),
            rebuilds: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_millis(200))
                .build(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How long a placement may take between reserving and writing its order.
    pub fn hold_window(&self) -> Duration {
        self.hold_window
    }

    fn key(&self, product_id: i64) -> String {
        self.redis.key(&format!("{{p{product_id}}}"))
    }

    /// Tries to take `quantity` units for `hold`.
    pub async fn reserve(&self, product_id: i64, quantity: i64, hold: &Hold) -> Gate {
        if !self.enabled {
            return Gate::Bypass;
        }
        for attempt in 0..2 {
            let reply = self
                .redis
                .script::<(i64, i64)>(
                    self.scripts
                        .reserve
                        .key(self.key(product_id))
                        .arg(hold.as_str())
                        .arg(quantity)
                        .arg(self.hold_window.as_millis() as u64),
                )
                .await
                .map(ReserveReply::parse);
            match reply {
                Ok(ReserveReply::Reserved) => return outcome(Gate::Reserved, "reserved"),
                Ok(ReserveReply::Refused { available }) => {
                    return outcome(Gate::Refused { available }, "sold_out")
                }
                Ok(ReserveReply::Missing) if attempt == 0 => {
                    if self.rebuild(product_id).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        outcome(Gate::Bypass, "mysql_fallback")
    }

    /// After the order committed as PENDING: the reservation is now held by it.
    pub async fn settle(&self, product_id: i64, hold: &Hold, quantity: i64) {
        if !self.enabled {
            return;
        }
        let settled = self
            .redis
            .script::<i64>(
                self.scripts
                    .settle
                    .key(self.key(product_id))
                    .arg(hold.as_str())
                    .arg(quantity),
            )
            .await;
        if let Err(e) = settled {
            tracing::debug!(product_id, error = %e, "settling a reservation failed; the reconciler will");
        }
    }

    /// Ends a reservation after MySQL committed its end (or refused its order). Idempotent.
    pub async fn finish(&self, product_id: i64, hold: &Hold, how: Finish) {
        if !self.enabled {
            return;
        }
        let moved = self
            .redis
            .script::<i64>(
                self.scripts
                    .finish
                    .key(self.key(product_id))
                    .arg(hold.as_str())
                    .arg(how.field())
                    .arg(self.hold_window.as_millis() as u64),
            )
            .await;
        match moved {
            Ok(0) => {}
            Ok(_) => {
                metrics::counter!("stock_reservations_total", "outcome" => how.label()).increment(1)
            }
            Err(e) => {
                tracing::debug!(product_id, error = %e, "finishing a reservation failed; the reconciler will")
            }
        }
    }

    /// Live `(available, sold)` from the product's Redis counter.
    ///
    /// A read does not build a missing key (a 100,000-product catalog browsed at random
    /// would turn every first view into a locking MySQL read): a product without a counter
    /// has had no reservation since Redis last lost it, so its row as cached is current.
    pub async fn live(&self, product_id: i64) -> Live {
        if !self.enabled {
            return Live::Unavailable;
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key(product_id)).arg("avail").arg("sold");
        match self.redis.cmd::<(Option<i64>, Option<i64>)>(&cmd).await {
            Ok((Some(avail), Some(sold))) => Live::Counter { avail, sold },
            Ok(_) => Live::NoCounter,
            Err(_) => Live::Unavailable,
        }
    }

    /// Builds one product's key from MySQL, once at a time per product in this instance.
    async fn rebuild(&self, product_id: i64) -> Result<(), Arc<AppError>> {
        self.rebuilds
            .try_get_with(product_id, async {
                self.sync(&[product_id]).await?;
                metrics::counter!("stock_rebuilds_total").increment(1);
                Ok::<_, AppError>(())
            })
            .await
    }

    /// Rewrites the hashes of `ids` from MySQL under the products' shared row locks;
    /// returns how many products exist.
    pub async fn sync(&self, ids: &[i64]) -> Result<usize, AppError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let gate = self.clone();
        let ids = ids.to_vec();
        db::transact(&self.db, None, move |tx| {
            let (gate, ids) = (gate.clone(), ids.clone());
            Box::pin(async move { gate.sync_in(tx, &ids).await })
        })
        .await
    }

    async fn sync_in(&self, tx: &mut MySqlConnection, ids: &[i64]) -> Result<usize, AppError> {
        let mut products =
            QueryBuilder::new("SELECT id, stock - reserved, sold FROM products WHERE id IN (");
        push_ids(&mut products, ids);
        products.push(") ORDER BY id LOCK IN SHARE MODE");
        let products: Vec<(i64, i64, i64)> = products.build_query_as().fetch_all(&mut *tx).await?;
        if products.is_empty() {
            return Ok(0);
        }
        let mut pending = QueryBuilder::new(
            "SELECT product_id, hold, quantity FROM orders WHERE status = 'PENDING' AND product_id IN (",
        );
        push_ids(&mut pending, ids);
        pending.push(")");
        let rows: Vec<(i64, String, i64)> = pending.build_query_as().fetch_all(&mut *tx).await?;
        let mut by_product: HashMap<i64, Vec<(String, i64)>> = HashMap::new();
        for (product_id, hold, quantity) in rows {
            by_product
                .entry(product_id)
                .or_default()
                .push((hold, quantity));
        }
        for (id, avail, sold) in &products {
            let mut call = self.scripts.sync.key(self.key(*id));
            call.arg(avail).arg(sold);
            for (hold, quantity) in by_product.get(id).into_iter().flatten() {
                call.arg(hold).arg(quantity);
            }
            let (before, after): (i64, i64) = self.redis.script(&call).await?;
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

    /// Repairs every product hash present in Redis (start-up, every interval, and when
    /// Redis comes back). Missing keys need nothing: they are built on first use.
    pub async fn reconcile(&self) -> Result<usize, AppError> {
        if !self.enabled {
            return Ok(0);
        }
        let prefix = self.redis.prefix().to_string();
        let pattern = format!("{prefix}{{p*}}");
        let (mut cursor, mut repaired) = (0u64, 0);
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, keys): (u64, Vec<String>) = self.redis.cmd(&scan).await?;
            let ids: Vec<i64> = keys
                .iter()
                .filter_map(|k| product_of_key(&prefix, k))
                .collect();
            for batch in ids.chunks(SYNC_BATCH) {
                repaired += self.sync(batch).await?;
            }
            if next == 0 {
                return Ok(repaired);
            }
            cursor = next;
        }
    }
}

/// What Redis says about a product's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    Counter {
        avail: i64,
        sold: i64,
    },
    /// No reservation since Redis last lost the key: the cached row is current.
    NoCounter,
    /// Redis is off, down or slow: read MySQL.
    Unavailable,
}

fn push_ids(query: &mut QueryBuilder<'_, sqlx::MySql>, ids: &[i64]) {
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
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
