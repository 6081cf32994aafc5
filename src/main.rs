//! The commerce-api binary: `commerce-api [serve] [--seed-demo]` runs the service;
//! `commerce-api consume` runs the example `order.paid` consumer (the data platform).

use anyhow::Context;
use commerce_api::{
    app::{build_ops, serve, spawn_background},
    build_app,
    config::Config,
    db, seed, telemetry, AppState,
};
use tokio::net::TcpListener;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("consume") {
        return consume().await;
    }
    let seed_demo = args.iter().any(|a| a == "--seed-demo");
    if let Some(unknown) = args
        .iter()
        .find(|a| !matches!(a.as_str(), "serve" | "--seed-demo"))
    {
        anyhow::bail!(
            "unknown argument {unknown}; usage: commerce-api [serve] [--seed-demo] | commerce-api consume"
        );
    }

    let config = Config::from_env()?;
    telemetry::init_logging(config.log_format);
    if config.auth.disabled {
        tracing::warn!("AUTH_DISABLED=true: every user route is open (development only)");
    }
    let metrics = telemetry::install_metrics()?;
    let pool = db::connect(&config.database_url, config.db_max_connections)
        .await
        .context("connecting to MySQL")?;
    let size = seed::Size::from_env()?;
    if seed_demo && seed::demo_if_empty(&pool, size).await? {
        tracing::info!(
            products = size.products,
            users = size.users,
            "seeded demo data"
        );
    }
    let listener = TcpListener::bind(config.bind_addr)
        .await
        .with_context(|| format!("binding {}", config.bind_addr))?;
    tracing::info!(addr = %config.bind_addr, "listening");
    let ops_listener = match config.ops_bind_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding OPS_BIND_ADDR {addr}"))?;
            tracing::info!(%addr, "readiness and metrics on their own listener");
            Some(listener)
        }
        None => None,
    };
    let grace = config.shutdown_grace;
    let state = AppState::new(config, pool, Some(metrics)).await?;
    spawn_background(&state);
    // On SIGTERM: readiness fails at once, so the load balancer moves the traffic away
    // (HAProxy checks every 500 ms); after the grace period the listeners close and the
    // requests in flight (and the batches they wait for) finish before the process exits.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let ops = match ops_listener {
        Some(listener) => {
            let (state, shutdown) = (state.clone(), until_stopped());
            Some(tokio::spawn(async move {
                serve(&state, listener, build_ops(state.clone()), shutdown).await
            }))
        }
        None => None,
    };
    let draining = state.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        draining.drain();
        tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
        tokio::time::sleep(grace).await;
        let _ = stop.send(true);
    });
    serve(&state, listener, build_app(state.clone()), until_stopped()).await?;
    if let Some(ops) = ops {
        ops.await??;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The example consumer: `DATABASE_URL`, `KAFKA_BROKERS`, `KAFKA_TOPIC`
/// (commerce.order-paid), `KAFKA_GROUP` (commerce-data-platform).
async fn consume() -> anyhow::Result<()> {
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let format = match env("LOG_FORMAT").as_deref() {
        Some("json") => commerce_api::config::LogFormat::Json,
        _ => commerce_api::config::LogFormat::Pretty,
    };
    telemetry::init_logging(format);
    let database_url = env("DATABASE_URL").context("DATABASE_URL is not set")?;
    let config = commerce_api::events::consumer::ConsumerConfig {
        brokers: env("KAFKA_BROKERS").context("KAFKA_BROKERS is not set")?,
        topic: env("KAFKA_TOPIC").unwrap_or_else(|| commerce_api::config::DEFAULT_TOPIC.into()),
        group: env("KAFKA_GROUP").unwrap_or_else(|| "commerce-data-platform".into()),
    };
    let pool = db::connect(&database_url, 4)
        .await
        .context("connecting to MySQL")?;
    tracing::info!(topic = %config.topic, group = %config.group, "consuming");
    commerce_api::events::consumer::run(pool, config, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM; in-flight requests then finish before exit.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
