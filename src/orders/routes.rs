//! HTTP routes of the orders feature. Placing an order is the checkout's work; the rest
//! is [`service`]'s.

use axum::{
    extract::{FromRef, State},
    http::StatusCode,
    response::Response,
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use super::{
    domain::{LineAsk, LineView, Lines, OrderStatus, OrderView, Quantity},
    service::{self, Orders},
};
use crate::{
    auth::{Auth, Caller},
    checkout::{Checkout, NewOrder},
    error::AppError,
    http::{
        pagination::{CursorPage, CursorParams},
        AppJson, AppPath, AppQuery, Id,
    },
    idempotency::IdempotencyKey,
};

/// OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(place, get_one, cancel, refund, list),
    components(schemas(PlaceOrderRequest, OrderLine, OrderView, LineView, OrderStatus))
)]
pub struct Api;

pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Orders: FromRef<S>,
    Checkout: FromRef<S>,
    Auth: FromRef<S>,
{
    Router::new()
        .route("/v1/orders", post(place))
        .route("/v1/orders/{order_id}", get(get_one))
        .route("/v1/orders/{order_id}/cancel", post(cancel))
        .route("/v1/orders/{order_id}/refund", post(refund))
        .route("/v1/users/{user_id}/orders", get(list))
        // Private answers: no cache (a browser, a CDN) keeps them.
        .route_layer(axum::middleware::from_fn(crate::http::middleware::no_store))
}

/// A new order: its lines in `items`, or the one-product shorthand (`product_id`,
/// `quantity`, `price`), which means an order of that one line. One of the two shapes.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PlaceOrderRequest {
    #[schema(value_type = i64, minimum = 1)]
    pub user_id: Id,
    /// 1 to `MAX_ORDER_LINES` (20) lines, each product at most once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<OrderLine>>,
    /// The shorthand: the one product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub product_id: Option<Id>,
    /// The shorthand: 1–1000 units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: Option<i64>,
    /// The shorthand: the unit price the user saw; it must be the current price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub price: Option<i64>,
}

/// One line of a new order.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct OrderLine {
    #[schema(value_type = i64, minimum = 1)]
    pub product_id: Id,
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
    /// The unit price the user saw; it must be the current price.
    #[schema(minimum = 0)]
    pub price: i64,
}

impl OrderLine {
    fn parse(&self) -> Result<LineAsk, AppError> {
        if self.price < 0 {
            return Err(AppError::Validation("price must not be negative".into()));
        }
        Ok(LineAsk {
            product_id: self.product_id.get(),
            quantity: Quantity::parse(self.quantity)?,
            price: self.price,
        })
    }
}

impl PlaceOrderRequest {
    /// The lines asked for, whichever shape the body has.
    fn lines(&self, max: usize) -> Result<Lines, AppError> {
        let shorthand = (self.product_id, self.quantity, self.price);
        let asked = match (&self.items, shorthand) {
            (Some(_), (None, None, None)) => self
                .items
                .iter()
                .flatten()
                .map(OrderLine::parse)
                .collect::<Result<Vec<_>, _>>()?,
            (Some(_), _) => {
                return Err(AppError::Validation(
                    "send either items or product_id, quantity and price, not both".into(),
                ))
            }
            (None, (Some(product_id), Some(quantity), Some(price))) => vec![OrderLine {
                product_id,
                quantity,
                price,
            }
            .parse()?],
            (None, (product_id, quantity, price)) => {
                let missing: Vec<&str> = [
                    ("product_id", product_id.is_none()),
                    ("quantity", quantity.is_none()),
                    ("price", price.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, missing)| missing.then_some(name))
                .collect();
                return Err(AppError::Validation(format!(
                    "missing field {} (or send items)",
                    missing.join(", ")
                )));
            }
        };
        Lines::parse(asked, max)
    }
}

