//! Issue 26: the sale under attack — a buyer who cannot pay must not make one who can hear
//! "sold out", and waiting for a start must cost MySQL nothing.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use chrono::{SecondsFormat, Utc};
use futures::future::join_all;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    haproxy::HaProxy,
    helpers::{hold_row, spawn_app, until, until_running, TestApp, BATCH_PRODUCT_LOCK},
};

const PRICE: i64 = 100;

async fn synced_product(app: &TestApp, stock: i64) -> i64 {
    let product = app.create_product(PRICE, stock).await;
    app.state.stock.sync(&[product]).await.unwrap();
    product
}

/// User A has no points and orders the whole stock while the product's row is held: A's
/// units are in flight, waiting in the batch. Funded user B, with a key, orders one unit
/// meanwhile: B waits for A's order to be judged instead of hearing OUT_OF_STOCK (which its
/// key would have kept), and is placed once MySQL refuses A.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_without_points_cannot_make_a_funded_one_hear_sold_out() {
    let app = spawn_app().await;
    let product = synced_product(&app, 10).await;
    let (a, a_token) = app.funded_user(0).await;
    let (b, b_token) = app.funded_user(1_000).await;
    let lock = hold_row(&app, "products", product).await;
    let first = {
        let app = &app;
        let a_token = a_token.clone();
        async move { app.order(a, &a_token, product, 10, PRICE).await }
    };
    let second = async {
        until_running(&app, BATCH_PRODUCT_LOCK, 1).await;
        assert_eq!(
            app.redis_stock(product).await.0,
            Some(0),
            "A's units are in flight"
        );
        let body = json!({"user_id": b, "product_id": product, "quantity": 1, "price": PRICE});
        let b_order = app.post_with_key("/v1/orders", Some(&b_token), body, Some("b-1"));
        let release = async {
            until(Duration::from_secs(5), "B waiting on A's units", || async {
                app.state.stock.waiting() == 1
            })
            .await;
            lock.rollback().await.unwrap();
        };
        let (b_reply, ()) = tokio::join!(b_order, release);
        b_reply
    };
    let (a_reply, b_reply) = tokio::join!(first, second);
    a_reply.assert_problem(409, "INSUFFICIENT_POINTS");
    assert_eq!(b_reply.assert_status(201)["quantity"], 1);
    assert_eq!(app.product_row(product).await.0, 9);
    app.assert_redis_matches_mysql(product).await;
}

/// A wrong price is known to the instance: A's reservation of the whole stock is given back
/// at once, without waiting in the batch (the row is held meanwhile), and B is placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_at_a_wrong_price_gives_the_units_back_before_the_batch() {
    let app = spawn_app().await;
    let product = synced_product(&app, 10).await;
    let (a, a_token) = app.funded_user(10_000).await;
    let (b, b_token) = app.funded_user(1_000).await;
    let lock = hold_row(&app, "products", product).await;
    let wrong = tokio::time::timeout(
        Duration::from_secs(3),
        app.order(a, &a_token, product, 10, PRICE + 1),
    )
    .await
    .expect("answered without waiting on the product's row");
    wrong.assert_problem(409, "PRICE_MISMATCH");
    assert_eq!(wrong.body["current_price"], PRICE);
    assert_eq!(
        app.redis_stock(product).await.0,
        Some(10),
        "given back at once"
    );
    let placed = async { app.order(b, &b_token, product, 1, PRICE).await };
    let release = async {
        until_running(&app, BATCH_PRODUCT_LOCK, 1).await;
        lock.rollback().await.unwrap();
    };
    let (placed, ()) = tokio::join!(placed, release);
    placed.assert_status(201);
    app.assert_redis_matches_mysql(product).await;
}

