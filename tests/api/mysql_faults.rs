//! Issue 20: MySQL, the source of truth, fails too. Its own `mariadbd` per test, killed
//! with `kill -9` while work is provably in flight (a held product row with batches queued
//! behind it), then started again on the same data.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::{
    haproxy::HaProxy,
    helpers::{
        at_least, eventually, hold_row, spawn_with, until_running, Reply, TestApp,
        BATCH_PRODUCT_LOCK,
    },
    mysql_replica::{MariaPair, Mariadb},
};

/// What the buyers were told, all of it: every 2xx must be in MySQL afterwards.
#[derive(Default)]
struct Told {
    orders: HashMap<i64, i64>,
    payments: HashMap<i64, i64>,
    /// Answers other than 2xx and 409, by status (a 503 is allowed, a 500 never).
    others: HashMap<u16, usize>,
}

impl Told {
    fn note(&mut self, user: i64, r: &Reply) {
        match r.status.as_u16() {
            201 if r.body.get("payment_id").is_some() => {
                let id = r.body["payment_id"].as_i64().unwrap_or_default();
                if let Some(known) = self.payments.insert(user, id) {
                    assert_eq!(known, id, "user {user} paid twice");
                }
            }
            201 => {
                self.orders
                    .insert(user, r.body["order_id"].as_i64().unwrap_or_default());
            }
            409 => {}
            status => *self.others.entry(status).or_default() += 1,
        }
    }
}

async fn post(app: &TestApp, path: &str, token: &str, body: Value, key: &str) -> Reply {
    app.post_with_key(path, Some(token), body, Some(key)).await
}

