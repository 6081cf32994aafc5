//! SPEC Y1–Y6 and the payment's other refusals.

use serde_json::json;

use crate::helpers::{spawn_app, TestApp};

async fn pending_order(
    app: &TestApp,
    balance: i64,
    price: i64,
    stock: i64,
    quantity: i64,
) -> (i64, String, i64, i64) {
    let (user, token) = app.funded_user(balance).await;
    let product = app.create_product(price, stock).await;
    let r = app.order(user, &token, product, quantity, price).await;
    let order = r.assert_status(201)["order_id"].as_i64().unwrap();
    (user, token, product, order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn y1_to_y4_paying_deducts_points_and_stock_adds_sold_and_records_everything() {
    let app = spawn_app().await;
    let (user, token, product, order) = pending_order(&app, 10_000, 1200, 10, 3).await;
    let r = app.pay(&token, order).await;
    let body = r.assert_status(201).clone();
    assert_eq!(body["order_id"], order);
    assert_eq!(body["user_id"], user);
    assert_eq!(body["amount"], 3600);
    assert_eq!(body["status"], "COMPLETED");
    assert_eq!(body["balance_after"], 6400);
    assert!(body["paid_at"].as_str().unwrap().ends_with('Z'));
    // Y1: points
    assert_eq!(app.balance(user).await, 6400);
    let history = app
        .get(&format!("/v1/users/{user}/points/history"), Some(&token))
        .await;
    let newest = &history.body["items"][0];
    assert_eq!(
        (newest["kind"].as_str(), newest["amount"].as_i64()),
        (Some("USE"), Some(3600))
    );
    assert_eq!(newest["order_id"], order);
    app.assert_points_conserved(user).await;
    // Y2, Y3: stock and sold
    assert_eq!(app.product_row(product).await, (7, 7, 0, 3));
    let detail = app.get(&format!("/v1/products/{product}"), None).await;
    assert_eq!(
        (detail.body["stock"].as_i64(), detail.body["sold"].as_i64()),
        (Some(7), Some(3))
    );
    // Y4: order PAID, payment readable, event recorded, ranking counts it
    assert_eq!(app.order_status(&token, order).await, "PAID");
    let id = body["payment_id"].as_i64().unwrap();
    let p = app.get(&format!("/v1/payments/{id}"), Some(&token)).await;
    assert_eq!(p.assert_status(200), &body);
    let events = app
        .count(&format!("SELECT COUNT(*) FROM outbox WHERE event_type = 'order.paid' AND aggregate_id = {order}"))
        .await;
    assert_eq!(events, 1);
    let top = app.get("/v1/products/top?days=1", None).await;
    assert_eq!(
        top.body["items"][0],
        json!({"rank": 1, "product_id": product, "name": "thing", "price": 1200, "sold": 3})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn y5_insufficient_points_fail_and_change_nothing() {
    let app = spawn_app().await;
    // An order placed before orders held points (F1), and another one since, paid with
    // the same points: the first is now short.
    let (user, token, product, order) = pending_order(&app, 1200, 600, 10, 2).await;
    app.as_if_placed_before_holds(user).await;
    let spent = app.order(user, &token, product, 1, 600).await;
    let spent = spent.assert_status(201)["order_id"].as_i64().unwrap();
    app.pay(&token, spent).await.assert_status(201);
    let short = app.pay(&token, order).await;
    short.assert_problem(409, "INSUFFICIENT_POINTS");
    assert_eq!(
        (
            &short.body["balance"],
            &short.body["required"],
            &short.body["available"]
        ),
        (&json!(600), &json!(1200), &json!(600))
    );
    assert_eq!(app.balance(user).await, 600);
    assert_eq!(app.product_row(product).await, (7, 9, 2, 1));
    assert_eq!(app.order_status(&token, order).await, "PENDING");
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM outbox").await, 1);
    // Topping up makes the same order payable.
    app.charge(user, &token, 600).await.assert_status(200);
    app.pay(&token, order).await.assert_status(201);
    app.assert_points_conserved(user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn y6_no_stock_at_payment_time_fails_and_changes_nothing() {
    let app = spawn_app().await;
    let (user, token, product, order) = pending_order(&app, 10_000, 100, 5, 2).await;
    // The units vanish behind the API's back (a write-off, a lost reservation):
    // the conditional stock write at payment still refuses to sell what is not there.
    sqlx::query("UPDATE products SET stock = 0, reserved = 0 WHERE id = ?")
        .bind(product)
        .execute(&app.db)
        .await
        .unwrap();
    app.pay(&token, order)
        .await
        .assert_problem(409, "OUT_OF_STOCK");
    assert_eq!(app.balance(user).await, 10_000);
    assert_eq!(app.product_row(product).await, (0, 0, 0, 0));
    assert_eq!(app.order_status(&token, order).await, "PENDING");
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 0);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM point_history WHERE kind = 'USE'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paid_order_cannot_be_paid_again() {
    let app = spawn_app().await;
    let (user, token, product, order) = pending_order(&app, 10_000, 100, 5, 1).await;
    app.pay(&token, order).await.assert_status(201);
    app.pay(&token, order)
        .await
        .assert_problem(409, "ORDER_NOT_PAYABLE");
    assert_eq!(app.balance(user).await, 9_900);
    assert_eq!(app.product_row(product).await, (4, 4, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_orders_and_payments_are_not_found() {
    let app = spawn_app().await;
    let (_, token) = app.funded_user(0).await;
    app.pay(&token, 123_456)
        .await
        .assert_problem(404, "ORDER_NOT_FOUND");
    app.get("/v1/payments/123456", Some(&token))
        .await
        .assert_problem(404, "PAYMENT_NOT_FOUND");
    app.get("/v1/orders/123456", Some(&token))
        .await
        .assert_problem(404, "ORDER_NOT_FOUND");
}
