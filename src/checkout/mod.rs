//! Checkout: placing orders and paying for them — the flash sale's hot path.
//!
//! Every placement and payment of a product goes through that product's [`Batcher`]: one
//! transaction in flight per product per instance, and whatever arrives meanwhile goes
//! together into the next one ([`store::commit`]). A batch takes its locks in the global
//! order (idempotency keys, orders by id, users by id, then the product), decides each
//! request on its own ([`domain::decide`]), writes the accepted ones with a few statements,
//! records every keyed answer, and commits once: one fsync and one hold of the product row
//! for all its winners. A quiet product is a batch of one.
//!
//! Losers never reach the batch: the stock gate refuses them from Redis, or from memory
//! once this instance knows the product is sold out. After the commit the batch settles its
//! reservations in Redis (one call), moves paid units to `sold` (one call), adds its sales
//! to the ranking, and only then answers, so a reader sees what the buyer was told.

mod batch;
pub mod domain;
mod job;
mod lines;
mod lines_store;
mod store;

use std::{sync::Arc, time::Duration};

use serde::Serialize;
use sqlx::MySqlPool;

use batch::{Batcher, Full, Pending};
pub use job::NewOrder;
use job::{Answer, Done, Job};

use crate::{
    auth::Caller,
    catalog::{ranking::Ranking, service::Catalog},
    db,
    error::AppError,
    idempotency::{self, Claim, IdempotencyKey, Outcome},
    orders::domain::{check_price, OrderView},
    payments::domain::PaymentView,
    stock::{Finish, Gate, Hold, StockGate},
};

/// How many placed orders an instance remembers for routing their payments (for at most
/// ORDER_TTL_SECS): a sale's winners of the last minutes; an older order's payment reads
/// its product once from MySQL. An entry is ~100 bytes, so 50,000 are ~5 MB.
const PLACED_REMEMBERED: u64 = 50_000;
/// Sales starting within this are pre-warmed: their stock gate key is built beforehand.
const PREWARM_LEAD: Duration = Duration::from_secs(60);
/// How often upcoming sales are looked for.
const PREWARM_EVERY: Duration = Duration::from_secs(1);
/// The longest a buyer refused only because of reservations in flight waits for them to
/// end (see [`StockGate::reserve_when_settled`]); then "out of stock for now", not kept,
/// with Retry-After. A batch commits in milliseconds: this covers a slow one.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);

/// The checkout of an instance: its per-product batches.
#[derive(Clone)]
pub struct Checkout {
    engine: Arc<Engine>,
    batcher: Batcher<Job, Answer>,
    /// Orders of several products: one batch of them in flight per instance.
    carts: Batcher<lines_store::CartJob, lines_store::CartAnswer>,
}

/// What a batch runs with.
struct Engine {
    /// Orders placed here, by id: their product (which never changes; `None` for an order
    /// of several lines, paid on its own path) and owner, so that paying one routes to its
    /// product's batch without reading MySQL first.
    placed: moka::future::Cache<i64, (Option<i64>, i64)>,
    /// Batches this instance had to run again (a deadlock or lock timeout).
    retries: std::sync::atomic::AtomicU64,
    /// Batches this instance ran (each one MySQL transaction, or more when retried).
    batches: std::sync::atomic::AtomicU64,
    db: MySqlPool,
    stock: StockGate,
    ranking: Ranking,
    /// The catalog in process: a missing product and the sale window are refused here
    /// before any I/O.
    catalog: Catalog,
    order_ttl: chrono::Duration,
    /// `MAX_ORDER_LINES`.
    max_lines: usize,
}

/// The checkout's bounds, from configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `ORDER_TTL_SECS`: how long a PENDING order holds its units.
    pub order_ttl: Duration,
    /// Most requests in one batch.
    pub batch_max: usize,
    /// `CHECKOUT_QUEUE_MAX`: most requests waiting per product.
    pub queue_max: usize,
    /// `MAX_ORDER_LINES`.
    pub max_lines: usize,
}

