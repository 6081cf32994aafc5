//! Issue 13: past one machine on real engines. The Redis-path scenarios on a 3-master
//! Redis Cluster (one started per test), and a master killed mid-sale.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use commerce_api::config::RedisTarget;
use futures::future::join_all;
use serde_json::{json, Value};

use crate::{
    helpers::{spawn_sharing, spawn_with, TestApp},
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

#[tokio::test]
async fn on_a_cluster_five_hundred_buyers_for_fifty_units_never_oversell() {
    let cluster = RedisCluster::start();
    let app = on_cluster(&cluster, |_| {}).await;
    five_hundred_for_fifty(&app).await;
}

#[tokio::test]
async fn on_a_cluster_two_instances_agree_within_a_second_of_a_write() {
    let cluster = RedisCluster::start();
    let a = on_cluster(&cluster, |_| {}).await;
    let b = spawn_sharing(&a, |_| {}).await;
    two_instances_agree(&a, &b).await;
}

#[tokio::test]
async fn on_a_cluster_flushall_on_every_master_comes_back_right() {
    let cluster = RedisCluster::start();
    let app = on_cluster(&cluster, |c| {
        c.reconcile_interval = Duration::from_millis(300)
    })
    .await;
    flushed_redis_comes_back(&app, || async { cluster.flush_all() }).await;
}

/// Buys one unit with the buyer's own keys, retrying a 5xx (with the same keys) until the
/// answer is final; returns the final statuses of the order and the payment.
async fn buy_until_final(app: &TestApp, user: i64, token: &str, product: i64) -> (u16, u16) {
    let post = |path: &'static str, body: Value, key: String| {
        let app = app;
        async move {
            loop {
                let r = app
                    .post_with_key(path, Some(token), body.clone(), Some(&key))
                    .await;
                if r.status.is_server_error() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                return r;
            }
        }
    };
    let placed = post(
        "/v1/orders",
        json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100}),
        format!("order-{user}"),
    )
    .await;
    if placed.status != 201 {
        assert_eq!(placed.body["code"], "OUT_OF_STOCK", "{placed:?}");
        return (placed.status.as_u16(), 0);
    }
    let paid = post(
        "/v1/payments",
        json!({"order_id": placed.body["order_id"]}),
        format!("pay-{user}"),
    )
    .await;
    (201, paid.status.as_u16())
}

#[tokio::test]
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
    let sale = join_all(buyers.iter().map(|(user, token)| {
        let (app, answered) = (&app, &answered);
        async move {
            let r = buy_until_final(app, *user, token, product).await;
            answered.fetch_add(1, Ordering::SeqCst);
            r
        }
    }));
    let killer = async {
        while answered.load(Ordering::SeqCst) < 100 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        cluster.kill(victim);
    };
    let (outcomes, ()) = tokio::join!(sale, killer);
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
