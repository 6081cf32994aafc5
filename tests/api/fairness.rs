//! Issue 18, SPEC F1–F4: reservations backed by points, a limit per customer, sale windows.
//! Each rule on one Redis, from two instances, with Redis flushed mid-burst, on MySQL alone
//! (`STOCK_GATE=mysql`) and on a Redis Cluster; races on the multi-threaded runtime.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use commerce_api::config::RedisTarget;
use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    helpers::{
        eventually, hold_row, redis_url, spawn_app, spawn_sharing, spawn_with, until,
        until_running, Reply, TestApp, BATCH_USER_LOCK,
    },
    redis_cluster::RedisCluster,
};

/// A product of `price` × `stock` with these extra fields (`per_user_limit`, the window).
async fn product_with(app: &TestApp, price: i64, stock: i64, extra: Value) -> i64 {
    let mut body = json!({"name": "drop", "price": price, "stock": stock});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = app.admin(Method::POST, "/v1/admin/products", body).await;
    r.assert_status(201)["id"].as_i64().unwrap()
}

async fn points(app: &TestApp, user: i64, token: &str) -> Value {
    app.get(&format!("/v1/users/{user}/points"), Some(token))
        .await
        .assert_status(200)
        .clone()
}

fn order_id(r: &Reply) -> i64 {
    r.assert_status(201)["order_id"].as_i64().unwrap()
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Units each user holds of `product` in PENDING and PAID orders, from MySQL.
async fn held_units(app: &TestApp, product: i64, user: i64) -> i64 {
    app.count(&format!(
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS SIGNED) FROM orders WHERE product_id = {product} \
         AND user_id = {user} AND status IN ('PENDING', 'PAID')"
    ))
    .await
}

// F1 — reservations backed by points.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f1_a_user_without_points_cannot_hold_a_sales_stock() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(0).await;
    let product = app.create_product(100, 500).await;
    let r = app.order(user, &token, product, 500, 100).await;
    r.assert_problem(409, "INSUFFICIENT_POINTS");
    assert_eq!(
        (
            &r.body["balance"],
            &r.body["required"],
            &r.body["available"]
        ),
        (&json!(0), &json!(50_000), &json!(0))
    );
    assert_eq!(app.product_row(product).await, (500, 500, 0, 0));
    let detail = app.get(&format!("/v1/products/{product}"), None).await;
    assert_eq!(detail.assert_status(200)["stock"], 500);
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 0);
    app.assert_redis_matches_mysql(product).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f1_points_for_three_units_hold_two_then_refuse_two_until_a_cancel() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(300).await;
    let product = app.create_product(100, 50).await;
    let first = order_id(&app.order(user, &token, product, 2, 100).await);
    assert_eq!(
        points(&app, user, &token).await,
        json!({"user_id": user, "balance": 300, "held": 200, "available": 100})
    );
    let refused = app.order(user, &token, product, 2, 100).await;
    refused.assert_problem(409, "INSUFFICIENT_POINTS");
    assert_eq!(
        refused.body["available"], 100,
        "available = one unit's price"
    );
    assert_eq!(app.product_row(product).await.2, 2, "nothing more reserved");
    app.post(
        &format!("/v1/orders/{first}/cancel"),
        Some(&token),
        json!({}),
    )
    .await
    .assert_status(200);
    assert_eq!(points(&app, user, &token).await["available"], 300);
    let second = order_id(&app.order(user, &token, product, 2, 100).await);
    // The hold is the payment's: paying turns it into the deduction.
    let paid = app.pay(&token, second).await;
    assert_eq!(paid.assert_status(201)["balance_after"], 100);
    assert_eq!(
        points(&app, user, &token).await,
        json!({"user_id": user, "balance": 100, "held": 0, "available": 100})
    );
    app.assert_points_conserved(user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f1_an_expired_order_gives_its_hold_back() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(300).await;
    let product = app.create_product(100, 50).await;
    let order = order_id(&app.order(user, &token, product, 3, 100).await);
    assert_eq!(points(&app, user, &token).await["available"], 0);
    sqlx::query("UPDATE orders SET expires_at = UTC_TIMESTAMP(6) WHERE id = ?")
        .bind(order)
        .execute(&app.db)
        .await
        .unwrap();
    until(Duration::from_secs(5), "never expired", || async {
        app.order_status(&token, order).await == "EXPIRED"
    })
    .await;
    assert_eq!(
        points(&app, user, &token).await,
        json!({"user_id": user, "balance": 300, "held": 0, "available": 300})
    );
    order_id(&app.order(user, &token, product, 3, 100).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f1_a_charge_is_capped_on_the_balance_not_on_what_is_available() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(999_000).await;
    let product = app.create_product(1000, 50).await;
    order_id(&app.order(user, &token, product, 5, 1000).await);
    app.charge(user, &token, 1001)
        .await
        .assert_problem(409, "BALANCE_LIMIT_EXCEEDED");
    app.charge(user, &token, 1000).await.assert_status(200);
    assert_eq!(
        points(&app, user, &token).await,
        json!({"user_id": user, "balance": 1_000_000, "held": 5000, "available": 995_000})
    );
}

// F2 — a limit per customer.

/// One user fires 50 orders at once, each with its own key, spread over `apps`: exactly one
/// is placed and 49 hear PURCHASE_LIMIT_REACHED; MySQL and Redis agree afterwards.
async fn one_of_fifty(apps: &[&TestApp], product: i64, user: i64, token: &str) -> i64 {
    let replies = join_all((0..50).map(|i| {
        let app = apps[i % apps.len()];
        let body = json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100});
        let key = format!("burst-{i}");
        async move {
            app.post_with_key("/v1/orders", Some(token), body, Some(&key))
                .await
        }
    }))
    .await;
    let placed: Vec<&Reply> = replies.iter().filter(|r| r.status == 201).collect();
    assert_eq!(placed.len(), 1, "{replies:?}");
    for r in replies.iter().filter(|r| r.status != 201) {
        r.assert_problem(409, "PURCHASE_LIMIT_REACHED");
        assert_eq!((&r.body["limit"], &r.body["held"]), (&json!(1), &json!(1)));
    }
    assert_eq!(held_units(apps[0], product, user).await, 1);
    order_id(placed[0])
}

