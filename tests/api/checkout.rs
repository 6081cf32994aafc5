//! Issue 11: group commit. Placements and payments of one product share transactions; each
//! request is still decided on its own, and every invariant holds under concurrency, two
//! instances and a killed process.
//!
//! "In one batch" is made certain, not hoped for: the test holds the product's row lock so
//! that one batch waits in flight, waits until the requests under test are queued behind
//! it (the checkout's queue length), then lets go.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use futures::future::join_all;
use serde_json::{json, Value};
use sqlx::{MySql, Transaction};

use crate::helpers::{
    at_least, counter, hold_row, spawn_sharing, spawn_with, statements_running, until, Reply,
    ServiceProcess, TestApp, BATCH_PRODUCT_LOCK,
};

/// Holds `product`'s row lock until the transaction ends: every batch of it waits.
async fn hold_product(app: &TestApp, product: i64) -> Transaction<'static, MySql> {
    hold_row(app, "products", product).await
}

/// Waits until a batch is in flight and blocked on the product's row lock (its locking
/// read shows in the process list).
async fn until_in_flight(app: &TestApp) {
    until(Duration::from_secs(10), "no batch in flight", || async {
        statements_running(app, BATCH_PRODUCT_LOCK).await != 0
    })
    .await;
}

/// Waits until `n` requests of `product` are queued behind the batch in flight.
async fn until_queued(app: &TestApp, product: i64, n: usize) {
    until(
        Duration::from_secs(10),
        &format!("{n} requests never queued"),
        || async { app.state.checkout.queued(product) >= n },
    )
    .await;
}

/// A request sent from a task of its own, so the test can go on while it waits.
fn send(
    app: &TestApp,
    path: &str,
    token: &str,
    body: Value,
    key: Option<&str>,
) -> tokio::task::JoinHandle<Reply> {
    let mut req = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    tokio::spawn(async move { Reply::read(req.send().await.expect("request")).await })
}

fn order_id(r: &Reply) -> i64 {
    r.assert_status(201)["order_id"].as_i64().unwrap()
}

/// Every balance equals the sum of its history (one query for all users).
async fn all_points_conserved(app: &TestApp) {
    let broken = app
        .count(
            "SELECT COUNT(*) FROM users u WHERE u.balance <> (SELECT COALESCE(SUM(CASE kind WHEN 'USE' \
             THEN -amount ELSE amount END), 0) FROM point_history h WHERE h.user_id = u.id)",
        )
        .await;
    assert_eq!(broken, 0, "balances that their history does not prove");
}