/// 300 keyed buyers polling before the start, with the product's row held: every one is
/// answered SALE_NOT_STARTED at once — none reached a batch (it would wait on the row) —
/// and no key is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_for_the_start_costs_mysql_nothing() {
    let app = spawn_app().await;
    let starts =
        (Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Millis, true);
    let r = app
        .admin(
            Method::POST,
            "/v1/admin/products",
            json!({"name": "drop", "price": PRICE, "stock": 10, "sale_starts_at": starts}),
        )
        .await;
    let product = r.assert_status(201)["id"].as_i64().unwrap();
    let buyers = app.bulk_buyers(300, 1_000).await;
    let lock = hold_row(&app, "products", product).await;
    let app = &app;
    let replies = tokio::time::timeout(
        Duration::from_secs(10),
        join_all(buyers.iter().enumerate().map(|(i, (user, token))| {
            let body =
                json!({"user_id": user, "product_id": product, "quantity": 1, "price": PRICE});
            let key = format!("early-{i}");
            async move {
                app.post_with_key("/v1/orders", Some(token), body, Some(&key))
                    .await
            }
        })),
    )
    .await
    .expect("every early buyer answered without waiting on MySQL");
    for r in &replies {
        r.assert_problem(409, "SALE_NOT_STARTED");
        assert!(r.headers.get("retry-after").is_some());
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM idempotency_keys").await, 0);
    lock.rollback().await.unwrap();
}

/// One HTTP backend of the retry test: answers every GET with 200; a POST is either
/// answered 200 and counted (`dies` false) or read whole and then cut without a byte of
/// answer (`dies` true) — an instance that died after its work committed.
async fn backend(dies: bool) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let posts = Arc::new(AtomicUsize::new(0));
    let counted = posts.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if seen.len() < end + 4 + length {
                        continue;
                    }
                    seen.drain(..end + 4 + length);
                    if head.starts_with("post") {
                        if dies {
                            return; // cut: no answer
                        }
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if socket.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, posts)
}

/// HAProxy must not send an unkeyed write twice: an instance that received a POST and
/// died before answering may have committed it. Behind the real HAProxy with the shipped
/// configuration, one backend cuts every POST after reading it, the other answers: four
/// unkeyed POSTs (round robin: two reach the dying one) — those two get 502 and the live
/// backend sees only its own two; four keyed POSTs — every one answered, the two cut ones
/// sent again to the live backend (a key replays, so a retry is safe). (Before, with
/// `retry-on empty-response` for every request, the unkeyed ones were sent again too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn haproxy_sends_a_cut_write_again_only_when_it_carries_a_key() {
    let (dying, _) = backend(true).await;
    let (live, posts) = backend(false).await;
    let haproxy = HaProxy::start(&[&dying, &live]).await;
    // A connection per request: none left idle for HAProxy to close under the next one.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let post = |key: Option<String>| {
        let mut req = client
            .post(format!("{}/v1/orders", haproxy.url))
            .json(&json!({}));
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    let mut unkeyed = Vec::new();
    for _ in 0..4 {
        unkeyed.push(post(None).await);
    }
    unkeyed.sort_unstable();
    assert_eq!(
        unkeyed,
        [200, 200, 502, 502],
        "unkeyed writes cut by the dying backend"
    );
    assert_eq!(
        posts.load(Ordering::SeqCst),
        2,
        "no unkeyed write was sent twice"
    );
    let mut keyed = Vec::new();
    for i in 0..4 {
        keyed.push(post(Some(format!("retry-{i}"))).await);
    }
    assert_eq!(keyed, [200, 200, 200, 200], "keyed writes sent again");
    assert_eq!(posts.load(Ordering::SeqCst), 6);
}

/// Pages past the last one are answered (empty) but not kept: a client walking page
/// numbers cannot fill the page cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_past_the_last_one_are_answered_and_not_kept() {
    let app = spawn_app().await;
    for _ in 0..25 {
        app.create_product(PRICE, 1).await;
    }
    for page in [1, 2] {
        let r = app.get(&format!("/v1/products?page={page}"), None).await;
        assert!(!r.assert_status(200)["items"].as_array().unwrap().is_empty());
    }
    let kept = app.state.catalog.cache.pages_kept().await;
    assert_eq!(kept, 2);
    for page in 3..203 {
        let r = app.get(&format!("/v1/products?page={page}"), None).await;
        assert_eq!(r.assert_status(200)["items"], json!([]));
    }
    assert_eq!(app.state.catalog.cache.pages_kept().await, kept);
}

