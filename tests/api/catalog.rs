//! SPEC C1, C2 and the product detail.

use chrono::{Duration, Utc};
use reqwest::Method;
use serde_json::json;

use commerce_api::config::RedisTarget;

use crate::{
    helpers::{eventually, redis_url, spawn_app, spawn_sharing, TestApp},
    proxy::{Mode, Proxy},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c1_products_are_listed_twenty_per_page_by_id() {
    let app = spawn_app().await;
    for i in 0..45 {
        app.create_product(100 + i, 5).await;
    }
    let first = app.get("/v1/products", None).await;
    let body = first.assert_status(200);
    assert_eq!(body["page"], 1);
    assert_eq!(body["page_size"], 20);
    assert_eq!(body["total_items"], 45);
    assert_eq!(body["total_pages"], 3);
    let ids: Vec<i64> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 20);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let item = &body["items"][0];
    assert!(item["name"].is_string() && item["price"].is_i64() && item["stock"] == 5);

    let third = app.get("/v1/products?page=3", None).await;
    assert_eq!(
        third.assert_status(200)["items"].as_array().unwrap().len(),
        5
    );
    let past = app.get("/v1/products?page=4", None).await;
    assert_eq!(past.assert_status(200)["items"], json!([]));
    let far = app
        .get(&format!("/v1/products?page={}", i64::MAX), None)
        .await;
    assert_eq!(far.assert_status(200)["items"], json!([]));
    for bad in ["0", "-1", "abc", "1.5", "99999999999999999999"] {
        app.get(&format!("/v1/products?page={bad}"), None)
            .await
            .assert_problem(400, "VALIDATION_FAILED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_product_detail_shows_available_stock_and_sold() {
    let app = spawn_app().await;
    let id = app.create_product(1200, 50).await;
    let r = app.get(&format!("/v1/products/{id}"), None).await;
    assert_eq!(
        r.assert_status(200),
        &json!({"id": id, "name": "thing", "price": 1200, "stock": 50, "sold": 0,
            "per_user_limit": null, "sale_starts_at": null, "sale_ends_at": null})
    );
    app.get("/v1/products/424242", None)
        .await
        .assert_problem(404, "PRODUCT_NOT_FOUND");
    app.get("/v1/products/0", None)
        .await
        .assert_problem(400, "VALIDATION_FAILED");
    app.get("/v1/products/-3", None)
        .await
        .assert_problem(400, "VALIDATION_FAILED");
}

async fn sell(app: &crate::helpers::TestApp, product: i64, days_ago: i64, quantity: i64) {
    sqlx::query("INSERT INTO daily_sales (day, product_id, quantity) VALUES (?, ?, ?)")
        .bind(Utc::now().date_naive() - Duration::days(days_ago))
        .bind(product)
        .bind(quantity)
        .execute(&app.db)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c2_top_ten_by_units_sold_in_the_window_ties_by_lower_id() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..13 {
        ids.push(app.create_product(100, 1000).await);
    }
    // 12 products sold within 3 days, ids[0] and ids[1] tie; ids[12] sold only 5 days ago.
    for (i, id) in ids.iter().take(12).enumerate() {
        sell(&app, *id, (i % 3) as i64, 10 + i as i64).await;
    }
    sell(&app, ids[1], 0, 9).await; // ids[1]: 11 + 9 = 20
    sell(&app, ids[0], 2, 10).await; // ids[0]: 10 + 10 = 20, like ids[10]
    sell(&app, ids[12], 5, 1000).await;

    let r = app.get("/v1/products/top", None).await;
    let body = r.assert_status(200);
    assert_eq!(body["days"], 3);
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    let order: Vec<i64> = items
        .iter()
        .map(|i| i["product_id"].as_i64().unwrap())
        .collect();
    // 21 (ids[11]), 20 (ids[10]), then the 20-tie ids[0] < ids[1] before ids[9] (19)...
    assert_eq!(order[0], ids[11]);
    assert_eq!(&order[1..4], &[ids[0], ids[1], ids[10]]);
    assert!(
        !order.contains(&ids[12]),
        "sales outside the window do not count"
    );
    assert_eq!(items[0]["rank"], 1);
    assert_eq!(items[0]["sold"], 21);
    assert!(items[0]["name"].is_string() && items[0]["price"] == 100);

    let wide = app.get("/v1/products/top?days=7", None).await;
    assert_eq!(wide.assert_status(200)["items"][0]["product_id"], ids[12]);
    for bad in ["0", "31", "x", "-2"] {
        app.get(&format!("/v1/products/top?days={bad}"), None)
            .await
            .assert_problem(400, "VALIDATION_FAILED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_seed_shows_a_ranking_at_once_and_every_invariant_holds() {
    let app = crate::helpers::spawn_app().await;
    let size = commerce_api::seed::Size {
        products: 50,
        users: 20,
    };
    assert!(commerce_api::seed::demo_if_empty(&app.state.db, size)
        .await
        .unwrap());
    let top = app.get("/v1/products/top?days=3", None).await;
    let items = top.assert_status(200)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 10, "{top:?}");
    assert!(items
        .windows(2)
        .all(|w| w[0]["sold"].as_i64() >= w[1]["sold"].as_i64()));
    // Whatever it sold is sold everywhere: sold == Σ PAID, the days' sales agree, and every
    // balance is proven by its history.
    assert_eq!(
        app.count("SELECT CAST(SUM(sold) AS SIGNED) FROM products")
            .await,
        app.count("SELECT CAST(SUM(quantity) AS SIGNED) FROM orders WHERE status = 'PAID'")
            .await
    );
    assert_eq!(
        app.count("SELECT CAST(SUM(quantity) AS SIGNED) FROM daily_sales")
            .await,
        app.count("SELECT CAST(SUM(quantity) AS SIGNED) FROM orders WHERE status = 'PAID'")
            .await
    );
    for user in 1..=20 {
        app.assert_points_conserved(user).await;
    }
    // Orders of several products among them, each paid by one payment of its rows' total.
    assert_eq!(
        app.count("SELECT COUNT(*) FROM orders WHERE line_count = 3 AND status = 'PAID'")
            .await,
        3
    );
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM payments p WHERE p.amount <> (SELECT SUM(o.total_amount) \
             FROM orders o WHERE o.id = p.order_id OR o.parent_id = p.order_id)"
        )
        .await,
        0
    );
    // A second start does not seed again.
    assert!(!commerce_api::seed::demo_if_empty(&app.state.db, size)
        .await
        .unwrap());
}

// Issue 19: the catalog in process and live stock without a round trip.

/// The longest another instance may show figures from before a change: the stock gate's
/// feed message on its way.
const FEED_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

async fn stock_on(app: &TestApp, product: i64) -> (String, i64) {
    let d = app.get(&format!("/v1/products/{product}"), None).await;
    let d = d.assert_status(200);
    (
        d["name"].as_str().unwrap_or_default().to_string(),
        d["stock"].as_i64().unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn once_in_memory_a_product_costs_no_round_trip_even_while_it_is_bought() {
    let a = spawn_app().await;
    let b = spawn_sharing(&a, |_| {}).await;
    let product = a.create_product(100, 10).await;
    let (user, token) = a.funded_user(10_000).await;
    assert_eq!(stock_on(&b, product).await.1, 10);
    let (_, asked) = b.state.stock.live_counts();
    for left in [8, 6, 4] {
        let order = a.order(user, &token, product, 2, 100).await;
        let order = order.assert_status(201)["order_id"].as_i64().unwrap();
        if left == 6 {
            a.pay(&token, order).await.assert_status(201);
        }
        eventually(FEED_DELAY, "B to show the order", || async {
            match stock_on(&b, product).await {
                (_, stock) if stock == left => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let page = b.get("/v1/products", None).await;
    assert_eq!(page.assert_status(200)["items"][0]["stock"], 4);
    let detail = b.get(&format!("/v1/products/{product}"), None).await;
    assert_eq!(detail.assert_status(200)["sold"], 2);
    assert_eq!(
        b.state.stock.live_counts().1,
        asked,
        "B asked Redis for figures the feed had brought"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_invalidation_channel_cut_figures_stay_right_and_every_write_shows_once_back() {
    let a = spawn_app().await;
    // B on A's database and prefix, its Redis through a proxy the test cuts.
    let proxy = Proxy::start(
        redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/'),
    )
    .await;
    let url = proxy.url.clone();
    let b = spawn_sharing(&a, |c| c.redis = RedisTarget::Single(url)).await;
    let product = a.create_product(100, 10).await;
    let (user, token) = a.funded_user(10_000).await;
    assert_eq!(stock_on(&b, product).await, ("thing".to_string(), 10));
    b.get("/v1/products", None).await.assert_status(200);

    // Cut: B hears nothing (and reaches no Redis) while A writes.
    proxy.set(Mode::Refuse).await;
    a.admin(
        Method::PATCH,
        &format!("/v1/admin/products/{product}"),
        json!({"name": "renamed"}),
    )
    .await
    .assert_status(200);
    a.order(user, &token, product, 3, 100)
        .await
        .assert_status(201);
    // Without the feed B does not trust what it had: the figures come from MySQL.
    assert_eq!(stock_on(&b, product).await.1, 7);

    // Back: B resubscribes, drops what it had and reloads the catalog.
    proxy.set(Mode::Forward).await;
    eventually(
        std::time::Duration::from_secs(5),
        "B to show the write made during the cut",
        || async {
            let detail = stock_on(&b, product).await;
            let page = b.get("/v1/products", None).await;
            let item = &page.body["items"][0];
            match (detail, item["name"].as_str(), item["stock"].as_i64()) {
                ((name, 7), Some("renamed"), Some(7)) if name == "renamed" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_of_a_product_whose_key_redis_lost_reaches_every_instance() {
    let a = spawn_app().await;
    let b = spawn_sharing(&a, |_| {}).await;
    let product = a.create_product(100, 10).await;
    let (user, token) = a.funded_user(10_000).await;
    let order = a.order(user, &token, product, 4, 100).await;
    let order = order.assert_status(201)["order_id"].as_i64().unwrap();
    eventually(FEED_DELAY, "B to show the order", || async {
        match stock_on(&b, product).await.1 {
            6 => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    // Redis loses the product's key; then the order is cancelled in MySQL.
    let key = format!("{}{{p{product}}}", a.config.redis_prefix);
    let _: i64 = a.redis_cmd(redis::cmd("DEL").arg(&key)).await;
    a.post(
        &format!("/v1/orders/{order}/cancel"),
        Some(&token),
        json!({}),
    )
    .await
    .assert_status(200);
    // The cancel found no key: the product is rebuilt from MySQL and its figures reach B.
    eventually(
        std::time::Duration::from_secs(2),
        "B to show the cancel",
        || async {
            match stock_on(&b, product).await.1 {
                10 => Ok(()),
                other => Err(other.to_string()),
            }
        },
    )
    .await;
    a.assert_redis_matches_mysql(product).await;
}
