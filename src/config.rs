//! Service configuration, read once from the environment in `main` and passed down.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context};

pub use crate::events::relay::KafkaConfig;

/// Topic of `order.paid` events.
pub const DEFAULT_TOPIC: &str = "commerce.order-paid";

/// How the service authenticates users (SPEC §3 "Authentication").
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// HS256 secret; `None` only when `disabled` is true.
    pub jwt_secret: Option<String>,
    /// Development switch: every user route is open.
    pub disabled: bool,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Lifetime of tokens minted by the admin route.
    pub token_ttl: Duration,
}

/// Request rate limits; a rate of 0 turns that limit off.
#[derive(Clone, Copy, Debug)]
pub struct RateLimitConfig {
    /// Every route but the probes, per client IP.
    pub per_ip_per_sec: u32,
    pub per_ip_burst: u32,
    /// Write routes, per authenticated user.
    pub user_write_per_sec: u32,
    pub user_write_burst: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: String,
    pub redis_url: String,
    pub bind_addr: SocketAddr,
    /// Bearer token of the admin routes; `None` turns them off (404).
    pub admin_token: Option<String>,
    pub auth: AuthConfig,
    /// How long a PENDING order holds its stock.
    pub order_ttl: Duration,
    /// How often the expiry sweeper looks for overdue orders.
    pub sweep_interval: Duration,
    /// Namespace of every Redis key.
    pub redis_prefix: String,
    /// Bound on every Redis call; past it the call counts as an outage.
    pub redis_timeout: Duration,
    /// `STOCK_GATE=redis` (default): orders are reserved in Redis first; `mysql`: MySQL
    /// row locks alone decide, and Redis serves only the caches.
    pub stock_gate: bool,
    /// How long a placement may take between its Redis reservation and its order's commit.
    pub reservation_hold: Duration,
    /// How often Redis's stock and ranking are checked against MySQL.
    pub reconcile_interval: Duration,
    /// A request still running after this ends with a 503 problem response.
    pub request_timeout: Duration,
    /// The outbox relay's broker and topic; `None` (KAFKA_BROKERS unset): events wait in
    /// the outbox.
    pub kafka: Option<KafkaConfig>,
    pub db_max_connections: u32,
    pub rate_limits: RateLimitConfig,
    pub log_format: LogFormat,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Builds the configuration from any key lookup (the environment in production).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let secs = |key: &str, default: u64| -> anyhow::Result<Duration> {
            match get(key) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => Ok(Duration::from_secs(v.parse().with_context(|| {
                    format!("{key} must be a whole number of seconds")
                })?)),
            }
        };
        let number = |key: &str, default: u32| -> anyhow::Result<u32> {
            get(key)
                .map(|v| {
                    v.parse::<u32>()
                        .with_context(|| format!("{key} must be a whole number"))
                })
                .transpose()
                .map(|v| v.unwrap_or(default))
        };
        let millis = |key: &str, default: u32| -> anyhow::Result<Duration> {
            Ok(Duration::from_millis(u64::from(number(key, default)?)))
        };
        let stock_gate = match get("STOCK_GATE").as_deref() {
            None | Some("redis") => true,
            Some("mysql") => false,
            Some(other) => bail!("STOCK_GATE must be redis or mysql, not {other}"),
        };
        let disabled = matches!(get("AUTH_DISABLED").as_deref(), Some("true" | "1"));
        let jwt_secret = get("AUTH_JWT_SECRET");
        if jwt_secret.is_none() && !disabled {
            bail!("AUTH_JWT_SECRET is not set (set AUTH_DISABLED=true to run without authentication, development only)");
        }
        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("LOG_FORMAT must be json or pretty, not {other}"),
        };
        Ok(Self {
            database_url: get("DATABASE_URL").context("DATABASE_URL is not set")?,
            redis_url: get("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            bind_addr: get("BIND_ADDR")
                .unwrap_or_else(|| "127.0.0.1:8080".into())
                .parse()
                .context("BIND_ADDR must be host:port")?,
            admin_token: get("ADMIN_TOKEN"),
            auth: AuthConfig {
                jwt_secret,
                disabled,
                issuer: get("AUTH_ISSUER"),
                audience: get("AUTH_AUDIENCE"),
                token_ttl: secs("AUTH_TOKEN_TTL_SECS", 3600)?,
            },
            order_ttl: secs("ORDER_TTL_SECS", 600)?,
            sweep_interval: Duration::from_millis(u64::from(number("SWEEP_INTERVAL_MS", 250)?)),
            redis_prefix: get("REDIS_PREFIX").unwrap_or_else(|| "commerce:".into()),
            redis_timeout: millis("REDIS_TIMEOUT_MS", 250)?,
            stock_gate,
            reservation_hold: millis("RESERVATION_HOLD_MS", 10_000)?,
            reconcile_interval: millis("RECONCILE_INTERVAL_MS", 60_000)?,
            request_timeout: millis("REQUEST_TIMEOUT_MS", 15_000)?,
            kafka: match get("KAFKA_BROKERS") {
                None => None,
                Some(brokers) => Some(KafkaConfig {
                    brokers,
                    topic: get("KAFKA_TOPIC").unwrap_or_else(|| DEFAULT_TOPIC.into()),
                    partitions: number("KAFKA_PARTITIONS", 3)? as i32,
                    retention: secs("OUTBOX_RETENTION_HOURS", 168)? * 3600,
                }),
            },
            db_max_connections: number("DB_MAX_CONNECTIONS", 32)?,
            rate_limits: RateLimitConfig {
                per_ip_per_sec: number("RATE_LIMIT_PER_SEC", 1000)?,
                per_ip_burst: number("RATE_LIMIT_BURST", 2000)?,
                user_write_per_sec: number("USER_RATE_LIMIT_PER_SEC", 20)?,
                user_write_burst: number("USER_RATE_LIMIT_BURST", 40)?,
            },
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn refuses_to_start_without_a_jwt_secret() {
        let err = config(&[("DATABASE_URL", "mysql://x/y")]).unwrap_err();
        assert!(err.to_string().contains("AUTH_JWT_SECRET"));
    }

    #[test]
    fn auth_can_be_disabled_explicitly() {
        let c = config(&[("DATABASE_URL", "mysql://x/y"), ("AUTH_DISABLED", "true")]).unwrap();
        assert!(c.auth.disabled && c.auth.jwt_secret.is_none());
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = config(&[("DATABASE_URL", "mysql://x/y"), ("AUTH_JWT_SECRET", "s")]).unwrap();
        assert_eq!(c.order_ttl, Duration::from_secs(600));
        assert_eq!(c.auth.token_ttl, Duration::from_secs(3600));
        assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8080");
        assert!(c.admin_token.is_none());
    }
}