/// `sold` == Σ PAID quantities, and stock figures add up.
async fn stock_adds_up(app: &TestApp, product: i64, given: i64) {
    let (available, stock, reserved, sold) = app.product_row(product).await;
    let paid = app
        .count(&format!(
            "SELECT CAST(COALESCE(SUM(quantity), 0) AS SIGNED) FROM orders WHERE product_id = {product} AND status = 'PAID'"
        ))
        .await;
    let pending = app
        .count(&format!(
            "SELECT CAST(COALESCE(SUM(quantity), 0) AS SIGNED) FROM orders WHERE product_id = {product} AND status = 'PENDING'"
        ))
        .await;
    assert_eq!(sold, paid, "sold == Σ PAID");
    assert_eq!(reserved, pending, "reserved == Σ PENDING");
    assert_eq!(stock + sold, given, "nothing lost, nothing oversold");
    assert_eq!(available, stock - reserved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_buyers_on_one_product_where_a_tenth_are_short_of_points() {
    let app = spawn_with(|c| c.db_max_connections = 30).await;
    let product = app.create_product(100, 1_000).await;
    let buyers = app.bulk_buyers(1_000, 1_000).await;
    // Every tenth buyer has 50 points, half the price.
    let short: HashSet<i64> = buyers.iter().step_by(10).map(|(u, _)| *u).collect();
    for user in &short {
        sqlx::query("UPDATE users SET balance = 50 WHERE id = ?")
            .bind(user)
            .execute(&app.db)
            .await
            .unwrap();
        sqlx::query("UPDATE point_history SET amount = 50, balance_after = 50 WHERE user_id = ?")
            .bind(user)
            .execute(&app.db)
            .await
            .unwrap();
    }
    // The short ones are refused when they order (F1), reserving nothing.
    let placed = join_all(
        buyers
            .iter()
            .map(|(user, token)| app.order(*user, token, product, 1, 100)),
    )
    .await;
    let mut orders = Vec::new();
    for ((user, token), r) in buyers.iter().zip(&placed) {
        if short.contains(user) {
            r.assert_problem(409, "INSUFFICIENT_POINTS");
            assert_eq!(
                (
                    r.body["balance"].as_i64(),
                    r.body["required"].as_i64(),
                    r.body["available"].as_i64()
                ),
                (Some(50), Some(100), Some(50))
            );
        } else {
            orders.push((token, order_id(r)));
        }
    }
    assert_eq!(app.product_row(product).await.2, 900, "reserved");
    let replies = join_all(orders.iter().map(|(token, id)| app.pay(token, *id))).await;
    for r in &replies {
        assert_eq!(r.assert_status(201)["balance_after"], 900);
    }
    let paid = app
        .count(&format!(
            "SELECT COUNT(*) FROM orders WHERE product_id = {product} AND status = 'PAID'"
        ))
        .await;
    assert_eq!(paid, 900);
    stock_adds_up(&app, product, 1_000).await;
    all_points_conserved(&app).await;
    // At once, or after the repairs' next pass where a bookkeeping call timed out.
    app.eventually_redis_matches_mysql(product, Duration::from_secs(2))
        .await;
    let outbox = app
        .count("SELECT COUNT(*) FROM outbox WHERE event_type = 'order.paid'")
        .await;
    assert_eq!(outbox, 900, "one order.paid per payment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_users_orders_in_one_batch_hold_points_together() {
    let app = spawn_with(|c| c.db_max_connections = 30).await;
    let product = app.create_product(100, 10).await;
    let (user, token) = app.funded_user(250).await;
    let (other, other_token) = app.funded_user(1_000).await;
    let order = json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100});
    // The gate's key exists before the lock (building it would wait on the lock too).
    app.order(other, &other_token, product, 1, 100)
        .await
        .assert_status(201);

    let lock = hold_product(&app, product).await;
    let in_flight = send(
        &app,
        "/v1/orders",
        &other_token,
        json!({"user_id": other, "product_id": product, "quantity": 1, "price": 100}),
        None,
    );
    until_in_flight(&app).await;
    let placing: Vec<_> = (0..3)
        .map(|_| send(&app, "/v1/orders", &token, order.clone(), None))
        .collect();
    until_queued(&app, product, 3).await; // all three wait for one next batch
    lock.rollback().await.unwrap();
    in_flight.await.unwrap().assert_status(201);
    let replies: Vec<Reply> = join_all(placing)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let placed: Vec<&Reply> = replies.iter().filter(|r| r.status == 201).collect();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status != 201).collect();
    assert_eq!((placed.len(), refused.len()), (2, 1), "{replies:?}");
    refused[0].assert_problem(409, "INSUFFICIENT_POINTS");
    assert_eq!(
        (
            &refused[0].body["balance"],
            &refused[0].body["required"],
            &refused[0].body["available"]
        ),
        (&json!(250), &json!(100), &json!(50)),
        "the third saw the two before it"
    );
    let points = app
        .get(&format!("/v1/users/{user}/points"), Some(&token))
        .await;
    assert_eq!(
        points.assert_status(200),
        &json!({"user_id": user, "balance": 250, "held": 200, "available": 50})
    );
    // Both placed orders are payable: the held points are theirs.
    for r in placed {
        app.pay(&token, order_id(r)).await.assert_status(201);
    }
    assert_eq!(app.balance(user).await, 50);
    all_points_conserved(&app).await;
    stock_adds_up(&app, product, 10).await;
    app.assert_redis_matches_mysql(product).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_mixed_requests_answers_each_on_its_own() {
    let app = spawn_with(|c| {
        c.db_max_connections = 30;
        c.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let product = app.create_product(100, 10).await;
    let (user, token) = app.funded_user(10_000).await;
    let (other, other_token) = app.funded_user(10_000).await;
    let good = order_id(&app.order(user, &token, product, 1, 100).await);
    let keyed = order_id(&app.order(user, &token, product, 1, 100).await);
    let expired = order_id(&app.order(user, &token, product, 1, 100).await);
    sqlx::query("UPDATE orders SET expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND WHERE id = ?")
        .bind(expired)
        .execute(&app.db)
        .await
        .unwrap();
    let blocker = order_id(&app.order(other, &other_token, product, 1, 100).await);

    let lock = hold_product(&app, product).await;
    let in_flight = send(
        &app,
        "/v1/payments",
        &other_token,
        json!({"order_id": blocker}),
        None,
    );
    until_in_flight(&app).await;
    let mut batch = Vec::new();
    for (body, key, path) in [
        (
            json!({"order_id": keyed}),
            Some("pay-keyed"),
            "/v1/payments",
        ),
        (
            json!({"order_id": keyed}),
            Some("pay-keyed"),
            "/v1/payments",
        ),
        (json!({"order_id": expired}), None, "/v1/payments"),
        (
            json!({"user_id": user, "product_id": product, "quantity": 2, "price": 100}),
            None,
            "/v1/orders",
        ),
        (json!({"order_id": good}), None, "/v1/payments"),
    ] {
        batch.push(send(&app, path, &token, body, key));
        until_queued(&app, product, batch.len()).await; // arrival order is fixed
    }
    // A price this instance knows to be wrong never reaches the batch: answered while the
    // row is held (issue 26; the batch still judges the price, for a stale copy).
    let wrong = tokio::time::timeout(
        Duration::from_secs(3),
        app.order(user, &token, product, 1, 90),
    )
    .await
    .expect("a wrong price is answered without the batch");
    wrong.assert_problem(409, "PRICE_MISMATCH");
    assert_eq!(wrong.body["current_price"], 100);
    lock.rollback().await.unwrap();
    in_flight.await.unwrap().assert_status(201);
    let r: Vec<Reply> = join_all(batch)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // The key's first request pays; its duplicate in the same batch replays that answer.
    let first = r[0].assert_status(201).clone();
    assert_eq!(r[1].assert_status(201), &first);
    assert_eq!(r[1].headers["idempotent-replayed"], "true");
    r[2].assert_problem(409, "ORDER_NOT_PAYABLE");
    assert_eq!(r[3].assert_status(201)["quantity"], 2);
    assert_eq!(r[4].assert_status(201)["order_id"], good);
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM payments WHERE order_id = {keyed}"
        ))
        .await,
        1
    );
    // A later retry with the key replays it too.
    let again = app
        .post_with_key(
            "/v1/payments",
            Some(&token),
            json!({"order_id": keyed}),
            Some("pay-keyed"),
        )
        .await;
    assert_eq!(again.assert_status(201), &first);
    assert_eq!(app.balance(user).await, 10_000 - 200);
    stock_adds_up(&app, product, 10).await;
    all_points_conserved(&app).await;
    app.assert_redis_matches_mysql(product).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_hammering_one_product_never_deadlock_or_oversell() {
    let a = spawn_with(|c| c.db_max_connections = 20).await;
    let b = spawn_sharing(&a, |c| c.db_max_connections = 20).await;
    let product = a.create_product(100, 200).await;
    let buyers = a.bulk_buyers(400, 1_000).await;
    let outcomes = join_all(buyers.iter().enumerate().map(|(i, (user, token))| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move {
            let placed = app.order(*user, token, product, 1, 100).await;
            if placed.status != 201 {
                placed.assert_problem(409, "OUT_OF_STOCK");
                return false;
            }
            // Every tenth winner cancels instead; its unit goes to someone else or stays.
            let id = order_id(&placed);
            if i % 10 == 0 {
                let cancelled = app
                    .post(&format!("/v1/orders/{id}/cancel"), Some(token), json!({}))
                    .await;
                cancelled.assert_status(200);
                return false;
            }
            app.pay(token, id).await.assert_status(201);
            true
        }
    }))
    .await;
    let bought = outcomes.iter().filter(|b| **b).count() as i64;
    // A deadlock is retried, not answered: count the retries instead. No batch of either
    // instance and no cancel ran its transaction twice.
    assert_eq!(
        (a.state.checkout.retries(), b.state.checkout.retries()),
        (0, 0),
        "a batch deadlocked and ran again"
    );
    assert_eq!(
        counter("db_transaction_retries_total", &[]),
        0.0,
        "a transaction deadlocked and ran again"
    );
    let (_, _, reserved, sold) = a.product_row(product).await;
    assert_eq!(sold, bought);
    assert_eq!(reserved, 0);
    assert!(sold <= 200);
    stock_adds_up(&a, product, 200).await;
    all_points_conserved(&a).await;
    a.eventually_redis_matches_mysql(product, Duration::from_secs(5))
        .await;
}

