//! SPEC §2 Idempotency-Key on charge, order and payment.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_same_key_and_body_replays_the_first_answer() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    let path = format!("/v1/users/{user}/points/charge");
    let first = app
        .post_with_key(&path, Some(&token), json!({"amount": 50}), Some("k-1"))
        .await;
    let again = app
        .post_with_key(&path, Some(&token), json!({"amount": 50}), Some("k-1"))
        .await;
    assert_eq!((first.status, &first.body), (again.status, &again.body));
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(app.balance(user).await, 50);
    // Another key is another charge.
    app.post_with_key(&path, Some(&token), json!({"amount": 50}), Some("k-2"))
        .await
        .assert_status(200);
    assert_eq!(app.balance(user).await, 100);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    let path = format!("/v1/users/{user}/points/charge");
    app.post_with_key(&path, Some(&token), json!({"amount": 50}), Some("k"))
        .await
        .assert_status(200);
    let r = app
        .post_with_key(&path, Some(&token), json!({"amount": 51}), Some("k"))
        .await;
    r.assert_problem(422, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.balance(user).await, 50);
}

#[tokio::test]
async fn orders_and_payments_run_once_per_key() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(1_000).await;
    let product = app.create_product(100, 10).await;
    let body = json!({"user_id": user, "product_id": product, "quantity": 2, "price": 100});
    let o1 = app
        .post_with_key("/v1/orders", Some(&token), body.clone(), Some("order-1"))
        .await;
    let o2 = app
        .post_with_key("/v1/orders", Some(&token), body, Some("order-1"))
        .await;
    assert_eq!(o1.assert_status(201), o2.assert_status(201));
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 1);
    assert_eq!(app.product_row(product).await.0, 8);

    let order = json!({"order_id": o1.body["order_id"]});
    let p1 = app
        .post_with_key("/v1/payments", Some(&token), order.clone(), Some("pay-1"))
        .await;
    let p2 = app
        .post_with_key("/v1/payments", Some(&token), order, Some("pay-1"))
        .await;
    assert_eq!(p1.assert_status(201), p2.assert_status(201));
    assert_eq!(app.balance(user).await, 800);
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 1);
}

#[tokio::test]
async fn a_refusal_is_replayed_too() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(100).await;
    let product = app.create_product(100, 10).await;
    let order = app.order(user, &token, product, 2, 100).await.body["order_id"].clone();
    let first = app
        .post_with_key(
            "/v1/payments",
            Some(&token),
            json!({"order_id": order}),
            Some("p"),
        )
        .await;
    first.assert_problem(409, "INSUFFICIENT_POINTS");
    app.charge(user, &token, 100).await.assert_status(200);
    // Same key: the stored answer, not a new attempt.
    let again = app
        .post_with_key(
            "/v1/payments",
            Some(&token),
            json!({"order_id": order}),
            Some("p"),
        )
        .await;
    again.assert_problem(409, "INSUFFICIENT_POINTS");
    assert_eq!(app.balance(user).await, 200);
}

#[tokio::test]
async fn keys_are_scoped_per_user() {
    let app = spawn_app().await;
    let (a, ta) = app.funded_user(0).await;
    let (b, tb) = app.funded_user(0).await;
    app.post_with_key(
        &format!("/v1/users/{a}/points/charge"),
        Some(&ta),
        json!({"amount": 5}),
        Some("same"),
    )
    .await
    .assert_status(200);
    app.post_with_key(
        &format!("/v1/users/{b}/points/charge"),
        Some(&tb),
        json!({"amount": 5}),
        Some("same"),
    )
    .await
    .assert_status(200);
    assert_eq!((app.balance(a).await, app.balance(b).await), (5, 5));
}

#[tokio::test]
async fn malformed_keys_are_400() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    let path = format!("/v1/users/{user}/points/charge");
    let long = "k".repeat(129);
    for key in [long.as_str(), "with space", ""] {
        let r = app
            .post_with_key(&path, Some(&token), json!({"amount": 5}), Some(key))
            .await;
        r.assert_problem(400, "VALIDATION_FAILED");
    }
    assert_eq!(app.balance(user).await, 0);
}

#[tokio::test]
async fn a_key_held_by_a_request_in_flight_is_409_in_progress_and_nothing_runs() {
    use sha2::{Digest, Sha256};
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    // Another request holds the claim for this very request (same scope, key and hash)
    // and is still inside its lease.
    let hash = hex::encode(Sha256::digest(serde_json::to_vec(&(user, 5)).unwrap()));
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, idem_key, request_hash, status, locked_until, created_at) \
         VALUES (?, 'busy', ?, 'IN_PROGRESS', UTC_TIMESTAMP(6) + INTERVAL 1 MINUTE, UTC_TIMESTAMP(6))",
    )
    .bind(format!("user:{user}|charge"))
    .bind(hash)
    .execute(&app.db)
    .await
    .unwrap();
    let path = format!("/v1/users/{user}/points/charge");
    let r = app
        .post_with_key(&path, Some(&token), json!({"amount": 5}), Some("busy"))
        .await;
    r.assert_problem(409, "IDEMPOTENCY_IN_PROGRESS");
    assert_eq!(app.balance(user).await, 0);
}
