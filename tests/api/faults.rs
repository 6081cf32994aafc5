//! Issue 12: what a fault used to cost — a retry waiting out a dead claim, an order
//! committed after its request gave up, Redis saying "sold out" for a minute, a negative
//! stock on a detail, the reconciler stalling hot products, a bad configuration found
//! only by a background task.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    helpers::{
        free_port, hold_row, spawn_app, spawn_behind_proxy, spawn_with, statements_running, until,
        until_running, Reply, ServiceProcess, TestApp, BATCH_PRODUCT_LOCK, BATCH_USER_LOCK,
        JWT_SECRET,
    },
    proxy::{Mode, Proxy},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_kill_9_mid_payment_finishes_at_once() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(1_000).await;
    let product = app.create_product(100, 5).await;
    let order = app.order(user, &token, product, 1, 100).await.body["order_id"]
        .as_i64()
        .unwrap();
    let mut binary = ServiceProcess::start(&app, &[]).await;
    // Hold the user's row: the payment claims its key, then waits on this lock.
    let lock = hold_row(&app, "users", user).await;
    let pay = |base: String| {
        let token = token.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{base}/v1/payments"))
                .bearer_auth(token)
                .header("Idempotency-Key", "pay-once")
                .json(&json!({"order_id": order}))
                .send()
                .await;
            match r {
                Ok(r) => Some(Reply::read(r).await),
                Err(_) => None,
            }
        }
    };
    let in_flight = tokio::spawn(pay(binary.base.clone()));
    until(
        Duration::from_secs(10),
        "the payment never blocked",
        || async { statements_running(&app, BATCH_USER_LOCK).await != 0 },
    )
    .await;
    binary.kill(); // mid-payment: its claim and its work die with its connection
    assert!(
        in_flight.await.unwrap().is_none(),
        "the killed request got an answer"
    );
    lock.rollback().await.unwrap();

    let restarted = ServiceProcess::start(&app, &[]).await;
    let retried = Instant::now();
    let r = pay(restarted.base.clone()).await.expect("an answer");
    assert_eq!(r.assert_status(201)["order_id"], order);
    assert!(
        retried.elapsed() < Duration::from_secs(5),
        "the retry waited {:?} for a dead claim",
        retried.elapsed()
    );
    assert_eq!(app.balance(user).await, 900);
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM payments WHERE order_id = {order}"
        ))
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_held_up_past_the_reservation_window_answers_what_committed() {
    let app = spawn_with(|c| c.reservation_hold = Duration::from_millis(300)).await;
    let (user, token) = app.funded_user(1_000).await;
    let product = app.create_product(100, 5).await;
    app.order(user, &token, product, 1, 100)
        .await
        .assert_status(201); // the counter exists
    let lock = hold_row(&app, "products", product).await;
    let placing = tokio::spawn({
        let (client, url, token) = (app.client.clone(), app.url("/v1/orders"), token.clone());
        async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"user_id": user, "product_id": product, "quantity": 2, "price": 100}))
                .send()
                .await
                .unwrap();
            Reply::read(r).await
        }
    });
    until(
        Duration::from_secs(10),
        "the placement never blocked",
        || async { statements_running(&app, BATCH_PRODUCT_LOCK).await != 0 },
    )
    .await;
    // Held twice as long as the reservation's window: the request used to give up here
    // and answer 503 while its transaction went on to commit the order.
    tokio::time::sleep(Duration::from_millis(600)).await;
    lock.rollback().await.unwrap();
    let r = placing.await.unwrap();
    // The order committed, so the answer says so (it used to be a 503 beside a real order).
    let id = r.assert_status(201)["order_id"].as_i64().unwrap();
    assert_eq!(app.order_status(&token, id).await, "PENDING");
    assert_eq!(app.product_row(product).await, (2, 5, 3, 0));
    app.eventually_redis_matches_mysql(product, Duration::from_secs(5))
        .await;
}

