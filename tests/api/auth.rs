//! SPEC §3 "Authentication": who may act for whom.

use chrono::Utc;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_with, without_request_id, Reply, TestApp, JWT_SECRET};

fn token_with(alg: Algorithm, secret: &str, sub: &str, exp_offset: i64) -> String {
    let claims = json!({"sub": sub, "exp": Utc::now().timestamp() + exp_offset});
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An unsigned token: `{"alg":"none"}` header, claims, empty signature.
fn alg_none_token(sub: &str) -> String {
    use base64_url as b64;
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64(json!({"sub": sub, "exp": Utc::now().timestamp() + 3600})
        .to_string()
        .as_bytes());
    format!("{header}.{claims}.")
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Every user route, called with `token` for `user`'s resources.
async fn every_user_route(
    app: &TestApp,
    user: i64,
    order: i64,
    payment: i64,
    token: Option<&str>,
) -> Vec<Reply> {
    vec![
        app.get(&format!("/v1/users/{user}/points"), token).await,
        app.post(
            &format!("/v1/users/{user}/points/charge"),
            token,
            json!({"amount": 1}),
        )
        .await,
        app.get(&format!("/v1/users/{user}/points/history"), token)
            .await,
        app.get(&format!("/v1/users/{user}/orders"), token).await,
        app.post(
            "/v1/orders",
            token,
            json!({"user_id": user, "product_id": 1, "quantity": 1, "price": 100}),
        )
        .await,
        app.get(&format!("/v1/orders/{order}"), token).await,
        app.post(&format!("/v1/orders/{order}/cancel"), token, json!({}))
            .await,
        app.post("/v1/payments", token, json!({"order_id": order}))
            .await,
        app.get(&format!("/v1/payments/{payment}"), token).await,
    ]
}

/// A user with a paid order and a pending one.
async fn owner(app: &TestApp) -> (i64, String, i64, i64, i64) {
    let (user, token) = app.funded_user(10_000).await;
    let product = app.create_product(100, 100).await;
    let paid = app.order(user, &token, product, 1, 100).await.body["order_id"]
        .as_i64()
        .unwrap();
    let payment = app.pay(&token, paid).await.body["payment_id"]
        .as_i64()
        .unwrap();
    let pending = app.order(user, &token, product, 1, 100).await.body["order_id"]
        .as_i64()
        .unwrap();
    (user, token, paid, payment, pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_user_route_refuses_missing_and_bad_tokens() {
    let app = spawn_app().await;
    let (user, _, _, payment, pending) = owner(&app).await;
    let sub = user.to_string();
    let bad_tokens = [
        None,
        Some("garbage".to_string()),
        Some(token_with(Algorithm::HS256, JWT_SECRET, &sub, -3600)),
        Some(token_with(Algorithm::HS256, "another-secret", &sub, 3600)),
        Some(token_with(Algorithm::HS384, JWT_SECRET, &sub, 3600)),
        Some(token_with(Algorithm::HS512, JWT_SECRET, &sub, 3600)),
        Some(alg_none_token(&sub)),
        Some(token_with(
            Algorithm::HS256,
            JWT_SECRET,
            "not-a-number",
            3600,
        )),
    ];
    let before = app.balance(user).await;
    for token in &bad_tokens {
        for reply in every_user_route(&app, user, pending, payment, token.as_deref()).await {
            reply.assert_problem(401, "UNAUTHORIZED");
        }
    }
    assert_eq!(app.balance(user).await, before);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM orders WHERE status = 'PENDING'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_of_another_user_is_forbidden_or_sees_nothing() {
    let app = spawn_app().await;
    let (victim, _, paid, payment, pending) = owner(&app).await;
    let (intruder, intruder_token) = app.funded_user(10_000).await;
    let t = Some(intruder_token.as_str());
    for path in [
        format!("/v1/users/{victim}/points"),
        format!("/v1/users/{victim}/points/history"),
        format!("/v1/users/{victim}/orders"),
    ] {
        app.get(&path, t).await.assert_problem(403, "FORBIDDEN");
    }
    app.post(
        &format!("/v1/users/{victim}/points/charge"),
        t,
        json!({"amount": 5}),
    )
    .await
    .assert_problem(403, "FORBIDDEN");
    app.order(victim, &intruder_token, 1, 1, 100)
        .await
        .assert_problem(403, "FORBIDDEN");

    // Another user's order or payment answers exactly like a missing one.
    let missing_order = app.get("/v1/orders/987654321", t).await;
    for id in [paid, pending] {
        let theirs = app.get(&format!("/v1/orders/{id}"), t).await;
        theirs.assert_problem(404, "ORDER_NOT_FOUND");
        assert_eq!(
            without_request_id(&theirs.body),
            without_request_id(&missing_order.body)
        );
    }
    app.pay(&intruder_token, pending)
        .await
        .assert_problem(404, "ORDER_NOT_FOUND");
    app.post(&format!("/v1/orders/{pending}/cancel"), t, json!({}))
        .await
        .assert_problem(404, "ORDER_NOT_FOUND");
    let missing_payment = app.get("/v1/payments/987654321", t).await;
    let theirs = app.get(&format!("/v1/payments/{payment}"), t).await;
    theirs.assert_problem(404, "PAYMENT_NOT_FOUND");
    assert_eq!(
        without_request_id(&theirs.body),
        without_request_id(&missing_payment.body)
    );

    // Nothing of the victim's changed; the intruder's own balance too.
    assert_eq!(app.balance(victim).await, 9_900);
    assert_eq!(app.balance(intruder).await, 10_000);
    let status = app
        .count(&format!(
            "SELECT COUNT(*) FROM orders WHERE id = {pending} AND status = 'PENDING'"
        ))
        .await;
    assert_eq!(status, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_owner_succeeds_on_every_user_route() {
    let app = spawn_app().await;
    let (user, token, _, payment, pending) = owner(&app).await;
    let replies = every_user_route(&app, user, pending, payment, Some(&token)).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    // The order body names product 1, which exists (owner() made it first).
    assert_eq!(
        statuses,
        vec![200, 200, 200, 200, 201, 200, 200, 409, 200],
        "{replies:?}"
    );
    assert_eq!(
        replies[7].body["code"], "ORDER_NOT_PAYABLE",
        "the pending order was cancelled just before"
    );
}

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "commerce-api";

/// An app that requires `ISSUER` and `AUDIENCE`, a user of it, and what a token carrying
/// `iss` and `aud` (absent where `None`) gets on the user's points.
async fn with_claims(cases: &[(Option<&str>, Option<&str>, u16)]) {
    let app = spawn_with(|c| {
        c.auth.issuer = Some(ISSUER.into());
        c.auth.audience = Some(AUDIENCE.into());
    })
    .await;
    let user = app.create_user("claims").await;
    for (iss, aud, status) in cases {
        let mut claims = json!({"sub": user.to_string(), "exp": Utc::now().timestamp() + 3600});
        if let Some(iss) = iss {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            claims["aud"] = json!(aud);
        }
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap();
        let r = app
            .get(&format!("/v1/users/{user}/points"), Some(&token))
            .await;
        if *status == 200 {
            r.assert_status(200);
        } else {
            r.assert_problem(*status, "UNAUTHORIZED");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_an_issuer_configured_a_token_from_another_or_none_is_refused() {
    // The audience is right in every case: only the issuer differs.
    with_claims(&[
        (Some(ISSUER), Some(AUDIENCE), 200),
        (Some("https://other.example"), Some(AUDIENCE), 401),
        (None, Some(AUDIENCE), 401),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_an_audience_configured_a_token_for_another_or_none_is_refused() {
    // The issuer is right in every case: only the audience differs.
    with_claims(&[
        (Some(ISSUER), Some(AUDIENCE), 200),
        (Some(ISSUER), Some("billing-api"), 401),
        (Some(ISSUER), None, 401),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_routes_need_the_admin_token() {
    let app = spawn_app().await;
    for token in [None, Some("wrong"), Some("test-admin-token-but-longer")] {
        let mut req = app
            .client
            .post(app.url("/v1/admin/users"))
            .json(&json!({"name": "x"}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Reply::read(req.send().await.unwrap())
            .await
            .assert_problem(401, "UNAUTHORIZED");
    }
    // A user token is not an admin token.
    let (user, token) = app.funded_user(0).await;
    let r = app
        .client
        .post(app.url("/v1/admin/products"))
        .bearer_auth(&token)
        .json(&json!({"name": "x", "price": 1, "stock": 1}));
    Reply::read(r.send().await.unwrap())
        .await
        .assert_problem(401, "UNAUTHORIZED");
    // Minting: 201 with a working token; unknown user 404.
    let minted = app
        .admin(
            Method::POST,
            &format!("/v1/admin/users/{user}/tokens"),
            json!({}),
        )
        .await;
    let body = minted.assert_status(201).clone();
    assert!(body["expires_at"].is_string());
    let t = body["token"].as_str().unwrap();
    app.get(&format!("/v1/users/{user}/points"), Some(t))
        .await
        .assert_status(200);
    app.admin(Method::POST, "/v1/admin/users/55555/tokens", json!({}))
        .await
        .assert_problem(404, "USER_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_an_admin_token_the_admin_routes_do_not_exist() {
    let app = spawn_with(|c| c.admin_token = None).await;
    let r = app
        .client
        .post(app.url("/v1/admin/users"))
        .bearer_auth("anything")
        .json(&json!({"name": "x"}));
    Reply::read(r.send().await.unwrap())
        .await
        .assert_problem(404, "NOT_FOUND");
    let r = app
        .client
        .post(app.url("/v1/admin/users"))
        .json(&json!({"name": "x"}));
    Reply::read(r.send().await.unwrap())
        .await
        .assert_problem(404, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_auth_disabled_user_routes_are_open() {
    let app = spawn_with(|c| {
        c.auth.disabled = true;
        c.auth.jwt_secret = None;
    })
    .await;
    let user = app.create_user("dev").await;
    let r = app.get(&format!("/v1/users/{user}/points"), None).await;
    r.assert_status(200);
    let ready = app.get("/readyz", None).await;
    assert!(ready.body["warning"].as_str().unwrap().contains("disabled"));
}