/// The limit's whole life on `app`: 50 at once place one; paid, it still counts; refunded,
/// the user may buy again.
async fn a_limit_of_one_holds(app: &TestApp, other: &TestApp) {
    let product = product_with(app, 100, 1000, json!({"per_user_limit": 1})).await;
    let (user, token) = app.funded_user(10_000).await;
    let order = one_of_fifty(&[app, other], product, user, &token).await;
    app.pay(&token, order).await.assert_status(201);
    app.order(user, &token, product, 1, 100)
        .await
        .assert_problem(409, "PURCHASE_LIMIT_REACHED");
    app.post(
        &format!("/v1/orders/{order}/refund"),
        Some(&token),
        json!({}),
    )
    .await
    .assert_status(200);
    let again = order_id(&app.order(user, &token, product, 1, 100).await);
    app.order(user, &token, product, 1, 100)
        .await
        .assert_problem(409, "PURCHASE_LIMIT_REACHED");
    // Cancelled, its unit is free again.
    app.post(
        &format!("/v1/orders/{again}/cancel"),
        Some(&token),
        json!({}),
    )
    .await
    .assert_status(200);
    order_id(&app.order(user, &token, product, 1, 100).await);
    assert_eq!(held_units(app, product, user).await, 1);
    app.eventually_redis_matches_mysql(product, Duration::from_secs(2))
        .await;
    assert_redis_counts_the_user(app, product, user, 1).await;
}