/// An app behind a Redis proxy whose only repair is the repairs loop (no reconcile within
/// the test), and a funded buyer.
async fn repairs_only() -> (TestApp, Proxy, i64, String) {
    let (app, proxy) =
        spawn_behind_proxy(|c| c.reconcile_interval = Duration::from_secs(3600)).await;
    let (user, token) = app.funded_user(1_000).await;
    (app, proxy, user, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_lost_to_a_redis_failure_is_repaired_within_a_second() {
    let (app, proxy, user, token) = repairs_only().await;
    let product = app.create_product(100, 1).await;
    let id = app.order(user, &token, product, 1, 100).await.body["order_id"]
        .as_i64()
        .unwrap();
    assert_eq!(app.redis_stock(product).await.0, Some(0));
    proxy.set(Mode::Refuse).await; // the cancel's release fails (one failure: the circuit stays closed)
    app.post(&format!("/v1/orders/{id}/cancel"), Some(&token), json!({}))
        .await
        .assert_status(200);
    proxy.set(Mode::Forward).await;
    until(
        Duration::from_secs(1),
        "Redis still says sold out while MySQL has the unit",
        || async { app.redis_stock(product).await.0 == Some(1) },
    )
    .await;
    app.order(user, &token, product, 1, 100)
        .await
        .assert_status(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paid_order_whose_settle_and_release_were_both_lost_is_not_counted_in_flight() {
    let (app, proxy, user, token) = repairs_only().await;
    let product = app.create_product(100, 2).await;
    app.state.stock.sync(&[product]).await.unwrap();
    // With its counter in Redis, the order's unit is reserved there, then the order waits
    // on the product's row lock; Redis goes away before the order commits, so its settle
    // fails and the reservation stays "in flight" in Redis.
    let lock = hold_row(&app, "products", product).await;
    let (placed, ()) = tokio::join!(app.order(user, &token, product, 1, 100), async {
        until_running(&app, BATCH_PRODUCT_LOCK, 1).await;
        proxy.set(Mode::Refuse).await;
        lock.rollback().await.unwrap();
    });
    let id = placed.assert_status(201)["order_id"].as_i64().unwrap();
    // The payment's release fails too: Redis never hears that the order ended.
    app.pay(&token, id).await.assert_status(201);
    proxy.set(Mode::Forward).await;
    // MySQL: one unit sold, one available. The repair must not keep counting the paid
    // order's reservation as in flight until its deadline (RESERVATION_HOLD_MS, 10 s).
    let (available, _, reserved, sold) = app.product_row(product).await;
    assert_eq!((available, reserved, sold), (1, 0, 1));
    app.eventually_redis_matches_mysql(product, Duration::from_secs(4))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_detail_never_shows_negative_stock_and_the_drift_is_repaired() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(1_000).await;
    let product = app.create_product(100, 5).await;
    app.order(user, &token, product, 1, 100)
        .await
        .assert_status(201);
    // Redis drifted below MySQL (it says 1 left, MySQL 4), then a settle takes units it
    // never reserved: the counter goes below zero.
    let mut redis = app
        .redis()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{}{{p{product}}}", app.config.redis_prefix);
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("avail")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    // The product row held: the repair (a re-sync under its shared lock) waits meanwhile.
    let lock = hold_row(&app, "products", product).await;
    app.state
        .stock
        .settle(product, &[(commerce_api::stock::Hold::new(), 3, 1)])
        .await;
    assert_eq!(app.redis_stock(product).await.0, Some(-2));
    let detail = app.get(&format!("/v1/products/{product}"), None).await;
    assert_eq!(
        detail.assert_status(200)["stock"],
        0,
        "never a negative number"
    );
    lock.rollback().await.unwrap();
    // The product is re-synced from MySQL within a second.
    until(Duration::from_secs(1), "the drift stayed", || async {
        app.redis_stock(product).await.0 == Some(4)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_holds_its_locks_for_one_round_trip_not_one_per_product() {
    let (app, proxy) = spawn_behind_proxy(|c| {
        c.reconcile_interval = Duration::from_secs(3600);
        c.redis_timeout = Duration::from_secs(2);
    })
    .await;
    // 100 products with counters: one reconcile batch.
    let (user, token) = app.funded_user(100_000).await;
    let mut products = Vec::new();
    for _ in 0..100 {
        let p = app.create_product(1, 10).await;
        app.order(user, &token, p, 1, 1).await.assert_status(201);
        products.push(p);
    }
    // Each hash loses its count of held reservations: the reconciler's cheap check sees
    // all 100 as disagreeing, and syncs them.
    for p in &products {
        let key = format!("{}{{p{p}}}", app.config.redis_prefix);
        let _: () = app.redis_cmd(redis::cmd("HDEL").arg(key).arg("nh")).await;
    }
    proxy.set(Mode::Slow).await; // every reply from Redis now waits 50 ms
                                 // Calls cut by the switch may have opened the circuit: wait until Redis answers again.
    let waiting = Instant::now();
    while app
        .state
        .redis
        .cmd::<redis::Value>(&redis::cmd("PING"))
        .await
        .is_err()
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "Redis never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let start = Instant::now();
    let repaired = app.state.stock.reconcile().await.unwrap();
    let took = start.elapsed();
    assert_eq!(repaired, 100);
    // One round trip per product would hold the 100 products' locks for ≥ 5 s.
    assert!(
        took < Duration::from_millis(100 * crate::proxy::SLOW_MS / 2),
        "reconciling 100 products took {took:?}: a round trip per product under the locks"
    );
    proxy.set(Mode::Forward).await;
    for p in products.iter().take(5) {
        app.assert_redis_matches_mysql(*p).await;
    }
}

/// Runs the binary with `env` and expects it to refuse to start.
fn refuses_to_start(env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_commerce-api"));
    cmd.env_clear()
        .env("DATABASE_URL", "mysql://nobody@127.0.0.1:1/none")
        .env("AUTH_JWT_SECRET", JWT_SECRET)
        .env("BIND_ADDR", format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the binary runs");
    assert!(!out.status.success(), "{env:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_configuration_stops_the_process_at_start_up_with_its_name() {
    for (key, bad) in [
        ("SWEEP_INTERVAL_MS", "0"),
        ("RECONCILE_INTERVAL_MS", "0"),
        ("REQUEST_TIMEOUT_MS", "zero"),
        ("BATCH_MAX", "0"),
        ("AUTH_JWT_SECRET", "s"),
        ("ADMIN_TOKEN", "short"),
    ] {
        let stderr = refuses_to_start(&[(key, bad)]);
        assert!(stderr.contains(key), "{key}={bad}: {stderr}");
        assert!(!stderr.contains("panicked"), "{key}={bad}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_whose_redis_follow_up_failed_is_repaired_within_a_second() {
    let (app, proxy, user, token) = repairs_only().await;
    let product = app.create_product(100, 1).await;
    let id = app.order(user, &token, product, 1, 100).await.body["order_id"]
        .as_i64()
        .unwrap();
    app.pay(&token, id).await.assert_status(201);
    assert_eq!(app.redis_stock(product).await.0, Some(0));
    proxy.set(Mode::Refuse).await; // the refund commits; its re-sync of the counter fails
    app.post(&format!("/v1/orders/{id}/refund"), Some(&token), json!({}))
        .await
        .assert_status(200);
    assert_eq!(app.product_row(product).await, (1, 1, 0, 0));
    proxy.set(Mode::Forward).await;
    until(
        Duration::from_secs(1),
        "the gate still says sold out after the refund",
        || async { app.redis_disagreement(product).await.is_none() },
    )
    .await;
    app.order(user, &token, product, 1, 100)
        .await
        .assert_status(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_syncs_only_the_products_whose_figures_or_counts_disagree() {
    let app = spawn_with(|c| c.reconcile_interval = Duration::from_secs(3600)).await;
    let (user, token) = app.funded_user(100_000).await;
    let mut products = Vec::new();
    for _ in 0..20 {
        let p = app.create_product(1, 10).await;
        let id = app.order(user, &token, p, 1, 1).await.assert_status(201)["order_id"]
            .as_i64()
            .unwrap();
        if products.len() % 2 == 0 {
            app.pay(&token, id).await.assert_status(201);
        }
        products.push(p);
    }
    // Placed, settled, paid: every hash agrees, and a pass reads their figures only.
    let synced = crate::helpers::counter("stock_syncs_total", &[]);
    assert_eq!(app.state.stock.reconcile().await.unwrap(), 0);
    assert_eq!(crate::helpers::counter("stock_syncs_total", &[]), synced);
    // One drifts (its figures); one's order was cancelled in MySQL while its release to
    // Redis was lost (one held reservation too many): those two alone.
    let key = format!("{}{{p{}}}", app.config.redis_prefix, products[3]);
    let _: () = app
        .redis_cmd(redis::cmd("HSET").arg(key).arg("avail").arg(7))
        .await;
    for sql in [
        format!(
            "UPDATE orders SET status = 'CANCELLED' WHERE product_id = {}",
            products[5]
        ),
        format!(
            "UPDATE products SET reserved = reserved - 1 WHERE id = {}",
            products[5]
        ),
        format!("UPDATE users SET held = held - 1 WHERE id = {user}"),
    ] {
        sqlx::query(&sql).execute(&app.db).await.unwrap();
    }
    assert_eq!(app.state.stock.reconcile().await.unwrap(), 2);
    assert_eq!(
        crate::helpers::counter("stock_syncs_total", &[]),
        synced + 2.0
    );
    for p in &products {
        app.assert_redis_matches_mysql(*p).await;
    }
}

/// A product of more PENDING orders than one chunk (10,000) is synced through a staging
/// hash in chunks: its hash ends with every hold, the per-user counts of its limit and
/// the right figures, and no staging hash is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_product_of_twenty_five_thousand_pending_orders_is_synced_in_chunks() {
    let app = spawn_with(|c| c.reconcile_interval = Duration::from_secs(3600)).await;
    let key = sync_in_chunks(&app).await;
    let staged: Vec<String> = app
        .redis_cmd(redis::cmd("KEYS").arg(format!("{key}:sync:*")))
        .await;
    assert!(staged.is_empty(), "staging hashes left: {staged:?}");
}

/// 25,000 PENDING orders of 1,000 users on a product under a limit, written in MySQL
/// alone; its Redis key deleted, then synced (twice: the second finds it right). Returns
/// the product's key.
pub async fn sync_in_chunks(app: &TestApp) -> String {
    let product = app.create_product(1, 30_000).await;
    let buyers = app.bulk_buyers(1_000, 1_000).await;
    let (first, last) = (buyers[0].0, buyers[buyers.len() - 1].0);
    assert_eq!(last - first, 999, "the buyers' ids are consecutive");
    for sql in [
        // 25 orders of one unit for each of 1,000 users, written as a batch would.
        format!(
            "INSERT INTO orders (user_id, product_id, quantity, unit_price, total_amount, status, \
             created_at, expires_at, updated_at, hold) \
             SELECT u.id, {product}, 1, 1, 1, 'PENDING', NOW(6), NOW(6) + INTERVAL 1 DAY, NOW(6), \
             CONCAT('chunked-', u.id, '-', n.i) FROM users u \
             CROSS JOIN (SELECT a.i + 5 * b.i AS i FROM \
               (SELECT 0 i UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4) a \
               CROSS JOIN (SELECT 0 i UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4) b) n \
             WHERE u.id BETWEEN {first} AND {last}"
        ),
        format!("UPDATE products SET reserved = 25000, per_user_limit = 40 WHERE id = {product}"),
        format!("UPDATE users SET held = 25 WHERE id BETWEEN {first} AND {last}"),
    ] {
        sqlx::query(&sql).execute(&app.db).await.unwrap();
    }
    let key = format!("{}{{p{product}}}", app.config.redis_prefix);
    let _: () = app.redis_cmd(redis::cmd("DEL").arg(&key)).await;
    assert_eq!(app.state.stock.sync(&[product]).await.unwrap(), 1);
    app.assert_redis_matches_mysql(product).await;
    assert_eq!(app.redis_stock(product).await.2, 25_000);
    let user: Option<i64> = app
        .redis_cmd(redis::cmd("HGET").arg(&key).arg(format!("u:{first}")))
        .await;
    assert_eq!(user, Some(25), "the user's units under the limit");
    // And again, with the hash already right: nothing changes.
    assert_eq!(app.state.stock.sync(&[product]).await.unwrap(), 1);
    app.assert_redis_matches_mysql(product).await;
    key
}
