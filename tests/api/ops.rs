//! Operational routes and infrastructure failures.

use crate::helpers::{spawn_app, spawn_with};

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
async fn without_redis_the_service_is_ready_but_degraded() {
    let app = spawn_with(|c| c.redis_url = "redis://127.0.0.1:1".into()).await;
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

#[tokio::test]
async fn mysql_down_is_503_dependency_unavailable() {
    let app = spawn_app().await;
    app.db.close().await;
    let r = app.get("/v1/products", None).await;
    r.assert_problem(503, "DEPENDENCY_UNAVAILABLE");
    assert!(!r.body["detail"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("sqlx"));
    let ready = app.get("/readyz", None).await;
    ready.assert_problem(503, "DEPENDENCY_UNAVAILABLE");
    assert!(ready.body["detail"].as_str().unwrap().contains("mysql"));
}

#[tokio::test]
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

#[tokio::test]
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