/// 300 orders refused by MySQL after the gate reserved them (buyers with 1 point) leave
/// no tombstone: no settle can follow an order that was never written. A reservation that
/// did end before its settle leaves one, in a sorted set beside the hash that prunes itself
/// once the hold window is past — never a field of the product's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tombstones_of_ended_reservations_never_pile_up() {
    let app = crate::helpers::spawn_with(|c| c.reservation_hold = Duration::from_millis(300)).await;
    let product = synced_product(&app, 1_000).await;
    let buyers = app.bulk_buyers(300, 1).await;
    let replies = join_all(
        buyers
            .iter()
            .map(|(user, token)| app.order(*user, token, product, 1, PRICE)),
    )
    .await;
    for r in &replies {
        r.assert_problem(409, "INSUFFICIENT_POINTS");
    }
    let key = format!("{}{{p{product}}}", app.config.redis_prefix);
    let fields: Vec<String> = app.redis_cmd(redis::cmd("HKEYS").arg(&key)).await;
    assert_eq!(
        fields.iter().filter(|f| f.starts_with("x:")).count(),
        0,
        "tombstones in the product's hash"
    );
    let graves: i64 = app
        .redis_cmd(redis::cmd("ZCARD").arg(format!("{key}:x")))
        .await;
    assert_eq!(graves, 0, "tombstones of orders never written");
    app.assert_redis_matches_mysql(product).await;
}

/// A key's first answer is its answer, whatever the rules say later: a 201 replays after
/// the limit is reached and after the sale ended; a keyed PURCHASE_LIMIT_REACHED replays
/// as such even once a cancel freed the unit (a new key is a new request, and is placed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keys_first_answer_replays_whatever_the_fairness_rules_say_later() {
    let app = spawn_app().await;
    let r = app
        .admin(
            Method::POST,
            "/v1/admin/products",
            json!({"name": "drop", "price": PRICE, "stock": 10, "per_user_limit": 1}),
        )
        .await;
    let product = r.assert_status(201)["id"].as_i64().unwrap();
    let (user, token) = app.funded_user(10_000).await;
    let body = json!({"user_id": user, "product_id": product, "quantity": 1, "price": PRICE});
    let post =
        |key: &'static str| app.post_with_key("/v1/orders", Some(&token), body.clone(), Some(key));
    let first = post("k1").await;
    let order = first.assert_status(201).clone();
    // The limit is reached now: the key still replays its 201.
    let again = post("k1").await;
    assert_eq!(again.assert_status(201), &order);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // Another key is refused by the limit, and that refusal is kept…
    post("k2")
        .await
        .assert_problem(409, "PURCHASE_LIMIT_REACHED");
    let id = order["order_id"].as_i64().unwrap();
    app.post(&format!("/v1/orders/{id}/cancel"), Some(&token), json!({}))
        .await
        .assert_status(200);
    // …and replayed after the cancel freed the unit; a new key is placed.
    let replayed = post("k2").await;
    replayed.assert_problem(409, "PURCHASE_LIMIT_REACHED");
    assert_eq!(replayed.headers["idempotent-replayed"], "true");
    let placed = post("k3").await;
    placed.assert_status(201);
    // The sale ends: both keys still replay their first answers.
    let ended =
        (Utc::now() - chrono::Duration::seconds(1)).to_rfc3339_opts(SecondsFormat::Millis, true);
    app.admin(
        Method::PATCH,
        &format!("/v1/admin/products/{product}"),
        json!({"sale_ends_at": ended}),
    )
    .await
    .assert_status(200);
    assert_eq!(
        post("k3").await.assert_status(201),
        placed.assert_status(201)
    );
    assert_eq!(post("k1").await.assert_status(201), &order);
    post("k4").await.assert_problem(409, "SALE_ENDED");
}

