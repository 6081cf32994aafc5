//! Logging (`RUST_LOG`, `LOG_FORMAT`) and the Prometheus recorder.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::MySqlPool;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

pub fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Latency buckets for an API whose p99 should sit in single-digit milliseconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Batch sizes of the checkout (requests per transaction).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How often recorded histogram samples are folded into their buckets. The exporter keeps
/// every sample until then (or until a scrape): without this, memory grows with every
/// request while nobody scrapes `/metrics`.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process-wide metrics recorder (once per process), starts its upkeep, and
/// registers the counters that only move on rare events at zero, so dashboards show 0,
/// not "no data".
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("checkout_batch_size".into()), BATCH_BUCKETS)?
        .install_recorder()?;
    spawn_upkeep(handle.clone(), UPKEEP_EVERY);
    for name in [
        "orders_expired_total",
        "db_transaction_retries_total",
        "db_read_only_refusals_total",
        "http_request_timeouts_total",
        "redis_calls_rejected_total",
        "stock_rebuilds_total",
        "stock_drift_repaired_total",
        "stock_syncs_total",
        "stock_prewarms_total",
        "stock_live_messages_total",
        "ranking_rebuilds_total",
        "ranking_days_repaired_total",
        "events_published_total",
        "events_publish_failures_total",
        "events_relay_attempts_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    // Without a replica: no lag (-1) and no reads on one; the monitor sets them otherwise.
    metrics::gauge!("db_replica_lag_seconds").set(-1.0);
    metrics::gauge!("db_replica_in_use").set(0.0);
    metrics::counter!("db_replica_fallbacks_total").absolute(0);
    for limit in ["ip", "user_write"] {
        metrics::counter!("rate_limited_total", "limit" => limit).absolute(0);
    }
    for kind in ["unavailable", "command"] {
        metrics::counter!("redis_errors_total", "kind" => kind).absolute(0);
    }
    for outcome in [
        "reserved",
        "sold_out",
        "sold_out_local",
        "limit_reached",
        "mysql_fallback",
        "released",
        "expired",
        "abandoned",
        "confirmed",
    ] {
        metrics::counter!("stock_reservations_total", "outcome" => outcome).absolute(0);
    }
    for (metric, outcome) in [
        ("orders_total", "placed"),
        ("orders_total", "OUT_OF_STOCK"),
        ("orders_total", "PURCHASE_LIMIT_REACHED"),
        ("orders_total", "INSUFFICIENT_POINTS"),
        ("payments_total", "completed"),
        ("payments_total", "INSUFFICIENT_POINTS"),
    ] {
        metrics::counter!(metric, "outcome" => outcome).absolute(0);
    }
    for (cache, layer) in [("page", "l1"), ("top", "l1"), ("stock", "memory")] {
        for result in ["hit", "miss"] {
            metrics::counter!("cache_requests_total", "cache" => cache, "layer" => layer, "result" => result)
                .absolute(0);
        }
    }
    metrics::gauge!("stock_live_feed_up").set(0.0);
    metrics::gauge!("mysql_semi_sync_primary_status").set(-1.0);
    Ok(handle)
}

/// Folds recorded samples into their histograms every `every`, on a thread of its own (the
/// recorder is process-wide; the tests' runtimes come and go).
fn spawn_upkeep(handle: PrometheusHandle, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "the metrics upkeep thread did not start");
    }
}

/// Whether the primary (DATABASE_URL) waits for its standby before acknowledging a
/// commit: 1 semi-sync on, 0 configured but fallen back to asynchronous (a failover now could
/// lose acknowledged writes), -1 not configured; `None` when MySQL does not answer.
async fn semi_sync_status(pool: &MySqlPool) -> Option<f64> {
    // MariaDB names them master, MySQL ≥ 8.0.26 source; SHOW works on both.
    let enabled: Vec<(String, String)> = sqlx::query_as(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
         ('rpl_semi_sync_master_enabled', 'rpl_semi_sync_source_enabled')",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    if !enabled.iter().any(|(_, value)| value == "ON") {
        return Some(-1.0);
    }
    let status: Vec<(String, String)> = sqlx::query_as(
        "SHOW GLOBAL STATUS WHERE Variable_name IN \
         ('Rpl_semi_sync_master_status', 'Rpl_semi_sync_source_status')",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    let on = status.iter().any(|(_, value)| value == "ON");
    Some(if on { 1.0 } else { 0.0 })
}

/// How often the pool and outbox gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

/// Refreshes the MySQL pool gauges (`db_pool_connections{state}`, `db_pool_max_connections`),
/// the outbox gauges (`outbox_backlog`, `outbox_oldest_age_seconds`) and the primary's
/// semi-synchronous replication (`mysql_semi_sync_primary_status`) until the process ends.
/// Waiting for a connection shows as `db_pool_acquire_duration_seconds`.
pub fn spawn_gauges(pool: MySqlPool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (size, idle) = (pool.size(), pool.num_idle() as u32);
            metrics::gauge!("db_pool_connections", "state" => "idle").set(f64::from(idle));
            metrics::gauge!("db_pool_connections", "state" => "in_use")
                .set(f64::from(size.saturating_sub(idle)));
            metrics::gauge!("db_pool_max_connections")
                .set(f64::from(pool.options().get_max_connections()));
            match crate::events::backlog(&pool).await {
                Ok((count, age)) => {
                    metrics::gauge!("outbox_backlog").set(count as f64);
                    metrics::gauge!("outbox_oldest_age_seconds").set(age);
                }
                Err(e) => tracing::debug!(error = %e, "reading the outbox backlog failed"),
            }
            if let Some(status) = semi_sync_status(&pool).await {
                metrics::gauge!("mysql_semi_sync_primary_status").set(status);
            }
            tokio::time::sleep(GAUGES_EVERY).await;
        }
    })
}
