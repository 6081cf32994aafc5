//! `spawn_app()`: a fresh database, the migrations, the real router on a random port.

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
    time::Duration,
};

use commerce_api::{
    app::{build_ops, routes, serve, spawn_background, with_middleware},
    auth::TokenService,
    build_app,
    config::{AuthConfig, Config, LogFormat, RateLimitConfig, RedisTarget},
    db, AppState,
};
use metrics_exporter_prometheus::PrometheusHandle;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sqlx::MySqlPool;

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const JWT_SECRET: &str = "test-jwt-secret-of-at-least-32-bytes";

pub struct TestApp {
    /// The instance itself, for what a test must watch from inside (a batch's queue).
    pub state: AppState,
    pub base: String,
    /// The ops listener (`/readyz`, `/metrics`) when `ops_bind_addr` is set.
    pub ops_base: Option<String>,
    pub client: reqwest::Client,
    pub db: MySqlPool,
    pub tokens: TokenService,
    pub config: Config,
}

fn metrics_handle() -> PrometheusHandle {
    // The recorder is process-wide; every app of this test process shares it.
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| commerce_api::telemetry::install_metrics().expect("metrics recorder"))
        .clone()
}

/// The sum of the samples of counter `name` whose labels include every `key="value"` of
/// `labels`, as this test process's recorder renders them. The recorder is process-wide
/// and every test is its own process (nextest), so this counts what this test's in-process
/// apps did.
pub fn counter(name: &str, labels: &[&str]) -> f64 {
    metrics_handle()
        .render()
        .lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, tags) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|l| tags.contains(l)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A name no other test of any process uses (databases, prefixes, topics, groups).
pub fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "commerce_test_{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP port free right now on 127.0.0.1, for a process the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The Redis the tests share (each under its own prefix).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn test_config() -> Config {
    let base = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "mysql://commerce:commerce@127.0.0.1:3306".into());
    let name = unique_name();
    Config {
        database_url: format!("{}/{}", base.trim_end_matches('/'), name),
        database_read_url: None,
        replica_max_lag: Duration::from_secs(2),
        redis: RedisTarget::Single(redis_url()),
        bind_addr: "127.0.0.1:0".parse().expect("address"),
        ops_bind_addr: None,
        trusted_proxies: Vec::new(),
        header_read_timeout: Duration::from_secs(10),
        max_connections: 10_000,
        checkout_queue_max: 2_000,
        max_order_lines: 20,
        admin_token: Some(ADMIN_TOKEN.into()),
        auth: AuthConfig {
            jwt_secret: Some(JWT_SECRET.into()),
            disabled: false,
            issuer: None,
            audience: None,
            token_ttl: Duration::from_secs(3600),
        },
        order_ttl: Duration::from_secs(600),
        refund_window: Duration::from_secs(7 * 86_400),
        sweep_interval: Duration::from_millis(100),
        redis_prefix: format!("{name}:"),
        redis_timeout: Duration::from_millis(250),
        redis_request_pool: 0,
        stock_gate: true,
        reservation_hold: Duration::from_secs(10),
        sold_out_memory: Duration::from_secs(1),
        batch_max: 64,
        // Only at start-up unless a test asks: a reconciler repairing Redis behind a test's
        // back would hide the drift the test looks for.
        reconcile_interval: Duration::from_secs(3600),
        request_timeout: Duration::from_secs(15),
        shutdown_grace: Duration::from_secs(2),
        kafka: None,
        db_max_connections: 20,
        // Off by default so the concurrency tests measure the service, not the limiter.
        rate_limits: RateLimitConfig {
            per_ip_per_sec: 0,
            per_ip_burst: 0,
            user_write_per_sec: 0,
            user_write_burst: 0,
        },
        log_format: LogFormat::Pretty,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

/// Starts the app with a test configuration changed by `tweak`.
pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config();
    tweak(&mut config);
    start(config).await
}

/// A second instance on the same MySQL database and Redis prefix as `other`.
pub async fn spawn_sharing(other: &TestApp, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = other.config.clone();
    tweak(&mut config);
    start(config).await
}

/// An app serving `extra` beside every route, behind the same middleware (a route that
/// panics, say).
pub async fn spawn_with_routes(extra: axum::Router<AppState>) -> TestApp {
    start_serving(test_config(), move |state| {
        with_middleware(routes(&state).merge(extra), state)
    })
    .await
}

async fn start(config: Config) -> TestApp {
    start_serving(config, build_app).await
}