/// Points holds under races (F1): a user with points for one order orders two products
/// through two instances at once — exactly one is placed and `held` never passes the
/// balance; that order's payment and cancel at the same moment — exactly one wins and
/// nothing stays held. Twenty rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_points_hold_is_taken_once_across_instances_and_ends_once() {
    let a = spawn_app().await;
    let b = crate::helpers::spawn_sharing(&a, |_| {}).await;
    let (p, q) = (
        a.create_product(PRICE, 1_000).await,
        a.create_product(PRICE, 1_000).await,
    );
    for round in 0..20 {
        let (user, token) = a.funded_user(PRICE).await;
        let (first, second) = tokio::join!(
            a.order(user, &token, p, 1, PRICE),
            b.order(user, &token, q, 1, PRICE)
        );
        let mut placed = Vec::new();
        for r in [&first, &second] {
            match r.status.as_u16() {
                201 => placed.push(r.body["order_id"].as_i64().unwrap()),
                _ => r.assert_problem(409, "INSUFFICIENT_POINTS"),
            }
        }
        assert_eq!(placed.len(), 1, "round {round}: {first:?} {second:?}");
        let points = a
            .get(&format!("/v1/users/{user}/points"), Some(&token))
            .await;
        assert_eq!(
            (&points.body["held"], &points.body["balance"]),
            (&json!(PRICE), &json!(PRICE))
        );
        let id = placed[0];
        let cancel = format!("/v1/orders/{id}/cancel");
        let (paid, cancelled) =
            tokio::join!(a.pay(&token, id), b.post(&cancel, Some(&token), json!({})));
        match (paid.status.as_u16(), cancelled.status.as_u16()) {
            (201, _) => cancelled.assert_problem(409, "ORDER_NOT_CANCELLABLE"),
            (_, 200) => paid.assert_problem(409, "ORDER_NOT_PAYABLE"),
            other => panic!("round {round}: pay {paid:?}, cancel {cancelled:?}: {other:?}"),
        }
        let points = a
            .get(&format!("/v1/users/{user}/points"), Some(&token))
            .await;
        assert_eq!(points.body["held"], 0, "round {round}");
        a.assert_points_conserved(user).await;
    }
}

/// Both sides of the 24 h retention (item 20): a key 23 h 59 min old still replays its
/// answer and still refuses another body; the cleanup keeps an answer seconds short of
/// its 24 h (five, for the time the test itself takes) and deletes one a second past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_just_inside_its_24_hours_still_replays_and_the_cleanup_keeps_it() {
    let app = spawn_app().await;
    let product = app.create_product(PRICE, 10).await;
    let (user, token) = app.funded_user(1_000).await;
    let order =
        |n: i64| json!({"user_id": user, "product_id": product, "quantity": n, "price": PRICE});
    let first = app
        .post_with_key("/v1/orders", Some(&token), order(1), Some("day"))
        .await;
    let placed = first.assert_status(201).clone();
    sqlx::query("UPDATE idempotency_keys SET created_at = created_at - INTERVAL 1439 MINUTE")
        .execute(&app.db)
        .await
        .unwrap();
    let again = app
        .post_with_key("/v1/orders", Some(&token), order(1), Some("day"))
        .await;
    assert_eq!(again.assert_status(201), &placed);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    app.post_with_key("/v1/orders", Some(&token), order(2), Some("day"))
        .await
        .assert_problem(422, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 1);

    let now = Utc::now().naive_utc();
    for (key, age) in [
        (
            "inside",
            chrono::Duration::hours(24) - chrono::Duration::seconds(5),
        ),
        (
            "past",
            chrono::Duration::hours(24) + chrono::Duration::seconds(1),
        ),
    ] {
        sqlx::query(
            "INSERT INTO idempotency_keys (scope, idem_key, request_hash, response_status, response_body, created_at) \
             VALUES ('edge', ?, REPEAT('0', 64), 200, '{}', ?)",
        )
        .bind(key)
        .bind(now - age)
        .execute(&app.db)
        .await
        .unwrap();
    }
    commerce_api::idempotency::prune(&app.db).await.unwrap();
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(idem_key AS CHAR) FROM idempotency_keys WHERE scope = 'edge'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(left, ["inside"]);
}