impl Checkout {
    pub fn new(
        db: MySqlPool,
        stock: StockGate,
        ranking: Ranking,
        catalog: Catalog,
        limits: Limits,
    ) -> anyhow::Result<Self> {
        let engine = Arc::new(Engine {
            placed: moka::future::Cache::builder()
                .max_capacity(PLACED_REMEMBERED)
                .time_to_live(limits.order_ttl)
                .build(),
            retries: Default::default(),
            batches: Default::default(),
            db,
            stock,
            ranking,
            catalog,
            order_ttl: chrono::Duration::from_std(limits.order_ttl)?,
            max_lines: limits.max_lines,
        });
        let runner = engine.clone();
        let batcher = Batcher::new(limits.batch_max, limits.queue_max, move |product, jobs| {
            let engine = runner.clone();
            async move { engine.run(product, jobs).await }
        });
        let runner = engine.clone();
        let carts = Batcher::new(limits.batch_max, limits.queue_max, move |_, jobs| {
            let engine = runner.clone();
            async move { engine.run_carts(jobs).await }
        });
        Ok(Self {
            engine,
            batcher,
            carts,
        })
    }

    /// Places an order: the product and its sale window as this instance knows them, then
    /// the stock gate (a refusal of any ends here, without MySQL; an id found missing is
    /// remembered a moment), then the product's next batch, which decides by every rule
    /// again. `body` is what makes a retry with the same
    /// Idempotency-Key "the same".
    #[tracing::instrument(skip(self, key, body))]
    pub async fn place(
        &self,
        caller: Caller,
        order: NewOrder,
        key: &IdempotencyKey,
        body: &(impl Serialize + Sync),
    ) -> Result<Outcome<OrderView, ()>, AppError> {
        caller.act_for(order.user_id)?;
        let claim = key.claim(caller.scope("order"), body, axum::http::StatusCode::CREATED)?;
        let price = match self.engine.catalog.product(order.product_id).await {
            Ok(product) => match product.window().check(db::now()) {
                Ok(()) => product.price,
                // Not kept under a key (it says when to come back), so it costs no MySQL
                // either: a crowd polling before the start never reaches the primary.
                Err(refusal @ AppError::SaleNotStarted { .. }) => {
                    metrics::counter!("orders_total", "outcome" => refusal.code().code)
                        .increment(1);
                    return Err(refusal);
                }
                Err(refusal) => {
                    metrics::counter!("orders_total", "outcome" => refusal.code().code)
                        .increment(1);
                    return self.refuse_in_batch(order.product_id, claim, refusal).await;
                }
            },
            // No product, no batch to join.
            Err(refusal @ AppError::ProductNotFound) => {
                metrics::counter!("orders_total", "outcome" => refusal.code().code).increment(1);
                return self.refuse(claim.as_ref(), refusal).await;
            }
            Err(e) => return Err(e),
        };
        let hold = Hold::new();
        let quantity = order.quantity.get();
        let stock = &self.engine.stock;
        let gate = stock
            .reserve_when_settled(
                order.product_id,
                order.user_id,
                quantity,
                &hold,
                IN_FLIGHT_WAIT,
            )
            .await;
        let refusal = match gate_refusal(gate, quantity) {
            Some(refusal) => Some(refusal),
            // The price this instance knows, checked once the units are held (stock and
            // the limit come first in SPEC's order): a buyer at a wrong price gives them
            // back now instead of holding them while its job waits in the batch.
            None => match check_price(order.price, price) {
                Ok(()) => None,
                Err(refusal) => {
                    if gate == Gate::Reserved {
                        stock
                            .finish(
                                order.product_id,
                                std::slice::from_ref(&hold),
                                Finish::Abandoned,
                            )
                            .await;
                    }
                    Some(refusal)
                }
            },
        };
        if let Some(refusal) = refusal {
            metrics::counter!("orders_total", "outcome" => refusal.code().code).increment(1);
            return self.refuse_in_batch(order.product_id, claim, refusal).await;
        }
        let job = Job::Place { order, hold, claim };
        // Boxed: the batch's future is ~15 KB, which refusals need not carry.
        match Box::pin(self.submit(order.product_id, job)).await? {
            Done::Placed(order) => Ok(Outcome::Done(OrderView::from(&order), ())),
            Done::Replayed(stored) => Ok(Outcome::Replayed(stored.replay())),
            Done::Paid(_) => Err(AppError::Internal(anyhow::anyhow!(
                "a placement was answered as a payment"
            ))),
        }
    }