async fn start_serving(config: Config, router: impl FnOnce(AppState) -> axum::Router) -> TestApp {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let pool = db::connect(&config.database_url, config.db_max_connections)
        .await
        .expect("test database");
    // The test's own connections: an app whose pool is exhausted (the point of some
    // tests) must not starve the test's queries and locks.
    let probe = db::pool(&config.database_url, 8).await.expect("test pool");
    let tokens = TokenService::new(&config.auth);
    let state = AppState::new(config.clone(), pool.clone(), Some(metrics_handle()))
        .await
        .expect("state");
    spawn_background(&state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ops_base = match config.ops_bind_addr {
        Some(_) => {
            let ops = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind ops");
            let ops_addr = ops.local_addr().expect("ops addr");
            let served = state.clone();
            tokio::spawn(async move {
                serve(
                    &served,
                    ops,
                    build_ops(served.clone()),
                    std::future::pending(),
                )
                .await
            });
            Some(format!("http://{ops_addr}"))
        }
        None => None,
    };
    let served = state.clone();
    let router = router(served.clone());
    tokio::spawn(async move { serve(&served, listener, router, std::future::pending()).await });
    TestApp {
        state,
        base: format!("http://{addr}"),
        ops_base,
        // Every request of a test has a bound: a hung answer fails the test that sent it,
        // naming it, instead of the whole run's slow-timeout (issue 26, item 19).
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client"),
        db: probe,
        tokens,
        config,
    }
}

/// The start of a checkout batch's locking read of its product (one waiting on the row
/// lock shows in the process list).
pub const BATCH_PRODUCT_LOCK: &str = "SELECT price, stock, reserved, sold, per_user_limit";
/// The start of a checkout batch's locking read of its users.
pub const BATCH_USER_LOCK: &str = "SELECT id, balance, held FROM users";

/// How many statements of this app's database that start with `sql` are running now (one
/// waiting on a row lock shows here): the barrier for "the request is now blocked".
pub async fn statements_running(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND INFO LIKE ?",
    )
    .bind(format!("{sql}%"))
    .fetch_one(&app.db)
    .await
    .expect("processlist")
}

/// A problem without its `request_id` (which differs per request by design).
pub fn without_request_id(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("request_id");
    }
    body
}

