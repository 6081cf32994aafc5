//! SPEC §2 Idempotency-Key on charge, order and payment.

use serde_json::json;

use crate::helpers::{spawn_app, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_is_replayed_too() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(100).await;
    let product = app.create_product(100, 10).await;
    let order = json!({"user_id": user, "product_id": product, "quantity": 2, "price": 100});
    let first = app
        .post_with_key("/v1/orders", Some(&token), order.clone(), Some("o"))
        .await;
    first.assert_problem(409, "INSUFFICIENT_POINTS");
    app.charge(user, &token, 100).await.assert_status(200);
    // Same key: the stored answer, not a new attempt.
    let again = app
        .post_with_key("/v1/orders", Some(&token), order, Some("o"))
        .await;
    again.assert_problem(409, "INSUFFICIENT_POINTS");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(app.balance(user).await, 200);
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 0);
    assert_eq!(app.product_row(product).await.0, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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

/// Holds the claim of `(user, key)` for a charge of `amount`, as a request in flight does:
/// an uncommitted claim row in an open transaction.
async fn hold_claim(
    app: &crate::helpers::TestApp,
    user: i64,
    key: &str,
    amount: i64,
) -> sqlx::Transaction<'static, sqlx::MySql> {
    use sha2::{Digest, Sha256};
    let hash = hex::encode(Sha256::digest(serde_json::to_vec(&(user, amount)).unwrap()));
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, idem_key, request_hash, created_at) \
         VALUES (?, ?, ?, UTC_TIMESTAMP(6))",
    )
    .bind(format!("user:{user}|charge"))
    .bind(key)
    .bind(hash)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_waits_for_the_request_in_flight_and_replays_its_answer() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    let mut first = hold_claim(&app, user, "busy", 5).await;
    let path = format!("/v1/users/{user}/points/charge");
    let duplicate = tokio::spawn({
        let (client, url, token) = (app.client.clone(), app.url(&path), token.clone());
        async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", "busy")
                .json(&json!({"amount": 5}))
                .send()
                .await
                .unwrap();
            crate::helpers::Reply::read(r).await
        }
    });
    // The duplicate is now waiting on the claim's row lock (MySQL shows its statement).
    until(
        std::time::Duration::from_secs(4),
        "nobody waits",
        || async {
            crate::helpers::statements_running(&app, "INSERT INTO idempotency_keys").await != 0
        },
    )
    .await;
    // The first request finishes: its answer commits with its claim.
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = 200, response_body = ? WHERE scope = ? AND idem_key = 'busy'",
    )
    .bind(json!({"user_id": user, "balance": 777}).to_string())
    .bind(format!("user:{user}|charge"))
    .execute(&mut *first)
    .await
    .unwrap();
    first.commit().await.unwrap();
    let r = duplicate.await.unwrap();
    assert_eq!(
        r.assert_status(200),
        &json!({"user_id": user, "balance": 777})
    );
    assert_eq!(r.headers["idempotent-replayed"], "true");
    assert_eq!(app.balance(user).await, 0, "the duplicate ran nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_held_past_the_lock_wait_is_409_in_progress_and_nothing_runs() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    let first = hold_claim(&app, user, "stuck", 5).await;
    let path = format!("/v1/users/{user}/points/charge");
    let r = app
        .post_with_key(&path, Some(&token), json!({"amount": 5}), Some("stuck"))
        .await;
    r.assert_problem(409, "IDEMPOTENCY_IN_PROGRESS");
    assert_eq!(app.balance(user).await, 0);
    // The holder dies (its transaction rolls back): the key is free at once.
    first.rollback().await.unwrap();
    app.post_with_key(&path, Some(&token), json!({"amount": 5}), Some("stuck"))
        .await
        .assert_status(200);
    assert_eq!(app.balance(user).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_cancel_replays_its_first_answer() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(1_000).await;
    let product = app.create_product(100, 5).await;
    let id = app.order(user, &token, product, 2, 100).await.body["order_id"]
        .as_i64()
        .unwrap();
    let path = format!("/v1/orders/{id}/cancel");
    let first = app
        .post_with_key(&path, Some(&token), json!({}), Some("cancel-1"))
        .await;
    assert_eq!(first.assert_status(200)["status"], "CANCELLED");
    let again = app
        .post_with_key(&path, Some(&token), json!({}), Some("cancel-1"))
        .await;
    assert_eq!(again.assert_status(200), &first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(
        app.product_row(product).await,
        (5, 5, 0, 0),
        "units back once"
    );
    // Without the key a second cancel is refused, as the order is no longer PENDING.
    app.post(&path, Some(&token), json!({}))
        .await
        .assert_problem(409, "ORDER_NOT_CANCELLABLE");
    // The same key for another order is another request.
    let other = app.order(user, &token, product, 1, 100).await.body["order_id"]
        .as_i64()
        .unwrap();
    app.post_with_key(
        &format!("/v1/orders/{other}/cancel"),
        Some(&token),
        json!({}),
        Some("cancel-1"),
    )
    .await
    .assert_problem(422, "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_writes_run_once_per_key() {
    use crate::helpers::ADMIN_TOKEN;
    let app = spawn_app().await;
    let send =
        |method: reqwest::Method, path: String, body: serde_json::Value, key: &'static str| {
            let req = app
                .client
                .request(method, app.url(&path))
                .bearer_auth(ADMIN_TOKEN)
                .header("Idempotency-Key", key)
                .json(&body);
            async move { crate::helpers::Reply::read(req.send().await.unwrap()).await }
        };
    let users = app.count("SELECT COUNT(*) FROM users").await;
    let a = send(
        reqwest::Method::POST,
        "/v1/admin/users".into(),
        json!({"name": "kim"}),
        "u-1",
    )
    .await;
    let b = send(
        reqwest::Method::POST,
        "/v1/admin/users".into(),
        json!({"name": "kim"}),
        "u-1",
    )
    .await;
    assert_eq!(a.assert_status(201), b.assert_status(201));
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, users + 1);
    let products = app.count("SELECT COUNT(*) FROM products").await;
    let body = json!({"name": "mug", "price": 1200, "stock": 50});
    let p1 = send(
        reqwest::Method::POST,
        "/v1/admin/products".into(),
        body.clone(),
        "p-1",
    )
    .await;
    let p2 = send(
        reqwest::Method::POST,
        "/v1/admin/products".into(),
        body,
        "p-1",
    )
    .await;
    assert_eq!(p1.assert_status(201), p2.assert_status(201));
    assert_eq!(
        app.count("SELECT COUNT(*) FROM products").await,
        products + 1
    );
    let id = p1.body["id"].as_i64().unwrap();
    let patch = format!("/v1/admin/products/{id}");
    let c1 = send(
        reqwest::Method::PATCH,
        patch.clone(),
        json!({"stock": 70}),
        "s-1",
    )
    .await;
    let c2 = send(
        reqwest::Method::PATCH,
        patch.clone(),
        json!({"stock": 70}),
        "s-1",
    )
    .await;
    assert_eq!(c1.assert_status(200), c2.assert_status(200));
    assert_eq!(c2.headers["idempotent-replayed"], "true");
    send(reqwest::Method::PATCH, patch, json!({"stock": 71}), "s-1")
        .await
        .assert_problem(422, "IDEMPOTENCY_KEY_REUSED");
    let user = a.body["id"].as_i64().unwrap();
    let t1 = send(
        reqwest::Method::POST,
        format!("/v1/admin/users/{user}/tokens"),
        json!({}),
        "t-1",
    )
    .await;
    let t2 = send(
        reqwest::Method::POST,
        format!("/v1/admin/users/{user}/tokens"),
        json!({}),
        "t-1",
    )
    .await;
    assert_eq!(
        t1.assert_status(201)["token"],
        t2.assert_status(201)["token"]
    );
}

/// Every row a write can change, as text: users, products, orders, payments, the point
/// history and the idempotency keys.
async fn everything(app: &crate::helpers::TestApp) -> Vec<String> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT CONCAT_WS(',', id, name, balance, held) FROM users ORDER BY id",
        "SELECT CONCAT_WS(',', id, name, price, stock, reserved, sold, COALESCE(per_user_limit, '-')) FROM products ORDER BY id",
        "SELECT CONCAT_WS(',', id, user_id, product_id, quantity, status) FROM orders ORDER BY id",
        "SELECT CONCAT_WS(',', id, order_id, amount) FROM payments ORDER BY id",
        "SELECT CONCAT_WS(',', id, user_id, kind, amount) FROM point_history ORDER BY id",
        "SELECT CONCAT_WS(',', scope, idem_key, request_hash) FROM idempotency_keys ORDER BY scope, idem_key",
    ] {
        let table: Vec<String> = sqlx::query_scalar(sql).fetch_all(&app.db).await.unwrap();
        rows.extend(table);
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_write_refuses_its_key_reused_for_another_request_and_changes_nothing() {
    use crate::helpers::{Reply, ADMIN_TOKEN};
    use reqwest::Method;
    let app = spawn_app().await;
    let (user, token) = app.funded_user(10_000).await;
    let other = app.create_user("other").await;
    let product = app.create_product(100, 100).await;
    let mut orders = Vec::new();
    for _ in 0..6 {
        let placed = app.order(user, &token, product, 1, 100).await;
        orders.push(placed.assert_status(201)["order_id"].as_i64().unwrap());
    }
    // Two to pay, two to cancel (PENDING), two to refund (PAID).
    for id in &orders[4..] {
        app.pay(&token, *id).await.assert_status(201);
    }
    let order =
        |n: usize| json!({"user_id": user, "product_id": product, "quantity": n, "price": 100});
    let cases: Vec<(
        &str,
        Method,
        String,
        serde_json::Value,
        String,
        serde_json::Value,
        u16,
    )> = vec![
        (
            "charge",
            Method::POST,
            format!("/v1/users/{user}/points/charge"),
            json!({"amount": 50}),
            format!("/v1/users/{user}/points/charge"),
            json!({"amount": 51}),
            200,
        ),
        (
            "order",
            Method::POST,
            "/v1/orders".into(),
            order(1),
            "/v1/orders".into(),
            order(2),
            201,
        ),
        (
            "payment",
            Method::POST,
            "/v1/payments".into(),
            json!({"order_id": orders[0]}),
            "/v1/payments".into(),
            json!({"order_id": orders[1]}),
            201,
        ),
        (
            "cancel",
            Method::POST,
            format!("/v1/orders/{}/cancel", orders[2]),
            json!({}),
            format!("/v1/orders/{}/cancel", orders[3]),
            json!({}),
            200,
        ),
        (
            "refund",
            Method::POST,
            format!("/v1/orders/{}/refund", orders[4]),
            json!({}),
            format!("/v1/orders/{}/refund", orders[5]),
            json!({}),
            200,
        ),
        (
            "admin user",
            Method::POST,
            "/v1/admin/users".into(),
            json!({"name": "kim"}),
            "/v1/admin/users".into(),
            json!({"name": "lee"}),
            201,
        ),
        (
            "admin token",
            Method::POST,
            format!("/v1/admin/users/{user}/tokens"),
            json!({}),
            format!("/v1/admin/users/{other}/tokens"),
            json!({}),
            201,
        ),
        (
            "admin product",
            Method::POST,
            "/v1/admin/products".into(),
            json!({"name": "mug", "price": 1200, "stock": 5}),
            "/v1/admin/products".into(),
            json!({"name": "cup", "price": 1200, "stock": 5}),
            201,
        ),
        (
            "admin patch",
            Method::PATCH,
            format!("/v1/admin/products/{product}"),
            json!({"price": 120}),
            format!("/v1/admin/products/{product}"),
            json!({"price": 130}),
            200,
        ),
    ];
    for (name, method, first_path, first_body, second_path, second_body, status) in cases {
        let bearer = if name.starts_with("admin") {
            ADMIN_TOKEN
        } else {
            token.as_str()
        };
        let send = |path: String, body: serde_json::Value| {
            let request = app
                .client
                .request(method.clone(), app.url(&path))
                .bearer_auth(bearer)
                .header("Idempotency-Key", format!("key-{}", name.replace(' ', "-")))
                .json(&body);
            async move { Reply::read(request.send().await.unwrap()).await }
        };
        send(first_path, first_body).await.assert_status(status);
        let before = everything(&app).await;
        let reused = send(second_path, second_body).await;
        reused.assert_problem(422, "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(
            everything(&app).await,
            before,
            "{name}: the reused key changed data"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_past_its_24_hours_is_free_again() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(1_000).await;
    let product = app.create_product(100, 10).await;
    let charge = format!("/v1/users/{user}/points/charge");
    let order =
        |n: i64| json!({"user_id": user, "product_id": product, "quantity": n, "price": 100});
    app.post_with_key(&charge, Some(&token), json!({"amount": 50}), Some("k"))
        .await
        .assert_status(200);
    app.post_with_key("/v1/orders", Some(&token), order(1), Some("o"))
        .await
        .assert_status(201);
    // A day and a minute later (the keys' clock moved back instead)...
    sqlx::query("UPDATE idempotency_keys SET created_at = created_at - INTERVAL 1441 MINUTE")
        .execute(&app.db)
        .await
        .unwrap();
    // ...the same keys with other requests run as new ones: no 422, no replay.
    let charged = app
        .post_with_key(&charge, Some(&token), json!({"amount": 70}), Some("k"))
        .await;
    assert_eq!(charged.assert_status(200)["balance"], 1_120);
    assert!(charged.headers.get("idempotent-replayed").is_none());
    let placed = app
        .post_with_key("/v1/orders", Some(&token), order(2), Some("o"))
        .await;
    assert_eq!(placed.assert_status(201)["quantity"], 2);
    assert!(placed.headers.get("idempotent-replayed").is_none());
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM orders WHERE user_id = {user}"
        ))
        .await,
        2
    );
    // And the key holds the new request from then on.
    let again = app
        .post_with_key(&charge, Some(&token), json!({"amount": 70}), Some("k"))
        .await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(app.balance(user).await, 1_120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_refusals_of_the_stock_gate_are_kept_in_shared_batches_and_replayed() {
    let app = spawn_app().await;
    let product = app.create_product(100, 0).await;
    let buyers = app.bulk_buyers(200, 1_000).await;
    let order =
        |user: i64| json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100});
    let batches_before = crate::helpers::counter("checkout_batch_size_count", &[]);
    let first = futures::future::join_all(buyers.iter().map(|(user, token)| {
        app.post_with_key("/v1/orders", Some(token), order(*user), Some("sold-out"))
    }))
    .await;
    for r in &first {
        r.assert_problem(409, "OUT_OF_STOCK");
    }
    // Each refusal is kept under its key...
    assert_eq!(
        app.count("SELECT COUNT(*) FROM idempotency_keys WHERE response_status = 409")
            .await,
        200
    );
    // ...in fewer transactions than refusals: they share the product's batches.
    let batches = crate::helpers::counter("checkout_batch_size_count", &[]) - batches_before;
    assert!(
        (1.0..200.0).contains(&batches),
        "{batches} batches for 200 refusals"
    );
    // Units come back; the same keys still replay the refusal, a new key buys.
    app.admin(
        reqwest::Method::PATCH,
        &format!("/v1/admin/products/{product}"),
        json!({"stock": 5}),
    )
    .await
    .assert_status(200);
    let (user, token) = &buyers[0];
    let again = app
        .post_with_key("/v1/orders", Some(token), order(*user), Some("sold-out"))
        .await;
    again.assert_problem(409, "OUT_OF_STOCK");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    app.post_with_key("/v1/orders", Some(token), order(*user), Some("later"))
        .await
        .assert_status(201);
}