#[utoipa::path(post, path = "/v1/orders", tag = "orders", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1–128 visible ASCII characters; a retry with the same key and body replays the first answer")),
    request_body = PlaceOrderRequest,
    responses((status = 201, body = OrderView),
        (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "FORBIDDEN: token of another user", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "USER_NOT_FOUND or PRODUCT_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "SALE_NOT_STARTED (starts_at, and a Retry-After header), SALE_ENDED (ends_at), OUT_OF_STOCK (available, requested), PURCHASE_LIMIT_REACHED (limit, held), PRICE_MISMATCH (current_price), INSUFFICIENT_POINTS (balance, required, available) or IDEMPOTENCY_IN_PROGRESS; when several rules refuse, the first in this order", body = crate::error::Problem, content_type = "application/problem+json", headers(("Retry-After" = Option<u64>, description = "SALE_NOT_STARTED: whole seconds until the sale starts"))),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn place(
    State(checkout): State<Checkout>,
    caller: Caller,
    key: IdempotencyKey,
    AppJson(body): AppJson<PlaceOrderRequest>,
) -> Result<Response, AppError> {
    let lines = body.lines(checkout.max_lines())?;
    let user_id = body.user_id.get();
    let outcome = match lines.get() {
        // One line: its product's batch (group commit).
        [line] => {
            let order = NewOrder {
                user_id,
                product_id: line.product_id,
                quantity: line.quantity,
                price: line.price,
            };
            checkout.place(caller, order, &key, &body).await?
        }
        _ => {
            checkout
                .place_lines(caller, user_id, lines, &key, &body)
                .await?
        }
    };
    Ok(outcome.respond(StatusCode::CREATED))
}

#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "orders", security(("bearer" = [])),
    params(("order_id" = i64, Path, minimum = 1)),
    responses((status = 200, body = OrderView), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "ORDER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn get_one(
    State(orders): State<Orders>,
    caller: Caller,
    AppPath(order_id): AppPath<Id>,
) -> Result<Json<OrderView>, AppError> {
    let rows = service::get(&orders.db, caller, order_id.get()).await?;
    Ok(Json(
        OrderView::of_rows(&rows).ok_or(AppError::OrderNotFound)?,
    ))
}

#[utoipa::path(post, path = "/v1/orders/{order_id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("order_id" = i64, Path, minimum = 1), ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key replays the first answer")),
    responses((status = 200, body = OrderView), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "ORDER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "ORDER_NOT_CANCELLABLE or IDEMPOTENCY_IN_PROGRESS", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn cancel(
    State(orders): State<Orders>,
    caller: Caller,
    key: IdempotencyKey,
    AppPath(order_id): AppPath<Id>,
) -> Result<Response, AppError> {
    let claim = key.claim(caller.scope("cancel"), &order_id, StatusCode::OK)?;
    let outcome = service::cancel(
        &orders.db,
        &orders.stock,
        caller,
        order_id.get(),
        claim.as_ref(),
    )
    .await?;
    Ok(outcome.respond(StatusCode::OK))
}

#[utoipa::path(post, path = "/v1/orders/{order_id}/refund", tag = "orders", security(("bearer" = [])),
    params(("order_id" = i64, Path, minimum = 1), ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key replays the first answer")),
    responses((status = 200, description = "the order, now REFUNDED", body = OrderView), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "ORDER_NOT_FOUND (also another user's order)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "ORDER_NOT_REFUNDABLE (not PAID, or past REFUND_WINDOW_SECS), BALANCE_LIMIT_EXCEEDED (balance, max_balance) or IDEMPOTENCY_IN_PROGRESS", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn refund(
    State(orders): State<Orders>,
    caller: Caller,
    key: IdempotencyKey,
    AppPath(order_id): AppPath<Id>,
) -> Result<Response, AppError> {
    let claim = key.claim(caller.scope("refund"), &order_id, StatusCode::OK)?;
    let outcome = service::refund(
        &orders.db,
        &orders.stock,
        &orders.ranking,
        caller,
        order_id.get(),
        orders.refund_window,
        claim.as_ref(),
    )
    .await?;
    Ok(outcome.respond(StatusCode::OK))
}

#[utoipa::path(get, path = "/v1/users/{user_id}/orders", tag = "orders", security(("bearer" = [])),
    params(("user_id" = i64, Path, minimum = 1), ("limit" = Option<i64>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = CursorPage<OrderView>), (status = 400, description = "VALIDATION_FAILED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "FORBIDDEN: token of another user", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "USER_NOT_FOUND", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn list(
    State(orders): State<Orders>,
    caller: Caller,
    AppPath(user_id): AppPath<Id>,
    AppQuery(params): AppQuery<CursorParams>,
) -> Result<Json<CursorPage<OrderView>>, AppError> {
    let page = params.parse()?;
    Ok(Json(
        service::list_for_user(&orders.db, caller, user_id.get(), page).await?,
    ))
}
