//! Orders of several products (SPEC L1–L5): a path of their own beside the batches.
//!
//! Why not the batches. A product's batch is one transaction on one product row, and what
//! makes it fast is that it never waits on anything but that row. An order of several
//! lines could join every line's batch only with a commit across batches (one product's
//! batch waiting for another's, on every instance, a distributed commit on the hot path),
//! and batches spanning products would make each lock the union of its orders' products:
//! one hot product's batch would then wait on every cold product any cart of it names.
//! So orders of several lines have a batch of their own: one batch of carts in flight per
//! instance ([`lines_store::commit`]), each cart in it taking its locks where the batches'
//! fall in the global order (its user, then its products in ascending id) after a
//! savepoint of its own: on a hot product it queues between two of that product's batches,
//! like a batch of another instance, one-product orders keep their group commit, and the
//! carts share one commit among themselves.
//!
//! The gate first, per line, in ascending product id (each product's own script and hash
//! slot: nothing crosses slots on a Redis Cluster), under one hold token that every
//! product's hash knows the order by. Any refusal gives back what was taken at once; a
//! crash between two lines leaves in-flight reservations that their deadline returns, as
//! for one line. Then MySQL decides every line again by the same rules as a one-line
//! order, and the points on the total.
//!
//! [`lines_store`]: super::lines_store

use serde::Serialize;

use super::{
    domain::refuse_lines,
    gate_refusal,
    lines_store::{CartAnswer, CartDone, CartJob},
    Checkout,
};
use crate::{
    auth::Caller,
    db,
    error::AppError,
    idempotency::{IdempotencyKey, Outcome},
    orders::domain::{check_price, Lines, OrderView},
    payments::domain::PaymentView,
    stock::{Finish, Hold},
};

impl Checkout {
    /// Places an order of several lines, all or nothing (SPEC L2). `body` is what makes a
    /// retry with the same Idempotency-Key "the same".
    #[tracing::instrument(skip(self, lines, key, body))]
    pub async fn place_lines(
        &self,
        caller: Caller,
        user_id: i64,
        lines: Lines,
        key: &IdempotencyKey,
        body: &(impl Serialize + Sync),
    ) -> Result<Outcome<OrderView, ()>, AppError> {
        caller.act_for(user_id)?;
        let claim = key.claim(caller.scope("order"), body, axum::http::StatusCode::CREATED)?;
        let engine = &self.engine;
        // What this instance knows without I/O: each product, its window and its price.
        let now = db::now();
        let mut failing = Vec::new();
        let mut prices = Vec::with_capacity(lines.get().len());
        for line in lines.get() {
            let product = match engine.catalog.product(line.product_id).await {
                Ok(product) => product,
                Err(e @ AppError::ProductNotFound) => {
                    metrics::counter!("orders_total", "outcome" => e.code().code).increment(1);
                    return self.refuse(claim.as_ref(), e).await;
                }
                Err(e) => return Err(e),
            };
            if let Err(e) = product.window().check(now) {
                failing.push((line.product_id, e));
            }
            prices.push(product.price);
        }
        // The gate, line by line in product order, under one hold.
        let hold = Hold::new();
        let mut taken: Vec<i64> = Vec::new();
        for (line, price) in lines.get().iter().zip(&prices) {
            if failing.iter().any(|(p, _)| *p == line.product_id) {
                continue;
            }
            let quantity = line.quantity.get();
            let gate = engine
                .stock
                .reserve(line.product_id, user_id, quantity, &hold)
                .await;
            if let Some(refusal) = gate_refusal(gate, quantity) {
                failing.push((line.product_id, refusal));
                continue;
            }
            taken.push(line.product_id);
            if let Err(e) = check_price(line.price, *price) {
                failing.push((line.product_id, e));
            }
        }
        failing.sort_by_key(|(p, _)| *p);
        if let Some(refusal) = refuse_lines(failing) {
            self.give_back(&taken, &hold).await;
            metrics::counter!("orders_total", "outcome" => refusal.code().code).increment(1);
            return self.refuse(claim.as_ref(), refusal).await;
        }
        let job = CartJob::Place {
            user_id,
            lines,
            hold: hold.clone(),
            claim,
        };
        let placed = match Box::pin(self.submit_cart(job)).await {
            Ok(CartDone::Placed(outcome)) => Ok(outcome),
            Ok(CartDone::Paid(_)) => Err(AppError::Internal(anyhow::anyhow!(
                "a cart's placement was answered as a payment"
            ))),
            Err(e) => Err(e),
        };
        match placed {
            Ok(Outcome::Done(view, rows)) => {
                for row in &rows {
                    engine
                        .stock
                        .settle(row.product_id, &[(hold.clone(), row.quantity, user_id)])
                        .await;
                }
                engine.placed.insert(view.order_id, (None, user_id)).await;
                metrics::counter!("orders_total", "outcome" => "placed").increment(1);
                Ok(Outcome::Done(view, ()))
            }
            Ok(Outcome::Replayed(response)) => {
                self.give_back(&taken, &hold).await;
                Ok(Outcome::Replayed(response))
            }
            Err(e) => {
                if e.code().code == "DEPENDENCY_UNAVAILABLE" {
                    // It may have committed before the connection broke: the gate learns
                    // which from MySQL once it answers (see `Engine::run`).
                    for product_id in &taken {
                        engine
                            .stock
                            .resync_ended(*product_id, std::slice::from_ref(&hold));
                    }
                } else {
                    self.give_back(&taken, &hold).await;
                }
                metrics::counter!("orders_total", "outcome" => e.code().code).increment(1);
                Err(e)
            }
        }
    }