/// The gate's count of `user`'s units of `product` (under a limit).
async fn assert_redis_counts_the_user(app: &TestApp, product: i64, user: i64, units: i64) {
    let key = format!("{}{{p{product}}}", app.config.redis_prefix);
    let counted: Option<i64> = app
        .redis_cmd(redis::cmd("HGET").arg(&key).arg(format!("u:{user}")))
        .await;
    assert_eq!(counted.unwrap_or(0), units, "Redis's count of user {user}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f2_fifty_orders_at_once_of_one_user_place_one() {
    let app = spawn_app().await;
    a_limit_of_one_holds(&app, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f2_fifty_orders_at_once_from_two_instances_place_one() {
    let a = spawn_app().await;
    let b = spawn_sharing(&a, |_| {}).await;
    a_limit_of_one_holds(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f2_on_mysql_alone_fifty_orders_at_once_place_one() {
    let a = spawn_with(|c| c.stock_gate = false).await;
    let b = spawn_sharing(&a, |_| {}).await;
    let product = product_with(&a, 100, 1000, json!({"per_user_limit": 1})).await;
    let (user, token) = a.funded_user(10_000).await;
    let order = one_of_fifty(&[&a, &b], product, user, &token).await;
    a.pay(&token, order).await.assert_status(201);
    b.order(user, &token, product, 1, 100)
        .await
        .assert_problem(409, "PURCHASE_LIMIT_REACHED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f2_on_a_redis_cluster_fifty_orders_at_once_place_one() {
    let cluster = RedisCluster::start();
    let seeds = cluster.seeds();
    let a = spawn_with(|c| {
        c.redis = RedisTarget::Cluster(seeds);
        c.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let b = spawn_sharing(&a, |_| {}).await;
    a_limit_of_one_holds(&a, &b).await;
}

/// Redis loses everything while the user's first order is between its reservation and its
/// commit: the rebuilt key cannot know it, lets a second order through, and MySQL — the
/// truth — refuses that one under the product's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f2_with_redis_flushed_mid_burst_mysql_still_places_one() {
    // Its own Redis database, so that FLUSHDB is this app's FLUSHALL and nobody else's.
    let app = spawn_with(|c| {
        c.redis = RedisTarget::Single(format!("{}/8", redis_url().trim_end_matches('/')));
    })
    .await;
    let product = product_with(&app, 100, 1000, json!({"per_user_limit": 1})).await;
    let (user, token) = app.funded_user(10_000).await;
    app.state.stock.sync(&[product]).await.unwrap();
    let body = json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100});
    // The user's row held: the first order is reserved in Redis, then waits in its batch.
    let lock = hold_row(&app, "users", user).await;
    let first = {
        let (app_url, token, body) = (app.url("/v1/orders"), token.clone(), body.clone());
        let client = app.client.clone();
        tokio::spawn(async move {
            Reply::read(
                client
                    .post(app_url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        })
    };
    until_running(&app, BATCH_USER_LOCK, 1).await;
    let mut conn = app
        .redis()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    let burst = join_all((0..49).map(|i| {
        let body = body.clone();
        let (app, token) = (&app, &token);
        async move {
            app.post_with_key("/v1/orders", Some(token), body, Some(&format!("k{i}")))
                .await
        }
    }));
    let releaser = async {
        // One of the burst got past the rebuilt key and waits behind the first.
        until(Duration::from_secs(10), "none got past Redis", || async {
            app.state.checkout.queued(product) >= 1
        })
        .await;
        lock.rollback().await.unwrap();
    };
    let (replies, ()) = tokio::join!(burst, releaser);
    first.await.unwrap().assert_status(201);
    for r in &replies {
        r.assert_problem(409, "PURCHASE_LIMIT_REACHED");
    }
    assert_eq!(held_units(&app, product, user).await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 1);
    app.eventually_redis_matches_mysql(product, Duration::from_secs(2))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f2_a_refusal_by_the_limit_never_reaches_mysql() {
    let app = spawn_app().await;
    let product = product_with(&app, 100, 1000, json!({"per_user_limit": 2})).await;
    let (user, token) = app.funded_user(10_000).await;
    order_id(&app.order(user, &token, product, 2, 100).await);
    // With the user's and the product's rows held, anything that reached a batch would
    // wait; the refusals are answered at once.
    let user_lock = hold_row(&app, "users", user).await;
    let product_lock = hold_row(&app, "products", product).await;
    for quantity in [1, 2] {
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            app.order(user, &token, product, quantity, 100),
        )
        .await
        .expect("answered without waiting on MySQL");
        r.assert_problem(409, "PURCHASE_LIMIT_REACHED");
        assert_eq!((&r.body["limit"], &r.body["held"]), (&json!(2), &json!(2)));
    }
    product_lock.rollback().await.unwrap();
    user_lock.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f2_a_limit_set_later_counts_what_is_already_held() {
    let app = spawn_app().await;
    let product = app.create_product(100, 100).await;
    let (user, token) = app.funded_user(10_000).await;
    let paid = order_id(&app.order(user, &token, product, 2, 100).await);
    app.pay(&token, paid).await.assert_status(201);
    order_id(&app.order(user, &token, product, 1, 100).await);
    let r = app
        .admin(
            Method::PATCH,
            &format!("/v1/admin/products/{product}"),
            json!({"per_user_limit": 4}),
        )
        .await;
    assert_eq!(r.assert_status(200)["per_user_limit"], 4);
    let over = app.order(user, &token, product, 2, 100).await;
    over.assert_problem(409, "PURCHASE_LIMIT_REACHED");
    assert_eq!(
        (&over.body["limit"], &over.body["held"]),
        (&json!(4), &json!(3))
    );
    assert_redis_counts_the_user(&app, product, user, 3).await;
    order_id(&app.order(user, &token, product, 1, 100).await);
    // Cleared, there is no limit (Redis forgets its counts too).
    let r = app
        .admin(
            Method::PATCH,
            &format!("/v1/admin/products/{product}"),
            json!({"per_user_limit": null}),
        )
        .await;
    assert_eq!(r.assert_status(200)["per_user_limit"], Value::Null);
    order_id(&app.order(user, &token, product, 10, 100).await);
    assert_redis_counts_the_user(&app, product, user, 0).await;
    app.assert_redis_matches_mysql(product).await;
}

// F3 — sale windows.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f3_a_sale_starting_in_three_seconds_opens_warm() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(10_000).await;
    let starts = Utc::now() + chrono::Duration::seconds(3);
    let product = product_with(&app, 100, 10, json!({"sale_starts_at": rfc3339(starts)})).await;
    let body = json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100});
    let early = app
        .post_with_key("/v1/orders", Some(&token), body.clone(), Some("early"))
        .await;
    early.assert_problem(409, "SALE_NOT_STARTED");
    assert_eq!(early.body["starts_at"], rfc3339(starts));
    let retry: u64 = early.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    // Before the start, the stock gate's key is built (pre-warm), not by a buyer.
    let key = format!("{}{{p{product}}}", app.config.redis_prefix);
    while !app.redis_cmd::<bool>(redis::cmd("EXISTS").arg(&key)).await {
        assert!(Utc::now() < starts, "not pre-warmed before the start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rebuilds = app.state.stock.rebuilds();
    // The start, by the clock.
    let wait = (starts - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    // The same key again: the early refusal was not kept, so it runs now.
    let placed = app
        .post_with_key("/v1/orders", Some(&token), body, Some("early"))
        .await;
    placed.assert_status(201);
    assert!(placed.headers.get("idempotent-replayed").is_none());
    assert_eq!(
        app.state.stock.rebuilds(),
        rebuilds,
        "a buyer waited on a rebuild"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f3_a_sale_that_ended_refuses_and_reads_are_unaffected() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(10_000).await;
    let ended = Utc::now() - chrono::Duration::seconds(1);
    let product = product_with(&app, 100, 10, json!({"sale_ends_at": rfc3339(ended)})).await;
    let r = app.order(user, &token, product, 1, 100).await;
    r.assert_problem(409, "SALE_ENDED");
    assert_eq!(r.body["ends_at"], rfc3339(ended));
    let detail = app.get(&format!("/v1/products/{product}"), None).await;
    let detail = detail.assert_status(200);
    assert_eq!(detail["sale_ends_at"], rfc3339(ended));
    assert_eq!(detail["sale_starts_at"], Value::Null);
    assert_eq!(detail["stock"], 10);
    let listing = app.get("/v1/products", None).await;
    let item = &listing.assert_status(200)["items"][0];
    assert_eq!(
        (&item["id"], &item["sale_ends_at"], &item["per_user_limit"]),
        (&json!(product), &json!(rfc3339(ended)), &Value::Null)
    );
    // Extended: another instance hears it (the invalidation channel: within a second,
    // DESIGN's bound for two instances to agree after a write).
    let other = spawn_sharing(&app, |_| {}).await;
    app.admin(
        Method::PATCH,
        &format!("/v1/admin/products/{product}"),
        json!({"sale_ends_at": null}),
    )
    .await
    .assert_status(200);
    let body = json!({"user_id": user, "product_id": product, "quantity": 1, "price": 100});
    eventually(
        Duration::from_secs(1),
        "the other instance to sell",
        || async {
            let r = other
                .post_with_key("/v1/orders", Some(&token), body.clone(), None)
                .await;
            match r.status.as_u16() {
                201 => Ok(()),
                409 if r.body["code"] == "SALE_ENDED" => Err(r.body.to_string()),
                _ => panic!("{r:?}"),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f3_the_batch_judges_the_window_by_mysqls_clock() {
    // The instance has not heard of the window (it was written behind its back): the
    // batch refuses by MySQL's clock all the same.
    let app = spawn_app().await;
    let (user, token) = app.funded_user(10_000).await;
    let store = &app.state.catalog.cache.store;
    let refreshed = store.refreshes();
    let product = app.create_product(100, 10).await;
    // The creation's invalidation and its repetition, each heard back from the channel,
    // have reloaded the row: nothing reloads it now.
    until(
        Duration::from_secs(5),
        "the creation's four refreshes",
        || async { store.refreshes() >= refreshed + 4 },
    )
    .await;
    sqlx::query(
        "UPDATE products SET sale_starts_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR WHERE id = ?",
    )
    .bind(product)
    .execute(&app.db)
    .await
    .unwrap();
    let batches = app.state.checkout.batches();
    let r = app.order(user, &token, product, 1, 100).await;
    r.assert_problem(409, "SALE_NOT_STARTED");
    // The instance's copy has no window: the refusal came from the batch, by MySQL's clock.
    let copy = store.get(product).expect("the product in the catalog copy");
    assert_eq!(copy.sale_starts_at, None);
    assert_eq!(
        app.state.checkout.batches(),
        batches + 1,
        "one batch judged it"
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&retry), "Retry-After {retry}");
    assert_eq!(app.product_row(product).await, (10, 10, 0, 0));
    app.eventually_redis_matches_mysql(product, Duration::from_secs(2))
        .await;
}

// F4 — several rules at once, and what the admin API accepts.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f4_when_several_rules_refuse_the_first_in_specs_order_answers() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(150).await;
    let starts = Utc::now() + chrono::Duration::hours(1);
    let product = product_with(
        &app,
        100,
        3,
        json!({"per_user_limit": 2, "sale_starts_at": rfc3339(starts)}),
    )
    .await;
    let path = format!("/v1/admin/products/{product}");
    let patch = |body: Value| app.admin(Method::PATCH, &path, body);
    // Quantity 4 at a wrong price, without the points: every rule is broken.
    let codes = [
        (json!({"sale_starts_at": null}), "SALE_NOT_STARTED"),
        (json!({"stock": 10}), "OUT_OF_STOCK"),
        (json!({"per_user_limit": null}), "PURCHASE_LIMIT_REACHED"),
        (json!({"price": 90}), "PRICE_MISMATCH"),
    ];
    for (mend, code) in codes {
        app.order(user, &token, product, 4, 90)
            .await
            .assert_problem(409, code);
        patch(mend).await.assert_status(200);
    }
    app.order(user, &token, product, 4, 90)
        .await
        .assert_problem(409, "INSUFFICIENT_POINTS");
    order_id(&app.order(user, &token, product, 1, 90).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_writes_of_the_fairness_fields_are_checked() {
    let app = spawn_app().await;
    let post = |extra: Value| product_with_reply(&app, extra);
    for bad in [
        json!({"per_user_limit": 0}),
        json!({"per_user_limit": -1}),
        json!({"sale_starts_at": "tomorrow"}),
        json!({"sale_starts_at": "2026-12-01T10:00:00Z", "sale_ends_at": "2026-12-01T10:00:00Z"}),
        json!({"sale_starts_at": "2026-12-01T10:00:00Z", "sale_ends_at": "2026-12-01T09:00:00Z"}),
    ] {
        post(bad.clone())
            .await
            .assert_problem(400, "VALIDATION_FAILED");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM products").await, 0);
    let created = post(json!({
        "per_user_limit": 3,
        "sale_starts_at": "2026-12-01T11:00:00+01:00",
        "sale_ends_at": "2026-12-01T12:00:00Z"
    }))
    .await;
    let created = created.assert_status(201).clone();
    assert_eq!(
        (
            &created["per_user_limit"],
            &created["sale_starts_at"],
            &created["sale_ends_at"]
        ),
        (
            &json!(3),
            &json!("2026-12-01T10:00:00.000Z"),
            &json!("2026-12-01T12:00:00.000Z")
        )
    );
    let id = created["id"].as_i64().unwrap();
    let path = format!("/v1/admin/products/{id}");
    let patch = |body: Value| app.admin(Method::PATCH, &path, body);
    // An end before the start it would have is refused, whichever field moves.
    patch(json!({"sale_ends_at": "2026-12-01T09:00:00Z"}))
        .await
        .assert_problem(400, "VALIDATION_FAILED");
    patch(json!({"sale_starts_at": "2026-12-01T13:00:00Z"}))
        .await
        .assert_problem(400, "VALIDATION_FAILED");
    patch(json!({"per_user_limit": 0}))
        .await
        .assert_problem(400, "VALIDATION_FAILED");
    let r = patch(json!({"sale_starts_at": null, "per_user_limit": null})).await;
    let r = r.assert_status(200);
    assert_eq!(
        (
            &r["per_user_limit"],
            &r["sale_starts_at"],
            &r["sale_ends_at"]
        ),
        (
            &Value::Null,
            &Value::Null,
            &json!("2026-12-01T12:00:00.000Z")
        )
    );
}

async fn product_with_reply(app: &TestApp, extra: Value) -> Reply {
    let mut body = json!({"name": "drop", "price": 100, "stock": 10});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    app.admin(Method::POST, "/v1/admin/products", body).await
}