/// A response read whole: status, a header or two, and the JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub async fn read(response: Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Self {
            status,
            content_type,
            headers,
            body,
        }
    }

    /// Asserts a problem+json answer with this status and code.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        assert_eq!(self.body["code"], code, "{self:?}");
        assert_eq!(self.body["status"], status, "{self:?}");
        assert!(
            self.body["type"].is_string()
                && self.body["title"].is_string()
                && self.body["detail"].is_string()
        );
        assert_eq!(
            self.body["request_id"].as_str(),
            self.headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            "a problem carries its response's request id: {self:?}"
        );
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        &self.body
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A plain-text body (`/metrics`).
    pub async fn get_text(&self, path: &str) -> String {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        r.text().await.expect("text")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Reply::read(req.send().await.expect("request")).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.post_with_key(path, token, body, None).await
    }

    pub async fn post_with_key(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
        key: Option<&str>,
    ) -> Reply {
        let mut req = self.client.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        Reply::read(req.send().await.expect("request")).await
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Reply {
        let req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body);
        Reply::read(req.send().await.expect("request")).await
    }

    pub async fn create_user(&self, name: &str) -> i64 {
        let r = self
            .admin(
                reqwest::Method::POST,
                "/v1/admin/users",
                json!({"name": name}),
            )
            .await;
        r.assert_status(201)["id"].as_i64().expect("id")
    }

    pub async fn create_product(&self, price: i64, stock: i64) -> i64 {
        let r = self
            .admin(
                reqwest::Method::POST,
                "/v1/admin/products",
                json!({"name": "thing", "price": price, "stock": stock}),
            )
            .await;
        r.assert_status(201)["id"].as_i64().expect("id")
    }

    pub fn token(&self, user_id: i64) -> String {
        self.tokens.mint(user_id).expect("token").token
    }

    /// A user with `balance` points and a token.
    pub async fn funded_user(&self, balance: i64) -> (i64, String) {
        let id = self.create_user("buyer").await;
        let token = self.token(id);
        if balance > 0 {
            self.charge(id, &token, balance).await.assert_status(200);
        }
        (id, token)
    }

    pub async fn charge(&self, user_id: i64, token: &str, amount: i64) -> Reply {
        self.post(
            &format!("/v1/users/{user_id}/points/charge"),
            Some(token),
            json!({"amount": amount}),
        )
        .await
    }

    pub async fn order(
        &self,
        user_id: i64,
        token: &str,
        product_id: i64,
        quantity: i64,
        price: i64,
    ) -> Reply {
        self.post(
            "/v1/orders",
            Some(token),
            json!({"user_id": user_id, "product_id": product_id, "quantity": quantity, "price": price}),
        )
        .await
    }

    pub async fn pay(&self, token: &str, order_id: i64) -> Reply {
        self.post("/v1/payments", Some(token), json!({"order_id": order_id}))
            .await
    }

    /// The order's status as its owner reads it through the API.
    pub async fn order_status(&self, token: &str, order_id: i64) -> String {
        let r = self
            .get(&format!("/v1/orders/{order_id}"), Some(token))
            .await;
        r.assert_status(200)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Forgets the points `user_id`'s PENDING orders hold, as if they had been placed
    /// before orders held points (SPEC F1): only such orders can still meet Y5 at payment.
    pub async fn as_if_placed_before_holds(&self, user_id: i64) {
        sqlx::query("UPDATE users SET held = 0 WHERE id = ?")
            .bind(user_id)
            .execute(&self.db)
            .await
            .expect("held");
    }

    pub async fn balance(&self, user_id: i64) -> i64 {
        sqlx::query_scalar("SELECT balance FROM users WHERE id = ?")
            .bind(user_id)
            .fetch_one(&self.db)
            .await
            .expect("balance")
    }

    /// (available, unsold stock, reserved, sold) straight from MySQL.
    pub async fn product_row(&self, id: i64) -> (i64, i64, i64, i64) {
        sqlx::query_as("SELECT stock - reserved, stock, reserved, sold FROM products WHERE id = ?")
            .bind(id)
            .fetch_one(&self.db)
            .await
            .expect("product")
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db)
            .await
            .expect("count")
    }

    /// The point-history proof: balance = Σ charges − Σ uses + Σ refunds.
    pub async fn assert_points_conserved(&self, user_id: i64) {
        let from_history: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(CASE kind WHEN 'USE' THEN -amount ELSE amount END), 0) AS SIGNED) \
             FROM point_history WHERE user_id = ?",
        )
        .bind(user_id)
        .fetch_one(&self.db)
        .await
        .expect("history sum");
        assert_eq!(self.balance(user_id).await, from_history, "user {user_id}");
    }

    /// `n` users with `balance` points each (written straight to MySQL, with the CHARGE
    /// history rows that prove the balance) and their tokens.
    pub async fn bulk_buyers(&self, n: usize, balance: i64) -> Vec<(i64, String)> {
        if n == 0 {
            return Vec::new();
        }
        let tag = format!("bulk-{}", unique_name());
        let now = chrono::Utc::now().naive_utc();
        let mut users = sqlx::QueryBuilder::new("INSERT INTO users (name, balance, created_at) ");
        users.push_values(0..n, |mut row, _| {
            row.push_bind(&tag).push_bind(balance).push_bind(now);
        });
        users.build().execute(&self.db).await.expect("users");
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM users WHERE name = ? ORDER BY id")
            .bind(&tag)
            .fetch_all(&self.db)
            .await
            .expect("ids");
        let mut history = sqlx::QueryBuilder::new(
            "INSERT INTO point_history (user_id, kind, amount, balance_after, created_at) ",
        );
        history.push_values(&ids, |mut row, id| {
            row.push_bind(id)
                .push_bind("CHARGE")
                .push_bind(balance)
                .push_bind(balance)
                .push_bind(now);
        });
        history.build().execute(&self.db).await.expect("history");
        ids.into_iter().map(|id| (id, self.token(id))).collect()
    }

    /// A client of this app's Redis (one server).
    pub fn redis(&self) -> redis::Client {
        match &self.config.redis {
            RedisTarget::Single(url) => redis::Client::open(url.as_str()).expect("redis client"),
            RedisTarget::Cluster(_) => panic!("this helper speaks to one Redis server"),
        }
    }

    /// One command on this app's Redis, one server or a cluster.
    pub async fn redis_cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        match &self.config.redis {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str()).expect("redis client");
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis");
                cmd.query_async(&mut conn).await.expect("redis command")
            }
            RedisTarget::Cluster(nodes) => {
                let client =
                    redis::cluster::ClusterClient::new(nodes.clone()).expect("cluster client");
                let mut conn = client.get_async_connection().await.expect("cluster");
                cmd.query_async(&mut conn).await.expect("redis command")
            }
        }
    }

    /// The stock gate's hash of a product: (avail, sold, PENDING reservations held, in-flight).
    pub async fn redis_stock(&self, product: i64) -> (Option<i64>, Option<i64>, usize, usize) {
        let key = format!("{}{{p{product}}}", self.config.redis_prefix);
        let all: std::collections::HashMap<String, String> =
            self.redis_cmd(redis::cmd("HGETALL").arg(&key)).await;
        let number = |f: &str| all.get(f).and_then(|v| v.parse().ok());
        let held = all.keys().filter(|k| k.starts_with("h:")).count();
        let inflight = all.keys().filter(|k| k.starts_with("r:")).count();
        (number("avail"), number("sold"), held, inflight)
    }

    /// Where Redis's view of a product differs from MySQL's, if it does: available stock,
    /// sold, and one held reservation per PENDING order (whose quantities MySQL's
    /// `reserved` sums), none in flight.
    pub async fn redis_disagreement(&self, product: i64) -> Option<String> {
        let (available, _, reserved, sold) = self.product_row(product).await;
        let (count, sum): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(quantity), 0) AS SIGNED) FROM orders \
             WHERE product_id = ? AND status = 'PENDING'",
        )
        .bind(product)
        .fetch_one(&self.db)
        .await
        .expect("pending");
        let redis = self.redis_stock(product).await;
        let mysql = (Some(available), Some(sold), count as usize, 0);
        (sum != reserved || redis != mysql).then(|| {
            format!("MySQL (avail, sold, pending, in-flight) = {mysql:?}, reserved {reserved} vs Σ pending {sum}; Redis = {redis:?}")
        })
    }

    pub async fn assert_redis_matches_mysql(&self, product: i64) {
        if let Some(diff) = self.redis_disagreement(product).await {
            panic!("{diff}");
        }
    }

    /// Waits up to `within` for Redis to agree with MySQL about `product` (a reconciler
    /// at work), then asserts it.
    pub async fn eventually_redis_matches_mysql(&self, product: i64, within: Duration) {
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            if self.redis_disagreement(product).await.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.assert_redis_matches_mysql(product).await;
    }
}

