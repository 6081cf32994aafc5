//! The composition root: builds every part of an instance once ([`AppState`]), wires the
//! router every entry point (main, tests) uses, and starts the background work.
//!
//! Imports flow one way: this module imports the features; no feature imports it. Each
//! feature's router is generic over the state and asks only for the parts it needs
//! (`Catalog`, `Checkout`, `Orders`, `Auth`, a pool…), which [`AppState`] hands out through
//! `FromRef`.

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    extract::{DefaultBodyLimit, FromRef},
    middleware, Router,
};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::MySqlPool;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    admin,
    auth::Auth,
    catalog::{
        self,
        cache::CatalogCache,
        ranking::Ranking,
        service::{Catalog, CatalogParts},
        store::CatalogStore,
    },
    checkout::{self, Checkout},
    config::Config,
    db::{self, Reader},
    http::{
        extract::MAX_BODY_BYTES,
        middleware::{self as mw, RequestTimeout},
        rate_limit::{self, RateLimits},
    },
    ops::{self, Ops},
    orders::{self, service::Orders},
    payments, points,
    redis_store::RedisStore,
    stock::StockGate,
};

/// Every part of one instance, built once; cloned per request (it is one `Arc`).
#[derive(Clone)]
pub struct AppState(Arc<Parts>);

pub struct Parts {
    pub config: Arc<Config>,
    /// The primary: every write and every read that decides one.
    pub db: MySqlPool,
    /// Catalog loads: the replica while fresh, else the primary.
    pub reader: Reader,
    pub redis: RedisStore,
    pub stock: StockGate,
    pub catalog: Catalog,
    pub checkout: Checkout,
    pub orders: Orders,
    pub auth: Auth,
    pub rate_limits: Arc<RateLimits>,
    pub ops: Ops,
}

impl std::ops::Deref for AppState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

macro_rules! parts {
    ($($field:ident: $ty:ty),* $(,)?) => {
        $(impl FromRef<AppState> for $ty {
            fn from_ref(state: &AppState) -> $ty {
                state.0.$field.clone()
            }
        })*
    };
}

parts! {
    db: MySqlPool,
    catalog: Catalog,
    checkout: Checkout,
    orders: Orders,
    auth: Auth,
    ops: Ops,
}

impl AppState {
    /// Builds an instance on a migrated primary `db` (and connects the read replica when
    /// `DATABASE_READ_URL` is set).
    pub async fn new(
        config: Config,
        db: MySqlPool,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        let redis = RedisStore::new(
            &config.redis,
            &config.redis_prefix,
            config.redis_timeout,
            config.redis_request_pool,
        )?;
        let reader = match &config.database_read_url {
            Some(url) => {
                Reader::with_replica(db.clone(), db::pool(url, config.db_max_connections).await?)
            }
            None => Reader::primary(db.clone()),
        };
        let stock = StockGate::new(
            redis.clone(),
            db.clone(),
            config.stock_gate,
            config.reservation_hold,
            config.sold_out_memory,
        );
        let ranking = Ranking::new(redis.clone(), reader.clone(), config.stock_gate);
        let products = CatalogStore::new(reader.clone());
        let catalog = Catalog::new(CatalogParts {
            db: reader.clone(),
            cache: CatalogCache::new(
                redis.clone(),
                stock.clone(),
                products.clone(),
                repeat_invalidation(&config),
            ),
            stock: stock.clone(),
            ranking: ranking.clone(),
        });
        let checkout = Checkout::new(
            db.clone(),
            stock.clone(),
            ranking.clone(),
            catalog.clone(),
            checkout::Limits {
                order_ttl: config.order_ttl,
                batch_max: config.batch_max,
                queue_max: config.checkout_queue_max,
                max_lines: config.max_order_lines,
            },
        )?;
        let orders = Orders {
            db: db.clone(),
            stock: stock.clone(),
            ranking,
            refund_window: config.refund_window,
        };
        let auth = Auth::new(&config);
        let ops = Ops {
            db: reader.clone(),
            redis: redis.clone(),
            metrics,
            auth_disabled: config.auth.disabled,
            openapi: crate::openapi::document_json(),
            draining: Arc::default(),
            readiness: Arc::default(),
        };
        Ok(Self(Arc::new(Parts {
            rate_limits: Arc::new(RateLimits::new(
                &config.rate_limits,
                auth.tokens.clone(),
                config.trusted_proxies.clone(),
            )),
            config: Arc::new(config),
            db,
            reader,
            redis,
            stock,
            catalog,
            checkout,
            orders,
            auth,
            ops,
        })))
    }
}

/// When a write's invalidation is repeated: a reader may have loaded the old row just before
/// the commit, or, with a replica, up to the lag the replica is allowed; after this, what
/// the primary committed is what every load sees.
fn repeat_invalidation(config: &Config) -> Duration {
    match config.database_read_url {
        Some(_) => config.replica_max_lag + db::HEARTBEAT_EVERY * 4,
        None => Duration::from_millis(500),
    }
}

/// Every route of SPEC §3 with its middleware; `/readyz` and `/metrics` only when no
/// `OPS_BIND_ADDR` takes them ([`build_ops`]).
pub fn build_app(state: AppState) -> Router {
    with_middleware(routes(&state), state)
}