    /// Pays an order of several lines in a transaction of its own, then tells Redis (each
    /// line's units sold) and the ranking (each line's product).
    pub(super) async fn pay_lines(
        &self,
        caller: Caller,
        order_id: i64,
        claim: Option<&crate::idempotency::Claim>,
    ) -> Result<Outcome<PaymentView, ()>, AppError> {
        let engine = &self.engine;
        let job = CartJob::Pay {
            caller,
            order_id,
            claim: claim.cloned(),
        };
        let paid = match Box::pin(self.submit_cart(job)).await {
            Ok(CartDone::Paid(outcome)) => Ok(outcome),
            Ok(CartDone::Placed(_)) => Err(AppError::Internal(anyhow::anyhow!(
                "a cart's payment was answered as a placement"
            ))),
            Err(e) => Err(e),
        };
        let outcome = match paid {
            Ok(Outcome::Done(payment, paid)) => {
                for (product_id, quantity) in &paid.lines {
                    engine
                        .stock
                        .finish(*product_id, std::slice::from_ref(&paid.hold), Finish::Paid)
                        .await;
                    engine
                        .ranking
                        .record(paid.day, *product_id, *quantity)
                        .await;
                }
                Outcome::Done(payment, ())
            }
            Ok(Outcome::Replayed(response)) => Outcome::Replayed(response),
            Err(e) => {
                metrics::counter!("payments_total", "outcome" => e.code().code).increment(1);
                return Err(e);
            }
        };
        metrics::counter!("payments_total", "outcome" => "completed").increment(1);
        Ok(outcome)
    }

    /// Queues a cart in the instance's next batch of carts; a full queue refuses it at once
    /// (the caller gives its reservations back).
    async fn submit_cart(&self, job: CartJob) -> CartAnswer {
        match self.carts.submit(0, job).await {
            Ok(Some(answer)) => answer,
            Ok(None) => Err(AppError::Internal(anyhow::anyhow!(
                "the batch of carts failed"
            ))),
            Err(_) => {
                metrics::counter!("checkout_queue_full_total").increment(1);
                Err(AppError::Busy(
                    "the checkout of orders of several products".into(),
                ))
            }
        }
    }

    /// Gives back the reservations `hold` took of `products` (an order refused whole).
    async fn give_back(&self, products: &[i64], hold: &Hold) {
        for product_id in products {
            self.engine
                .stock
                .finish(*product_id, std::slice::from_ref(hold), Finish::Abandoned)
                .await;
        }
    }
}
