//! The application: shared state and the router every entry point (main, tests) uses.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{extract::DefaultBodyLimit, middleware, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::MySqlPool;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    admin,
    auth::TokenService,
    catalog::{self, cache::CatalogCache, ranking::Ranking, service::Catalog},
    config::Config,
    http::{extract::MAX_BODY_BYTES, middleware as mw, rate_limit},
    ops, orders, payments, points,
    redis_store::RedisStore,
    stock::StockGate,
};

/// What every handler reaches: cloned per request by the extractors, so it is one `Arc`
/// (profiling showed the per-request clones of the caches inside it).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    pub db: MySqlPool,
    pub redis: RedisStore,
    pub stock: StockGate,
    pub catalog: Catalog,
    pub config: Arc<Config>,
    pub tokens: Arc<TokenService>,
    pub rate_limits: Arc<rate_limit::RateLimits>,
    /// Renders `/metrics`; `None` where no recorder is installed.
    pub metrics: Option<PrometheusHandle>,
}

impl AppState {
    pub fn new(
        config: Config,
        db: MySqlPool,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        let redis = RedisStore::new(
            &config.redis_url,
            &config.redis_prefix,
            config.redis_timeout,
        )?;
        let stock = StockGate::new(
            redis.clone(),
            db.clone(),
            config.stock_gate,
            config.reservation_hold,
        );
        let catalog = Catalog {
            db: db.clone(),
            cache: CatalogCache::new(redis.clone()),
            stock: stock.clone(),
            ranking: Ranking::new(redis.clone(), db.clone(), config.stock_gate),
        };
        Ok(Self(Arc::new(Services {
            stock,
            catalog,
            tokens: Arc::new(TokenService::new(&config.auth)),
            rate_limits: Arc::new(rate_limit::RateLimits::new(&config.rate_limits)),
            config: Arc::new(config),
            db,
            redis,
            metrics,
        })))
    }
}

/// Every route of SPEC §3 with its middleware.
pub fn build_app(state: AppState) -> Router {
    let x_request_id = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .merge(ops::router())
        .merge(points::router())
        .merge(catalog::router())
        .merge(orders::router())
        .merge(payments::router())
        .merge(admin::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), mw::timeout))
        .route_layer(middleware::from_fn(mw::track_metrics))
        .fallback(mw::not_found)
        .method_not_allowed_fallback(mw::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
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
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}

/// How often idle rate-limit keys are forgotten.
const EVICT_EVERY: Duration = Duration::from_secs(60);

/// Starts the background work of one instance: the order expiry sweeper, the cache
/// invalidation listener, the Redis reconciler and the eviction of idle rate-limit keys.
/// They run until the runtime stops.
pub fn spawn_background(state: &AppState) {
    crate::orders::expiry::spawn(
        state.db.clone(),
        state.stock.clone(),
        state.config.sweep_interval,
    );
    state.catalog.cache.spawn_listener();
    state.redis.spawn_probe();
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

/// Checks Redis against MySQL at start-up, every `RECONCILE_INTERVAL_MS`, and as soon as
/// Redis answers again after an outage (orders taken by MySQL alone meanwhile).
fn spawn_reconciler(state: &AppState) {
    let (stock, ranking) = (state.stock.clone(), state.catalog.ranking.clone());
    let recovered = state.redis.recovered();
    let every = state.config.reconcile_interval;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = recovered.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = stock.reconcile().await {
                tracing::debug!(error = %e, "stock reconciliation did not finish");
            }
            if let Err(e) = ranking.reconcile().await {
                tracing::debug!(error = %e, "ranking reconciliation did not finish");
            }
        }
    });
}

/// Serves the router with the peer address available to the rate limiter, until `shutdown`
/// resolves; in-flight requests then finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
