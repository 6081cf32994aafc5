//! The SPEC §1 invariants under hundreds of concurrent requests.

use std::collections::HashSet;

use futures::future::join_all;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_with, until, until_running, Reply, BATCH_PRODUCT_LOCK};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_charges_lose_nothing() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    let replies = join_all((0..200).map(|_| app.charge(user, &token, 10))).await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        replies.iter().find(|r| r.status != 200)
    );
    assert_eq!(app.balance(user).await, 2000);
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM point_history WHERE user_id = {user}"
        ))
        .await,
        200
    );
    // Every charge saw a different balance: they were serialised, none overwrote another.
    let seen: HashSet<i64> = replies
        .iter()
        .map(|r| r.body["balance"].as_i64().unwrap())
        .collect();
    assert_eq!(seen.len(), 200);
    app.assert_points_conserved(user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_charges_crossing_the_cap_let_exactly_the_right_number_through() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(999_000).await;
    let replies = join_all((0..100).map(|_| app.charge(user, &token, 100))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let capped = replies
        .iter()
        .filter(|r| r.body["code"] == "BALANCE_LIMIT_EXCEEDED")
        .count();
    assert_eq!((ok, capped), (10, 90));
    assert_eq!(app.balance(user).await, 1_000_000);
    app.assert_points_conserved(user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_buyers_racing_for_ten_units_never_oversell() {
    let app = spawn_with(|c| c.db_max_connections = 30).await;
    let product = app.create_product(500, 10).await;
    let mut buyers = Vec::new();
    for _ in 0..100 {
        buyers.push(app.funded_user(1_000).await);
    }
    let attempts = buyers.iter().map(|(user, token)| {
        let app = &app;
        async move {
            let order = app.order(*user, token, product, 1, 500).await;
            if order.status != 201 {
                assert_eq!(order.body["code"], "OUT_OF_STOCK", "{order:?}");
                return false;
            }
            let paid = app
                .pay(token, order.body["order_id"].as_i64().unwrap())
                .await;
            assert_eq!(paid.status, 201, "{paid:?}");
            true
        }
    });
    let bought = join_all(attempts).await.into_iter().filter(|b| *b).count();
    assert_eq!(bought, 10);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM orders WHERE status = 'PAID'")
            .await,
        10
    );
    let paid_units = app
        .count(
            "SELECT CAST(COALESCE(SUM(quantity), 0) AS SIGNED) FROM orders WHERE status = 'PAID'",
        )
        .await;
    assert_eq!(paid_units, 10);
    assert_eq!(app.product_row(product).await, (0, 0, 0, 10));
    // Points are conserved: what left the buyers is exactly what was paid.
    let total: i64 = app
        .count("SELECT CAST(SUM(balance) AS SIGNED) FROM users")
        .await;
    assert_eq!(total, 100 * 1_000 - 10 * 500);
    for (user, _) in &buyers {
        app.assert_points_conserved(*user).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_retries_with_one_idempotency_key_charge_once() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    let path = format!("/v1/users/{user}/points/charge");
    let replies = join_all((0..16).map(|_| {
        app.post_with_key(
            &path,
            Some(&token),
            json!({"amount": 700}),
            Some("retry-me"),
        )
    }))
    .await;
    for r in &replies {
        match r.status.as_u16() {
            200 => assert_eq!(r.body, json!({"user_id": user, "balance": 700})),
            409 => assert_eq!(r.body["code"], "IDEMPOTENCY_IN_PROGRESS"),
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    assert!(replies.iter().any(|r| r.status == 200));
    assert_eq!(app.balance(user).await, 700);
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM point_history WHERE user_id = {user}"
        ))
        .await,
        1
    );
}

/// Two batches whose requests arrive in opposite user order (A then B on product X, B then
/// A on product Y) and whose orders' ids are opposite again, let go at the same instant,
/// each locking both users: taken in arrival order or in the orders' order this deadlocks;
/// taken in user id order, as the service does, it cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_whose_users_arrive_in_opposite_orders_never_deadlock() {
    let app = spawn_with(|c| c.db_max_connections = 30).await;
    let x = app.create_product(10, 100).await;
    let y = app.create_product(10, 100).await;
    let (a, ta) = app.funded_user(1_000).await;
    let (b, tb) = app.funded_user(1_000).await;
    let (c, tc) = app.funded_user(1_000).await;
    let (d, td) = app.funded_user(1_000).await;
    let order = |user, token: &str, product| {
        let token = token.to_string();
        let app = &app;
        async move {
            app.order(user, &token, product, 1, 10)
                .await
                .assert_status(201)["order_id"]
                .as_i64()
                .unwrap()
        }
    };
    // Order ids disagree with user ids: on X, B's order comes first; on Y, A's.
    let bx = order(b, &tb, x).await;
    let ax = order(a, &ta, x).await;
    let ay = order(a, &ta, y).await;
    let by = order(b, &tb, y).await;
    let (cx, cy) = (order(c, &tc, x).await, order(d, &td, y).await);
    // Both products held: one batch of each waits in flight (C's and D's payments).
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM products WHERE id IN (?, ?) ORDER BY id FOR UPDATE")
        .bind(x)
        .bind(y)
        .fetch_all(&mut *lock)
        .await
        .unwrap();
    let pay = |token: &str, id: i64| {
        let req = app
            .client
            .post(app.url("/v1/payments"))
            .bearer_auth(token)
            .json(&json!({"order_id": id}));
        tokio::spawn(async move { Reply::read(req.send().await.unwrap()).await })
    };
    let blockers = [pay(&tc, cx), pay(&td, cy)];
    until_running(&app, BATCH_PRODUCT_LOCK, 2).await;
    // X's next batch: A then B. Y's next batch: B then A.
    let mut replies = Vec::new();
    for (token, id, product, queued) in [
        (&ta, ax, x, 1),
        (&tb, bx, x, 2),
        (&tb, by, y, 1),
        (&ta, ay, y, 2),
    ] {
        replies.push(pay(token, id));
        until(
            std::time::Duration::from_secs(10),
            &format!("{queued} payments never queued"),
            || async { app.state.checkout.queued(product) >= queued },
        )
        .await;
    }
    lock.rollback().await.unwrap();
    for r in blockers.into_iter().chain(replies) {
        r.await.unwrap().assert_status(201);
    }
    assert_eq!(
        app.state.checkout.retries(),
        0,
        "a batch deadlocked and ran again"
    );
    assert_eq!((app.balance(a).await, app.balance(b).await), (980, 980));
    assert_eq!(app.product_row(x).await.3 + app.product_row(y).await.3, 6);
    for user in [a, b, c, d] {
        app.assert_points_conserved(user).await;
    }
}
