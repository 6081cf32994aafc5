//! Issue 21: one client must not starve the others — slow connections, the connection cap,
//! the bounded checkout queue, cleanup that keeps up, unknown ids, the client behind a
//! proxy, request ids, what is exposed and how answers may be kept.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use chrono::Utc;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    haproxy::HaProxy,
    helpers::{
        counter, eventually, hold_row, spawn_app, spawn_sharing, spawn_with, until_running, Reply,
        TestApp, BATCH_PRODUCT_LOCK, JWT_SECRET,
    },
    proxy::{Mode, Proxy},
};

fn addr(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the server closes the connection (EOF, or reset); how long that took.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection was still open after {within:?}"),
        }
    }
}

/// One `GET /healthz` on `stream`, answered 200 (the connection stays open).
async fn assert_served(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The whole answer: its head, then `content-length` bytes of body.
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    let complete = |answer: &[u8]| {
        let text = String::from_utf8_lossy(answer);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })?
            .parse::<usize>()
            .ok()?;
        (body.len() >= length).then_some(())
    };
    while complete(&answer).is_none() {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed mid-answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

// Resource consumption (OWASP API4).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_trickled_slowly_is_cut_at_the_header_read_timeout() {
    let app = spawn_with(|c| c.header_read_timeout = Duration::from_millis(500)).await;
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let closed = until_closed(&mut slow, Duration::from_secs(3)).await;
    assert!(
        closed < Duration::from_millis(1500),
        "closed after {closed:?}"
    );
    // Everyone else is served meanwhile and after.
    app.get("/healthz", None).await.assert_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_while_the_open_ones_are_served() {
    let app = spawn_with(|c| c.max_connections = 4).await;
    // Four connections, each served once (so certainly accepted, each holding a place)
    // and kept open.
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
        assert_served(&mut stream).await;
        open.push(stream);
    }
    let mut fifth = TcpStream::connect(addr(&app)).await.unwrap();
    let _ = fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    until_closed(&mut fifth, Duration::from_secs(2)).await;
    assert_eq!(counter("http_connections_refused_total", &[]), 1.0);
    // The open ones still work.
    for stream in &mut open {
        assert_served(stream).await;
    }
    // One closed, a place is free again.
    drop(open);
    eventually(Duration::from_secs(2), "a place to free up", || async {
        match reqwest::get(app.url("/healthz")).await {
            Ok(r) if r.status() == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_checkout_queue_answers_503_at_once_and_gives_the_reservation_back() {
    let app = spawn_with(|c| c.checkout_queue_max = 3).await;
    let product = app.create_product(100, 100).await;
    let buyers = app.bulk_buyers(10, 1_000).await;
    app.state.stock.sync(&[product]).await.unwrap();
    let lock = hold_row(&app, "products", product).await;
    let order = |i: usize| {
        let (user, token) = buyers[i].clone();
        let req = app
            .client
            .post(app.url("/v1/orders"))
            .bearer_auth(token)
            .json(&json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100}));
        tokio::spawn(async move { Reply::read(req.send().await.unwrap()).await })
    };
    // One in flight on the held row, three waiting: the queue is full.
    let mut waiting = vec![order(0)];
    until_running(&app, BATCH_PRODUCT_LOCK, 1).await;
    waiting.extend((1..4).map(order));
    eventually(Duration::from_secs(5), "three queued", || async {
        match app.state.checkout.queued(product) {
            3 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    for i in 4..10 {
        let started = Instant::now();
        let r = order(i).await.unwrap();
        r.assert_problem(503, "DEPENDENCY_UNAVAILABLE");
        assert_eq!(r.headers["retry-after"], "1");
        assert!(started.elapsed() < Duration::from_secs(1), "not at once");
    }
    lock.rollback().await.unwrap();
    for w in waiting {
        w.await.unwrap().assert_status(201);
    }
    assert_eq!(
        app.product_row(product).await.2,
        4,
        "reserved: the four served"
    );
    app.eventually_redis_matches_mysql(product, Duration::from_secs(2))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_deletes_every_expired_key_and_published_event_and_keeps_the_rest() {
    let app = spawn_app().await;
    // 0–9, to count rows into being.
    sqlx::query("CREATE TABLE digits (d INT) SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9")
        .execute(&app.db)
        .await
        .unwrap();
    let old = Utc::now().naive_utc() - chrono::Duration::hours(25);
    let fresh = Utc::now().naive_utc();
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, idem_key, request_hash, response_status, response_body, created_at) \
         SELECT 'test', CONCAT('k', i), REPEAT('0', 64), 200, '{}', IF(i <= 5000, ?, ?) \
         FROM (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 1 AS i FROM digits a, digits b, digits c, digits e) n \
         WHERE i <= 5010",
    )
    .bind(old)
    .bind(fresh)
    .execute(&app.db)
    .await
    .unwrap();
    // One pass leaves no expired key, whatever its size. (The instance's own cleaner may
    // run a pass meanwhile — its first comes at start-up, late on a loaded machine — and
    // take some of them: then this pass deletes the rest, and still none is left.)
    let deleted = commerce_api::idempotency::prune(&app.db).await.unwrap();
    assert!(deleted <= 5000, "{deleted} deleted");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM idempotency_keys").await,
        10,
        "every expired key in one pass, the fresh ones kept"
    );

    let week = Utc::now().naive_utc() - chrono::Duration::days(8);
    sqlx::query(
        "INSERT INTO outbox (aggregate_id, event_type, payload, created_at, published_at) \
         SELECT i, 'order.paid', '{}', ?, CASE WHEN i <= 5000 THEN ? WHEN i <= 5010 THEN ? END \
         FROM (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 1 AS i FROM digits a, digits b, digits c, digits e) n \
         WHERE i <= 5020",
    )
    .bind(week)
    .bind(week)
    .bind(fresh)
    .execute(&app.db)
    .await
    .unwrap();
    let deleted = commerce_api::events::relay::prune(&app.db, Duration::from_secs(7 * 86_400))
        .await
        .unwrap();
    assert!(deleted <= 5000, "{deleted} deleted");
    // Ten published lately and ten never published (old as they are) remain.
    assert_eq!(app.count("SELECT COUNT(*) FROM outbox").await, 20);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
            .await,
        10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_product_costs_mysql_once_and_its_creation_ends_that_everywhere() {
    let a = spawn_app().await;
    let b = spawn_sharing(&a, |_| {}).await;
    let (user, token) = a.funded_user(10_000).await;
    let known = a.create_product(100, 10).await;
    let next = known + 1;
    let store = &b.state.catalog.cache.store;
    let before = store.refreshes();
    for _ in 0..5 {
        b.get(&format!("/v1/products/{next}"), None)
            .await
            .assert_problem(404, "PRODUCT_NOT_FOUND");
        b.order(user, &token, next, 1, 100)
            .await
            .assert_problem(404, "PRODUCT_NOT_FOUND");
    }
    assert_eq!(
        store.refreshes() - before,
        1,
        "MySQL asked once for the missing id"
    );
    let key = format!("{}{{p{next}}}", a.config.redis_prefix);
    assert!(
        !a.redis_cmd::<bool>(redis::cmd("EXISTS").arg(&key)).await,
        "no gate key built"
    );
    // Created on A: B knows it at once (the invalidation channel), no 404 remembered.
    assert_eq!(a.create_product(100, 10).await, next);
    eventually(
        Duration::from_secs(1),
        "B to know the new product",
        || async {
            let r = b.get(&format!("/v1/products/{next}"), None).await;
            match r.status.as_u16() {
                200 => Ok(()),
                s => Err(s.to_string()),
            }
        },
    )
    .await;
    b.order(user, &token, next, 1, 100).await.assert_status(201);
}

// Identity at the proxy.

/// A client whose connections come from `source` (a loopback address of its own).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_haproxy_each_client_has_its_own_bucket_and_a_forged_header_counts_for_nothing() {
    let app = spawn_with(|c| {
        c.rate_limits.per_ip_per_sec = 1;
        c.rate_limits.per_ip_burst = 3;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let proxy = HaProxy::start(&[&app.base]).await;
    let (a, b) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    let get = |client: &reqwest::Client, base: &str, forged: Option<&str>| {
        let mut req = client.get(format!("{base}/v1/products"));
        if let Some(f) = forged {
            req = req.header("X-Forwarded-For", f);
        }
        let req = req.send();
        async move { req.await.unwrap().status().as_u16() }
    };
    // A spends its burst (and a forged header does not make it somebody else).
    let mut a_statuses = Vec::new();
    for i in 0..5 {
        a_statuses.push(get(&a, &proxy.url, Some(&format!("10.9.9.{i}"))).await);
    }
    assert_eq!(a_statuses, [200, 200, 200, 429, 429], "A through HAProxy");
    // B is another client, served.
    assert_eq!(get(&b, &proxy.url, None).await, 200, "B through HAProxy");
    // Straight to the instance from an untrusted peer, X-Forwarded-For is ignored: the
    // peer is the key, however the header changes.
    let direct = client_from("127.0.0.4");
    let mut forged = Vec::new();
    for i in 0..5 {
        forged.push(get(&direct, &app.base, Some(&format!("192.0.2.{i}"))).await);
    }
    assert_eq!(
        forged,
        [200, 200, 200, 429, 429],
        "an untrusted peer with forged headers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_request_id_is_kept_only_when_it_is_sane() {
    let app = spawn_app().await;
    let ask = |id: String| {
        let req = app
            .client
            .get(app.url("/v1/products/999999"))
            .header("x-request-id", id);
        async move { Reply::read(req.send().await.unwrap()).await }
    };
    let kept = ask("order-abc_123".into()).await;
    assert_eq!(kept.headers["x-request-id"], "order-abc_123");
    assert_eq!(kept.body["request_id"], "order-abc_123");
    for junk in [
        "x".repeat(65),
        "has space".into(),
        "tab\there".into(),
        "é".into(),
    ] {
        let r = ask(junk.clone()).await;
        let id = r.headers["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(id, junk);
        assert_eq!(id.len(), 36, "a UUID of the service's: {id}");
        assert_eq!(r.body["request_id"], id.as_str());
    }
}

// Exposure.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_an_ops_listener_metrics_and_readiness_leave_the_public_one() {
    let app = spawn_with(|c| c.ops_bind_addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let ops = app.ops_base.clone().unwrap();
    for path in ["/metrics", "/readyz"] {
        app.get(path, None).await.assert_problem(404, "NOT_FOUND");
        let r = reqwest::get(format!("{ops}{path}")).await.unwrap();
        assert_eq!(r.status(), 200, "{path} on the ops listener");
    }
    app.get("/healthz", None).await.assert_status(200);
    app.get("/v1/products", None).await.assert_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_answers_from_a_result_at_most_a_second_old() {
    let upstream = crate::helpers::redis_url();
    let redis = Proxy::start(
        upstream
            .trim_start_matches("redis://")
            .trim_end_matches('/'),
    )
    .await;
    let url = redis.url.clone();
    let app = spawn_with(|c| c.redis = commerce_api::config::RedisTarget::Single(url)).await;
    let ready = || async { app.get("/readyz", None).await.body["redis"].clone() };
    assert_eq!(ready().await, "ok");
    let asked = Instant::now();
    redis.set(Mode::Refuse).await;
    // Asked again at once: the answer of a moment ago, no new probe.
    if asked.elapsed() < Duration::from_millis(500) {
        assert_eq!(ready().await, "ok", "probed again within the second");
    }
    eventually(
        Duration::from_millis(2500),
        "readiness to see Redis gone",
        || async {
            match ready().await {
                v if v == "degraded" => Ok(()),
                v => Err(v.to_string()),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_answers_are_not_stored_and_nothing_is_sniffed() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(1_000).await;
    let product = app.create_product(100, 10).await;
    let order = app.order(user, &token, product, 1, 100).await;
    let order_id = order.assert_status(201)["order_id"].as_i64().unwrap();
    let paid = app.pay(&token, order_id).await;
    let payment = paid.assert_status(201)["payment_id"].as_i64().unwrap();
    let minted = app
        .admin(
            Method::POST,
            &format!("/v1/admin/users/{user}/tokens"),
            json!({}),
        )
        .await;
    let private: Vec<Reply> = vec![
        app.get(&format!("/v1/users/{user}/points"), Some(&token))
            .await,
        app.get(&format!("/v1/users/{user}/points/history"), Some(&token))
            .await,
        app.get(&format!("/v1/orders/{order_id}"), Some(&token))
            .await,
        app.get(&format!("/v1/users/{user}/orders"), Some(&token))
            .await,
        app.get(&format!("/v1/payments/{payment}"), Some(&token))
            .await,
        app.get(&format!("/v1/users/{user}/payments"), Some(&token))
            .await,
        app.get("/v1/orders/987654", Some(&token)).await,
        order,
        paid,
        minted,
    ];
    for r in &private {
        assert_eq!(r.headers["cache-control"], "no-store", "{r:?}");
    }
    // Every answer, public or not, found or not.
    let others = [
        app.get("/v1/products", None).await,
        app.get("/healthz", None).await,
        app.get("/no/such/path", None).await,
        app.get("/v1/users/1/points", None).await,
    ];
    for r in private.iter().chain(&others) {
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{r:?}");
    }
    let docs = app.client.get(app.url("/docs/")).send().await.unwrap();
    let csp = docs.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(!csp.contains("unsafe-eval") && !csp.contains("script-src 'self' 'unsafe-inline'"));
}

#[test]
fn docker_compose_ships_no_secret_and_publishes_only_haproxy() {
    let compose = include_str!("../../docker-compose.yml");
    assert!(compose.contains("ADMIN_TOKEN: ${ADMIN_TOKEN:?"));
    assert!(compose.contains("AUTH_JWT_SECRET: ${AUTH_JWT_SECRET:?"));
    // Every password from the environment, required, with no default (issue 26).
    for line in compose.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let lower = line.to_ascii_lowercase();
        for secret in ["password", "mysql://"] {
            if lower.contains(secret) {
                assert!(
                    line.contains("${") || line.contains("$$"),
                    "a password written out in docker-compose.yml: {line}"
                );
                assert!(!line.contains(":-"), "a default password: {line}");
            }
        }
    }
    for (name, needle) in [
        (
            "MYSQL_ROOT_PASSWORD",
            "MYSQL_ROOT_PASSWORD: ${MYSQL_ROOT_PASSWORD:?",
        ),
        ("MYSQL_PASSWORD", "MYSQL_PASSWORD: ${MYSQL_PASSWORD:?"),
        (
            "MYSQL_REPL_PASSWORD",
            "MYSQL_REPL_PASSWORD: ${MYSQL_REPL_PASSWORD:?",
        ),
        ("GRAFANA_ADMIN_PASSWORD", "${GRAFANA_ADMIN_PASSWORD:?"),
    ] {
        assert!(
            compose.contains(needle),
            "{name} is not required from the environment"
        );
    }
    // The instances trust exactly the balancer's fixed address, not its network.
    let trusted = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("TRUSTED_PROXIES: "))
        .expect("TRUSTED_PROXIES");
    let fixed = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("ipv4_address: "))
        .expect("the balancer's fixed address");
    assert_eq!(trusted, format!("{fixed}/32"));
    let published: Vec<&str> = compose
        .lines()
        .filter(|l| l.trim_start().starts_with("ports:"))
        .collect();
    assert_eq!(
        published,
        [
            "    ports: [\"8080:8080\"]",
            "    ports: [\"127.0.0.1:9090:9090\"]",
            "    ports: [\"127.0.0.1:3000:3000\"]"
        ]
    );
}

// Tokens and keys.

fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_before_its_nbf_or_issued_in_the_future_is_refused() {
    let app = spawn_app().await;
    let (user, _) = app.funded_user(10).await;
    let now = Utc::now().timestamp();
    let path = format!("/v1/users/{user}/points");
    let sub = user.to_string();
    let cases = [
        (json!({"sub": sub, "exp": now + 600, "nbf": now + 60}), 401),
        (json!({"sub": sub, "exp": now + 600, "iat": now + 60}), 401),
        // Within the leeway (5 s) of this instance's clock: accepted.
        (
            json!({"sub": sub, "exp": now + 600, "nbf": now + 2, "iat": now + 2}),
            200,
        ),
        (
            json!({"sub": sub, "exp": now + 600, "nbf": now - 60, "iat": now - 60}),
            200,
        ),
    ];
    for (claims, status) in cases {
        let r = app.get(&path, Some(&token(claims.clone()))).await;
        assert_eq!(r.status.as_u16(), status, "{claims}");
        if status == 401 {
            r.assert_problem(401, "UNAUTHORIZED");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_differing_in_case_are_two_keys() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    let path = format!("/v1/users/{user}/points/charge");
    let charge = |key: &'static str| {
        app.post_with_key(&path, Some(&token), json!({"amount": 10}), Some(key))
    };
    charge("Key-1").await.assert_status(200);
    let second = charge("key-1").await;
    assert_eq!(
        second.assert_status(200)["balance"],
        20,
        "ran, not replayed"
    );
    let again = charge("Key-1").await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(app.balance(user).await, 20);
}