/// Asks `check` every 10 ms until it answers `Some`, and returns that; after `within`,
/// fails saying what it waited for and what the last answer was. Every wait of the suite
/// goes through here, so none can hang.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = std::time::Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if start.elapsed() >= within => {
                panic!("waited {within:?} for {what}; the last check said: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// [`eventually`] for a count that only grows: waits until `count()` reaches `n`; the
/// failure says `what` and the last count.
pub async fn at_least<T, F>(within: Duration, what: &str, n: T, mut count: F)
where
    T: PartialOrd + std::fmt::Display,
    F: FnMut() -> T,
{
    eventually(within, what, || {
        let now = count();
        let reached = now >= n;
        async move {
            if reached {
                Ok(())
            } else {
                Err(format!("{now} so far"))
            }
        }
    })
    .await
}

/// [`eventually`] for a yes-or-no condition; `failure` says what went wrong if it never
/// holds.
pub async fn until<F, Fut>(within: Duration, failure: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "{failure} (waited {within:?})");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`until`] for code off the runtime (a process being started, a thread): blocks.
pub fn block_until(within: Duration, failure: &str, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "{failure} (waited {within:?})");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `n` statements starting with `sql` are running (blocked on a lock).
pub async fn until_running(app: &TestApp, sql: &str, n: i64) {
    let start = std::time::Instant::now();
    loop {
        let now = statements_running(app, sql).await;
        if now >= n {
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let running: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT COMMAND, COALESCE(STATE, ''), COALESCE(INFO, '') FROM information_schema.PROCESSLIST WHERE DB = DATABASE()",
            )
            .fetch_all(&app.db)
            .await
            .unwrap_or_default();
            panic!("{now} of {n} statements `{sql}…` running; running: {running:#?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Cancels racing the expiry sweeper on the same orders, made certain with the product's
/// row lock held by the test:
/// 1. the first half's cancels lock their orders, then wait on the product;
/// 2. the orders expire; the sweeper claims the rest (skipping the first half's) and waits
///    on the product too;
/// 3. the second half's cancels wait on the orders the sweeper holds;
/// 4. the lock goes, and all of them finish.
///
/// Returns the cancels' replies in `orders`' order. The app must sweep often; the orders
/// are given one expiry a second from now, so the sweeper claims them in one go. Each
/// order must be another user's: a cancel holds its user's row (the points hold) while it
/// waits on the product, and the sweeper must get past the users of its own orders.
pub async fn cancels_racing_the_sweeper(
    app: &TestApp,
    product: i64,
    orders: &[(String, i64)],
) -> Vec<Reply> {
    const PRODUCT_LOCK: &str = "SELECT id FROM products WHERE id IN";
    const ORDER_LOCK: &str = "SELECT id, user_id, product_id, quantity, unit_price, total_amount, \
         status, created_at, expires_at, paid_at, hold, parent_id, line_count FROM orders WHERE id =";
    let ids: Vec<String> = orders.iter().map(|(_, id)| id.to_string()).collect();
    sqlx::query(&format!(
        "UPDATE orders SET expires_at = UTC_TIMESTAMP(6) + INTERVAL 1 SECOND WHERE id IN ({})",
        ids.join(",")
    ))
    .execute(&app.db)
    .await
    .expect("one expiry");
    let mut lock = app.db.begin().await.expect("begin");
    sqlx::query("SELECT id FROM products WHERE id = ? FOR UPDATE")
        .bind(product)
        .fetch_one(&mut *lock)
        .await
        .expect("product lock");
    let cancel = |token: &String, id: i64| {
        let req = app
            .client
            .post(app.url(&format!("/v1/orders/{id}/cancel")))
            .bearer_auth(token)
            .json(&json!({}));
        tokio::spawn(async move { Reply::read(req.send().await.expect("request")).await })
    };
    let (first, second) = orders.split_at(orders.len() / 2);
    let mut replies: Vec<_> = first.iter().map(|(t, id)| cancel(t, *id)).collect();
    until_running(app, PRODUCT_LOCK, first.len() as i64).await;
    let start = std::time::Instant::now();
    while sqlx::query_scalar::<_, i64>(&format!(
        "SELECT COUNT(*) FROM orders WHERE id IN ({}) AND expires_at > UTC_TIMESTAMP(6)",
        ids.join(",")
    ))
    .fetch_one(&app.db)
    .await
    .expect("expiry")
        > 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the orders never expired"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until_running(app, PRODUCT_LOCK, first.len() as i64 + 1).await; // the sweeper
    replies.extend(second.iter().map(|(t, id)| cancel(t, *id)));
    until_running(app, ORDER_LOCK, second.len() as i64).await;
    lock.rollback().await.expect("release");
    let mut out = Vec::new();
    for r in replies {
        out.push(r.await.expect("cancel"));
    }
    out
}

/// The service binary as a child process on `app`'s database and Redis prefix (so the test
/// can `kill -9` it), killed when dropped.
pub struct ServiceProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl ServiceProcess {
    /// Starts it with the test's secrets, the rate limits off, and `env` on top; waits
    /// until it answers.
    pub async fn start(app: &TestApp, env: &[(&str, &str)]) -> ServiceProcess {
        let port = free_port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_commerce-api"));
        cmd.env("DATABASE_URL", &app.config.database_url)
            .env("REDIS_URL", redis_url())
            .env("REDIS_PREFIX", &app.config.redis_prefix)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("AUTH_JWT_SECRET", JWT_SECRET)
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RATE_LIMIT_PER_SEC", "0")
            .env("USER_RATE_LIMIT_PER_SEC", "0")
            .env("RUST_LOG", "error");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("the service binary");
        let base = format!("http://127.0.0.1:{port}");
        let start = std::time::Instant::now();
        while reqwest::get(format!("{base}/healthz")).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the binary did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ServiceProcess { child, base }
    }

    /// SIGTERM: the process drains and exits by itself.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits up to `within` for the process to exit; its exit status.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        eventually(within, "the process to exit", || {
            let status = child.try_wait();
            async move {
                match status {
                    Ok(Some(status)) => Ok(status),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
    }

    /// `kill -9`: nothing of the process runs after this returns.
    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Locks one row of `table` (`users`, `products`, `orders`) until the transaction ends:
/// whatever needs it waits meanwhile.
pub async fn hold_row(
    app: &TestApp,
    table: &str,
    id: i64,
) -> sqlx::Transaction<'static, sqlx::MySql> {
    let mut tx = app.db.begin().await.expect("begin");
    sqlx::query(&format!("SELECT id FROM {table} WHERE id = ? FOR UPDATE"))
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .expect("row lock");
    tx
}

/// An app whose Redis is reached through a [`crate::proxy::Proxy`] the test controls.
pub async fn spawn_behind_proxy(tweak: impl FnOnce(&mut Config)) -> (TestApp, crate::proxy::Proxy) {
    let upstream = redis_url();
    let proxy = crate::proxy::Proxy::start(
        upstream
            .trim_start_matches("redis://")
            .trim_end_matches('/'),
    )
    .await;
    let url = proxy.url.clone();
    let app = spawn_with(|c| {
        c.redis = RedisTarget::Single(url);
        tweak(c);
    })
    .await;
    (app, proxy)
}
