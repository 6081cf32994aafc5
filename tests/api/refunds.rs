//! SPEC §3 refunds, R1–R4, and a user's payments list.

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_sharing, spawn_with, until, TestApp};

/// A PAID order of `quantity` units at 100; returns (user, token, product, order, payment).
async fn paid(app: &TestApp, balance: i64, quantity: i64) -> (i64, String, i64, i64, i64) {
    let (user, token) = app.funded_user(balance).await;
    let product = app.create_product(100, 10).await;
    let order = app.order(user, &token, product, quantity, 100).await;
    let order = order.assert_status(201)["order_id"].as_i64().unwrap();
    let payment = app.pay(&token, order).await;
    let payment = payment.assert_status(201)["payment_id"].as_i64().unwrap();
    (user, token, product, order, payment)
}

async fn refund(app: &TestApp, token: &str, order: i64) -> crate::helpers::Reply {
    app.post(
        &format!("/v1/orders/{order}/refund"),
        Some(token),
        json!({}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r2_a_refund_gives_everything_back_in_one_transaction() {
    let app = spawn_app().await;
    let (user, token, product, order, payment) = paid(&app, 1_000, 3).await;
    assert_eq!(app.balance(user).await, 700);
    let r = refund(&app, &token, order).await;
    let body = r.assert_status(200);
    assert_eq!(body["status"], "REFUNDED");
    assert_eq!(body["order_id"], order);
    // Points back, proven by a REFUND history row with the order id.
    assert_eq!(app.balance(user).await, 1_000);
    let history = app
        .get(&format!("/v1/users/{user}/points/history"), Some(&token))
        .await;
    let newest = &history.body["items"][0];
    assert_eq!(
        (
            newest["kind"].as_str(),
            newest["amount"].as_i64(),
            newest["order_id"].as_i64()
        ),
        (Some("REFUND"), Some(300), Some(order))
    );
    app.assert_points_conserved(user).await;
    // Units back to available stock; sold falls by the quantity.
    assert_eq!(app.product_row(product).await, (10, 10, 0, 0));
    // The payment says REFUNDED, alone and in the user's list.
    let p = app
        .get(&format!("/v1/payments/{payment}"), Some(&token))
        .await;
    assert_eq!(p.assert_status(200)["status"], "REFUNDED");
    let list = app
        .get(&format!("/v1/users/{user}/payments"), Some(&token))
        .await;
    assert_eq!(list.assert_status(200)["items"][0]["status"], "REFUNDED");
    // The day's sales are net of it; an order.refunded event waits in the outbox.
    assert_eq!(
        app.count(&format!("SELECT CAST(COALESCE(SUM(quantity), 0) AS SIGNED) FROM daily_sales WHERE product_id = {product}"))
            .await,
        0
    );
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM outbox WHERE event_type = 'order.refunded' AND aggregate_id = {order}"
        ))
        .await,
        1
    );
    assert_eq!(app.order_status(&token, order).await, "REFUNDED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r1_only_a_paid_order_of_the_caller_within_the_window_is_refundable() {
    let app = spawn_with(|c| c.sweep_interval = Duration::from_millis(20)).await;
    let (user, token) = app.funded_user(10_000).await;
    let product = app.create_product(100, 10).await;
    let place = || async {
        app.order(user, &token, product, 1, 100).await.body["order_id"]
            .as_i64()
            .unwrap()
    };
    let pending = place().await;
    let cancelled = place().await;
    app.post(
        &format!("/v1/orders/{cancelled}/cancel"),
        Some(&token),
        json!({}),
    )
    .await
    .assert_status(200);
    let expired = place().await;
    sqlx::query("UPDATE orders SET expires_at = UTC_TIMESTAMP(6) WHERE id = ?")
        .bind(expired)
        .execute(&app.db)
        .await
        .unwrap();
    let refunded = place().await;
    app.pay(&token, refunded).await.assert_status(201);
    refund(&app, &token, refunded).await.assert_status(200);
    until(Duration::from_secs(10), "never expired", || async {
        app.order_status(&token, expired).await == "EXPIRED"
    })
    .await;
    for order in [pending, cancelled, expired, refunded] {
        refund(&app, &token, order)
            .await
            .assert_problem(409, "ORDER_NOT_REFUNDABLE");
    }
    // Past the window: paid "eight days ago".
    let late = place().await;
    app.pay(&token, late).await.assert_status(201);
    sqlx::query("UPDATE orders SET paid_at = UTC_TIMESTAMP(6) - INTERVAL 8 DAY WHERE id = ?")
        .bind(late)
        .execute(&app.db)
        .await
        .unwrap();
    let r = refund(&app, &token, late).await;
    r.assert_problem(409, "ORDER_NOT_REFUNDABLE");
    assert!(r.body["detail"].as_str().unwrap().contains("window"));
    assert_eq!(app.order_status(&token, late).await, "PAID");
    // Someone else's order answers exactly like a missing one.
    let (_, intruder) = app.funded_user(0).await;
    let theirs = refund(&app, &intruder, late).await;
    theirs.assert_problem(404, "ORDER_NOT_FOUND");
    let missing = refund(&app, &intruder, 987_654_321).await;
    assert_eq!(
        crate::helpers::without_request_id(&theirs.body),
        crate::helpers::without_request_id(&missing.body)
    );
    app.assert_points_conserved(user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r3_a_refund_past_the_balance_cap_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let (user, token, product, order, _) = paid(&app, 1_000, 5).await;
    // The user tops up to the cap meanwhile: 500 back would pass 1,000,000.
    app.charge(user, &token, 1_000_000 - 500)
        .await
        .assert_status(200);
    let r = refund(&app, &token, order).await;
    r.assert_problem(409, "BALANCE_LIMIT_EXCEEDED");
    assert_eq!(
        (r.body["balance"].as_i64(), r.body["max_balance"].as_i64()),
        (Some(1_000_000), Some(1_000_000))
    );
    assert_eq!(app.order_status(&token, order).await, "PAID");
    assert_eq!(app.balance(user).await, 1_000_000);
    assert_eq!(app.product_row(product).await, (5, 5, 0, 5));
    assert_eq!(
        app.count("SELECT COUNT(*) FROM point_history WHERE kind = 'REFUND'")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox WHERE event_type = 'order.refunded'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r4_twenty_concurrent_refunds_of_one_order_refund_it_once() {
    let app = spawn_with(|c| c.db_max_connections = 30).await;
    let (user, token, product, order, _) = paid(&app, 1_000, 2).await;
    let replies = join_all((0..20).map(|_| refund(&app, &token, order))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 1, "{replies:?}");
    for r in replies.iter().filter(|r| r.status != 200) {
        r.assert_problem(409, "ORDER_NOT_REFUNDABLE");
    }
    assert_eq!(app.balance(user).await, 1_000);
    assert_eq!(app.product_row(product).await, (10, 10, 0, 0));
    assert_eq!(
        app.count("SELECT COUNT(*) FROM point_history WHERE kind = 'REFUND'")
            .await,
        1
    );
    app.assert_points_conserved(user).await;
    // With one Idempotency-Key, a retried refund replays its answer.
    let (_, token2, _, order2, _) = paid(&app, 1_000, 1).await;
    let path = format!("/v1/orders/{order2}/refund");
    let first = app
        .post_with_key(&path, Some(&token2), json!({}), Some("refund-1"))
        .await;
    let again = app
        .post_with_key(&path, Some(&token2), json!({}), Some("refund-1"))
        .await;
    assert_eq!(first.assert_status(200), again.assert_status(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r4_the_gate_the_ranking_and_the_caches_follow_a_refund_on_every_instance() {
    let a = spawn_app().await;
    let b = spawn_sharing(&a, |_| {}).await;
    let (_, token, product, order, _) = paid(&a, 1_000, 4).await;
    let (_, other_token, other_product, _, _) = paid(&a, 1_000, 1).await;
    let _ = other_token;
    // B has seen the sale: detail and ranking.
    let top = b.get("/v1/products/top?days=1", None).await;
    assert_eq!(top.body["items"][0]["product_id"], product);
    assert_eq!(top.body["items"][0]["sold"], 4);
    assert_eq!(
        b.get(&format!("/v1/products/{product}"), None).await.body["sold"],
        4
    );
    refund(&a, &token, order).await.assert_status(200);
    // At once: the stock gate's counter (a detail reads it live) on both instances...
    for app in [&a, &b] {
        let d = app.get(&format!("/v1/products/{product}"), None).await;
        assert_eq!(
            (d.body["stock"].as_i64(), d.body["sold"].as_i64()),
            (Some(10), Some(0))
        );
    }
    a.assert_redis_matches_mysql(product).await;
    // ...and the ranking once its two-second cache lets go: net sales, the other first.
    let start = std::time::Instant::now();
    loop {
        let top = b.get("/v1/products/top?days=1", None).await;
        let items = top.body["items"].as_array().unwrap();
        if items.len() == 1 && items[0]["product_id"] == other_product {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "ranking {top:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The refunded units can be bought again.
    let (buyer, buyer_token) = a.funded_user(10_000).await;
    b.order(buyer, &buyer_token, product, 10, 100)
        .await
        .assert_status(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_users_payments_are_listed_newest_first_in_pages() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(10_000).await;
    let product = app.create_product(100, 10).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let order = app.order(user, &token, product, 1, 100).await.body["order_id"]
            .as_i64()
            .unwrap();
        ids.push(
            app.pay(&token, order).await.body["payment_id"]
                .as_i64()
                .unwrap(),
        );
    }
    ids.reverse();
    let first = app
        .get(&format!("/v1/users/{user}/payments?limit=3"), Some(&token))
        .await;
    let page: Vec<i64> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["payment_id"].as_i64().unwrap())
        .collect();
    assert_eq!(page, ids[..3]);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_string();
    let second = app
        .get(
            &format!("/v1/users/{user}/payments?limit=3&cursor={cursor}"),
            Some(&token),
        )
        .await;
    let rest: Vec<i64> = second.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["payment_id"].as_i64().unwrap())
        .collect();
    assert_eq!(rest, ids[3..]);
    assert!(second.body["next_cursor"].is_null());
    assert_eq!(first.body["items"][0]["status"], "COMPLETED");
    // Another user's list is forbidden; an unknown user is not found.
    let (_, intruder) = app.funded_user(0).await;
    app.get(&format!("/v1/users/{user}/payments"), Some(&intruder))
        .await
        .assert_problem(403, "FORBIDDEN");
    let ghost = app.token(987_654);
    app.get("/v1/users/987654/payments", Some(&ghost))
        .await
        .assert_problem(404, "USER_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_of_an_order_paid_on_an_earlier_utc_day_takes_its_units_off_that_day() {
    let app = spawn_app().await;
    let (_, token, yesterdays, order, _) = paid(&app, 1_000, 3).await;
    let (_, _, todays, _, _) = paid(&app, 1_000, 2).await;
    // The first sale moves to yesterday (UTC), in MySQL and in the ranking: its order, its
    // payment and its day's sales row; the ranking rebuilds from MySQL on its next read.
    for sql in [
        format!("UPDATE orders SET paid_at = paid_at - INTERVAL 1 DAY WHERE id = {order}"),
        format!(
            "UPDATE payments SET created_at = created_at - INTERVAL 1 DAY WHERE order_id = {order}"
        ),
        format!(
            "UPDATE daily_sales SET day = day - INTERVAL 1 DAY WHERE product_id = {yesterdays}"
        ),
    ] {
        sqlx::query(&sql).execute(&app.db).await.unwrap();
    }
    let prefix = &app.config.redis_prefix;
    let today = chrono::Utc::now().date_naive();
    let yesterday = today - chrono::Days::new(1);
    for key in [
        format!("{prefix}{{sales}}:ready"),
        format!("{prefix}{{sales}}:{}", today.format("%Y%m%d")),
    ] {
        let _: () = app.redis_cmd(redis::cmd("DEL").arg(key)).await;
    }
    let sales = |day: chrono::NaiveDate, product: i64| {
        format!(
            "SELECT CAST(COALESCE(SUM(quantity), 0) AS SIGNED) FROM daily_sales WHERE day = '{day}' AND product_id = {product}"
        )
    };
    assert_eq!(app.count(&sales(yesterday, yesterdays)).await, 3);
    let top = app.get("/v1/products/top?days=2", None).await;
    assert_eq!(top.body["items"][0]["product_id"], yesterdays, "{top:?}");

    refund(&app, &token, order).await.assert_status(200);
    // Yesterday's sales fall by the refund; today's are untouched.
    assert_eq!(app.count(&sales(yesterday, yesterdays)).await, 0);
    assert_eq!(app.count(&sales(today, todays)).await, 2);
    // The ranking follows (once its two-second cache lets go): only today's sale is left.
    until(
        Duration::from_secs(5),
        "the ranking kept the refunded sale",
        || async {
            let top = app.get("/v1/products/top?days=2", None).await;
            let items = top.body["items"].as_array().cloned().unwrap_or_default();
            items.len() == 1 && items[0]["product_id"] == todays && items[0]["sold"] == 2
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_a_payment_and_a_cancel_of_one_user_at_once_all_finish_without_a_deadlock() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(1_000).await;
    let product = app.create_product(100, 10).await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        let placed = app.order(user, &token, product, 1, 100).await;
        orders.push(placed.assert_status(201)["order_id"].as_i64().unwrap());
    }
    let (refunded, paying, cancelling) = (orders[0], orders[1], orders[2]);
    app.pay(&token, refunded).await.assert_status(201);
    // All three wait on the user's row, held by the test, each having taken what comes
    // before the user in the lock order (order, payment; keys and orders); then they go.
    let lock = crate::helpers::hold_row(&app, "users", user).await;
    let cancel = format!("/v1/orders/{cancelling}/cancel");
    let racers = async {
        tokio::join!(
            refund(&app, &token, refunded),
            app.pay(&token, paying),
            app.post(&cancel, Some(&token), json!({})),
        )
    };
    let releaser = async {
        crate::helpers::until_running(&app, "SELECT % FROM users", 3).await;
        lock.rollback().await.unwrap();
    };
    let ((r, p, c), ()) = tokio::join!(racers, releaser);
    assert_eq!(r.assert_status(200)["status"], "REFUNDED");
    p.assert_status(201);
    assert_eq!(c.assert_status(200)["status"], "CANCELLED");
    assert_eq!(
        crate::helpers::counter("db_transaction_retries_total", &[])
            + app.state.checkout.retries() as f64,
        0.0,
        "a transaction deadlocked and ran again"
    );
    // 1,000 - 100 (paid, refunded: + 100) - 100 (paid): 900, nothing held.
    assert_eq!(app.balance(user).await, 900);
    assert_eq!(
        app.count(&format!("SELECT held FROM users WHERE id = {user}"))
            .await,
        0
    );
    app.assert_points_conserved(user).await;
    assert_eq!(app.product_row(product).await, (9, 9, 0, 1));
    app.eventually_redis_matches_mysql(product, Duration::from_secs(2))
        .await;
}