/// Item 11: a user at the limit fires 50 keyed orders over two instances while the unit
/// they hold comes back — by their own cancel, by the sweeper's expiry, by a refund. Never
/// more than the limit held in MySQL, and Redis's count of the user's units agrees with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_user_at_the_limit_racing_their_own_release_never_holds_past_it() {
    let a = crate::helpers::spawn_with(|c| c.sweep_interval = Duration::from_millis(20)).await;
    let b = crate::helpers::spawn_sharing(&a, |_| {}).await;
    for release in ["cancel", "expiry", "refund"] {
        let r = a
            .admin(
                Method::POST,
                "/v1/admin/products",
                json!({"name": "drop", "price": PRICE, "stock": 1_000, "per_user_limit": 1}),
            )
            .await;
        let product = r.assert_status(201)["id"].as_i64().unwrap();
        let (user, token) = a.funded_user(100_000).await;
        let body = json!({"user_id": user, "product_id": product, "quantity": 1, "price": PRICE});
        let first = a.post("/v1/orders", Some(&token), body.clone()).await;
        let held = first.assert_status(201)["order_id"].as_i64().unwrap();
        if release == "refund" {
            a.pay(&token, held).await.assert_status(201);
        }
        let burst = join_all((0..50).map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            let key = format!("{release}-{i}");
            let body = body.clone();
            let token = token.clone();
            async move {
                app.post_with_key("/v1/orders", Some(&token), body, Some(&key))
                    .await
            }
        }));
        let give_back = async {
            match release {
                "cancel" => {
                    a.post(
                        &format!("/v1/orders/{held}/cancel"),
                        Some(&token),
                        json!({}),
                    )
                    .await
                    .assert_status(200);
                }
                "refund" => {
                    a.post(
                        &format!("/v1/orders/{held}/refund"),
                        Some(&token),
                        json!({}),
                    )
                    .await
                    .assert_status(200);
                }
                _ => {
                    sqlx::query("UPDATE orders SET expires_at = UTC_TIMESTAMP(6) WHERE id = ?")
                        .bind(held)
                        .execute(&a.db)
                        .await
                        .unwrap();
                }
            }
        };
        let (replies, ()) = tokio::join!(burst, give_back);
        for r in &replies {
            match r.status.as_u16() {
                201 => {}
                409 => r.assert_problem(409, "PURCHASE_LIMIT_REACHED"),
                _ => panic!("{release}: {r:?}"),
            }
        }
        until(
            Duration::from_secs(5),
            "the held unit given back",
            || async {
                a.count(&format!(
                "SELECT COUNT(*) FROM orders WHERE id = {held} AND status IN ('PENDING', 'PAID')"
            ))
                .await
                    == 0
            },
        )
        .await;
        let units = a
            .count(&format!(
                "SELECT CAST(COALESCE(SUM(quantity), 0) AS SIGNED) FROM orders WHERE product_id = {product} \
                 AND user_id = {user} AND status IN ('PENDING', 'PAID')"
            ))
            .await;
        assert!(
            units <= 1,
            "{release}: {units} units held past the limit of 1"
        );
        // The sweeper tells Redis after its commit: Redis agrees within a moment.
        let key = format!("{}{{p{product}}}", a.config.redis_prefix);
        let field = format!("u:{user}");
        until(
            Duration::from_secs(2),
            "Redis counting the user's units as MySQL does",
            || async {
                let counted: Option<i64> =
                    a.redis_cmd(redis::cmd("HGET").arg(&key).arg(&field)).await;
                counted.unwrap_or(0) == units
            },
        )
        .await;
    }
}
