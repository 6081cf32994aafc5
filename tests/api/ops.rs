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
async fn readiness_names_a_dependency_that_is_down() {
    let app = spawn_with(|c| c.redis_url = "redis://127.0.0.1:1".into()).await;
    let r = app.get("/readyz", None).await;
    r.assert_problem(503, "DEPENDENCY_UNAVAILABLE");
    assert!(r.body["detail"].as_str().unwrap().contains("redis"));
    assert_eq!(app.get("/healthz", None).await.status, 200);
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