    /// Pays an order in its product's next batch.
    #[tracing::instrument(skip(self, key, body))]
    pub async fn pay(
        &self,
        caller: Caller,
        order_id: i64,
        key: &IdempotencyKey,
        body: &(impl Serialize + Sync),
    ) -> Result<Outcome<PaymentView, ()>, AppError> {
        let claim = key.claim(caller.scope("pay"), body, axum::http::StatusCode::CREATED)?;
        // Which product's batch: the order's product never changes, so what this instance
        // placed, or a plain read, routes. An order of several lines has a path of its own.
        let owner = match self.engine.placed.get(&order_id).await {
            Some(owner) => Some(owner),
            None => sqlx::query_as::<_, (i64, i64, i32)>(
                "SELECT product_id, user_id, line_count FROM orders WHERE id = ? AND parent_id IS NULL",
            )
            .bind(order_id)
            .fetch_optional(&self.engine.db)
            .await?
            .map(|(product, user, lines)| ((lines <= 1).then_some(product), user)),
        };
        let Some((product, _)) = owner.filter(|(_, user)| caller.owns(*user)) else {
            return self.refuse(claim.as_ref(), AppError::OrderNotFound).await;
        };
        let Some(product_id) = product else {
            return self.pay_lines(caller, order_id, claim.as_ref()).await;
        };
        let job = Job::Pay {
            caller,
            order_id,
            claim,
        };
        match Box::pin(self.submit(product_id, job)).await? {
            Done::Paid(payment) => Ok(Outcome::Done(payment, ())),
            Done::Replayed(stored) => Ok(Outcome::Replayed(stored.replay())),
            Done::Placed(_) => Err(AppError::Internal(anyhow::anyhow!(
                "a payment was answered as a placement"
            ))),
        }
    }

    /// The most lines an order may have (`MAX_ORDER_LINES`).
    pub fn max_lines(&self) -> usize {
        self.engine.max_lines
    }

    /// How many batches this instance ran, since start (its own count, whatever else
    /// runs in the process: tests read it).
    pub fn batches(&self) -> u64 {
        self.engine
            .batches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many batches ran again after a deadlock or lock timeout, since start.
    pub fn retries(&self) -> u64 {
        self.engine
            .retries
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Builds the stock gate's key of every sale starting within the next minute, every
    /// second until the process ends, so that the first buyers of a drop find it ready
    /// instead of waiting on a rebuild.
    pub fn spawn_prewarm(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let lead = chrono::Duration::from_std(PREWARM_LEAD).unwrap_or_default();
            let mut ticker = tokio::time::interval(PREWARM_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let upcoming = engine.catalog.cache.store.upcoming(db::now(), lead);
                if let Err(e) = engine.stock.prewarm(&upcoming).await {
                    tracing::debug!(error = %e, "pre-warming upcoming sales failed; trying again");
                }
            }
        })
    }

    /// Orders of several products (placements and payments) waiting for the instance's
    /// next batch of carts.
    pub fn carts_queued(&self) -> usize {
        self.carts.queued(0)
    }

    /// Requests of `product_id` waiting for its next batch (operators and tests watch it).
    pub fn queued(&self, product_id: i64) -> usize {
        self.batcher.queued(product_id)
    }

    /// Queues `job` in its product's next batch; a full queue refuses it at once (the
    /// buyer retries in a second; a placement's reservation is given back now).
    async fn submit(&self, product_id: i64, job: Job) -> Answer {
        match self.batcher.submit(product_id, job).await {
            Ok(Some(answer)) => answer,
            Ok(None) => Err(AppError::Internal(anyhow::anyhow!(
                "the checkout batch failed"
            ))),
            Err(Full(job)) => {
                metrics::counter!("checkout_queue_full_total").increment(1);
                if let Job::Place { hold, .. } = &job {
                    self.engine
                        .stock
                        .finish(product_id, std::slice::from_ref(hold), Finish::Abandoned)
                        .await;
                }
                Err(AppError::Busy("the checkout of this product".into()))
            }
        }
    }

