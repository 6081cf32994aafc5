//! `/openapi.json` describes every endpoint of SPEC §3; `/docs` renders it.

use crate::helpers::spawn_app;

const SPEC_PATHS: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/users/{user_id}/points"),
    ("post", "/v1/users/{user_id}/points/charge"),
    ("get", "/v1/users/{user_id}/points/history"),
    ("get", "/v1/products"),
    ("get", "/v1/products/{product_id}"),
    ("get", "/v1/products/top"),
    ("post", "/v1/orders"),
    ("get", "/v1/orders/{order_id}"),
    ("get", "/v1/users/{user_id}/orders"),
    ("post", "/v1/orders/{order_id}/cancel"),
    ("post", "/v1/orders/{order_id}/refund"),
    ("post", "/v1/payments"),
    ("get", "/v1/payments/{payment_id}"),
    ("get", "/v1/users/{user_id}/payments"),
    ("post", "/v1/admin/users"),
    ("post", "/v1/admin/users/{user_id}/tokens"),
    ("post", "/v1/admin/products"),
    ("patch", "/v1/admin/products/{product_id}"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_document_lists_every_spec_endpoint_with_its_security() {
    let app = spawn_app().await;
    let r = app.get("/openapi.json", None).await;
    let doc = r.assert_status(200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in SPEC_PATHS {
        let op = &paths.get(*path).unwrap_or_else(|| panic!("{path} missing"))[*method];
        assert!(op.is_object(), "{method} {path} missing");
        let public = !path.starts_with("/v1/") || path.starts_with("/v1/products");
        let scheme = if path.starts_with("/v1/admin") {
            "admin"
        } else {
            "bearer"
        };
        match public {
            true => assert!(op["security"].is_null(), "{path} should be public"),
            false => assert!(
                op["security"][0][scheme].is_array(),
                "{method} {path} lacks {scheme} security"
            ),
        }
    }
    assert_eq!(
        paths.len(),
        SPEC_PATHS.len(),
        "no undocumented extras, none missing"
    );
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
    for schema in [
        "Problem",
        "PointsView",
        "OrderView",
        "PaymentView",
        "ProductPage",
        "TopSellers",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_docs_page_is_swagger_ui_served_without_external_assets() {
    let app = spawn_app().await;
    let text = |path: &'static str| {
        let req = app.client.get(app.url(path)).send();
        async move {
            let r = req.await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.text().await.unwrap()
        }
    };
    // /docs leads to the page; its scripts are the service's own files.
    let html = text("/docs").await;
    assert!(
        html.contains(r#"<script src="./swagger-ui-bundle.js""#),
        "{html}"
    );
    assert!(!html.contains("https://"), "no CDN: the page works offline");
    let init = text("/docs/swagger-initializer.js").await;
    assert!(init.contains("/openapi.json"), "{init}");
    assert!(!init.contains("https://"));
    assert!(text("/docs/swagger-ui-bundle.js").await.len() > 100_000);
}
