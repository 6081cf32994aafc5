//! Issue 13: past one machine on real engines. The Redis-path scenarios on a 3-master
//! Redis Cluster (one started per test), and a master killed mid-sale.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use commerce_api::config::RedisTarget;
use futures::future::join_all;
use serde_json::{json, Value};

use reqwest::Method;

use crate::{
    haproxy::HaProxy,
    helpers::{
        at_least, eventually, hold_row, spawn_sharing, spawn_with, until_running, ServiceProcess,
        TestApp, BATCH_PRODUCT_LOCK,
    },
    mysql_replica::MariaPair,
    redis_cluster::RedisCluster,
    redis_paths::{five_hundred_for_fifty, flushed_redis_comes_back, two_instances_agree},
};

async fn on_cluster(
    cluster: &RedisCluster,
    tweak: impl FnOnce(&mut commerce_api::config::Config),
) -> TestApp {
    let seeds = cluster.seeds();
    spawn_with(|c| {
        c.redis = RedisTarget::Cluster(seeds);
        c.db_max_connections = 30;
        c.redis_timeout = Duration::from_millis(500);
        tweak(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_five_hundred_buyers_for_fifty_units_never_oversell() {
    let cluster = RedisCluster::start();
    let app = on_cluster(&cluster, |_| {}).await;
    five_hundred_for_fifty(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_a_product_of_many_pending_orders_is_synced_in_chunks() {
    let cluster = RedisCluster::start();
    let app = on_cluster(&cluster, |c| {
        c.reconcile_interval = Duration::from_secs(3600);
        c.redis_timeout = Duration::from_secs(2);
    })
    .await;
    crate::faults::sync_in_chunks(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_two_instances_agree_within_a_second_of_a_write() {
    let cluster = RedisCluster::start();
    let a = on_cluster(&cluster, |_| {}).await;
    let b = spawn_sharing(&a, |_| {}).await;
    two_instances_agree(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_flushall_on_every_master_comes_back_right() {
    let cluster = RedisCluster::start();
    let app = on_cluster(&cluster, |c| {
        c.reconcile_interval = Duration::from_millis(300)
    })
    .await;
    flushed_redis_comes_back(&app, || async { cluster.flush_all() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_mid_sale_fails_over_without_oversell_or_a_restart() {
    let mut cluster = RedisCluster::start();
    let app = on_cluster(&cluster, |c| {
        c.reconcile_interval = Duration::from_millis(500)
    })
    .await;
    let product = app.create_product(100, 200).await;
    let buyers = app.bulk_buyers(400, 1_000).await;
    // The master of the product's slot dies once 100 buyers have their final answer.
    let victim = cluster.master_of(&format!("{}{{p{product}}}", app.config.redis_prefix));
    let answered = AtomicUsize::new(0);
    let retried = Retried::default();
    let sale = join_all(buyers.iter().map(|(user, token)| {
        let (app, answered, retried) = (&app, &answered, &retried);
        async move {
            let r = buy_through(&app.client, &app.base, *user, token, product, retried).await;
            answered.fetch_add(1, Ordering::SeqCst);
            r
        }
    }));
    // Once 100 buyers have their answer, the test holds the product's row: the next batch
    // waits in MySQL with its units reserved on the master, which dies then. The batch
    // commits after the kill and its Redis bookkeeping meets the failover.
    let killer = async {
        at_least(Duration::from_secs(30), "100 buyers answered", 100, || {
            answered.load(Ordering::SeqCst)
        })
        .await;
        let lock = hold_row(&app, "products", product).await;
        until_running(&app, BATCH_PRODUCT_LOCK, 1).await;
        cluster.kill(victim);
        lock.rollback().await.unwrap();
    };
    let (outcomes, ()) = tokio::join!(sale, killer);
    // Nothing was ever answered 500; a 503 (Redis unreachable while the cluster fails
    // over) was sent again with the same key.
    retried.assert_only(&[503]);
    // Every buyer got a final answer; exactly the 200 units were sold, no more.
    let won = outcomes.iter().filter(|o| o.0 == 201).count();
    assert!(
        outcomes.iter().all(|o| o.0 == 409 || o.1 == 201),
        "{outcomes:?}"
    );
    assert_eq!(won, 200, "{outcomes:?}");
    let (available, _, reserved, sold) = app.product_row(product).await;
    assert_eq!((available, reserved, sold), (0, 0, 200));
    // The replica took over; the same process serves on, and Redis agrees with MySQL
    // once the reconciler has run.
    cluster.until_failed_over(victim);
    app.eventually_redis_matches_mysql(product, Duration::from_secs(20))
        .await;
    let detail = app.get(&format!("/v1/products/{product}"), None).await;
    assert_eq!(detail.assert_status(200)["sold"], 200);
    let start = Instant::now();
    loop {
        let top = app.get("/v1/products/top?days=1", None).await;
        if top.body["items"][0]["sold"] == 200 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "ranking {top:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An app whose catalog reads a replica allowed one second behind.
async fn on_replica(pair: &MariaPair) -> TestApp {
    spawn_with(|c| {
        let name = c.database_url.rsplit('/').next().unwrap().to_string();
        c.database_url = pair.primary_url(&name);
        c.database_read_url = Some(pair.replica_url(&name));
        c.replica_max_lag = Duration::from_secs(1);
    })
    .await
}

async fn until_replica(app: &TestApp, state: &str) {
    let start = Instant::now();
    loop {
        let ready = app.get("/readyz", None).await;
        assert_eq!(ready.status, 200, "{ready:?}");
        if ready.body["replica"] == state {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "replica never {state}: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_behind_is_read_only_within_the_bound_then_the_primary_answers() {
    let pair = MariaPair::start();
    let app = on_replica(&pair).await;
    let product = app.create_product(100, 5).await;
    until_replica(&app, "ok").await;
    let path = format!("/v1/products/{product}");
    // The replica stops applying; the price changes on the primary.
    pair.pause_replication();
    app.admin(
        Method::PATCH,
        &format!("/v1/admin/products/{product}"),
        json!({"price": 150}),
    )
    .await
    .assert_status(200);
    let patched = Instant::now();
    // Catalog loads read the replica while it is fresh: the old price shows (the reads
    // really go there)...
    assert_eq!(app.get(&path, None).await.body["price"], 100);
    // ...never longer than the documented bound: REPLICA_MAX_LAG_SECS, plus a heartbeat to
    // notice, plus the repeated invalidation. Then the primary answers, for good.
    let bound = Duration::from_secs(1) + commerce_api::db::HEARTBEAT_EVERY * 4;
    loop {
        let price = app.get(&path, None).await.body["price"].clone();
        if price == 150 {
            break;
        }
        assert!(
            patched.elapsed() < bound + Duration::from_secs(1),
            "price {price} after {:?}",
            patched.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        assert_eq!(app.get(&path, None).await.body["price"], 150);
    }
    until_replica(&app, "primary").await;
    // Caught up again, the replica serves again.
    pair.resume_replication();
    until_replica(&app, "ok").await;
    assert_eq!(app.get(&path, None).await.body["price"], 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_replica_killed_the_catalog_is_still_served() {
    let mut pair = MariaPair::start();
    let app = on_replica(&pair).await;
    let product = app.create_product(100, 5).await;
    until_replica(&app, "ok").await;
    // Warm nothing: every read below is a load.
    pair.kill_replica();
    for i in 0..30 {
        for path in [
            format!("/v1/products?page={}", 1 + i % 3),
            format!("/v1/products/{product}"),
            format!("/v1/products/top?days={}", 1 + i % 7),
        ] {
            let r = app.get(&path, None).await;
            assert_eq!(r.status, 200, "{path}: {r:?}");
        }
    }
    until_replica(&app, "primary").await;
    // Writes never depended on it.
    let (user, token) = app.funded_user(1_000).await;
    let order = app.order(user, &token, product, 1, 100).await;
    let id = order.assert_status(201)["order_id"].as_i64().unwrap();
    app.pay(&token, id).await.assert_status(201);
}

/// What [`buy_through`] sent again, by the status that made it (0: the connection gave no
/// answer).
#[derive(Default)]
struct Retried(std::sync::Mutex<std::collections::BTreeMap<u16, usize>>);

impl Retried {
    fn note(&self, status: u16) {
        *self.0.lock().unwrap().entry(status).or_default() += 1;
    }

    /// Every retry was for one of `allowed` (a 500 never is).
    fn assert_only(&self, allowed: &[u16]) {
        let retried = self.0.lock().unwrap();
        assert!(
            retried.keys().all(|s| allowed.contains(s)),
            "retried past {retried:?}; allowed only {allowed:?}"
        );
    }
}

/// Places and pays one unit through `base` with the buyer's keys, sending again (the same
/// keys) what did not end in an answer — a connection cut, a 5xx — and noting each in
/// `retried`.
async fn buy_through(
    client: &reqwest::Client,
    base: &str,
    user: i64,
    token: &str,
    product: i64,
    retried: &Retried,
) -> (u16, u16) {
    let until_final = |url: String, key: String, body: Value| async move {
        eventually(
            Duration::from_secs(30),
            &format!("{url}: an answer"),
            || async {
                let sent = client
                    .post(&url)
                    .bearer_auth(token)
                    .header("Idempotency-Key", &key)
                    .json(&body)
                    .send()
                    .await;
                let status = sent.as_ref().map_or(0, |r| r.status().as_u16());
                match sent {
                    Ok(r) if status < 500 => Ok((status, r.json().await.unwrap_or(Value::Null))),
                    _ => {
                        retried.note(status);
                        tokio::time::sleep(Duration::from_millis(90)).await;
                        Err(format!("{status}"))
                    }
                }
            },
        )
        .await
    };
    let (placed, order) = until_final(
        format!("{base}/v1/orders"),
        format!("order-{user}"),
        json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100}),
    )
    .await;
    if placed != 201 {
        assert_eq!(order["code"], "OUT_OF_STOCK", "{order}");
        return (placed, 0);
    }
    let (paid, _) = until_final(
        format!("{base}/v1/payments"),
        format!("pay-{user}"),
        json!({"order_id": order["order_id"]}),
    )
    .await;
    (placed, paid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_killed_behind_haproxy_mid_sale_leaves_every_buyer_a_final_answer() {
    let app = spawn_with(|c| c.db_max_connections = 10).await;
    let product = app.create_product(100, 150).await;
    let buyers = app.bulk_buyers(300, 1_000).await;
    // The instances drop a dead peer's reservations a second after their deadline.
    let env = [
        ("DB_MAX_CONNECTIONS", "20"),
        ("RESERVATION_HOLD_MS", "1000"),
        ("RECONCILE_INTERVAL_MS", "500"),
    ];
    let mut first = ServiceProcess::start(&app, &env).await;
    let second = ServiceProcess::start(&app, &env).await;
    let proxy = HaProxy::start(&[&first.base, &second.base]).await;
    let client = reqwest::Client::new();
    // One order placed on each instance before the sale and paid there while the test
    // holds the product's row: each instance then certainly has a batch waiting on it,
    // whatever share of the sale HAProxy gave it (a gate that says "sold out" while the
    // other instance's queue holds the units sends that instance nothing to batch).
    let anchors = app.bulk_buyers(2, 1_000).await;
    let bases = [first.base.clone(), second.base.clone()];
    let mut anchored = Vec::new();
    for ((user, token), base) in anchors.iter().zip(&bases) {
        let placed = client
            .post(format!("{base}/v1/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", format!("order-{user}"))
            .json(&json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100}))
            .send()
            .await
            .unwrap();
        assert_eq!(placed.status(), 201);
        anchored.push(placed.json::<Value>().await.unwrap()["order_id"].clone());
    }
    let answered = AtomicUsize::new(0);
    let retried = Retried::default();
    let sale = join_all(buyers.iter().map(|(user, token)| {
        let (client, url, answered, retried) = (&client, &proxy.url, &answered, &retried);
        async move {
            let r = buy_through(client, url, *user, token, product, retried).await;
            answered.fetch_add(1, Ordering::SeqCst);
            r
        }
    }));
    // Once 60 buyers have their answer, the test holds the product's row until a batch of
    // each instance waits on it: the first instance dies with its batch in flight.
    let killer = async {
        at_least(Duration::from_secs(30), "60 buyers answered", 60, || {
            answered.load(Ordering::SeqCst)
        })
        .await;
        let lock = hold_row(&app, "products", product).await;
        for (((user, token), order), base) in anchors.iter().zip(&anchored).zip(&bases) {
            let request = client
                .post(format!("{base}/v1/payments"))
                .bearer_auth(token)
                .header("Idempotency-Key", format!("pay-{user}"))
                .json(&json!({"order_id": order}));
            // The first instance's answer never comes; the anchors are paid again below.
            tokio::spawn(request.send());
        }
        until_running(&app, BATCH_PRODUCT_LOCK, 2).await;
        first.kill();
        lock.rollback().await.unwrap();
    };
    let (outcomes, ()) = tokio::join!(sale, killer);
    // The anchors, through HAProxy with the same keys: the order replays, the payment runs
    // (the first instance's died with its batch) or replays (the second's).
    for (user, token) in &anchors {
        let anchor = buy_through(&client, &proxy.url, *user, token, product, &retried).await;
        assert_eq!(anchor, (201, 201));
    }
    // The dead instance's batch was in flight: HAProxy sent its requests again to the
    // other instance (`retry-on empty-response`; the keys make that safe), or answered
    // 503 and the buyer sent them again. None was ever answered 500 (or 502).
    retried.assert_only(&[503]);
    // Every buyer has a final answer: paid, or sold out (a sold-out answer may come from
    // the dead instance's reservations, which hold their units until their deadline).
    assert!(
        outcomes.iter().all(|o| o.0 == 409 || o.1 == 201),
        "{outcomes:?}"
    );
    // The anchors' two units count with the winners.
    let won = outcomes.iter().filter(|o| o.0 == 201).count() as i64 + 2;
    assert!(won > 2 && won <= 150);
    // No oversell, every winner paid once, every key one order at most.
    let (available, _, reserved, sold) = app.product_row(product).await;
    assert_eq!((available, reserved, sold), (150 - won, 0, won));
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM orders WHERE product_id = {product}"
        ))
        .await,
        won
    );
    // Once those reservations lapse, Redis agrees with MySQL and the rest sells: exactly 150.
    app.eventually_redis_matches_mysql(product, Duration::from_secs(10))
        .await;
    let late = app.bulk_buyers((150 - won) as usize, 1_000).await;
    let rest =
        join_all(late.iter().map(|(user, token)| {
            buy_through(&client, &proxy.url, *user, token, product, &retried)
        }))
        .await;
    assert!(rest.iter().all(|o| *o == (201, 201)), "{rest:?}");
    assert_eq!(app.product_row(product).await, (0, 0, 0, 150));
    let broken = app
        .count(
            "SELECT COUNT(*) FROM users u WHERE u.balance <> (SELECT COALESCE(SUM(CASE kind WHEN 'USE' \
             THEN -amount ELSE amount END), 0) FROM point_history h WHERE h.user_id = u.id)",
        )
        .await;
    assert_eq!(broken, 0);
    drop(second);
}

/// One order through `base`, sent once: its status and whether the body was a problem.
async fn order_once(
    client: &reqwest::Client,
    base: &str,
    user: i64,
    token: &str,
    product: i64,
) -> (u16, bool) {
    let sent = client
        .post(format!("{base}/v1/orders"))
        .bearer_auth(token)
        .json(&json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100}))
        .send()
        .await;
    match sent {
        Ok(r) => {
            let problem = r
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "application/problem+json");
            (r.status().as_u16(), problem)
        }
        Err(_) => (0, false),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_stopped_with_sigterm_behind_haproxy_drains_without_losing_a_request() {
    let app = spawn_with(|c| c.db_max_connections = 10).await;
    let product = app.create_product(100, 150).await;
    let buyers = app.bulk_buyers(200, 1_000).await;
    let env = [("DB_MAX_CONNECTIONS", "20"), ("SHUTDOWN_GRACE_MS", "1500")];
    let mut first = ServiceProcess::start(&app, &env).await;
    let second = ServiceProcess::start(&app, &env).await;
    let proxy = HaProxy::start(&[&first.base, &second.base]).await;
    app.state.stock.sync(&[product]).await.unwrap();
    let client = reqwest::Client::new();

    // In flight: the product's row held, so orders wait in both instances' batches.
    let lock = hold_row(&app, "products", product).await;
    let (early, late) = buyers.split_at(100);
    let in_flight = {
        let (client, url, early) = (client.clone(), proxy.url.clone(), early.to_vec());
        tokio::spawn(async move {
            join_all(
                early
                    .iter()
                    .map(|(user, token)| order_once(&client, &url, *user, token, product)),
            )
            .await
        })
    };
    until_running(&app, BATCH_PRODUCT_LOCK, 2).await;

    // SIGTERM: readiness fails at once; the requests keep coming through HAProxy.
    first.terminate();
    eventually(
        Duration::from_millis(500),
        "the draining instance's /readyz to fail",
        || async {
            match reqwest::get(format!("{}/readyz", first.base)).await {
                Ok(r) if r.status() == 503 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let during = {
        let (client, url, late) = (client.clone(), proxy.url.clone(), late.to_vec());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for chunk in late.chunks(10) {
                answers.extend(
                    join_all(
                        chunk
                            .iter()
                            .map(|(user, token)| order_once(&client, &url, *user, token, product)),
                    )
                    .await,
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    lock.rollback().await.unwrap();

    let answers: Vec<(u16, bool)> = in_flight
        .await
        .unwrap()
        .into_iter()
        .chain(during.await.unwrap())
        .collect();
    // Every request sent during the drain had an answer of the service's: 2xx, 409 or its
    // own 503 problem (never a connection error, nor a proxy's 502/503/504 page).
    for (status, problem) in &answers {
        assert!(
            matches!(status, 200..=299 | 409) || (*status == 503 && *problem),
            "{answers:?}"
        );
    }
    let placed = answers.iter().filter(|(s, _)| *s == 201).count() as i64;
    assert!(placed > 0);
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM orders WHERE product_id = {product}"
        ))
        .await,
        placed,
        "every order placed was answered 201, and no 201 was lost"
    );
    let status = first.exited(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    drop(second);
}

/// Issue 26, item 17: the drain, without HAProxy's retries to hide a dropped request. Sixty
/// orders straight to one instance, held in its batches by the product's row (the
/// instance's own gauge of requests in flight shows all of them in), SIGTERM, the row
/// released once its /readyz answers 503: every one of them gets its 201 from that very
/// instance, and then it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_stopped_with_sigterm_answers_every_request_it_holds_then_exits() {
    const HELD: usize = 60;
    let app = spawn_with(|c| c.db_max_connections = 10).await;
    let product = app.create_product(100, 1_000).await;
    let buyers = app.bulk_buyers(HELD, 1_000).await;
    let mut instance = ServiceProcess::start(
        &app,
        &[("DB_MAX_CONNECTIONS", "10"), ("SHUTDOWN_GRACE_MS", "3000")],
    )
    .await;
    app.state.stock.sync(&[product]).await.unwrap();
    let client = reqwest::Client::new();
    let lock = hold_row(&app, "products", product).await;
    let held = {
        let (client, base, buyers) = (client.clone(), instance.base.clone(), buyers.clone());
        tokio::spawn(async move {
            join_all(
                buyers
                    .iter()
                    .map(|(user, token)| order_once(&client, &base, *user, token, product)),
            )
            .await
        })
    };
    until_running(&app, BATCH_PRODUCT_LOCK, 1).await;
    // Every order is inside the instance: its gauge counts them (and this scrape).
    eventually(
        Duration::from_secs(10),
        "every order in flight in the instance",
        || async {
            let text = client
                .get(format!("{}/metrics", instance.base))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            let in_flight = text
                .lines()
                .find_map(|l| l.strip_prefix("http_requests_in_flight "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if in_flight >= (HELD + 1) as f64 {
                Ok(())
            } else {
                Err(format!("{in_flight} in flight"))
            }
        },
    )
    .await;
    instance.terminate();
    eventually(
        Duration::from_secs(5),
        "the draining instance's /readyz to fail",
        || async {
            match client.get(format!("{}/readyz", instance.base)).send().await {
                Ok(r) if r.status() == 503 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    lock.rollback().await.unwrap();
    let answers = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("every held order answered within 30 s")
        .unwrap();
    assert_eq!(answers.len(), HELD);
    assert!(
        answers.iter().all(|(status, _)| *status == 201),
        "{answers:?}"
    );
    let status = instance.exited(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM orders WHERE product_id = {product}"
        ))
        .await,
        HELD as i64
    );
}