    /// A refusal of an existing product's placement decided before any batch: with a key
    /// it is still an answer to keep (or the replay of the key's earlier answer), kept in
    /// the product's next batch — a sale's thousands of keyed refusals cost a few
    /// transactions, not one each. When the queue is full, in a transaction of its own.
    async fn refuse_in_batch(
        &self,
        product_id: i64,
        claim: Option<Claim>,
        refusal: AppError,
    ) -> Result<Outcome<OrderView, ()>, AppError> {
        let Some(claim) = claim else {
            return Err(refusal);
        };
        let job = Job::Refuse { refusal, claim };
        match self.batcher.submit(product_id, job).await {
            Ok(Some(Ok(Done::Replayed(stored)))) => Ok(Outcome::Replayed(stored.replay())),
            Ok(Some(Ok(_))) => Err(AppError::Internal(anyhow::anyhow!(
                "a refusal was answered as a success"
            ))),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => Err(AppError::Internal(anyhow::anyhow!(
                "the checkout batch failed"
            ))),
            Err(Full(Job::Refuse { refusal, claim })) => self.refuse(Some(&claim), refusal).await,
            Err(Full(_)) => Err(AppError::Internal(anyhow::anyhow!(
                "the queue gave back another job"
            ))),
        }
    }

    /// A refusal decided before any batch: with a key it is still an answer to keep (or
    /// the replay of the key's earlier answer).
    async fn refuse<V: Serialize + Send>(
        &self,
        claim: Option<&Claim>,
        refusal: AppError,
    ) -> Result<Outcome<V, ()>, AppError> {
        let Some(claim) = claim else {
            return Err(refusal);
        };
        idempotency::run(&self.engine.db, Some(claim), |_| {
            let e = refusal.duplicate();
            Box::pin(async move { Err::<(V, ()), _>(e) })
        })
        .await
    }
}

/// The refusal of `requested` units the gate's answer says, if it refused: out of stock
/// (for now only, while other reservations are in flight), or the per-customer limit.
fn gate_refusal(gate: Gate, requested: i64) -> Option<AppError> {
    match gate {
        Gate::Refused {
            available,
            in_flight: false,
        } => Some(AppError::OutOfStock {
            available,
            requested,
        }),
        Gate::Refused {
            available,
            in_flight: true,
        } => Some(AppError::OutOfStockForNow {
            available,
            requested,
        }),
        Gate::LimitReached { limit, held } => Some(AppError::PurchaseLimitReached { limit, held }),
        Gate::Reserved | Gate::Bypass => None,
    }
}

impl Engine {
    /// One batch of carts: commit, then each cart's answer (its caller tells Redis before
    /// answering its client). A failure that is not an outage may be one cart's fault: each
    /// runs alone then, so the others still go through.
    async fn run_carts(
        self: &Arc<Self>,
        pending: Vec<Pending<lines_store::CartJob, lines_store::CartAnswer>>,
    ) {
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match lines_store::commit(&self.db, &pending, self.order_ttl).await {
            Ok((answers, attempts)) => {
                self.engine_retried(attempts);
                for (p, answer) in pending.into_iter().zip(answers) {
                    p.answer(answer);
                }
            }
            Err(e) if pending.len() > 1 && e.code().code != "DEPENDENCY_UNAVAILABLE" => {
                tracing::warn!(error = %e, carts = pending.len(), "a batch of carts failed; running them one by one");
                for one in pending {
                    Box::pin(self.run_carts(vec![one])).await;
                }
            }
            Err(e) => {
                for p in pending {
                    p.answer(Err(e.duplicate()));
                }
            }
        }
    }

