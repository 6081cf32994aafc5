//! SPEC §2 and §3 as a client program sees them: catalog reads a cache can keep (ETag,
//! Cache-Control, 304), problems that carry their numbers and their request id, and a
//! `type` URI that resolves to a page about its code.

use std::time::Duration;

use reqwest::{header, Method};
use serde_json::json;

use crate::helpers::{eventually, spawn_app, spawn_sharing, spawn_with, Reply, TestApp};

async fn get_with_tag(app: &TestApp, path: &str, tag: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(app.url(path));
    if let Some(tag) = tag {
        req = req.header(header::IF_NONE_MATCH, tag);
    }
    req.send().await.unwrap()
}

fn etag(r: &reqwest::Response) -> String {
    r.headers()[header::ETAG].to_str().unwrap().to_string()
}

fn max_age(r: &reqwest::Response) -> u64 {
    let cc = r.headers()[header::CACHE_CONTROL].to_str().unwrap();
    assert!(cc.starts_with("public, max-age="), "{cc}");
    cc.trim_start_matches("public, max-age=").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catalog_reads_carry_a_strong_etag_and_a_matching_tag_is_304_without_a_body() {
    let app = spawn_app().await;
    let product = app.create_product(100, 5).await;
    for (path, ceiling) in [
        ("/v1/products?page=1".to_string(), 5),
        (format!("/v1/products/{product}"), 0),
        ("/v1/products/top?days=3".to_string(), 2),
    ] {
        let first = get_with_tag(&app, &path, None).await;
        assert_eq!(first.status(), 200, "{path}");
        let tag = etag(&first);
        assert!(
            tag.starts_with('"') && !tag.starts_with("W/"),
            "a strong tag: {tag}"
        );
        assert!(
            max_age(&first) <= ceiling,
            "{path}: max-age past what the service allows"
        );
        let again = get_with_tag(&app, &path, Some(&tag)).await;
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(etag(&again), tag);
        assert!(again.bytes().await.unwrap().is_empty(), "a 304 has no body");
        let other = get_with_tag(&app, &path, Some("\"not-it\"")).await;
        assert_eq!(other.status(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_product_write_changes_the_tags_at_once_on_the_writer_and_within_a_second_elsewhere() {
    let a = spawn_app().await;
    let b = spawn_sharing(&a, |_| {}).await;
    let product = a.create_product(100, 5).await;
    let detail = format!("/v1/products/{product}");
    let page = "/v1/products?page=1".to_string();
    let mut before = Vec::new();
    for app in [&a, &b] {
        for path in [&detail, &page] {
            before.push(etag(&get_with_tag(app, path, None).await));
        }
    }
    a.admin(
        Method::PATCH,
        &format!("/v1/admin/products/{product}"),
        json!({"price": 150}),
    )
    .await
    .assert_status(200);
    // The new price and a new tag for the old one: on the writer as soon as its write
    // answered, on B within a second (the invalidation message; a pub/sub hop).
    let price_of = |path: &str, body: &serde_json::Value| {
        if path == detail {
            body["price"].as_i64()
        } else {
            body["items"]
                .as_array()
                .and_then(|items| items.iter().find(|p| p["id"] == product))
                .and_then(|p| p["price"].as_i64())
        }
    };
    let mut old = before.iter();
    for (app, within) in [(&a, Duration::ZERO), (&b, Duration::from_secs(1))] {
        for path in [&detail, &page] {
            let old = old.next().unwrap();
            eventually(
                within,
                &format!("{path}: the new price under a new tag"),
                || async {
                    let r = get_with_tag(app, path, Some(old)).await;
                    match r.status().as_u16() {
                        304 => Err("304: the old tag still matches".to_string()),
                        200 => {
                            let tag = etag(&r);
                            let body: serde_json::Value = r.json().await.unwrap();
                            match (tag != *old, price_of(path, &body)) {
                                (true, Some(150)) => Ok(()),
                                other => Err(format!("{other:?}: {body}")),
                            }
                        }
                        status => panic!("{path}: {status}"),
                    }
                },
            )
            .await;
        }
    }
    // A sale changes the detail's live stock, so its tag too.
    let (user, token) = a.funded_user(1_000).await;
    let tag = etag(&get_with_tag(&a, &detail, None).await);
    a.order(user, &token, product, 1, 150)
        .await
        .assert_status(201);
    assert_eq!(get_with_tag(&a, &detail, Some(&tag)).await.status(), 200);
}

/// `r` is the problem of `code` with exactly these members beyond the standard ones.
fn assert_members(r: &Reply, status: u16, code: &str, members: &[(&str, i64)]) {
    r.assert_problem(status, code);
    let extra: Vec<&String> = r
        .body
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| {
            !["type", "title", "status", "code", "detail", "request_id"].contains(&k.as_str())
        })
        .collect();
    assert_eq!(extra.len(), members.len(), "{code}: {extra:?}");
    for (name, value) in members {
        assert_eq!(r.body[*name].as_i64(), Some(*value), "{code}.{name}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn problems_carry_their_numbers_as_members() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(150).await;
    let product = app.create_product(100, 3).await;
    assert_members(
        &app.order(user, &token, product, 5, 100).await,
        409,
        "OUT_OF_STOCK",
        &[("available", 3), ("requested", 5)],
    );
    assert_members(
        &app.order(user, &token, product, 1, 90).await,
        409,
        "PRICE_MISMATCH",
        &[("current_price", 100)],
    );
    assert_members(
        &app.order(user, &token, product, 2, 100).await,
        409,
        "INSUFFICIENT_POINTS",
        &[("balance", 150), ("required", 200), ("available", 150)],
    );
    assert_members(
        &app.charge(user, &token, 999_900).await,
        409,
        "BALANCE_LIMIT_EXCEEDED",
        &[("balance", 150), ("max_balance", 1_000_000)],
    );
    // Codes without numbers carry none.
    assert_members(
        &app.get("/v1/orders/987654", Some(&token)).await,
        404,
        "ORDER_NOT_FOUND",
        &[],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limited_problem_says_when_to_retry_in_a_member_and_a_header() {
    let app = spawn_with(|c| {
        c.rate_limits.per_ip_per_sec = 1;
        c.rate_limits.per_ip_burst = 1;
    })
    .await;
    app.get("/v1/products", None).await.assert_status(200);
    let r = app.get("/v1/products", None).await;
    r.assert_problem(429, "RATE_LIMITED");
    let header: i64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(r.body["retry_after"].as_i64(), Some(header));
    assert!(header >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_problem_type_resolves_to_a_page_about_its_code() {
    let app = spawn_app().await;
    for code in commerce_api::error::CODES {
        let r = app
            .client
            .get(app.url(&code.type_uri()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", code.code);
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let page = r.text().await.unwrap();
        assert!(page.contains(code.code), "{} page", code.code);
        for member in code.members {
            assert!(page.contains(member), "{} page names {member}", code.code);
        }
    }
    // A problem's own type leads there, and the index lists every code.
    let (_, token) = app.funded_user(0).await;
    let r = app.get("/v1/orders/987654", Some(&token)).await;
    let page = app
        .client
        .get(app.url(r.body["type"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert!(page.text().await.unwrap().contains("ORDER_NOT_FOUND"));
    let index = app
        .client
        .get(app.url("/problems"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for code in commerce_api::error::CODES {
        assert!(index.contains(code.code));
    }
    app.get("/problems/no-such-code", None)
        .await
        .assert_problem(404, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_problem_carries_the_request_id_of_the_request_it_answers() {
    let app = spawn_app().await;
    let (user, token) = app.funded_user(100).await;
    let product = app.create_product(100, 10).await;
    let order = json!({"user_id": user, "product_id": product, "quantity": 2, "price": 100});
    let first = app
        .post_with_key("/v1/orders", Some(&token), order.clone(), Some("o"))
        .await;
    // Points now cover it: only a replay can still answer the refusal.
    app.charge(user, &token, 100).await.assert_status(200);
    let again = app
        .post_with_key("/v1/orders", Some(&token), order, Some("o"))
        .await;
    first.assert_problem(409, "INSUFFICIENT_POINTS");
    again.assert_problem(409, "INSUFFICIENT_POINTS"); // asserts request_id == its header
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert!(first.headers.get("idempotent-replayed").is_none());
    assert_ne!(first.body["request_id"], again.body["request_id"]);
    assert_eq!(
        crate::helpers::without_request_id(&first.body),
        crate::helpers::without_request_id(&again.body)
    );
}
