//! Issue 25, SPEC L1–L5: orders of several products, all or nothing. Each rule on one
//! Redis, on MySQL alone (`STOCK_GATE=mysql`) and on a Redis Cluster; overlapping carts
//! from two instances on the multi-threaded runtime.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use commerce_api::config::RedisTarget;
use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    helpers::{
        hold_row, spawn_app, spawn_sharing, spawn_with, until, until_running, Reply,
        ServiceProcess, TestApp,
    },
    redis_cluster::RedisCluster,
};

const PRICE: i64 = 100;

async fn product(app: &TestApp, stock: i64, extra: Value) -> i64 {
    let mut body = json!({"name": "line", "price": PRICE, "stock": stock});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = app.admin(Method::POST, "/v1/admin/products", body).await;
    r.assert_status(201)["id"].as_i64().unwrap()
}

/// An order of `lines` (product, quantity, price) for `user`.
async fn order_lines(app: &TestApp, user: i64, token: &str, lines: &[(i64, i64, i64)]) -> Reply {
    app.post("/v1/orders", Some(token), body(user, lines)).await
}

fn body(user: i64, lines: &[(i64, i64, i64)]) -> Value {
    let items: Vec<Value> = lines
        .iter()
        .map(|(p, q, price)| json!({"product_id": p, "quantity": q, "price": price}))
        .collect();
    json!({"user_id": user, "items": items})
}

/// (reserved, sold, stock) of each product in MySQL.
async fn rows(app: &TestApp, products: &[i64]) -> Vec<(i64, i64, i64)> {
    let mut out = Vec::new();
    for p in products {
        let (_, stock, reserved, sold) = app.product_row(*p).await;
        out.push((reserved, sold, stock));
    }
    out
}

async fn held(app: &TestApp, user: i64, token: &str) -> i64 {
    app.get(&format!("/v1/users/{user}/points"), Some(token))
        .await
        .assert_status(200)["held"]
        .as_i64()
        .unwrap()
}

/// Every order's rows share one status: no order is left with only some of its lines.
async fn assert_every_order_whole(app: &TestApp) {
    let split = app
        .count(
            "SELECT COUNT(*) FROM orders l JOIN orders o ON o.id = l.parent_id \
             WHERE l.status <> o.status OR l.paid_at <=> o.paid_at = 0",
        )
        .await;
    assert_eq!(split, 0, "an order has lines in another state than itself");
}