/// One buyer: orders one unit and pays for it, each with its own key; a 503 ends the
/// round (the retry comes later, with the same keys).
async fn buy(app: &TestApp, user: i64, token: &str, product: i64, told: &Mutex<Told>) -> bool {
    let order = json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100});
    let placed = post(app, "/v1/orders", token, order, &format!("o-{user}")).await;
    told.lock().await.note(user, &placed);
    match placed.status.as_u16() {
        201 => {}
        409 => return true,
        _ => return false,
    }
    let id = placed.body["order_id"].clone();
    let paid = post(
        app,
        "/v1/payments",
        token,
        json!({"order_id": id}),
        &format!("p-{user}"),
    )
    .await;
    told.lock().await.note(user, &paid);
    paid.status.as_u16() == 201
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_killed_and_restarted_mid_sale_loses_nothing_it_acknowledged() {
    let mut mysql = Mariadb::start(&[]);
    let timeout = Duration::from_secs(3);
    let url = mysql.url("commerce_mysql_fault");
    let app = spawn_with(|c| {
        c.database_url = url;
        c.request_timeout = timeout;
        c.db_max_connections = 30;
    })
    .await;
    let units = 100;
    let product = app.create_product(100, units).await;
    let sold_out = app.create_product(100, 0).await;
    let buyers = app.bulk_buyers(200, 1_000).await;
    let (first, first_token) = &buyers[0];
    app.order(*first, first_token, sold_out, 1, 100)
        .await
        .assert_problem(409, "OUT_OF_STOCK");

    // A first wave is served and acknowledged before anything fails.
    let told = Arc::new(Mutex::new(Told::default()));
    for (user, token) in &buyers[..40] {
        assert!(buy(&app, *user, token, product, &told).await);
    }
    assert_eq!(told.lock().await.payments.len(), 40);
    // Then work in flight: the product's row held, one batch blocked on it, others queued.
    let lock = hold_row(&app, "products", product).await;
    let app = Arc::new(app);
    let burst: Vec<_> = buyers[40..]
        .iter()
        .map(|(user, token)| {
            let (app, told, token, user) = (app.clone(), told.clone(), token.clone(), *user);
            tokio::spawn(async move { buy(&app, user, &token, product, &told).await })
        })
        .collect();
    until_running(&app, BATCH_PRODUCT_LOCK, 1).await;
    at_least(
        Duration::from_secs(10),
        "batches queued behind the lock",
        20,
        || app.state.checkout.queued(product),
    )
    .await;
    mysql.kill();
    drop(lock); // its connection died with the server

    // The outage: quick 503s for what needs MySQL, the rest served.
    let ready = app.get("/readyz", None).await;
    ready.assert_problem(503, "DEPENDENCY_UNAVAILABLE");
    assert!(
        ready.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("mysql"),
        "{ready:?}"
    );
    let detail = app.get(&format!("/v1/products/{product}"), None).await;
    assert_eq!(detail.assert_status(200)["id"], product);
    app.get("/v1/products?page=1", None)
        .await
        .assert_status(200);
    app.order(*first, first_token, sold_out, 1, 100)
        .await
        .assert_problem(409, "OUT_OF_STOCK");
    let asked = Instant::now();
    let (late, late_token) = &buyers[1];
    app.charge(*late, late_token, 1)
        .await
        .assert_problem(503, "DEPENDENCY_UNAVAILABLE");
    assert!(
        asked.elapsed() <= timeout + Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
    // Every buyer in flight had an answer within the request timeout (2xx, 409 or 503).
    for handle in burst {
        tokio::time::timeout(timeout * 2, handle)
            .await
            .expect("an answer within the request timeout")
            .expect("buyer");
    }

    // MySQL back after ~3 s: ready again within 5 s, with no restart of the service.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(asked.elapsed())).await;
    mysql.restart();
    eventually(
        Duration::from_secs(5),
        "/readyz 200 after MySQL's return",
        || async {
            match app.get("/readyz", None).await.status.as_u16() {
                200 => Ok(()),
                s => Err(s.to_string()),
            }
        },
    )
    .await;

    // Every buyer retries with the same keys until the answer is final: a key whose
    // request committed replays it, one that did not runs now.
    let before_retry: HashMap<i64, i64> = told.lock().await.orders.clone();
    until_final(&app, &buyers, product, &told).await;
    let told = told.lock().await;
    println!(
        "outage: {} answers were 503",
        told.others.get(&503).copied().unwrap_or(0)
    );
    // Keys answered 201 before the outage replay the same order.
    for (user, order) in &before_retry {
        assert_eq!(
            told.orders.get(user),
            Some(order),
            "user {user}'s order changed"
        );
    }
    nothing_acknowledged_lost(&app, &told, product, units).await;
    // The gate agrees with MySQL again by itself (the periodic reconcile is an hour away).
    app.eventually_redis_matches_mysql(product, Duration::from_secs(5))
        .await;
}

/// Every buyer of `buyers` retries with the same keys until the answer is final (each 503
/// on the way counted by status in `told`).
async fn until_final(app: &TestApp, buyers: &[(i64, String)], product: i64, told: &Mutex<Told>) {
    for (user, token) in buyers {
        let mut done = false;
        for _ in 0..50 {
            if buy(app, *user, token, product, told).await {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(done, "buyer {user} never got a final answer");
    }
}

/// What every test of a lost MySQL checks at the end: no 500, only 503 for the outage;
/// every acknowledged order and payment in MySQL (the primary as it is now); sold == Σ PAID
/// ≤ units; points conserved.
async fn nothing_acknowledged_lost(app: &TestApp, told: &Told, product: i64, units: i64) {
    assert_eq!(told.others.get(&500), None, "{:?}", told.others);
    assert!(
        told.others.keys().all(|s| *s == 503),
        "only 503 may stand for the outage: {:?}",
        told.others
    );
    for order in told.orders.values() {
        let found = app
            .count(&format!("SELECT COUNT(*) FROM orders WHERE id = {order}"))
            .await;
        assert_eq!(found, 1, "acknowledged order {order} lost");
    }
    for payment in told.payments.values() {
        let found = app
            .count(&format!(
                "SELECT COUNT(*) FROM payments WHERE id = {payment}"
            ))
            .await;
        assert_eq!(found, 1, "acknowledged payment {payment} lost");
    }
    let (available, _, reserved, sold) = app.product_row(product).await;
    let paid = app
        .count(&format!(
            "SELECT CAST(COALESCE(SUM(quantity), 0) AS SIGNED) FROM orders WHERE product_id = {product} AND status = 'PAID'"
        ))
        .await;
    assert_eq!(sold, paid, "sold == Σ PAID");
    assert!(sold <= units);
    assert_eq!(sold + available + reserved, units);
    assert_eq!(
        sold as usize,
        told.payments.len(),
        "every payment acknowledged once"
    );
    let unproven = app
        .count(
            "SELECT COUNT(*) FROM users u WHERE u.balance <> (SELECT COALESCE(SUM(CASE kind WHEN 'USE' \
             THEN -amount ELSE amount END), 0) FROM point_history h WHERE h.user_id = u.id)",
        )
        .await;
    assert_eq!(unproven, 0, "points conserved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_primary_lost_to_its_standby_mid_sale_loses_no_acknowledged_payment() {
    let mut pair = MariaPair::start_standby();
    let write = HaProxy::start_mysql(&[pair.primary.port, pair.replica.port]).await;
    let database = "commerce_failover";
    let (write_url, read_url) = (
        format!("mysql://commerce:commerce@{}/{database}", write.url),
        pair.replica_url(database),
    );
    let app = spawn_with(|c| {
        c.database_url = write_url;
        c.database_read_url = Some(read_url);
        c.request_timeout = Duration::from_secs(3);
        c.db_max_connections = 30;
    })
    .await;
    let units = 150;
    let product = app.create_product(100, units).await;
    let buyers = app.bulk_buyers(200, 1_000).await;
    let told = Arc::new(Mutex::new(Told::default()));
    // Served and acknowledged by the primary (and, semi-sync, received by the standby).
    for (user, token) in &buyers[..40] {
        assert!(buy(&app, *user, token, product, &told).await);
    }
    // Work in flight on the primary: its product row held, batches queued behind it.
    let lock = hold_row(&app, "products", product).await;
    let app = Arc::new(app);
    let burst: Vec<_> = buyers[40..]
        .iter()
        .map(|(user, token)| {
            let (app, told, token, user) = (app.clone(), told.clone(), token.clone(), *user);
            tokio::spawn(async move { buy(&app, user, &token, product, &told).await })
        })
        .collect();
    until_running(&app, BATCH_PRODUCT_LOCK, 1).await;
    at_least(
        Duration::from_secs(10),
        "batches queued behind the lock",
        20,
        || app.state.checkout.queued(product),
    )
    .await;

    // The primary dies; the standby is promoted; HAProxy sends the writes there.
    let lost = Instant::now();
    pair.kill_primary();
    drop(lock);
    pair.promote_replica();
    for handle in burst {
        handle.await.expect("buyer");
    }
    let resumed = eventually(
        Duration::from_secs(10),
        "a write through the new primary",
        || async {
            let (user, token) = &buyers[0];
            match app.charge(*user, token, 1).await.status.as_u16() {
                200 => Ok(lost.elapsed()),
                s => Err(s.to_string()),
            }
        },
    )
    .await;
    println!("failover: writes were refused for {resumed:?} after the primary's death");
    until_final(&app, &buyers, product, &told).await;
    let told = told.lock().await;
    nothing_acknowledged_lost(&app, &told, product, units).await;
    assert!(told.payments.len() >= 40);
    app.eventually_redis_matches_mysql(product, Duration::from_secs(5))
        .await;
}
