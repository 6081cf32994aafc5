//! Operational routes and infrastructure failures.

use commerce_api::config::RedisTarget;

use crate::helpers::{spawn_app, spawn_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    assert_eq!(
        app.get("/healthz", None).await.assert_status(200)["status"],
        "ok"
    );
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.assert_status(200)["mysql"], "ok");
    app.get("/v1/products/1", None).await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(
        metrics.contains(r#"route="/v1/products/{product_id}""#),
        "{metrics}"
    );
    assert!(metrics.contains("http_request_duration_seconds_bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_is_returned() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get("x-request-id").unwrap(), "abc-123");
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert!(!r.headers().get("x-request-id").unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_the_service_is_ready_but_degraded() {
    let app = spawn_with(|c| c.redis = RedisTarget::Single("redis://127.0.0.1:1".into())).await;
    let r = app.get("/readyz", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["redis"], "degraded");
    assert_eq!(r.body["mysql"], "ok");
    assert_eq!(app.get("/healthz", None).await.status, 200);
    // Everything is served from MySQL meanwhile.
    let product = app.create_product(100, 3).await;
    assert_eq!(app.get("/v1/products", None).await.status, 200);
    let detail = app.get(&format!("/v1/products/{product}"), None).await;
    assert_eq!(detail.body["stock"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_down_is_503_dependency_unavailable() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(100).await;
    app.state.catalog.cache.store.loaded().await;
    app.state.db.close().await; // the app's own pool (the test has its own)
                                // A read that only MySQL can answer: 503.
    let r = app
        .get(&format!("/v1/users/{user}/points"), Some(&token))
        .await;
    r.assert_problem(503, "DEPENDENCY_UNAVAILABLE");
    // The catalog, in memory, still answers.
    app.get("/v1/products", None).await.assert_status(200);
    assert!(!r.body["detail"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("sqlx"));
    let ready = app.get("/readyz", None).await;
    ready.assert_problem(503, "DEPENDENCY_UNAVAILABLE");
    assert!(ready.body["detail"].as_str().unwrap().contains("mysql"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_past_the_ip_limit_is_429_with_retry_after_but_probes_are_exempt() {
    let app = spawn_with(|c| {
        c.rate_limits.per_ip_per_sec = 1;
        c.rate_limits.per_ip_burst = 5;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(app.get("/v1/products", None).await);
    }
    assert!(statuses[..5].iter().all(|r| r.status == 200));
    let limited = statuses.last().unwrap();
    limited.assert_problem(429, "RATE_LIMITED");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after));
    for _ in 0..10 {
        assert_eq!(app.get("/healthz", None).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_user_write_limit_does_not_touch_another_user() {
    let app = spawn_with(|c| {
        c.rate_limits.user_write_per_sec = 1;
        c.rate_limits.user_write_burst = 3;
    })
    .await;
    let (a, ta) = app.funded_user(0).await;
    let (b, tb) = app.funded_user(0).await;
    for _ in 0..3 {
        app.charge(a, &ta, 1).await.assert_status(200);
    }
    app.charge(a, &ta, 1)
        .await
        .assert_problem(429, "RATE_LIMITED");
    // Reads are not write-limited, and the other user is unaffected.
    app.get(&format!("/v1/users/{a}/points"), Some(&ta))
        .await
        .assert_status(200);
    app.charge(b, &tb, 1).await.assert_status(200);
    assert_eq!(app.balance(a).await, 3);
}

/// Metric names in a PromQL expression: every identifier directly before a `{` selector
/// (the dashboard writes every metric with one).
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    for (i, c) in chars.iter().enumerate() {
        if *c != '{' {
            continue;
        }
        let start = chars[..i]
            .iter()
            .rposition(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == ':'))
            .map_or(0, |p| p + 1);
        if start < i {
            names.push(chars[start..i].iter().collect());
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_names_a_metric_the_service_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../dashboards/commerce-api.json"))
            .expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").to_string())
        .collect();
    assert!(exprs.len() >= 10);

    // Some traffic through every path the dashboard watches.
    let app = spawn_app().await;
    let product = app.create_product(100, 1).await;
    let (user, token) = app.funded_user(1_000).await;
    for path in ["/v1/products", "/v1/products/top"] {
        app.get(path, None).await.assert_status(200);
    }
    app.get(&format!("/v1/products/{product}"), None).await;
    let order = app.order(user, &token, product, 1, 100).await;
    let id = order.assert_status(201)["order_id"].as_i64().unwrap();
    app.pay(&token, id).await.assert_status(201);
    app.order(user, &token, product, 1, 100)
        .await
        .assert_problem(409, "OUT_OF_STOCK");
    let metrics = app.get_text("/metrics").await;

    let mut checked = 0;
    for expr in &exprs {
        assert!(
            expr.contains(r#"job=~"$job", instance=~"$instance""#),
            "{expr}"
        );
        for name in metric_names(expr) {
            let exported = metrics
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
            assert!(
                exported,
                "the dashboard queries {name}, which /metrics does not export"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} metric references found");
    // Route labels are templates, never raw URLs.
    assert!(metrics.contains(r#"route="/v1/products/{product_id}""#));
    assert!(!metrics.contains(&format!("/v1/products/{product}\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_past_request_timeout_ms_ends_in_a_503_problem_and_changes_nothing() {
    let app = spawn_with(|c| c.request_timeout = std::time::Duration::from_millis(300)).await;
    let product = app.create_product(100, 5).await;
    let (user, token) = app.funded_user(1_000).await;
    let order = app.order(user, &token, product, 1, 100).await;
    let id = order.assert_status(201)["order_id"].as_i64().unwrap();
    // Another transaction holds the order row: the payment waits on its lock.
    let mut blocker = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM orders WHERE id = ? FOR UPDATE")
        .bind(id)
        .fetch_one(&mut *blocker)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let r = app.pay(&token, id).await;
    r.assert_problem(503, "DEPENDENCY_UNAVAILABLE");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    blocker.rollback().await.unwrap();
    assert_eq!(app.order_status(&token, id).await, "PENDING");
    assert_eq!(app.balance(user).await, 1_000);
    app.pay(&token, id).await.assert_status(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_that_panics_answers_a_500_problem_and_the_process_serves_on() {
    let app = crate::helpers::spawn_with_routes(axum::Router::new().route(
        "/v1/boom",
        axum::routing::get(|| async {
            if std::hint::black_box(true) {
                panic!("secret detail of a bug");
            }
        }),
    ))
    .await;
    for _ in 0..3 {
        let r = app.get("/v1/boom", None).await;
        r.assert_problem(500, "INTERNAL");
        assert!(
            !r.body.to_string().contains("secret detail"),
            "the panic's message leaked: {r:?}"
        );
        // The same instance goes on serving, the panicking route's neighbours too.
        app.get("/healthz", None).await.assert_status(200);
        app.get("/v1/products?page=1", None)
            .await
            .assert_status(200);
    }
}