// L1 — the shape of an order of several lines.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l1_an_order_of_three_lines_reserves_each_and_answers_every_line() {
    let app = spawn_app().await;
    let (mug, shirt, poster) = (
        product(&app, 10, json!({})).await,
        product(&app, 10, json!({})).await,
        product(&app, 10, json!({})).await,
    );
    let (user, token) = app.funded_user(10_000).await;
    // Listed out of product order: the answer lists them in product order.
    let r = order_lines(
        &app,
        user,
        &token,
        &[(poster, 1, PRICE), (mug, 1, PRICE), (shirt, 2, PRICE)],
    )
    .await;
    let order = r.assert_status(201).clone();
    assert_eq!(order["total_amount"], 400);
    assert_eq!(order["status"], "PENDING");
    assert!(order.get("product_id").is_none(), "{order}");
    let items = order["items"].as_array().unwrap();
    let lines: Vec<(i64, i64, i64, i64)> = items
        .iter()
        .map(|l| {
            (
                l["product_id"].as_i64().unwrap(),
                l["quantity"].as_i64().unwrap(),
                l["unit_price"].as_i64().unwrap(),
                l["line_amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (mug, 1, PRICE, PRICE),
            (shirt, 2, PRICE, 2 * PRICE),
            (poster, 1, PRICE, PRICE)
        ]
    );
    assert_eq!(
        rows(&app, &[mug, shirt, poster]).await,
        [(1, 0, 10), (2, 0, 10), (1, 0, 10)]
    );
    assert_eq!(held(&app, user, &token).await, 400);
    for p in [mug, shirt, poster] {
        app.assert_redis_matches_mysql(p).await;
    }
    // Read back, listed, and no line of it is an order of its own.
    let id = order["order_id"].as_i64().unwrap();
    let read = app.get(&format!("/v1/orders/{id}"), Some(&token)).await;
    assert_eq!(read.assert_status(200)["items"], order["items"]);
    let listed = app
        .get(&format!("/v1/users/{user}/orders"), Some(&token))
        .await;
    let listed = listed.assert_status(200)["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["items"], order["items"]);
    let line_rows: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders WHERE parent_id = ?")
        .bind(id)
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(line_rows.len(), 2);
    for line in line_rows {
        app.get(&format!("/v1/orders/{line}"), Some(&token))
            .await
            .assert_problem(404, "ORDER_NOT_FOUND");
        app.pay(&token, line)
            .await
            .assert_problem(404, "ORDER_NOT_FOUND");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l1_a_one_line_items_order_is_the_shorthand_and_carries_its_old_members_too() {
    let app = spawn_app().await;
    let p = product(&app, 10, json!({})).await;
    let (user, token) = app.funded_user(10_000).await;
    let r = order_lines(&app, user, &token, &[(p, 2, PRICE)]).await;
    let order = r.assert_status(201);
    assert_eq!(
        (
            &order["product_id"],
            &order["quantity"],
            &order["unit_price"]
        ),
        (&json!(p), &json!(2), &json!(PRICE))
    );
    assert_eq!(
        order["items"],
        json!([{"product_id": p, "quantity": 2, "unit_price": PRICE, "line_amount": 200}])
    );
    let short = app.order(user, &token, p, 1, PRICE).await;
    assert_eq!(short.assert_status(201)["items"][0]["line_amount"], PRICE);
}

/// Medusa #16502: two lines on one item whose sum passes the stock, each passing alone.
/// Here a product may be named once, so the shape itself is refused, naming both lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l1_a_product_named_twice_is_refused_naming_both_lines_and_reserves_nothing() {
    let app = spawn_app().await;
    let (a, b) = (
        product(&app, 5, json!({})).await,
        product(&app, 5, json!({})).await,
    );
    let (user, token) = app.funded_user(10_000).await;
    let r = order_lines(
        &app,
        user,
        &token,
        &[(a, 3, PRICE), (b, 1, PRICE), (a, 3, PRICE)],
    )
    .await;
    r.assert_problem(400, "VALIDATION_FAILED");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("items[0]") && detail.contains("items[2]"),
        "{detail}"
    );
    // Every other shape that is not an order.
    for bad in [
        json!({"user_id": user, "items": []}),
        json!({"user_id": user, "items": [{"product_id": a, "quantity": 0, "price": PRICE}, {"product_id": b, "quantity": 1, "price": PRICE}]}),
        json!({"user_id": user, "items": [{"product_id": a, "quantity": 1, "price": -1}, {"product_id": b, "quantity": 1, "price": PRICE}]}),
        json!({"user_id": user, "items": [{"product_id": a, "quantity": 1, "price": PRICE}], "product_id": b, "quantity": 1, "price": PRICE}),
        json!({"user_id": user, "product_id": a, "quantity": 1}),
        json!({"user_id": user}),
    ] {
        app.post("/v1/orders", Some(&token), bad.clone())
            .await
            .assert_problem(400, "VALIDATION_FAILED");
    }
    assert_eq!(rows(&app, &[a, b]).await, [(0, 0, 5), (0, 0, 5)]);
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l1_an_order_of_more_lines_than_max_order_lines_is_refused() {
    let app = spawn_with(|c| c.max_order_lines = 3).await;
    let (user, token) = app.funded_user(100_000).await;
    let mut lines = Vec::new();
    for _ in 0..4 {
        lines.push((product(&app, 5, json!({})).await, 1, PRICE));
    }
    order_lines(&app, user, &token, &lines)
        .await
        .assert_problem(400, "VALIDATION_FAILED");
    order_lines(&app, user, &token, &lines[..3])
        .await
        .assert_status(201);
}

// L2, L3 — all or nothing.

/// What breaks the third line of an order (and how the refusal names it).
#[derive(Clone, Copy, Debug)]
enum Broken {
    Stock,
    Limit,
    NotStarted,
    Ended,
    Price,
    Points,
}

/// An order of three lines whose third breaks `rule`: refused with that rule named, the
/// failing line listed, and nothing reserved or held anywhere.
async fn the_third_line_refuses_the_whole_order(app: &TestApp, rule: Broken) {
    let soon = Utc::now() + chrono::Duration::hours(1);
    let third = match rule {
        Broken::Stock => json!({}),
        Broken::Limit => json!({"per_user_limit": 1}),
        Broken::NotStarted => {
            json!({"sale_starts_at": soon.to_rfc3339_opts(SecondsFormat::Millis, true)})
        }
        Broken::Ended => json!({
            "sale_starts_at": (Utc::now() - chrono::Duration::hours(2)).to_rfc3339_opts(SecondsFormat::Millis, true),
            "sale_ends_at": (Utc::now() - chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Millis, true),
        }),
        Broken::Price | Broken::Points => json!({}),
    };
    let a = product(app, 10, json!({})).await;
    let b = product(app, 10, json!({})).await;
    let c = product(app, 3, third).await;
    let balance = if matches!(rule, Broken::Points) {
        300
    } else {
        10_000
    };
    let (user, token) = app.funded_user(balance).await;
    let (q, price) = match rule {
        Broken::Stock => (4, PRICE),
        Broken::Limit => (2, PRICE),
        Broken::Price => (1, PRICE + 1),
        _ => (1, PRICE),
    };
    for p in [a, b, c] {
        app.state.stock.sync(&[p]).await.unwrap();
    }
    let before = rows(app, &[a, b, c]).await;
    let r = order_lines(
        app,
        user,
        &token,
        &[(a, 1, PRICE), (b, 2, PRICE), (c, q, price)],
    )
    .await;
    let code = match rule {
        Broken::Stock => "OUT_OF_STOCK",
        Broken::Limit => "PURCHASE_LIMIT_REACHED",
        Broken::NotStarted => "SALE_NOT_STARTED",
        Broken::Ended => "SALE_ENDED",
        Broken::Price => "PRICE_MISMATCH",
        Broken::Points => "INSUFFICIENT_POINTS",
    };
    r.assert_problem(409, code);
    let lines = r.body["lines"].as_array().expect("lines").clone();
    match rule {
        // The total is what fails, not a line.
        Broken::Points => {
            assert!(lines.is_empty(), "{lines:?}");
            assert_eq!(
                (&r.body["required"], &r.body["available"]),
                (&json!(400), &json!(300))
            );
        }
        _ => {
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert_eq!(
                (&lines[0]["product_id"], &lines[0]["code"]),
                (&json!(c), &json!(code))
            );
        }
    }
    match rule {
        Broken::Stock => assert_eq!(
            (&lines[0]["available"], &lines[0]["requested"]),
            (&json!(3), &json!(4))
        ),
        Broken::Limit => assert_eq!(
            (&lines[0]["limit"], &lines[0]["held"]),
            (&json!(1), &json!(0))
        ),
        Broken::Price => assert_eq!(lines[0]["current_price"], PRICE),
        Broken::NotStarted => {
            assert!(lines[0]["starts_at"].is_string());
            assert!(r.headers.get("retry-after").is_some(), "{r:?}");
        }
        Broken::Ended => assert!(lines[0]["ends_at"].is_string()),
        Broken::Points => {}
    }
    assert_eq!(
        rows(app, &[a, b, c]).await,
        before,
        "{rule:?} changed stock"
    );
    assert_eq!(held(app, user, &token).await, 0, "{rule:?} held points");
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 0);
    // The gate gave back what it took for the first two lines, at once.
    if app.config.stock_gate {
        for p in [a, b, c] {
            app.assert_redis_matches_mysql(p).await;
        }
    }
}

const EVERY_RULE: [Broken; 6] = [
    Broken::Stock,
    Broken::Limit,
    Broken::NotStarted,
    Broken::Ended,
    Broken::Price,
    Broken::Points,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l2_the_third_line_refused_for_each_rule_refuses_the_whole_order_with_redis() {
    let app = spawn_app().await;
    for rule in EVERY_RULE {
        the_third_line_refuses_the_whole_order(&app, rule).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l2_the_third_line_refused_for_each_rule_refuses_the_whole_order_on_mysql_alone() {
    let app = spawn_with(|c| c.stock_gate = false).await;
    for rule in EVERY_RULE {
        the_third_line_refuses_the_whole_order(&app, rule).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l2_the_third_line_refused_for_each_rule_refuses_the_whole_order_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let seeds = cluster.seeds();
    let app = spawn_with(|c| {
        c.redis = RedisTarget::Cluster(seeds);
        c.redis_timeout = Duration::from_millis(500);
    })
    .await;
    for rule in EVERY_RULE {
        the_third_line_refuses_the_whole_order(&app, rule).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l2_a_refusal_names_the_first_rule_in_spec_order_and_lists_every_failing_line() {
    let app = spawn_app().await;
    let ok = product(&app, 10, json!({})).await;
    let short = product(&app, 1, json!({})).await;
    let repriced = product(&app, 10, json!({})).await;
    let (user, token) = app.funded_user(10_000).await;
    let r = order_lines(
        &app,
        user,
        &token,
        &[(repriced, 1, PRICE + 5), (short, 2, PRICE), (ok, 1, PRICE)],
    )
    .await;
    // Stock comes before price in SPEC's order, whichever line comes first.
    r.assert_problem(409, "OUT_OF_STOCK");
    assert_eq!(
        (&r.body["available"], &r.body["requested"]),
        (&json!(1), &json!(2))
    );
    let lines: Vec<(i64, String)> = r.body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["product_id"].as_i64().unwrap(),
                l["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (short, "OUT_OF_STOCK".to_string()),
            (repriced, "PRICE_MISMATCH".to_string())
        ]
    );
    assert_eq!(
        rows(&app, &[ok, short, repriced]).await,
        [(0, 0, 10), (0, 0, 1), (0, 0, 10)]
    );
}

/// F2 across orders: [A×1, B×1] then [A×1] hold 2 of A.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l3_the_limit_counts_each_line_against_its_product_across_orders() {
    let app = spawn_app().await;
    let a = product(&app, 10, json!({"per_user_limit": 2})).await;
    let b = product(&app, 10, json!({})).await;
    let (user, token) = app.funded_user(10_000).await;
    order_lines(&app, user, &token, &[(a, 1, PRICE), (b, 1, PRICE)])
        .await
        .assert_status(201);
    app.order(user, &token, a, 1, PRICE)
        .await
        .assert_status(201);
    let r = order_lines(&app, user, &token, &[(a, 1, PRICE), (b, 1, PRICE)]).await;
    r.assert_problem(409, "PURCHASE_LIMIT_REACHED");
    assert_eq!((&r.body["limit"], &r.body["held"]), (&json!(2), &json!(2)));
    assert_eq!(rows(&app, &[a, b]).await, [(2, 0, 10), (1, 0, 10)]);
}

// L4 — paying, cancelling, expiring and refunding the whole order.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l4_paying_moves_every_line_with_one_payment_of_the_total() {
    let app = spawn_app().await;
    let (a, b, c) = (
        product(&app, 10, json!({})).await,
        product(&app, 10, json!({})).await,
        product(&app, 10, json!({})).await,
    );
    let (user, token) = app.funded_user(1_000).await;
    let r = order_lines(
        &app,
        user,
        &token,
        &[(a, 1, PRICE), (b, 2, PRICE), (c, 3, PRICE)],
    )
    .await;
    let id = r.assert_status(201)["order_id"].as_i64().unwrap();
    let paid = app.pay(&token, id).await;
    let payment = paid.assert_status(201);
    assert_eq!(
        (&payment["amount"], &payment["balance_after"]),
        (&json!(600), &json!(400))
    );
    assert_eq!(app.balance(user).await, 400);
    assert_eq!(held(&app, user, &token).await, 0);
    assert_eq!(
        rows(&app, &[a, b, c]).await,
        [(0, 1, 9), (0, 2, 8), (0, 3, 7)]
    );
    assert_eq!(app.order_status(&token, id).await, "PAID");
    assert_every_order_whole(&app).await;
    assert_eq!(
        app.count(&format!("SELECT COUNT(*) FROM point_history WHERE kind = 'USE' AND order_id = {id} AND amount = 600")).await,
        1
    );
    app.assert_points_conserved(user).await;
    for (p, q) in [(a, 1), (b, 2), (c, 3)] {
        assert_eq!(
            app.count(&format!(
                "SELECT CAST(quantity AS SIGNED) FROM daily_sales WHERE product_id = {p}"
            ))
            .await,
            q
        );
        app.assert_redis_matches_mysql(p).await;
    }
    // The ranking counts each line's product.
    let top = app.get("/v1/products/top?days=1", None).await;
    let ranked: Vec<i64> = top.assert_status(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["product_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ranked, [c, b, a]);
    // The event carries the lines.
    let payload: String = sqlx::query_scalar(
        "SELECT CAST(payload AS CHAR) FROM outbox WHERE event_type = 'order.paid' AND aggregate_id = ?",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    let event: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(event["data"]["amount"], 600);
    assert_eq!(
        event["data"]["lines"].as_array().unwrap().len(),
        3,
        "{event}"
    );
    // Paying again: not payable.
    app.pay(&token, id)
        .await
        .assert_problem(409, "ORDER_NOT_PAYABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l4_cancel_gives_every_line_back() {
    let app = spawn_app().await;
    let (a, b) = (
        product(&app, 10, json!({})).await,
        product(&app, 10, json!({})).await,
    );
    let (user, token) = app.funded_user(1_000).await;
    let r = order_lines(&app, user, &token, &[(a, 1, PRICE), (b, 2, PRICE)]).await;
    let id = r.assert_status(201)["order_id"].as_i64().unwrap();
    let c = app
        .post(&format!("/v1/orders/{id}/cancel"), Some(&token), json!({}))
        .await;
    let cancelled = c.assert_status(200);
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["items"].as_array().unwrap().len(), 2);
    assert_eq!(rows(&app, &[a, b]).await, [(0, 0, 10), (0, 0, 10)]);
    assert_eq!(held(&app, user, &token).await, 0);
    assert_every_order_whole(&app).await;
    for p in [a, b] {
        app.assert_redis_matches_mysql(p).await;
    }
    app.pay(&token, id)
        .await
        .assert_problem(409, "ORDER_NOT_PAYABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l4_expiry_gives_every_line_back() {
    let app = spawn_with(|c| c.sweep_interval = Duration::from_millis(50)).await;
    let (a, b) = (
        product(&app, 10, json!({})).await,
        product(&app, 10, json!({})).await,
    );
    let (user, token) = app.funded_user(1_000).await;
    let r = order_lines(&app, user, &token, &[(a, 1, PRICE), (b, 2, PRICE)]).await;
    let id = r.assert_status(201)["order_id"].as_i64().unwrap();
    sqlx::query("UPDATE orders SET expires_at = UTC_TIMESTAMP(6) WHERE id = ? OR parent_id = ?")
        .bind(id)
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    until(Duration::from_secs(5), "the order expired", || async {
        app.count("SELECT COUNT(*) FROM orders WHERE status = 'EXPIRED'")
            .await
            == 2
    })
    .await;
    assert_eq!(app.order_status(&token, id).await, "EXPIRED");
    assert_eq!(rows(&app, &[a, b]).await, [(0, 0, 10), (0, 0, 10)]);
    assert_eq!(held(&app, user, &token).await, 0);
    for p in [a, b] {
        app.eventually_redis_matches_mysql(p, Duration::from_secs(2))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l4_a_refund_gives_every_line_back_and_takes_each_off_the_ranking() {
    let app = spawn_app().await;
    let (a, b) = (
        product(&app, 10, json!({})).await,
        product(&app, 10, json!({})).await,
    );
    let (user, token) = app.funded_user(1_000).await;
    let r = order_lines(&app, user, &token, &[(a, 1, PRICE), (b, 2, PRICE)]).await;
    let id = r.assert_status(201)["order_id"].as_i64().unwrap();
    app.pay(&token, id).await.assert_status(201);
    let refunded = app
        .post(&format!("/v1/orders/{id}/refund"), Some(&token), json!({}))
        .await;
    assert_eq!(refunded.assert_status(200)["status"], "REFUNDED");
    assert_eq!(app.balance(user).await, 1_000);
    assert_eq!(rows(&app, &[a, b]).await, [(0, 0, 10), (0, 0, 10)]);
    assert_every_order_whole(&app).await;
    app.assert_points_conserved(user).await;
    assert_eq!(
        app.count("SELECT CAST(COALESCE(SUM(quantity), 0) AS SIGNED) FROM daily_sales")
            .await,
        0
    );
    for p in [a, b] {
        app.assert_redis_matches_mysql(p).await;
    }
    let event = app
        .count(&format!("SELECT COUNT(*) FROM outbox WHERE event_type = 'order.refunded' AND aggregate_id = {id} AND JSON_LENGTH(payload, '$.data.lines') = 2"))
        .await;
    assert_eq!(event, 1);
}

/// Its own payment and its own cancel at once, twenty times: one of them wins, the order
/// ends whole, and the points and units add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l4_an_order_racing_its_own_payment_and_cancel_ends_whole_one_way() {
    let app = spawn_app().await;
    let (a, b) = (
        product(&app, 100, json!({})).await,
        product(&app, 100, json!({})).await,
    );
    let (user, token) = app.funded_user(100_000).await;
    let mut paid = 0;
    for _ in 0..20 {
        let r = order_lines(&app, user, &token, &[(a, 1, PRICE), (b, 1, PRICE)]).await;
        let id = r.assert_status(201)["order_id"].as_i64().unwrap();
        let cancel_path = format!("/v1/orders/{id}/cancel");
        let (pay, cancel) = tokio::join!(
            app.pay(&token, id),
            app.post(&cancel_path, Some(&token), json!({}))
        );
        match (pay.status.as_u16(), cancel.status.as_u16()) {
            (201, 409) => {
                cancel.assert_problem(409, "ORDER_NOT_CANCELLABLE");
                paid += 1;
            }
            (409, 200) => pay.assert_problem(409, "ORDER_NOT_PAYABLE"),
            other => panic!("pay {pay:?} and cancel {cancel:?}: {other:?}"),
        }
    }
    assert_every_order_whole(&app).await;
    assert_eq!(held(&app, user, &token).await, 0);
    assert_eq!(app.balance(user).await, 100_000 - paid * 2 * PRICE);
    assert_eq!(
        rows(&app, &[a, b]).await,
        [(0, paid, 100 - paid), (0, paid, 100 - paid)]
    );
    app.assert_points_conserved(user).await;
    for p in [a, b] {
        app.assert_redis_matches_mysql(p).await;
    }
}

// L5 — under the crowd.

/// 400 buyers from two instances, half ordering [A, B] and half [B, A], for products of
/// 150 units each: every answer is 201 or 409 (no deadlock reaches a buyer), every placed
/// order is then paid, and per product sold + available == units, no order split. (A cart
/// refused for one line gives the other back, so a few buyers may hear "sold out" while
/// units were held by such a cart in flight: placed ≤ units, not ==.)
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn l5_four_hundred_overlapping_carts_from_two_instances_never_deadlock_or_oversell() {
    const UNITS: i64 = 150;
    let a = spawn_app().await;
    let b = spawn_sharing(&a, |_| {}).await;
    let (p, q) = (
        product(&a, UNITS, json!({})).await,
        product(&a, UNITS, json!({})).await,
    );
    let buyers = a.bulk_buyers(400, 1_000).await;
    let placed = join_all(buyers.iter().enumerate().map(|(i, (user, token))| {
        let app = if i % 2 == 0 { &a } else { &b };
        let lines = if i % 4 < 2 {
            [(p, 1, PRICE), (q, 1, PRICE)]
        } else {
            [(q, 1, PRICE), (p, 1, PRICE)]
        };
        async move { (token, order_lines(app, *user, token, &lines).await) }
    }))
    .await;
    let mut ids = Vec::new();
    for (token, r) in &placed {
        match r.status.as_u16() {
            201 => ids.push((*token, r.body["order_id"].as_i64().unwrap())),
            409 => r.assert_problem(409, "OUT_OF_STOCK"),
            _ => panic!("a cart got {r:?}"),
        }
    }
    let placed = ids.len() as i64;
    assert!(placed <= UNITS && placed > 0, "{placed} carts placed");
    let payments = join_all(ids.iter().enumerate().map(|(i, (token, id))| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.pay(token, *id)
    }))
    .await;
    for r in &payments {
        r.assert_status(201);
    }
    for product in [p, q] {
        let (available, stock, reserved, sold) = a.product_row(product).await;
        assert_eq!(
            (available, stock, reserved, sold),
            (UNITS - placed, UNITS - placed, 0, placed)
        );
        a.assert_redis_matches_mysql(product).await;
    }
    assert_every_order_whole(&a).await;
}

// Idempotency and the reconciler.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_of_several_lines_replays_under_its_key_and_refuses_another_body() {
    let app = spawn_app().await;
    let (a, b) = (
        product(&app, 10, json!({})).await,
        product(&app, 10, json!({})).await,
    );
    let (user, token) = app.funded_user(1_000).await;
    let first_body = body(user, &[(a, 1, PRICE), (b, 1, PRICE)]);
    let first = app
        .post_with_key(
            "/v1/orders",
            Some(&token),
            first_body.clone(),
            Some("cart-1"),
        )
        .await;
    let order = first.assert_status(201).clone();
    let again = app
        .post_with_key("/v1/orders", Some(&token), first_body, Some("cart-1"))
        .await;
    assert_eq!(again.assert_status(201), &order);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    app.post_with_key(
        "/v1/orders",
        Some(&token),
        body(user, &[(a, 2, PRICE), (b, 1, PRICE)]),
        Some("cart-1"),
    )
    .await
    .assert_problem(422, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(rows(&app, &[a, b]).await, [(1, 0, 10), (1, 0, 10)]);
    for p in [a, b] {
        app.assert_redis_matches_mysql(p).await;
    }
    // Its payment, keyed, replays too.
    let id = order["order_id"].as_i64().unwrap();
    let pay = json!({"order_id": id});
    let paid = app
        .post_with_key(
            "/v1/payments",
            Some(&token),
            pay.clone(),
            Some("pay-cart-1"),
        )
        .await;
    let payment = paid.assert_status(201).clone();
    let replay = app
        .post_with_key("/v1/payments", Some(&token), pay, Some("pay-cart-1"))
        .await;
    assert_eq!(replay.assert_status(201), &payment);
    assert_eq!(app.balance(user).await, 800);
}

/// Redis loses everything while products have lines in PENDING orders of several lines:
/// the reconciler rebuilds each product from MySQL, every line's hold included, so a
/// later cancel gives each line's units back in Redis too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_rebuilds_products_that_have_lines_in_orders_of_several_products() {
    let app = spawn_with(|c| c.reconcile_interval = Duration::from_secs(3600)).await;
    let (a, b) = (
        product(&app, 10, json!({})).await,
        product(&app, 10, json!({})).await,
    );
    let (user, token) = app.funded_user(1_000).await;
    let r = order_lines(&app, user, &token, &[(a, 1, PRICE), (b, 3, PRICE)]).await;
    let id = r.assert_status(201)["order_id"].as_i64().unwrap();
    app.order(user, &token, a, 2, PRICE)
        .await
        .assert_status(201);
    // Every key of this app gone, as after a FLUSHALL.
    let keys: Vec<String> = app
        .redis_cmd(redis::cmd("KEYS").arg(format!("{}*", app.config.redis_prefix)))
        .await;
    app.redis_cmd::<i64>(redis::cmd("DEL").arg(&keys)).await;
    app.state.stock.reconcile().await.unwrap();
    for p in [a, b] {
        app.assert_redis_matches_mysql(p).await;
    }
    assert_eq!(app.redis_stock(a).await.2, 2, "both of a's PENDING holds");
    app.post(&format!("/v1/orders/{id}/cancel"), Some(&token), json!({}))
        .await
        .assert_status(200);
    for p in [a, b] {
        app.assert_redis_matches_mysql(p).await;
    }
    assert_eq!(app.redis_stock(b).await.0, Some(10));
}

/// L5: the instance dies between two lines' reservations. Product b's key is gone from
/// Redis and its row is held by the test, so the cart's second reservation waits on the
/// rebuild (a shared lock on b's row) while its first, of a, is in flight; the process is
/// killed then. Nothing reaches MySQL, and a's reservation is given back by its deadline:
/// Redis agrees with MySQL again without anyone's help but the reconciler.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn l5_an_instance_killed_between_two_reservations_leaves_nothing_past_the_deadline() {
    let app = spawn_app().await;
    let (a, b) = (
        product(&app, 10, json!({})).await,
        product(&app, 10, json!({})).await,
    );
    let (user, token) = app.funded_user(2_000).await;
    app.state.stock.sync(&[a]).await.unwrap();
    let mut child = ServiceProcess::start(&app, &[("RESERVATION_HOLD_MS", "1000")]).await;
    let key = format!("{}{{p{b}}}", app.config.redis_prefix);
    app.redis_cmd::<i64>(redis::cmd("DEL").arg(&key)).await;
    let lock = hold_row(&app, "products", b).await;
    let cart = {
        let (base, body) = (
            child.base.clone(),
            body(user, &[(a, 2, PRICE), (b, 1, PRICE)]),
        );
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/orders"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    // The second line's rebuild waits on b's row: the first line's units are in flight.
    until_running(
        &app,
        "SELECT id, stock - reserved, sold, per_user_limit FROM products",
        1,
    )
    .await;
    assert_eq!(
        app.redis_stock(a).await.3,
        1,
        "a's reservation is in flight"
    );
    child.kill();
    lock.rollback().await.unwrap();
    assert!(
        cart.await.expect("the cart's task").is_err(),
        "the cart died without an answer"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 0);
    let restarted =
        spawn_sharing(&app, |c| c.reconcile_interval = Duration::from_millis(300)).await;
    restarted
        .eventually_redis_matches_mysql(a, Duration::from_secs(5))
        .await;
    assert_eq!(app.redis_stock(a).await.0, Some(10));
    // The units are there for the next buyer, whole.
    order_lines(
        &restarted,
        user,
        &restarted.token(user),
        &[(a, 10, PRICE), (b, 1, PRICE)],
    )
    .await
    .assert_status(201);
}

/// Group commit for carts: while one batch of carts waits on a held product row, twenty
/// more carts queue behind it, and go together into one transaction once it is done —
/// two batches for twenty-one carts, each cart still all or nothing and answered alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn carts_waiting_behind_a_batch_go_together_into_the_next_one() {
    let app = spawn_app().await;
    let (a, b) = (
        product(&app, 100, json!({})).await,
        product(&app, 100, json!({})).await,
    );
    let buyers = app.bulk_buyers(21, 1_000).await;
    // The gate's keys built now, so that no reservation waits on a rebuild of a's row.
    app.state.stock.sync(&[a, b]).await.unwrap();
    let (ab, ba) = (
        [(a, 1, PRICE), (b, 1, PRICE)],
        [(b, 1, PRICE), (a, 1, PRICE)],
    );
    let lock = hold_row(&app, "products", a).await;
    let before = app.state.checkout.batches();
    let (first_user, first_token) = &buyers[0];
    let first = order_lines(&app, *first_user, first_token, &ab);
    let rest = async {
        until_running(
            &app,
            "SELECT price, stock, reserved, sold, per_user_limit",
            1,
        )
        .await;
        let queued = join_all(
            buyers[1..]
                .iter()
                .map(|(user, token)| order_lines(&app, *user, token, &ba)),
        );
        let release = async {
            until(Duration::from_secs(5), "twenty carts queued", || async {
                app.state.checkout.carts_queued() == 20
            })
            .await;
            lock.rollback().await.unwrap();
        };
        let (replies, ()) = tokio::join!(queued, release);
        replies
    };
    let (first, rest) = tokio::join!(first, rest);
    first.assert_status(201);
    for r in &rest {
        assert_eq!(r.assert_status(201)["items"].as_array().unwrap().len(), 2);
    }
    assert_eq!(
        app.state.checkout.batches() - before,
        2,
        "one batch, then one for the twenty"
    );
    assert_eq!(rows(&app, &[a, b]).await, [(21, 0, 100), (21, 0, 100)]);
    for p in [a, b] {
        app.assert_redis_matches_mysql(p).await;
    }
}
