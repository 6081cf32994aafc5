//! Service configuration, read once from the environment in `main` and passed down.
//! Every value is checked here: a bad one stops the process at start-up with a message
//! naming the variable, never a panic in a background task later.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context};

/// Topic of the order events.
pub const DEFAULT_TOPIC: &str = "commerce.order-paid";
/// An HS256 key shorter than the hash can be brute-forced from any token (RFC 7518 §3.2).
pub const MIN_JWT_SECRET_BYTES: usize = 32;
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

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

/// Where the outbox relay publishes.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub partitions: i32,
    /// Published rows are deleted after this long.
    pub retention: Duration,
}

impl KafkaConfig {
    pub fn new(brokers: &str, topic: &str) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            partitions: 3,
            retention: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Which Redis the service talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// `REDIS_URL`: one server.
    Single(String),
    /// `REDIS_CLUSTER_NODES`: seed nodes of a Redis Cluster (`redis://host:port` each).
    Cluster(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: String,
    /// A MySQL replica for catalog loads; `None`: everything reads the primary.
    pub database_read_url: Option<String>,
    /// A replica further behind than this is not read (the primary answers instead).
    pub replica_max_lag: Duration,
    pub redis: RedisTarget,
    pub bind_addr: SocketAddr,
    /// `OPS_BIND_ADDR`: where `/metrics` and `/readyz` are served instead of the public
    /// listener (which then answers 404 for them); `None`: on the public listener.
    pub ops_bind_addr: Option<SocketAddr>,
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` names the client (load balancers).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A request's head must arrive within this, or its connection is closed.
    pub header_read_timeout: Duration,
    /// Most connections open at once per listener; past it new ones are closed at once.
    pub max_connections: usize,
    /// Most requests of one product waiting for its next checkout batch; past it, 503.
    pub checkout_queue_max: usize,
    /// `MAX_ORDER_LINES`: the most lines one order may have (SPEC L1).
    pub max_order_lines: usize,
    /// Bearer token of the admin routes; `None` turns them off (404).
    pub admin_token: Option<String>,
    pub auth: AuthConfig,
    /// How long a PENDING order holds its stock.
    pub order_ttl: Duration,
    /// How long after its payment a PAID order can be refunded.
    pub refund_window: Duration,
    /// How often the expiry sweeper looks for overdue orders.
    pub sweep_interval: Duration,
    /// Namespace of every Redis key.
    pub redis_prefix: String,
    /// Bound on every Redis call; past it the call counts as an outage.
    pub redis_timeout: Duration,
    /// `REDIS_REQUEST_POOL`: 0 (default) keeps request calls on one multiplexed
    /// connection; N > 0 gives them a deadpool pool of N connections instead (a
    /// benchmark switch: `bench/` measures the refusal path both ways).
    pub redis_request_pool: usize,
    /// `STOCK_GATE=redis` (default): orders are reserved in Redis first; `mysql`: MySQL
    /// row locks alone decide, and Redis serves only the caches.
    pub stock_gate: bool,
    /// How long a Redis reservation waits for its order to be written before the
    /// reconciler may give its units back (a process that died in between).
    pub reservation_hold: Duration,
    /// How long this instance answers "sold out" from memory after the gate said so,
    /// unless units come back sooner.
    pub sold_out_memory: Duration,
    /// Most orders and payments of one product committed in one transaction.
    pub batch_max: usize,
    /// How often Redis's stock and ranking are checked against MySQL.
    pub reconcile_interval: Duration,
    /// A request still running after this ends with a 503 problem response.
    pub request_timeout: Duration,
    /// On SIGTERM: how long readiness fails before the listener closes (the load
    /// balancer's time to notice); in-flight requests then finish.
    pub shutdown_grace: Duration,
    /// The outbox relay's broker and topic; `None` (KAFKA_BROKERS unset): events wait in
    /// the outbox.
    pub kafka: Option<KafkaConfig>,
    pub db_max_connections: u32,
    pub rate_limits: RateLimitConfig,
    pub log_format: LogFormat,
}

/// Reads one variable as a number within `range` (or its default).
pub fn bounded<T>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
    range: std::ops::RangeInclusive<T>,
    unit: &str,
) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let value = match get(key) {
        None => default,
        Some(v) => v
            .trim()
            .parse()
            .ok()
            .with_context(|| format!("{key}={v}: expected a whole number of {unit}"))?,
    };
    if !range.contains(&value) {
        bail!(
            "{key}={value}: must be between {} and {} {unit}",
            range.start(),
            range.end()
        );
    }
    Ok(value)
}

/// URL schemes the Redis client understands.
const REDIS_SCHEMES: [&str; 4] = ["redis://", "rediss://", "unix://", "redis+unix://"];

/// `KAFKA_TOPIC`, or the default: a name Kafka accepts (1–249 of `a-z A-Z 0-9 . _ -`).
fn kafka_topic(topic: Option<String>) -> anyhow::Result<String> {
    let topic = topic.unwrap_or_else(|| DEFAULT_TOPIC.into());
    let valid = (1..=249).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && topic != "."
        && topic != "..";
    if !valid {
        bail!("KAFKA_TOPIC={topic}: a topic name is 1 to 249 of a-z A-Z 0-9 . _ -");
    }
    Ok(topic)
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Builds the configuration from any key lookup (the environment in production).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let millis = |key: &str, default: u64, min: u64, max: u64| {
            bounded(&get, key, default, min..=max, "milliseconds").map(Duration::from_millis)
        };
        let secs = |key: &str, default: u64, min: u64, max: u64| {
            bounded(&get, key, default, min..=max, "seconds").map(Duration::from_secs)
        };
        let count = |key: &str, default: u32, min: u32, max: u32| {
            bounded(&get, key, default, min..=max, "")
        };
        const DAY: u64 = 86_400;

        let stock_gate = match get("STOCK_GATE").as_deref() {
            None | Some("redis") => true,
            Some("mysql") => false,
            Some(other) => bail!("STOCK_GATE={other}: must be redis or mysql"),
        };
        let disabled = match get("AUTH_DISABLED").as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(other) => bail!("AUTH_DISABLED={other}: must be true or false"),
        };
        let jwt_secret = get("AUTH_JWT_SECRET");
        match &jwt_secret {
            None if !disabled => bail!(
                "AUTH_JWT_SECRET is not set (set AUTH_DISABLED=true to run without authentication, development only)"
            ),
            Some(s) if s.len() < MIN_JWT_SECRET_BYTES => bail!(
                "AUTH_JWT_SECRET is {} bytes; an HS256 key needs at least {MIN_JWT_SECRET_BYTES} (generate one: openssl rand -hex 32)",
                s.len()
            ),
            _ => {}
        }
        let admin_token = get("ADMIN_TOKEN");
        if let Some(t) = &admin_token {
            if t.chars().count() < MIN_ADMIN_TOKEN_CHARS || t.chars().any(char::is_whitespace) {
                bail!(
                    "ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters without spaces (generate one: openssl rand -hex 24)"
                );
            }
        }
        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("LOG_FORMAT={other}: must be json or pretty"),
        };
        let redis = match get("REDIS_CLUSTER_NODES") {
            Some(nodes) => {
                let nodes: Vec<String> = nodes
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(|n| {
                        if n.contains("://") {
                            n.to_string()
                        } else {
                            format!("redis://{n}")
                        }
                    })
                    .collect();
                if nodes.is_empty() {
                    bail!("REDIS_CLUSTER_NODES: give host:port of at least one node");
                }
                RedisTarget::Cluster(nodes)
            }
            None => {
                let url = get("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
                if !REDIS_SCHEMES.iter().any(|s| url.starts_with(s)) {
                    bail!("REDIS_URL must be a redis://, rediss:// or unix:// URL");
                }
                RedisTarget::Single(url)
            }
        };
        let redis_prefix = get("REDIS_PREFIX").unwrap_or_else(|| "commerce:".into());
        if redis_prefix.contains(['{', '}']) {
            bail!("REDIS_PREFIX must not contain {{ or }}: they would change the keys' hash slots");
        }
        let request_timeout = millis("REQUEST_TIMEOUT_MS", 15_000, 100, 600_000)?;
        let redis_timeout = millis("REDIS_TIMEOUT_MS", 250, 1, 60_000)?;
        if redis_timeout >= request_timeout {
            bail!("REDIS_TIMEOUT_MS must be shorter than REQUEST_TIMEOUT_MS");
        }
        let database_url = get("DATABASE_URL").context("DATABASE_URL is not set")?;
        if !database_url.starts_with("mysql://") {
            bail!("DATABASE_URL must be a mysql:// URL");
        }
        let trusted_proxies = match get("TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    p.parse::<ipnet::IpNet>()
                        .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .with_context(|| {
                            format!("TRUSTED_PROXIES={list}: {p} is not an address or a CIDR such as 10.0.0.0/8")
                        })
                })
                .collect::<anyhow::Result<Vec<ipnet::IpNet>>>()?,
        };
        // Trusting every address lets any client name its own rate-limit bucket.
        if let Some(all) = trusted_proxies.iter().find(|n| n.prefix_len() == 0) {
            bail!("TRUSTED_PROXIES={all} trusts every address: name the load balancers' addresses");
        }
        let ops_bind_addr = get("OPS_BIND_ADDR")
            .map(|a| a.parse().context("OPS_BIND_ADDR must be host:port"))
            .transpose()?;
        let database_read_url = get("DATABASE_READ_URL");
        if database_read_url
            .as_deref()
            .is_some_and(|u| !u.starts_with("mysql://"))
        {
            bail!("DATABASE_READ_URL must be a mysql:// URL");
        }
        Ok(Self {
            database_url,
            database_read_url,
            replica_max_lag: secs("REPLICA_MAX_LAG_SECS", 2, 0, 3600)?,
            redis,
            bind_addr: get("BIND_ADDR")
                .unwrap_or_else(|| "127.0.0.1:8080".into())
                .parse()
                .context("BIND_ADDR must be host:port")?,
            ops_bind_addr,
            trusted_proxies,
            header_read_timeout: millis("HEADER_READ_TIMEOUT_MS", 10_000, 100, 600_000)?,
            max_connections: count("MAX_CONNECTIONS", 10_000, 1, 1_000_000)? as usize,
            checkout_queue_max: count("CHECKOUT_QUEUE_MAX", 2_000, 1, 1_000_000)? as usize,
            max_order_lines: count("MAX_ORDER_LINES", 20, 1, 100)? as usize,
            admin_token,
            auth: AuthConfig {
                jwt_secret,
                disabled,
                issuer: get("AUTH_ISSUER"),
                audience: get("AUTH_AUDIENCE"),
                token_ttl: secs("AUTH_TOKEN_TTL_SECS", 3600, 1, 30 * DAY)?,
            },
            order_ttl: secs("ORDER_TTL_SECS", 600, 1, 30 * DAY)?,
            refund_window: secs("REFUND_WINDOW_SECS", 7 * DAY, 0, 365 * DAY)?,
            sweep_interval: millis("SWEEP_INTERVAL_MS", 250, 10, 3_600_000)?,
            redis_prefix,
            redis_timeout,
            redis_request_pool: count("REDIS_REQUEST_POOL", 0, 0, 1024)? as usize,
            stock_gate,
            reservation_hold: millis("RESERVATION_HOLD_MS", 10_000, 100, 600_000)?,
            sold_out_memory: millis("SOLD_OUT_MEMORY_MS", 1_000, 0, 60_000)?,
            batch_max: count("BATCH_MAX", 64, 1, 1000)? as usize,
            reconcile_interval: millis("RECONCILE_INTERVAL_MS", 60_000, 100, 86_400_000)?,
            request_timeout,
            shutdown_grace: millis("SHUTDOWN_GRACE_MS", 2_000, 0, 60_000)?,
            kafka: match get("KAFKA_BROKERS") {
                None => None,
                Some(brokers) => Some(KafkaConfig {
                    brokers,
                    topic: kafka_topic(get("KAFKA_TOPIC"))?,
                    partitions: count("KAFKA_PARTITIONS", 3, 1, 1000)? as i32,
                    retention: secs("OUTBOX_RETENTION_HOURS", 168, 1, 24 * 365)? * 3600,
                }),
            },
            db_max_connections: count("DB_MAX_CONNECTIONS", 32, 2, 1000)?,
            rate_limits: RateLimitConfig {
                per_ip_per_sec: count("RATE_LIMIT_PER_SEC", 1000, 0, u32::MAX)?,
                per_ip_burst: count("RATE_LIMIT_BURST", 2000, 0, u32::MAX)?,
                user_write_per_sec: count("USER_RATE_LIMIT_PER_SEC", 20, 0, u32::MAX)?,
                user_write_burst: count("USER_RATE_LIMIT_BURST", 40, 0, u32::MAX)?,
            },
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    fn with(extra: &[(&str, &str)]) -> anyhow::Result<Config> {
        let mut vars = vec![("DATABASE_URL", "mysql://x/y"), ("AUTH_JWT_SECRET", SECRET)];
        vars.extend_from_slice(extra);
        config(&vars)
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
        let c = with(&[]).unwrap();
        assert_eq!(c.order_ttl, Duration::from_secs(600));
        assert_eq!(c.refund_window, Duration::from_secs(604_800));
        assert_eq!(c.auth.token_ttl, Duration::from_secs(3600));
        assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.redis,
            RedisTarget::Single("redis://127.0.0.1:6379".into())
        );
        assert!(c.admin_token.is_none() && c.database_read_url.is_none());
    }

    #[test]
    fn a_short_jwt_secret_or_admin_token_is_refused() {
        let err = config(&[("DATABASE_URL", "mysql://x/y"), ("AUTH_JWT_SECRET", "s")]).unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
        let err = with(&[("ADMIN_TOKEN", "short")]).unwrap_err();
        assert!(err.to_string().contains("ADMIN_TOKEN"), "{err}");
        assert!(with(&[("ADMIN_TOKEN", "0123456789abcdef")]).is_ok());
    }

    /// A value out of range (or malformed) for every variable the README's table names
    /// that has a range or a form, and what else it needs set to be read.
    /// A variable, a value it refuses, and the variables it needs set to be read at all.
    type Refusal = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    );

    const REFUSED: &[Refusal] = &[
        ("DATABASE_URL", "postgres://x/y", &[]),
        ("DATABASE_READ_URL", "postgres://x/y", &[]),
        ("REPLICA_MAX_LAG_SECS", "3601", &[]),
        ("REDIS_URL", "http://127.0.0.1:6379", &[]),
        ("REDIS_CLUSTER_NODES", " , ", &[]),
        ("REDIS_PREFIX", "shop{1}:", &[]),
        ("REDIS_TIMEOUT_MS", "0", &[]),
        ("REDIS_REQUEST_POOL", "1025", &[]),
        ("BIND_ADDR", "localhost", &[]),
        ("OPS_BIND_ADDR", "9080", &[]),
        ("TRUSTED_PROXIES", "10.0.0.0/33", &[]),
        ("TRUSTED_PROXIES", "0.0.0.0/0", &[]),
        ("TRUSTED_PROXIES", "10.0.0.1,::/0", &[]),
        ("HEADER_READ_TIMEOUT_MS", "99", &[]),
        ("MAX_CONNECTIONS", "0", &[]),
        ("CHECKOUT_QUEUE_MAX", "1000001", &[]),
        ("MAX_ORDER_LINES", "0", &[]),
        ("MAX_ORDER_LINES", "101", &[]),
        ("ADMIN_TOKEN", "short", &[]),
        ("AUTH_JWT_SECRET", "too-short", &[]),
        ("AUTH_TOKEN_TTL_SECS", "0", &[]),
        ("AUTH_DISABLED", "maybe", &[]),
        ("ORDER_TTL_SECS", "ten", &[]),
        ("REFUND_WINDOW_SECS", "31536001", &[]),
        ("SWEEP_INTERVAL_MS", "-5", &[]),
        ("RECONCILE_INTERVAL_MS", "99", &[]),
        ("RESERVATION_HOLD_MS", "600001", &[]),
        ("SOLD_OUT_MEMORY_MS", "60001", &[]),
        ("BATCH_MAX", "0", &[]),
        ("REQUEST_TIMEOUT_MS", "99", &[]),
        ("SHUTDOWN_GRACE_MS", "60001", &[]),
        ("DB_MAX_CONNECTIONS", "1", &[]),
        ("STOCK_GATE", "postgres", &[]),
        ("RATE_LIMIT_PER_SEC", "99999999999", &[]),
        ("RATE_LIMIT_BURST", "-1", &[]),
        ("USER_RATE_LIMIT_PER_SEC", "1.5", &[]),
        ("USER_RATE_LIMIT_BURST", "lots", &[]),
        ("KAFKA_TOPIC", "orders paid", &[("KAFKA_BROKERS", "k:9092")]),
        ("KAFKA_PARTITIONS", "0", &[("KAFKA_BROKERS", "k:9092")]),
        (
            "OUTBOX_RETENTION_HOURS",
            "8761",
            &[("KAFKA_BROKERS", "k:9092")],
        ),
        ("LOG_FORMAT", "xml", &[]),
    ];

    /// Variables of the table without a range or a form of their own: free text, or read
    /// elsewhere (the seed sizes: `seed::Size`, tested there).
    const FREE: &[&str] = &[
        "AUTH_ISSUER",
        "AUTH_AUDIENCE",
        "KAFKA_BROKERS",
        "RUST_LOG",
        "SEED_PRODUCTS",
        "SEED_USERS",
    ];

    #[test]
    fn every_variable_out_of_range_is_refused_naming_it() {
        for (key, bad, needs) in REFUSED {
            let mut vars: Vec<(&str, &str)> = needs.to_vec();
            vars.push((key, bad));
            // The required ones themselves: only the bad value stands in.
            let mut all = vec![("DATABASE_URL", "mysql://x/y"), ("AUTH_JWT_SECRET", SECRET)];
            all.retain(|(k, _)| k != key);
            all.extend(vars);
            let err = config(&all).expect_err(key);
            assert!(err.to_string().starts_with(key), "{key}={bad}: {err}");
        }
        // Two that are fine alone and not together.
        let err = with(&[
            ("REDIS_TIMEOUT_MS", "20000"),
            ("REQUEST_TIMEOUT_MS", "10000"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("shorter"), "{err}");
    }

    /// The variable names of the README's configuration table.
    fn readme_variables() -> Vec<String> {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .unwrap_or_default();
        let mut names = Vec::new();
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let first_cell = line.split('|').nth(1).unwrap_or_default();
            let mut previous = String::new();
            for name in first_cell.split('`').skip(1).step_by(2) {
                // `RATE_LIMIT_PER_SEC` / `_BURST`: the second is RATE_LIMIT_BURST.
                let name = match name.strip_prefix('_') {
                    Some(suffix) => match previous.rsplit_once("_PER_SEC") {
                        Some((stem, _)) => format!("{stem}_{suffix}"),
                        None => name.to_string(),
                    },
                    None => name.to_string(),
                };
                if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    previous = name.clone();
                    names.push(name);
                }
            }
        }
        names
    }

    #[test]
    fn every_variable_of_the_readme_is_checked_or_free() {
        let names = readme_variables();
        assert!(names.len() > 40, "the table was not found: {names:?}");
        for name in &names {
            assert!(
                REFUSED.iter().any(|(k, _, _)| k == name) || FREE.contains(&name.as_str()),
                "{name} is in the README's table but nothing checks it is refused out of range"
            );
        }
        for (key, _, _) in REFUSED {
            assert!(
                names.iter().any(|n| n == key),
                "{key} is not in the README's table"
            );
        }
    }

    #[test]
    fn every_bounded_value_is_accepted_at_its_edges() {
        let c = with(&[
            ("REPLICA_MAX_LAG_SECS", "3600"),
            ("HEADER_READ_TIMEOUT_MS", "100"),
            ("MAX_CONNECTIONS", "1"),
            ("SOLD_OUT_MEMORY_MS", "0"),
            ("SHUTDOWN_GRACE_MS", "60000"),
            ("DB_MAX_CONNECTIONS", "2"),
            ("RATE_LIMIT_PER_SEC", "0"),
            ("REDIS_URL", "rediss://cache.example:6380"),
            ("KAFKA_BROKERS", "k:9092"),
            ("KAFKA_TOPIC", "shop.orders_paid-v2"),
        ])
        .unwrap();
        assert_eq!(c.max_connections, 1);
        assert_eq!(
            c.kafka.map(|k| k.topic).as_deref(),
            Some("shop.orders_paid-v2")
        );
    }

    #[test]
    fn cluster_nodes_replace_the_redis_url() {
        let c = with(&[("REDIS_CLUSTER_NODES", "127.0.0.1:7001, 127.0.0.1:7002")]).unwrap();
        assert_eq!(
            c.redis,
            RedisTarget::Cluster(vec![
                "redis://127.0.0.1:7001".into(),
                "redis://127.0.0.1:7002".into()
            ])
        );
    }
}
