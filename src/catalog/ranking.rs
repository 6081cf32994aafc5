//! Best sellers from Redis sorted sets: `<prefix>{sales}:<yyyymmdd>` per UTC day, member
//! product id, score units sold that day. A payment adds to today's set after it commits;
//! the top N over a window is one Lua call (`ZUNIONSTORE` of the window's days). All sales
//! keys share the `{sales}` hash tag, so the script stays in one Redis Cluster slot.
//!
//! A refund takes its units off the day of its payment: the ranking counts net sales.
//!
//! MySQL's `daily_sales` is the record. When the sets are gone (a Redis restart, FLUSHALL)
//! the `ready` marker is gone with them, and the next reader rebuilds every day of the
//! longest window from MySQL, one rebuild at a time. The reconciler rewrites a day whose
//! set disagrees with MySQL twice in a row while MySQL did not change in between (an
//! increment of a payment that just committed is not a disagreement).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use chrono::{NaiveDate, Utc};

use super::domain::{rank, window, MAX_TOP_DAYS, TOP_N};
use crate::{db::Reader, error::AppError, redis_store::RedisStore};

/// Day sets outlive the longest window by a couple of days.
const KEEP_SECS: i64 = (MAX_TOP_DAYS + 2) * 86_400;
/// How long a disagreement must last before the reconciler rewrites a day.
const SETTLE: Duration = Duration::from_secs(2);

type DaySales = BTreeMap<NaiveDate, BTreeMap<i64, i64>>;

#[derive(Clone)]
pub struct Ranking {
    redis: RedisStore,
    db: Reader,
    enabled: bool,
    top: Arc<redis::Script>,
    rebuilds: moka::future::Cache<(), ()>,
}

impl Ranking {
    pub fn new(redis: RedisStore, db: Reader, enabled: bool) -> Self {
        Self {
            redis,
            db,
            enabled,
            top: Arc::new(redis::Script::new(include_str!("lua/top.lua"))),
            rebuilds: moka::future::Cache::builder()
                .time_to_live(Duration::from_millis(200))
                .build(),
        }
    }

    fn day_key(&self, day: NaiveDate) -> String {
        self.redis
            .key(&format!("{{sales}}:{}", day.format("%Y%m%d")))
    }

    fn marker(&self) -> String {
        self.redis.key("{sales}:ready")
    }

    /// The days of a window of `days` UTC days ending today, oldest first (the same
    /// window as the MySQL fallback's).
    fn days_of(days: i64) -> Vec<NaiveDate> {
        window(Utc::now().date_naive(), days)
    }

    /// Whether the sales sets are there (their marker survives only with them).
    async fn loaded(&self) -> Result<bool, AppError> {
        Ok(self
            .redis
            .cmd(redis::cmd("EXISTS").arg(self.marker()))
            .await?)
    }

    /// Adds a committed sale to its day (a refund: a negative quantity); best effort (the
    /// reconciler repairs a miss).
    pub async fn record(&self, day: NaiveDate, product_id: i64, quantity: i64) {
        if !self.enabled {
            return;
        }
        let key = self.day_key(day);
        let mut pipe = redis::pipe();
        pipe.cmd("ZINCRBY")
            .arg(&key)
            .arg(quantity)
            .arg(product_id)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(KEEP_SECS)
            .ignore();
        if let Err(e) = self.redis.pipe::<()>(&pipe).await {
            tracing::debug!(product_id, error = %e, "recording a sale in the ranking failed");
        }
    }

    /// `(product_id, sold)` of the best sellers over `days`, or an error when Redis cannot
    /// answer (the caller asks MySQL).
    pub async fn top(&self, days: i64) -> Result<Vec<(i64, i64)>, AppError> {
        if !self.enabled {
            return Err(AppError::DependencyUnavailable("redis ranking".into()));
        }
        self.ensure_loaded().await?;
        let mut call = self.top.key(self.redis.key("{sales}:scratch"));
        for day in Self::days_of(days) {
            call.key(self.day_key(day));
        }
        call.arg(TOP_N);
        let flat: Vec<String> = self.redis.script(&call).await?;
        let totals = flat
            .chunks(2)
            .filter_map(|pair| match pair {
                [member, score] => Some((member.parse().ok()?, score.parse::<f64>().ok()? as i64)),
                _ => None,
            })
            .collect();
        Ok(rank(totals))
    }