/// Places and pays one unit with the buyer's keys; `None` where the connection died.
async fn buy_with_keys(
    client: &reqwest::Client,
    base: &str,
    user: i64,
    token: &str,
    product: i64,
) -> Option<(u16, u16)> {
    let post = |path: &str, body: Value, key: String| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let placed = post(
        "/v1/orders",
        json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100}),
        format!("order-{user}"),
    )
    .await
    .ok()?;
    let status = placed.status().as_u16();
    let body: Value = placed.json().await.ok()?;
    if status != 201 {
        return Some((status, 0));
    }
    let paid = post(
        "/v1/payments",
        json!({"order_id": body["order_id"]}),
        format!("pay-{user}"),
    )
    .await
    .ok()?;
    Some((status, paid.status().as_u16()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_with_batches_in_flight_leaves_whole_batches_and_retries_finish() {
    let app = spawn_with(|c| c.reconcile_interval = Duration::from_millis(300)).await;
    let product = app.create_product(100, 10_000).await;
    let buyers = app.bulk_buyers(300, 1_000).await;
    let client = reqwest::Client::new();
    let mut first = ServiceProcess::start(
        &app,
        &[
            ("RESERVATION_HOLD_MS", "1000"),
            ("DB_MAX_CONNECTIONS", "16"),
        ],
    )
    .await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = buyers
        .iter()
        .map(|(user, token)| {
            let (client, base, token, done, user) = (
                client.clone(),
                first.base.clone(),
                token.clone(),
                done.clone(),
                *user,
            );
            tokio::spawn(async move {
                let r = buy_with_keys(&client, &base, user, &token, product).await;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                r
            })
        })
        .collect();
    at_least(Duration::from_secs(30), "60 buyers done", 60, || {
        done.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    // Work certainly in flight: the test holds the product's row, so the next batch holds
    // its keys, orders and users and waits on the product; the process dies then.
    let lock = hold_product(&app, product).await;
    until_in_flight(&app).await;
    first.kill();
    lock.rollback().await.unwrap();
    let before: Vec<Option<(u16, u16)>> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert!(before.iter().filter(|r| r.is_some()).count() >= 60);
    assert!(
        before.iter().any(Option::is_none),
        "the batch in flight died without an answer"
    );

    // Whatever committed, committed whole: every PAID order has its payment, its history
    // row and its event; every balance is proven by its history.
    let orphans = app
        .count(
            "SELECT COUNT(*) FROM orders o WHERE o.status = 'PAID' AND (\
             NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id) OR \
             NOT EXISTS (SELECT 1 FROM point_history h WHERE h.order_id = o.id AND h.kind = 'USE') OR \
             NOT EXISTS (SELECT 1 FROM outbox e WHERE e.aggregate_id = o.id))",
        )
        .await;
    assert_eq!(orphans, 0);
    all_points_conserved(&app).await;
    stock_adds_up(&app, product, 10_000).await;

    // Every buyer retries with the same keys on a new process: each ends with exactly one
    // PAID order, and no retry waited on a claim left by the dead process.
    let second = ServiceProcess::start(
        &app,
        &[
            ("RESERVATION_HOLD_MS", "1000"),
            ("DB_MAX_CONNECTIONS", "16"),
        ],
    )
    .await;
    let started = Instant::now();
    let after = join_all(
        buyers
            .iter()
            .map(|(user, token)| buy_with_keys(&client, &second.base, *user, token, product)),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "retries waited on dead claims"
    );
    for r in &after {
        assert_eq!(*r, Some((201, 201)), "{after:?}");
    }
    let per_user: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(&format!(
        "SELECT user_id, COUNT(*) FROM orders WHERE product_id = {product} AND status = 'PAID' GROUP BY user_id"
    ))
    .fetch_all(&app.db)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(per_user.len(), buyers.len());
    assert!(per_user.values().all(|n| *n == 1), "a key paid twice");
    let orders_per_user = app
        .count(&format!(
            "SELECT COUNT(*) FROM (SELECT user_id FROM orders WHERE product_id = {product} GROUP BY user_id HAVING COUNT(*) > 1) t"
        ))
        .await;
    assert_eq!(orders_per_user, 0, "a key placed two orders");
    all_points_conserved(&app).await;
    stock_adds_up(&app, product, 10_000).await;
    app.eventually_redis_matches_mysql(product, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_local_sold_out_answer_ends_when_units_come_back_on_every_instance() {
    // Memory that outlives the test: only the units-back announcement can end it.
    let a = spawn_with(|c| c.sold_out_memory = Duration::from_secs(60)).await;
    let b = spawn_sharing(&a, |_| {}).await;
    let product = a.create_product(100, 1).await;
    let buyers = a.bulk_buyers(3, 1_000).await;
    let (winner, loser_a, loser_b) = (&buyers[0], &buyers[1], &buyers[2]);
    let id = order_id(&a.order(winner.0, &winner.1, product, 1, 100).await);
    // Both instances hear "sold out" from the gate once, then answer from memory.
    for (app, (user, token)) in [(&a, loser_a), (&b, loser_b)] {
        for _ in 0..3 {
            let r = app.order(*user, token, product, 1, 100).await;
            r.assert_problem(409, "OUT_OF_STOCK");
            assert_eq!(
                (r.body["available"].as_i64(), r.body["requested"].as_i64()),
                (Some(0), Some(1))
            );
        }
    }
    // Remembered: a unit put back in Redis behind the service's back is not seen...
    let mut redis = a.redis().get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}{{p{product}}}", a.config.redis_prefix);
    let _: i64 = redis::cmd("HINCRBY")
        .arg(&key)
        .arg("avail")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    a.order(loser_a.0, &loser_a.1, product, 1, 100)
        .await
        .assert_problem(409, "OUT_OF_STOCK");
    let _: i64 = redis::cmd("HINCRBY")
        .arg(&key)
        .arg("avail")
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    // ...but a cancel announces its unit: within a second, each instance sells it again.
    a.post(
        &format!("/v1/orders/{id}/cancel"),
        Some(&winner.1),
        json!({}),
    )
    .await
    .assert_status(200);
    for (app, (user, token)) in [(&b, loser_b), (&a, loser_a)] {
        let start = Instant::now();
        loop {
            let r = app.order(*user, token, product, 1, 100).await;
            if r.status == 201 {
                let id = order_id(&r);
                app.post(&format!("/v1/orders/{id}/cancel"), Some(token), json!({}))
                    .await
                    .assert_status(200);
                break;
            }
            r.assert_problem(409, "OUT_OF_STOCK");
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "still sold out after a second"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stock_adds_up(&a, product, 1).await;
}