    /// One batch of `product_id`: commit, then (in a task of its own) Redis and each job's
    /// answer.
    async fn run(self: &Arc<Self>, product_id: i64, pending: Vec<Pending<Job, Answer>>) {
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = std::time::Instant::now();
        let committed = store::commit(&self.db, product_id, &pending, self.order_ttl).await;
        metrics::histogram!("checkout_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let committed = match committed {
            Ok(committed) => {
                self.engine_retried(committed.attempts);
                committed
            }
            // A database error that is not an outage may be one request's fault (it should
            // not be): run each alone, so the others still go through.
            Err(e) if pending.len() > 1 && e.code().code != "DEPENDENCY_UNAVAILABLE" => {
                tracing::warn!(error = %e, jobs = pending.len(), "a checkout batch failed; running its requests one by one");
                for one in pending {
                    Box::pin(self.run(product_id, vec![one])).await;
                }
                return;
            }
            Err(e) => {
                let holds: Vec<Hold> = pending
                    .iter()
                    .filter_map(|p| match &p.job {
                        Job::Place { hold, .. } => Some(hold.clone()),
                        Job::Pay { .. } | Job::Refuse { .. } => None,
                    })
                    .collect();
                if e.code().code == "DEPENDENCY_UNAVAILABLE" {
                    // MySQL went away mid-batch: it may have committed before the
                    // connection broke. The gate learns which from MySQL once it answers
                    // again (a reservation whose order exists is kept, the others given
                    // back at once), without waiting for the periodic reconcile.
                    self.stock.resync_ended(product_id, &holds);
                } else {
                    self.stock
                        .finish(product_id, &holds, Finish::Abandoned)
                        .await;
                }
                for p in pending {
                    p.answer(Err(e.duplicate()));
                }
                return;
            }
        };
        for (p, answer) in pending.iter().zip(&committed.answers) {
            if let (Job::Place { .. }, Ok(Done::Placed(order))) = (&p.job, answer) {
                self.placed
                    .insert(order.id, (Some(order.product_id), order.user_id))
                    .await;
            }
        }
        // Redis, then the answers, while the next batch already runs: a client hears of
        // its order only once Redis knows it too.
        let engine = self.clone();
        tokio::spawn(async move {
            engine.after_commit(product_id, &pending, &committed).await;
            for (p, answer) in pending.into_iter().zip(committed.answers) {
                p.answer(answer);
            }
        });
    }

    fn engine_retried(&self, attempts: u32) {
        if attempts > 1 {
            self.retries.fetch_add(
                u64::from(attempts - 1),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Redis follows MySQL: settled and abandoned reservations, paid units, the ranking.
    async fn after_commit(
        &self,
        product_id: i64,
        pending: &[Pending<Job, Answer>],
        committed: &store::Committed,
    ) {
        let mut settle = Vec::new();
        let mut abandon = Vec::new();
        for (job, answer) in pending.iter().map(|p| &p.job).zip(&committed.answers) {
            match (job, answer) {
                (Job::Place { hold, order, .. }, Ok(Done::Placed(_))) => {
                    settle.push((hold.clone(), order.quantity.get(), order.user_id))
                }
                (Job::Place { hold, .. }, _) => abandon.push(hold.clone()),
                (Job::Pay { .. } | Job::Refuse { .. }, _) => {}
            }
            let (kind, outcome) = match (job, answer) {
                (Job::Place { .. }, Ok(_)) => ("orders_total", "placed"),
                (Job::Pay { .. }, Ok(_)) => ("payments_total", "completed"),
                (Job::Place { .. }, Err(e)) => ("orders_total", e.code().code),
                (Job::Pay { .. }, Err(e)) => ("payments_total", e.code().code),
                // Counted when refused, before the batch.
                (Job::Refuse { .. }, _) => continue,
            };
            metrics::counter!(kind, "outcome" => outcome).increment(1);
        }
        tokio::join!(
            self.stock.settle(product_id, &settle),
            self.stock.finish(product_id, &abandon, Finish::Abandoned),
            self.stock
                .finish(product_id, &committed.paid_holds, Finish::Paid),
            async {
                if committed.sold > 0 {
                    self.ranking
                        .record(committed.day, product_id, committed.sold)
                        .await;
                }
            },
        );
    }
}
