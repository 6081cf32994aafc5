//! SPEC O1, O2, cancellation and expiry.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{cancels_racing_the_sweeper, spawn_app, spawn_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn o1_an_order_with_price_and_quantity_reserves_stock() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(10_000).await;
    let product = app.create_product(1200, 10).await;
    let r = app.order(user, &token, product, 2, 1200).await;
    let body = r.assert_status(201).clone();
    assert_eq!(body["user_id"], user);
    assert_eq!(body["product_id"], product);
    assert_eq!(body["quantity"], 2);
    assert_eq!(body["unit_price"], 1200);
    assert_eq!(body["total_amount"], 2400);
    assert_eq!(body["status"], "PENDING");
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(body["expires_at"].as_str().unwrap() > body["created_at"].as_str().unwrap());
    // Available stock drops at once.
    let detail = app.get(&format!("/v1/products/{product}"), None).await;
    assert_eq!(detail.body["stock"], 8);
    // The order reads back, alone and in the user's list.
    let id = body["order_id"].as_i64().unwrap();
    let again = app.get(&format!("/v1/orders/{id}"), Some(&token)).await;
    assert_eq!(again.assert_status(200), &body);
    let list = app
        .get(&format!("/v1/users/{user}/orders"), Some(&token))
        .await;
    assert_eq!(list.assert_status(200)["items"][0], body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn o1_price_and_quantity_are_required_and_checked() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(10_000).await;
    let product = app.create_product(1200, 10).await;
    app.order(user, &token, product, 1, 1100)
        .await
        .assert_problem(409, "PRICE_MISMATCH");
    for body in [
        json!({"user_id": user, "product_id": product, "quantity": 1}),
        json!({"user_id": user, "product_id": product, "price": 1200}),
        json!({"user_id": user, "product_id": product, "quantity": 0, "price": 1200}),
        json!({"user_id": user, "product_id": product, "quantity": 1001, "price": 1200}),
        json!({"user_id": user, "product_id": product, "quantity": 1, "price": -1}),
    ] {
        app.post("/v1/orders", Some(&token), body)
            .await
            .assert_problem(400, "VALIDATION_FAILED");
    }
    app.order(user, &token, 987_654, 1, 1200)
        .await
        .assert_problem(404, "PRODUCT_NOT_FOUND");
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 0);
    assert_eq!(app.product_row(product).await, (10, 10, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn o1_an_order_for_an_unknown_user_is_refused() {
    let app = spawn_app().await;
    let product = app.create_product(100, 10).await;
    let ghost = app.token(777_777);
    app.order(777_777, &ghost, product, 1, 100)
        .await
        .assert_problem(404, "USER_NOT_FOUND");
    assert_eq!(app.product_row(product).await, (10, 10, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn o2_an_order_for_more_than_the_available_stock_is_refused() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(100_000).await;
    let product = app.create_product(100, 5).await;
    app.order(user, &token, product, 6, 100)
        .await
        .assert_problem(409, "OUT_OF_STOCK");
    app.order(user, &token, product, 3, 100)
        .await
        .assert_status(201);
    // Reserved units are not available to the next buyer.
    app.order(user, &token, product, 3, 100)
        .await
        .assert_problem(409, "OUT_OF_STOCK");
    app.order(user, &token, product, 2, 100)
        .await
        .assert_status(201);
    assert_eq!(app.product_row(product).await, (0, 5, 5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_pending_order_returns_its_stock_once() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(100_000).await;
    let product = app.create_product(100, 5).await;
    let id = app.order(user, &token, product, 4, 100).await.body["order_id"]
        .as_i64()
        .unwrap();
    let r = app
        .post(&format!("/v1/orders/{id}/cancel"), Some(&token), json!({}))
        .await;
    assert_eq!(r.assert_status(200)["status"], "CANCELLED");
    assert_eq!(app.product_row(product).await, (5, 5, 0, 0));
    app.post(&format!("/v1/orders/{id}/cancel"), Some(&token), json!({}))
        .await
        .assert_problem(409, "ORDER_NOT_CANCELLABLE");
    app.pay(&token, id)
        .await
        .assert_problem(409, "ORDER_NOT_PAYABLE");
    assert_eq!(app.product_row(product).await, (5, 5, 0, 0));
    app.post("/v1/orders/999999/cancel", Some(&token), json!({}))
        .await
        .assert_problem(404, "ORDER_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unpaid_order_expires_and_returns_its_stock() {
    let app = spawn_with(|c| c.order_ttl = Duration::from_secs(1)).await;
    let (user, token) = app.funded_user(100_000).await;
    let product = app.create_product(100, 5).await;
    let id = app.order(user, &token, product, 5, 100).await.body["order_id"]
        .as_i64()
        .unwrap();
    assert_eq!(app.product_row(product).await.0, 0);
    let mut status = String::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = app
            .get(&format!("/v1/orders/{id}"), Some(&token))
            .await
            .body["status"]
            .as_str()
            .unwrap()
            .to_string();
        if status == "EXPIRED" {
            break;
        }
    }
    assert_eq!(status, "EXPIRED");
    assert_eq!(app.product_row(product).await, (5, 5, 0, 0));
    app.pay(&token, id)
        .await
        .assert_problem(409, "ORDER_NOT_PAYABLE");
    assert_eq!(app.balance(user).await, 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_and_expiry_racing_return_stock_exactly_once() {
    let app = spawn_with(|c| {
        c.sweep_interval = Duration::from_millis(20);
        c.db_max_connections = 40; // every racing cancel holds a connection while it waits
    })
    .await;
    let product = app.create_product(1, 1000).await;
    let mut orders = Vec::new();
    for (user, token) in app.bulk_buyers(20, 3).await {
        let id = app.order(user, &token, product, 3, 1).await.body["order_id"]
            .as_i64()
            .unwrap();
        orders.push((token.clone(), id));
    }
    assert_eq!(
        app.count("SELECT CAST(SUM(held) AS SIGNED) FROM users")
            .await,
        60
    );
    let replies = cancels_racing_the_sweeper(&app, product, &orders).await;
    // The cancels that held their orders first won; the others lost to the sweeper.
    for r in &replies[..10] {
        assert_eq!(r.assert_status(200)["status"], "CANCELLED");
    }
    for r in &replies[10..] {
        r.assert_problem(409, "ORDER_NOT_CANCELLABLE");
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM orders WHERE status = 'CANCELLED'")
            .await,
        10
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM orders WHERE status = 'EXPIRED'")
            .await,
        10
    );
    // Every unit came back, and only once; so did every held point.
    assert_eq!(app.product_row(product).await, (1000, 1000, 0, 0));
    assert_eq!(
        app.count("SELECT CAST(SUM(held) AS SIGNED) FROM users")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT CAST(SUM(balance) AS SIGNED) FROM users")
            .await,
        60
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_users_orders_paged_by_cursor_while_more_are_placed_show_each_once_and_miss_none() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(100_000).await;
    let product = app.create_product(100, 1_000).await;
    let place = || async {
        let placed = app.order(user, &token, product, 1, 100).await;
        placed.assert_status(201)["order_id"].as_i64().unwrap()
    };
    let mut existing = Vec::new();
    for _ in 0..25 {
        existing.push(place().await);
    }
    // Page through 4 at a time; before each next page, another order is placed (newer
    // than every order already listed) and one of the listed ones is cancelled.
    let mut seen: Vec<i64> = Vec::new();
    let mut placed_meanwhile = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/users/{user}/orders?limit=4&cursor={c}"),
            None => format!("/v1/users/{user}/orders?limit=4"),
        };
        let page = app.get(&path, Some(&token)).await;
        let body = page.assert_status(200).clone();
        let items = body["items"].as_array().unwrap();
        assert!(items.len() <= 4);
        seen.extend(items.iter().map(|o| o["order_id"].as_i64().unwrap()));
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        placed_meanwhile.push(place().await);
        let listed = seen[seen.len() - 1];
        app.post(
            &format!("/v1/orders/{listed}/cancel"),
            Some(&token),
            json!({}),
        )
        .await
        .assert_status(200);
        assert!(seen.len() <= 25, "more pages than orders: {seen:?}");
    }
    // Newest first, no order twice, none of the 25 missed; the ones placed meanwhile are
    // newer than the first page and belong to a fresh listing.
    let mut expected = existing.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    let fresh = app
        .get(&format!("/v1/users/{user}/orders?limit=100"), Some(&token))
        .await;
    let all: Vec<i64> = fresh.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_i64().unwrap())
        .collect();
    assert_eq!(all.len(), 25 + placed_meanwhile.len());
    assert!(placed_meanwhile.iter().all(|id| all.contains(id)));
}