    async fn ensure_loaded(&self) -> Result<(), AppError> {
        if self.loaded().await? {
            return Ok(());
        }
        self.rebuilds
            .try_get_with((), async {
                Box::pin(self.rebuild()).await?;
                metrics::counter!("ranking_rebuilds_total").increment(1);
                Ok::<_, AppError>(())
            })
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("rebuilding the ranking: {e}")))
    }

    /// Replaces every day set of the longest window with MySQL's `daily_sales`, atomically.
    async fn rebuild(&self) -> Result<(), AppError> {
        let days = Self::days_of(MAX_TOP_DAYS);
        let sales = self.mysql_sales(&days, true).await?;
        let redis = self.redis.background();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for day in &days {
            self.rewrite_day(&mut pipe, *day, sales.get(day));
        }
        pipe.cmd("SET").arg(self.marker()).arg(1).ignore();
        redis.pipe::<()>(&pipe).await?;
        Ok(())
    }

    fn rewrite_day(
        &self,
        pipe: &mut redis::Pipeline,
        day: NaiveDate,
        sales: Option<&BTreeMap<i64, i64>>,
    ) {
        let key = self.day_key(day);
        pipe.cmd("DEL").arg(&key).ignore();
        if let Some(sales) = sales.filter(|s| !s.is_empty()) {
            let zadd = pipe.cmd("ZADD").arg(&key);
            for (product_id, quantity) in sales {
                zadd.arg(quantity).arg(product_id);
            }
            zadd.ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(KEEP_SECS).ignore();
        }
    }

    /// MySQL's sales of `days`: from the replica when `fresh_enough` (a rebuild, which the
    /// reconciler checks again), from the primary otherwise (the reconciler itself).
    async fn mysql_sales(
        &self,
        days: &[NaiveDate],
        fresh_enough: bool,
    ) -> Result<DaySales, AppError> {
        let Some(first) = days.first() else {
            return Ok(DaySales::new());
        };
        let first = *first;
        let primary = self.db.primary_pool().clone();
        let rows: Vec<(NaiveDate, i64, i64)> = self
            .db
            .read(|pool| {
                let pool = if fresh_enough { pool } else { primary.clone() };
                async move {
                sqlx::query_as(
                    "SELECT day, product_id, CAST(quantity AS SIGNED) FROM daily_sales WHERE day >= ?",
                )
                .bind(first)
                .fetch_all(&pool)
                .await
                }
            })
            .await?;
        let mut sales = DaySales::new();
        for (day, product_id, quantity) in rows {
            sales.entry(day).or_default().insert(product_id, quantity);
        }
        Ok(sales)
    }

    async fn redis_sales(&self, days: &[NaiveDate]) -> Result<DaySales, AppError> {
        let mut pipe = redis::pipe();
        for day in days {
            pipe.cmd("ZRANGE")
                .arg(self.day_key(*day))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES");
        }
        let sets: Vec<Vec<(i64, f64)>> = self.redis.background().pipe(&pipe).await?;
        Ok(days
            .iter()
            .zip(sets)
            .filter(|(_, set)| !set.is_empty())
            .map(|(day, set)| (*day, set.into_iter().map(|(p, q)| (p, q as i64)).collect()))
            .collect())
    }

    /// Days whose Redis set differs from MySQL, with MySQL's figures.
    async fn disagreements(
        &self,
        days: &[NaiveDate],
    ) -> Result<HashMap<NaiveDate, BTreeMap<i64, i64>>, AppError> {
        let mysql = self.mysql_sales(days, false).await?;
        let redis = self.redis_sales(days).await?;
        Ok(days
            .iter()
            .filter(|d| mysql.get(d) != redis.get(d))
            .map(|d| (*d, mysql.get(d).cloned().unwrap_or_default()))
            .collect())
    }

    /// Rewrites the days that disagree with MySQL twice, `SETTLE` apart, with MySQL unchanged.
    pub async fn reconcile(&self) -> Result<usize, AppError> {
        if !self.enabled {
            return Ok(0);
        }
        if !self.loaded().await? {
            return Ok(0); // the next reader rebuilds everything
        }
        let days = Self::days_of(MAX_TOP_DAYS);
        let first = self.disagreements(&days).await?;
        if first.is_empty() {
            return Ok(0);
        }
        tokio::time::sleep(SETTLE).await;
        let second = self.disagreements(&days).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut repaired = 0;
        for (day, sales) in &second {
            if first.get(day) == Some(sales) {
                self.rewrite_day(&mut pipe, *day, Some(sales));
                repaired += 1;
            }
        }
        if repaired > 0 {
            self.redis.background().pipe::<()>(&pipe).await?;
            metrics::counter!("ranking_days_repaired_total").increment(repaired as u64);
            tracing::info!(days = repaired, "repaired the ranking in Redis");
        }
        Ok(repaired)
    }
}
