//! Bad input never gets a 5xx and never changes data.

use serde_json::json;

use crate::helpers::{spawn_app, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_and_mistyped_bodies_are_400_and_write_nothing() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(5_000).await;
    let product = app.create_product(100, 10).await;
    let raw = |path: String, body: &'static str| {
        let req = app
            .client
            .post(app.url(&path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body);
        async move { Reply::read(req.send().await.unwrap()).await }
    };
    let charge = format!("/v1/users/{user}/points/charge");
    for body in ["{", "", "[]", "null", "{\"amount\": }", "amount=5"] {
        raw(charge.clone(), body)
            .await
            .assert_problem(400, "VALIDATION_FAILED");
    }
    raw(charge.clone(), "{}")
        .await
        .assert_problem(400, "VALIDATION_FAILED");
    for amount in [
        "1e3",
        "99999999999999999999999",
        "-1",
        "0",
        "\"5\"",
        "true",
        "12.0",
    ] {
        let body: &'static str = Box::leak(format!("{{\"amount\": {amount}}}").into_boxed_str());
        raw(charge.clone(), body)
            .await
            .assert_problem(400, "INVALID_AMOUNT");
    }
    let orders = "/v1/orders".to_string();
    for body in [
        r#"{"user_id": "1", "product_id": 1, "quantity": 1, "price": 100}"#,
        r#"{"user_id": 1.5, "product_id": 1, "quantity": 1, "price": 100}"#,
        r#"{"user_id": 0, "product_id": 1, "quantity": 1, "price": 100}"#,
        r#"{"user_id": 1, "product_id": -1, "quantity": 1, "price": 100}"#,
        r#"{"user_id": 1, "product_id": 1, "quantity": 18446744073709551616, "price": 100}"#,
        r#"{"user_id": 1, "product_id": 1, "quantity": 1, "price": 1e2}"#,
        r#"{"user_id": 1, "product_id": 1, "quantity": null, "price": 100}"#,
    ] {
        let body: &'static str = Box::leak(
            body.replace("\"user_id\": 1,", &format!("\"user_id\": {user},"))
                .into_boxed_str(),
        );
        raw(orders.clone(), body)
            .await
            .assert_problem(400, "VALIDATION_FAILED");
    }
    raw("/v1/payments".into(), r#"{"order_id": "x"}"#)
        .await
        .assert_problem(400, "VALIDATION_FAILED");
    raw(
        "/v1/payments".into(),
        r#"{"order_id": 99999999999999999999}"#,
    )
    .await
    .assert_problem(400, "VALIDATION_FAILED");

    assert_eq!(app.balance(user).await, 5_000);
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 0);
    assert_eq!(app.product_row(product).await, (10, 10, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_over_64_kib_is_413() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    let padding = "x".repeat(70 * 1024);
    let body = format!("{{\"amount\": 5, \"pad\": \"{padding}\"}}");
    let req = app
        .client
        .post(app.url(&format!("/v1/users/{user}/points/charge")))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body);
    Reply::read(req.send().await.unwrap())
        .await
        .assert_problem(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(app.balance(user).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_is_not_json_is_refused() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    let req = app
        .client
        .post(app.url(&format!("/v1/users/{user}/points/charge")))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("{\"amount\": 5}");
    let r = Reply::read(req.send().await.unwrap()).await;
    r.assert_problem(415, "VALIDATION_FAILED");
    assert_eq!(app.balance(user).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_paths_wrong_methods_and_bad_parameters_are_problems() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    app.get("/v1/nothing-here", None)
        .await
        .assert_problem(404, "NOT_FOUND");
    app.get("/", None).await.assert_problem(404, "NOT_FOUND");
    let r = Reply::read(
        app.client
            .delete(app.url("/v1/products"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_problem(405, "METHOD_NOT_ALLOWED");
    let r = Reply::read(
        app.client
            .put(app.url("/v1/payments"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_problem(405, "METHOD_NOT_ALLOWED");
    for path in [
        "/v1/users/abc/points".to_string(),
        "/v1/users/0/points".to_string(),
        "/v1/users/99999999999999999999/points".to_string(),
        format!("/v1/users/{user}/points/history?limit=0"),
        format!("/v1/users/{user}/points/history?limit=abc"),
        format!("/v1/users/{user}/points/history?cursor=zz"),
        format!("/v1/users/{user}/orders?limit=1000"),
        "/v1/orders/1.5".to_string(),
        "/v1/payments/-1".to_string(),
    ] {
        app.get(&path, Some(&token))
            .await
            .assert_problem(400, "VALIDATION_FAILED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_input_is_validated_too() {
    let app = spawn_app().await;
    use reqwest::Method;
    for body in [
        json!({"name": "", "price": 1, "stock": 1}),
        json!({"name": "x", "price": -1, "stock": 1}),
        json!({"name": "x", "price": 1, "stock": -1}),
        json!({"name": "x", "price": 1}),
        json!({"name": "x".repeat(201), "price": 1, "stock": 1}),
    ] {
        app.admin(Method::POST, "/v1/admin/products", body)
            .await
            .assert_problem(400, "VALIDATION_FAILED");
    }
    app.admin(Method::POST, "/v1/admin/users", json!({"name": "  "}))
        .await
        .assert_problem(400, "VALIDATION_FAILED");
    let id = app.create_product(100, 5).await;
    for body in [
        json!({}),
        json!({"stock": -1}),
        json!({"colour": "red"}),
        json!({"price": "1"}),
    ] {
        app.admin(Method::PATCH, &format!("/v1/admin/products/{id}"), body)
            .await
            .assert_problem(400, "VALIDATION_FAILED");
    }
    app.admin(
        Method::PATCH,
        "/v1/admin/products/99999",
        json!({"price": 5}),
    )
    .await
    .assert_problem(404, "PRODUCT_NOT_FOUND");
    assert_eq!(app.count("SELECT COUNT(*) FROM products").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_patch_sets_available_stock_and_keeps_reservations() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(10_000).await;
    let id = app.create_product(100, 10).await;
    app.order(user, &token, id, 4, 100).await.assert_status(201);
    let r = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/v1/admin/products/{id}"),
            json!({"stock": 3, "price": 250, "name": "mug"}),
        )
        .await;
    assert_eq!(
        r.assert_status(200),
        &json!({"id": id, "name": "mug", "price": 250, "stock": 3, "sold": 0,
            "per_user_limit": null, "sale_starts_at": null, "sale_ends_at": null})
    );
    assert_eq!(app.product_row(id).await, (3, 7, 4, 0));
}

/// Every string field the API accepts, at its limit and one past it: the limit is stored
/// whole, one past is a 400 (never a 500 from a column too short), nothing written. Limits
/// count characters, so a multi-byte character counts one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_string_field_at_its_limit_fits_its_column_and_one_past_is_400() {
    use reqwest::Method;
    let app = spawn_app().await;
    let product = app.create_product(100, 10).await;
    let users_before = app.count("SELECT COUNT(*) FROM users").await;
    let products_before = app.count("SELECT COUNT(*) FROM products").await;
    // (method, path, field, limit in characters)
    let fields = [
        (Method::POST, "/v1/admin/users".to_string(), "name", 100),
        (Method::POST, "/v1/admin/products".to_string(), "name", 200),
        (
            Method::PATCH,
            format!("/v1/admin/products/{product}"),
            "name",
            200,
        ),
    ];
    for (method, path, field, limit) in &fields {
        for ch in ["n", "é", "😀"] {
            let body = |n: usize| {
                let mut b = json!({"price": 100, "stock": 1});
                b[*field] = json!(ch.repeat(n));
                b
            };
            let ok = app.admin(method.clone(), path, body(*limit)).await;
            assert!(
                ok.status.is_success(),
                "{method} {path} {field} at {limit} × {ch}: {ok:?}"
            );
            assert_eq!(ok.body[*field].as_str().unwrap().chars().count(), *limit);
            app.admin(method.clone(), path, body(limit + 1))
                .await
                .assert_problem(400, "VALIDATION_FAILED");
        }
    }
    // Stored whole, read back whole.
    let stored: i64 = app.count("SELECT MAX(CHAR_LENGTH(name)) FROM users").await;
    assert_eq!(stored, 100);
    // What was refused wrote nothing: one user and one product per accepted request only.
    assert_eq!(
        app.count("SELECT COUNT(*) FROM users").await,
        users_before + 3
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM products").await,
        products_before + 3
    );
    // The Idempotency-Key: 128 visible characters fit its column; 129 are refused.
    let (user, token) = app.funded_user(0).await;
    let path = format!("/v1/users/{user}/points/charge");
    app.post_with_key(
        &path,
        Some(&token),
        json!({"amount": 1}),
        Some(&"k".repeat(128)),
    )
    .await
    .assert_status(200);
    app.post_with_key(
        &path,
        Some(&token),
        json!({"amount": 1}),
        Some(&"k".repeat(129)),
    )
    .await
    .assert_problem(400, "VALIDATION_FAILED");
    assert_eq!(app.balance(user).await, 1);
}