/// Every route of SPEC §3, without the middleware.
pub fn routes(state: &AppState) -> Router<AppState> {
    let probes = match state.config.ops_bind_addr {
        None => ops::probes(),
        Some(_) => Router::new(),
    };
    Router::new()
        .merge(ops::router())
        .merge(probes)
        .merge(points::router())
        .merge(catalog::router())
        .merge(orders::router())
        .merge(payments::router())
        .merge(admin::router())
}

/// The operations listener of `OPS_BIND_ADDR`: liveness, readiness and metrics.
pub fn build_ops(state: AppState) -> Router {
    with_middleware(
        Router::new().merge(ops::probes()).route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        ),
        state,
    )
}

/// `routes` behind the service's middleware: request ids, tracing, the panic catcher, the
/// body limit, the rate limits, metrics and the request timeout.
pub fn with_middleware(routes: Router<AppState>, state: AppState) -> Router {
    let x_request_id = axum::http::HeaderName::from_static("x-request-id");
    routes
        .route_layer(middleware::from_fn_with_state(
            RequestTimeout(state.config.request_timeout),
            mw::timeout,
        ))
        .route_layer(middleware::from_fn(mw::track_metrics))
        .fallback(mw::not_found)
        .method_not_allowed_fallback(mw::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.rate_limits.clone(),
            rate_limit::enforce,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(crate::error::AppError::Internal(
                anyhow::anyhow!("panic"),
            ))
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(mw::request_span)
                .on_response(mw::record_response),
        )
        .layer(middleware::from_fn(mw::scope_request_id))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .layer(middleware::from_fn(mw::sanitize_request_id))
        .layer(middleware::from_fn(mw::nosniff))
        .with_state(state)
}

/// How often idle rate-limit keys are forgotten.
const EVICT_EVERY: Duration = Duration::from_secs(60);
/// How often expired idempotency answers (and published outbox rows past their retention)
/// are deleted: all of them, in chunks, whatever the write rate was.
const CLEAN_EVERY: Duration = Duration::from_secs(60);

/// Starts the background work of one instance: the order expiry sweeper, the cache
/// invalidation and units-back listeners, the Redis probe, repairs and reconciler, the
/// replica monitor, the gauges, the outbox relay and the eviction of idle rate-limit keys.
/// They run until the runtime stops.
pub fn spawn_background(state: &AppState) {
    crate::orders::expiry::spawn(
        state.db.clone(),
        state.stock.background(),
        state.config.sweep_interval,
    );
    state.catalog.cache.store.spawn_load();
    state.catalog.cache.spawn_listener();
    state.checkout.spawn_prewarm();
    state.stock.spawn_listener();
    state.stock.spawn_repairs();
    state.redis.spawn_probe();
    state.reader.spawn_monitor(state.config.replica_max_lag);
    crate::telemetry::spawn_gauges(state.db.clone());
    if let Some(kafka) = &state.config.kafka {
        match crate::events::relay::Relay::new(state.db.clone(), kafka.clone()) {
            Ok(relay) => {
                relay.spawn();
            }
            Err(e) => {
                tracing::error!(error = %e, "the outbox relay cannot start; events wait in the outbox")
            }
        }
    }
    spawn_reconciler(state);
    spawn_cleaner(state);
    let limits = state.rate_limits.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(EVICT_EVERY);
        loop {
            ticker.tick().await;
            limits.evict_idle();
            metrics::gauge!("rate_limit_tracked_keys").set(limits.tracked_keys() as f64);
        }
    });
}

/// Deletes what is kept no longer: idempotency answers past 24 h, and, where a relay
/// publishes the outbox, published events past `OUTBOX_RETENTION_HOURS`.
fn spawn_cleaner(state: &AppState) {
    let (db, kafka) = (state.db.clone(), state.config.kafka.clone());
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(CLEAN_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match crate::idempotency::prune(&db).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "expired idempotency answers deleted"),
                Err(e) => tracing::warn!(error = %e, "deleting expired idempotency answers failed"),
            }
            if let Some(kafka) = &kafka {
                match crate::events::relay::prune(&db, kafka.retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "published outbox rows deleted"),
                    Err(e) => tracing::warn!(error = %e, "deleting published outbox rows failed"),
                }
            }
        }
    });
}

/// Checks Redis against MySQL at start-up, every `RECONCILE_INTERVAL_MS`, and as soon as
/// Redis answers again after an outage (orders taken by MySQL alone meanwhile).
fn spawn_reconciler(state: &AppState) {
    let (stock, ranking) = (state.stock.clone(), state.catalog.ranking.clone());
    let recovered = state.redis.recovered();
    let every = state.config.reconcile_interval;
    tokio::spawn(async move {
        loop {
            if let Err(e) = stock.reconcile().await {
                tracing::debug!(error = %e, "stock reconciliation did not finish");
            }
            if let Err(e) = ranking.reconcile().await {
                tracing::debug!(error = %e, "ranking reconciliation did not finish");
            }
            tokio::select! {
                _ = recovered.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}

impl AppState {
    /// Shutting down: readiness fails from now on (see [`Ops::draining`]).
    pub fn drain(&self) {
        self.ops
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves `router` with the instance's connection limits (`HEADER_READ_TIMEOUT_MS`,
/// `MAX_CONNECTIONS`) until `shutdown` resolves; in-flight requests then finish.
pub async fn serve(
    state: &AppState,
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = crate::http::server::Limits {
        header_read_timeout: state.config.header_read_timeout,
        max_connections: state.config.max_connections,
    };
    crate::http::server::serve(listener, router, limits, shutdown).await
}
