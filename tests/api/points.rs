//! SPEC P1–P4.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p1_a_user_reads_their_balance() {
    let app = spawn_app().await;
    let (id, token) = app.funded_user(1500).await;
    let r = app
        .get(&format!("/v1/users/{id}/points"), Some(&token))
        .await;
    assert_eq!(
        r.assert_status(200),
        &json!({"user_id": id, "balance": 1500, "held": 0, "available": 1500})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p1_an_unknown_user_is_not_found() {
    let app = spawn_app().await;
    let token = app.token(999_999);
    app.get("/v1/users/999999/points", Some(&token))
        .await
        .assert_problem(404, "USER_NOT_FOUND");
    app.charge(999_999, &token, 10)
        .await
        .assert_problem(404, "USER_NOT_FOUND");
    app.get("/v1/users/999999/points/history", Some(&token))
        .await
        .assert_problem(404, "USER_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p2_a_charge_of_one_point_is_the_minimum() {
    let app = spawn_app().await;
    let (id, token) = app.funded_user(0).await;
    let r = app.charge(id, &token, 1).await;
    assert_eq!(r.assert_status(200), &json!({"user_id": id, "balance": 1}));
    for bad in [
        json!(0),
        json!(-5),
        json!(1.5),
        json!("10"),
        json!(null),
        json!(18446744073709551616u128 as f64),
    ] {
        let r = app
            .post(
                &format!("/v1/users/{id}/points/charge"),
                Some(&token),
                json!({"amount": bad}),
            )
            .await;
        r.assert_problem(400, "INVALID_AMOUNT");
    }
    assert_eq!(app.balance(id).await, 1);
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM point_history WHERE user_id = {id}"
        ))
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p3_the_balance_after_a_charge_may_not_exceed_one_million() {
    let app = spawn_app().await;
    let (id, token) = app.funded_user(0).await;
    // No per-charge maximum: the whole cap in one charge is fine.
    app.charge(id, &token, 1_000_000).await.assert_status(200);
    app.charge(id, &token, 1)
        .await
        .assert_problem(409, "BALANCE_LIMIT_EXCEEDED");
    app.charge(id, &token, i64::MAX)
        .await
        .assert_problem(409, "BALANCE_LIMIT_EXCEEDED");
    assert_eq!(app.balance(id).await, 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p4_a_failed_charge_changes_nothing() {
    let app = spawn_app().await;
    let (id, token) = app.funded_user(999_990).await;
    app.charge(id, &token, 11)
        .await
        .assert_problem(409, "BALANCE_LIMIT_EXCEEDED");
    assert_eq!(app.balance(id).await, 999_990);
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM point_history WHERE user_id = {id}"
        ))
        .await,
        1
    );
    app.charge(id, &token, 10).await.assert_status(200);
    assert_eq!(app.balance(id).await, 1_000_000);
    app.assert_points_conserved(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_lists_every_change_newest_first_in_pages() {
    let app = spawn_app().await;
    let (id, token) = app.funded_user(0).await;
    for amount in 1..=5 {
        app.charge(id, &token, amount).await.assert_status(200);
    }
    let first = app
        .get(
            &format!("/v1/users/{id}/points/history?limit=3"),
            Some(&token),
        )
        .await;
    let body = first.assert_status(200);
    let amounts: Vec<i64> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, vec![5, 4, 3]);
    assert_eq!(body["items"][0]["kind"], "CHARGE");
    assert_eq!(body["items"][0]["balance_after"], 15);
    let cursor = body["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_string();
    let second = app
        .get(
            &format!("/v1/users/{id}/points/history?limit=3&cursor={cursor}"),
            Some(&token),
        )
        .await;
    let body = second.assert_status(200);
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    assert!(body["next_cursor"].is_null());
}
