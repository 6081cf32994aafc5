//! The transaction of one checkout batch.
//!
//! Lock order, the same in every transaction of the service, so that batches from several
//! instances (and cancels, refunds, the sweeper, charges) queue on rows and never wait in a
//! circle: **idempotency keys** (by scope and key) → **orders** (by id) → **users** (by
//! id) → **the product** → the day's `daily_sales` row → new rows. Each `SELECT … FOR
//! UPDATE` below takes one of these sets in ascending id order. A deadlock or lock-wait
//! timeout rolls the whole batch back and runs it again; a crash leaves nothing of it.

use std::collections::HashMap;

use chrono::{NaiveDate, NaiveDateTime};
use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

use super::{
    batch::Pending,
    domain::{decide, Decision, Locked, Paid, Placed, ProductRow, Request},
    job::{Answer, Done, Job},
};
use crate::{
    catalog::domain::SaleWindow,
    db,
    error::AppError,
    events::{self, Event, EventLine, OrderEvent},
    idempotency::{self, Claimed, Stored},
    orders::domain::{Order, OrderStatus, OrderView, ORDER_COLUMNS},
    payments::domain::{PaymentStatus, PaymentView},
    points::{
        domain::{PointKind, Points},
        service as points,
    },
    stock::Hold,
};

/// A committed batch: one answer per job, and what Redis must learn.
pub struct Committed {
    pub answers: Vec<Answer>,
    /// The reservations of the orders this batch paid.
    pub paid_holds: Vec<Hold>,
    /// Units sold by this batch, on `day`.
    pub sold: i64,
    pub day: NaiveDate,
    /// Runs it took (1 unless a deadlock or lock timeout made it run again).
    pub attempts: u32,
}

/// Commits one batch of `product_id`, running it again after a deadlock or lock timeout.
/// A request whose client gave up before the batch held its locks is left out: it changes
/// nothing (its key stays free for the retry).
pub async fn commit(
    pool: &MySqlPool,
    product_id: i64,
    jobs: &[Pending<Job, Answer>],
    order_ttl: chrono::Duration,
) -> Result<Committed, AppError> {
    let (committed, attempts) = db::retried(|| once(pool, product_id, jobs, order_ttl)).await?;
    Ok(Committed {
        attempts,
        ..committed
    })
}

async fn once(
    pool: &MySqlPool,
    product_id: i64,
    pending: &[Pending<Job, Answer>],
    order_ttl: chrono::Duration,
) -> Result<Committed, AppError> {
    let jobs: Vec<&Job> = pending.iter().map(|p| &p.job).collect();
    let mut tx = db::begin(pool).await?;
    let mut answers: Vec<Option<Answer>> =
        pending.iter().map(|p| p.gave_up().then(gave_up)).collect();

    // 1. Idempotency keys, in key order. A key that comes twice in one batch is claimed by
    //    its first request; the later ones are answered from it at the end.
    let mut first_of: HashMap<(&str, &str), usize> = HashMap::new();
    let mut copies: Vec<(usize, usize)> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let Some(claim) = job.claim() else { continue };
        if answers[i].is_some() {
            continue;
        }
        match first_of.entry((claim.scope.as_str(), claim.key.as_str())) {
            std::collections::hash_map::Entry::Occupied(first) => {
                copies.push((i, *first.get()));
                answers[i] = Some(Err(AppError::IdempotencyInProgress));
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
    }
    let mut keyed: Vec<usize> = first_of.into_values().collect();
    keyed.sort_by_key(|&i| jobs[i].claim().map(|c| (c.scope.clone(), c.key.clone())));
    let mut claimed = vec![false; jobs.len()];
    for i in keyed {
        let Some(claim) = jobs[i].claim() else {
            continue;
        };
        match idempotency::claim(&mut tx, claim).await {
            Ok(Claimed::New) => claimed[i] = true,
            Ok(Claimed::Replay(stored)) => answers[i] = Some(Ok(Done::Replayed(stored))),
            Err(e @ (AppError::IdempotencyInProgress | AppError::IdempotencyKeyReused)) => {
                answers[i] = Some(Err(e))
            }
            Err(e) => return Err(e),
        }
    }
    let requests: Vec<Request> = jobs
        .iter()
        .zip(&answers)
        .map(|(job, answer)| match (*job, answer) {
            (_, Some(_)) | (Job::Refuse { .. }, None) => Request::Answered,
            (Job::Place { order, .. }, None) => Request::Place {
                user_id: order.user_id,
                quantity: order.quantity,
                price: order.price,
            },
            (
                Job::Pay {
                    caller, order_id, ..
                },
                None,
            ) => Request::Pay {
                caller: *caller,
                order_id: *order_id,
            },
        })
        .collect();

    // 2. The orders being paid.
    let mut order_ids: Vec<i64> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Pay { order_id, .. } => Some(*order_id),
            _ => None,
        })
        .collect();
    order_ids.sort_unstable();
    order_ids.dedup();
    let orders: Vec<Order> = if order_ids.is_empty() {
        Vec::new()
    } else {
        let mut q = QueryBuilder::new(format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id IN ("));
        push_ids(&mut q, &order_ids);
        q.push(") ORDER BY id FOR UPDATE");
        q.build_query_as().fetch_all(&mut *tx).await?
    };
    // 3. Their users and the placers.
    let mut user_ids: Vec<i64> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Place { user_id, .. } => Some(*user_id),
            _ => None,
        })
        .chain(orders.iter().map(|o| o.user_id))
        .collect();
    user_ids.sort_unstable();
    user_ids.dedup();
    let users: Vec<(i64, i64, i64)> = if user_ids.is_empty() {
        Vec::new()
    } else {
        let mut q = QueryBuilder::new("SELECT id, balance, held FROM users WHERE id IN (");
        push_ids(&mut q, &user_ids);
        q.push(") ORDER BY id FOR UPDATE");
        q.build_query_as().fetch_all(&mut *tx).await?
    };
    // 4. The product, and the database's clock (the sale window is judged by it).
    let product: Option<LockedProduct> = sqlx::query_as(&format!(
        "SELECT {LOCKED_PRODUCT} FROM products WHERE id = ? FOR UPDATE"
    ))
    .bind(product_id)
    .fetch_optional(&mut *tx)
    .await?;
    // With a per-customer limit: the units each placer holds of it. Every order of the
    // product is written under the lock just taken, so this count is exact until the
    // commit, whichever instance places the next one.
    let placers: Vec<i64> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Place { user_id, .. } => Some(*user_id),
            _ => None,
        })
        .collect();
    let holdings = match &product {
        Some(p) if p.per_user_limit.is_some() && !placers.is_empty() => {
            held_units(&mut tx, product_id, &placers).await?
        }
        _ => HashMap::new(),
    };

    // The locks are held: a request whose client has gone since is left out now, its key
    // released (nothing of it will commit).
    let mut requests = requests;
    for (i, p) in pending.iter().enumerate() {
        if answers[i].is_none() && p.gave_up() {
            answers[i] = Some(gave_up());
            requests[i] = Request::Answered;
            if claimed[i] {
                claimed[i] = false;
                if let Some(claim) = jobs[i].claim() {
                    idempotency::release(&mut tx, claim).await?;
                }
            }
        }
    }
    let now = product.as_ref().map_or_else(db::now, |p| p.clock);

    // Every request decided on its own, in arrival order.
    let mut locked = Locked {
        product: product.as_ref().map(LockedProduct::row),
        users: users
            .into_iter()
            .map(|(id, balance, held)| (id, Points { balance, held }))
            .collect(),
        holdings,
        // Only this product's orders of one line: an order of several lines is paid on its
        // own path (reading as missing here, should one be routed to a batch).
        orders: orders
            .into_iter()
            .filter(|o| o.product_id == product_id && o.parent_id.is_none() && !o.has_lines())
            .map(|o| (o.id, o))
            .collect(),
    };
    let before = locked.product;
    let points_before = locked.users.clone();
    let decisions = decide(&mut locked, &requests, now);

    // Writes.
    let paid: Vec<Paid> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Pay(Ok(p)) => Some(*p),
            _ => None,
        })
        .collect();
    let placed: Vec<(&Hold, Placed)> = jobs
        .iter()
        .zip(&decisions)
        .filter_map(|(job, d)| match (*job, d) {
            (Job::Place { hold, .. }, Decision::Place(Ok(p))) => Some((hold, *p)),
            _ => None,
        })
        .collect();
    if let (Some(b), Some(a)) = (before, locked.product) {
        if a != b {
            sqlx::query(
                "UPDATE products SET stock = ?, reserved = ?, sold = ?, updated_at = ? WHERE id = ?",
            )
            .bind(a.stock)
            .bind(a.reserved)
            .bind(a.sold)
            .bind(now)
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
        }
    }
    write_points(&mut tx, &points_before, &locked).await?;
    let payment_ids = write_payments(&mut tx, product_id, &paid, now).await?;
    let order_ids = write_orders(&mut tx, product_id, &placed, now, now + order_ttl).await?;

    // Answers, and the keyed ones kept with the batch.
    let mut stored: Vec<(usize, Stored)> = Vec::new();
    let mut paid_holds = Vec::new();
    let mut final_answers = Vec::with_capacity(jobs.len());
    for (i, (job, (answer, decision))) in jobs
        .iter()
        .zip(answers.into_iter().zip(decisions))
        .enumerate()
    {
        let answer = match (answer, decision) {
            (Some(answer), _) => answer,
            (None, Decision::Answered) if matches!(job, Job::Refuse { .. }) => {
                let Job::Refuse { refusal, .. } = *job else {
                    unreachable!("matched just above")
                };
                Err(refusal.duplicate())
            }
            (None, Decision::Place(Ok(p))) => {
                let Job::Place { order, hold, .. } = *job else {
                    unreachable!("a placement decision belongs to a placement job")
                };
                let id = *order_ids
                    .get(hold.as_str())
                    .ok_or_else(|| anyhow::anyhow!("a placed order was not found by its hold"))?;
                Ok(Done::Placed(Order {
                    id,
                    user_id: p.user_id,
                    product_id: order.product_id,
                    quantity: p.quantity,
                    unit_price: p.unit_price,
                    total_amount: p.total_amount,
                    status: OrderStatus::Pending,
                    created_at: now,
                    expires_at: now + order_ttl,
                    paid_at: None,
                    hold: hold.as_str().to_string(),
                    parent_id: None,
                    line_count: 1,
                }))
            }
            (None, Decision::Pay(Ok(p))) => {
                let payment_id = *payment_ids
                    .get(&p.order_id)
                    .ok_or_else(|| anyhow::anyhow!("a payment was not found by its order"))?;
                if let Some(order) = locked.orders.get(&p.order_id) {
                    paid_holds.push(Hold::stored(order.hold.clone()));
                }
                Ok(Done::Paid(PaymentView {
                    payment_id,
                    order_id: p.order_id,
                    user_id: p.user_id,
                    amount: p.amount,
                    status: PaymentStatus::Completed,
                    balance_after: p.balance_after,
                    paid_at: now,
                }))
            }
            (None, Decision::Place(Err(e)) | Decision::Pay(Err(e))) => Err(e),
            (None, Decision::Answered) => Err(AppError::Internal(anyhow::anyhow!(
                "a request was neither answered nor decided"
            ))),
        };
        if let (true, Some(claim)) = (claimed[i], job.claim()) {
            match &answer {
                // An answer that says when to come back is not kept: the key stays free.
                Err(e) if !e.is_kept() => idempotency::release(&mut tx, claim).await?,
                Ok(Done::Placed(order)) => {
                    stored.push((i, Stored::success(claim, &OrderView::from(order))))
                }
                Ok(Done::Paid(payment)) => stored.push((i, Stored::success(claim, payment))),
                Ok(Done::Replayed(s)) => stored.push((i, s.clone())),
                Err(e) => stored.push((i, Stored::failure(e))),
            }
        }
        final_answers.push(answer);
    }
    let records: Vec<_> = stored
        .iter()
        .filter_map(|(i, s)| jobs[*i].claim().map(|c| (c, s.clone())))
        .collect();
    idempotency::record(&mut tx, &records).await?;
    // Later requests with a key already in this batch: the first one's answer, replayed
    // (or refused, when they are not the same request).
    for (later, first) in copies {
        let same = jobs[later].claim().map(|c| &c.hash) == jobs[first].claim().map(|c| &c.hash);
        final_answers[later] = match (&final_answers[first], same) {
            (_, false) => Err(AppError::IdempotencyKeyReused),
            (Ok(Done::Replayed(s)), true) => Ok(Done::Replayed(s.clone())),
            (_, true) => match stored.iter().find(|(i, _)| *i == first) {
                Some((_, s)) => Ok(Done::Replayed(s.clone())),
                None => Err(AppError::IdempotencyInProgress),
            },
        };
    }
    tx.commit().await?;
    Ok(Committed {
        answers: final_answers,
        paid_holds,
        sold: paid.iter().map(|p| p.quantity).sum(),
        day: now.date(),
        attempts: 1,
    })
}

/// The answer of a request whose client is gone (nobody reads it).
fn gave_up() -> Answer {
    Err(AppError::Timeout(0))
}

/// A product row as a checkout locks it, with the database's clock (the sale window is
/// judged by it).
#[derive(sqlx::FromRow)]
pub(super) struct LockedProduct {
    pub id: i64,
    price: i64,
    stock: i64,
    reserved: i64,
    sold: i64,
    per_user_limit: Option<i64>,
    sale_starts_at: Option<NaiveDateTime>,
    sale_ends_at: Option<NaiveDateTime>,
    pub clock: NaiveDateTime,
}

/// The columns of [`LockedProduct`] in `products`.
pub(super) const LOCKED_PRODUCT: &str = "price, stock, reserved, sold, per_user_limit, \
     sale_starts_at, sale_ends_at, UTC_TIMESTAMP(6) AS clock, id";

impl LockedProduct {
    pub fn row(&self) -> ProductRow {
        ProductRow {
            price: self.price,
            stock: self.stock,
            reserved: self.reserved,
            sold: self.sold,
            per_user_limit: self.per_user_limit,
            window: SaleWindow {
                starts_at: self.sale_starts_at,
                ends_at: self.sale_ends_at,
            },
        }
    }
}

/// Units each of `users` holds of the product in PENDING and PAID orders (SPEC F2).
async fn held_units(
    tx: &mut MySqlConnection,
    product_id: i64,
    users: &[i64],
) -> Result<HashMap<i64, i64>, AppError> {
    let mut q = QueryBuilder::new(
        "SELECT user_id, CAST(SUM(quantity) AS SIGNED) FROM orders WHERE product_id = ",
    );
    q.push_bind(product_id)
        .push(" AND status IN ('PENDING', 'PAID') AND user_id IN (");
    push_ids(&mut q, users);
    q.push(") GROUP BY user_id");
    Ok(q.build_query_as::<(i64, i64)>()
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect())
}

/// Every locked user whose balance or hold the batch changed, in one statement: the
/// placers' holds grew, the payers' balances and holds fell.
async fn write_points(
    tx: &mut MySqlConnection,
    before: &HashMap<i64, Points>,
    locked: &Locked,
) -> Result<(), AppError> {
    let mut changed: Vec<(i64, Points)> = locked
        .users
        .iter()
        .filter(|(id, p)| before.get(id) != Some(p))
        .map(|(id, p)| (*id, *p))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    changed.sort_unstable_by_key(|(id, _)| *id);
    let mut update = QueryBuilder::new("UPDATE users SET balance = CASE id");
    for (id, p) in &changed {
        update
            .push(" WHEN ")
            .push_bind(*id)
            .push(" THEN ")
            .push_bind(p.balance);
    }
    update.push(" END, held = CASE id");
    for (id, p) in &changed {
        update
            .push(" WHEN ")
            .push_bind(*id)
            .push(" THEN ")
            .push_bind(p.held);
    }
    update.push(" END WHERE id IN (");
    let ids: Vec<i64> = changed.iter().map(|(id, _)| *id).collect();
    push_ids(&mut update, &ids);
    update.push(")");
    update.build().execute(&mut *tx).await?;
    Ok(())
}

/// Everything a batch's accepted payments write besides the balances; returns each
/// payment's id by order id.
async fn write_payments(
    tx: &mut MySqlConnection,
    product_id: i64,
    paid: &[Paid],
    now: NaiveDateTime,
) -> Result<HashMap<i64, i64>, AppError> {
    if paid.is_empty() {
        return Ok(HashMap::new());
    }
    let history: Vec<points::Entry> = paid
        .iter()
        .map(|p| {
            (
                p.user_id,
                PointKind::Use,
                p.amount,
                p.balance_after,
                Some(p.order_id),
            )
        })
        .collect();
    points::record(tx, &history).await?;

    let order_ids: Vec<i64> = paid.iter().map(|p| p.order_id).collect();
    let mut orders = QueryBuilder::new("UPDATE orders SET status = 'PAID', paid_at = ");
    orders.push_bind(now).push(", updated_at = ").push_bind(now);
    orders.push(" WHERE id IN (");
    push_ids(&mut orders, &order_ids);
    orders.push(")");
    orders.build().execute(&mut *tx).await?;

    let mut payments = QueryBuilder::new(
        "INSERT INTO payments (order_id, user_id, amount, status, balance_after, created_at) ",
    );
    payments.push_values(paid, |mut row, p| {
        row.push_bind(p.order_id)
            .push_bind(p.user_id)
            .push_bind(p.amount)
            .push_bind(PaymentStatus::Completed.as_str())
            .push_bind(p.balance_after)
            .push_bind(now);
    });
    payments.build().execute(&mut *tx).await?;
    let mut ids = QueryBuilder::new("SELECT order_id, id FROM payments WHERE order_id IN (");
    push_ids(&mut ids, &order_ids);
    ids.push(")");
    let ids: HashMap<i64, i64> = ids
        .build_query_as::<(i64, i64)>()
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();

    sqlx::query(
        "INSERT INTO daily_sales (day, product_id, quantity) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE quantity = quantity + VALUES(quantity)",
    )
    .bind(now.date())
    .bind(product_id)
    .bind(paid.iter().map(|p| p.quantity).sum::<i64>())
    .execute(&mut *tx)
    .await?;
    let events: Vec<Event> = paid
        .iter()
        .map(|p| {
            Event::order_paid(OrderEvent {
                order_id: p.order_id,
                payment_id: ids.get(&p.order_id).copied().unwrap_or_default(),
                user_id: p.user_id,
                product_id,
                quantity: p.quantity,
                amount: p.amount,
                lines: vec![EventLine {
                    product_id,
                    quantity: p.quantity,
                    // A one-line order's amount is its quantity × unit price.
                    unit_price: p.amount / p.quantity.max(1),
                }],
                paid_at: now,
                refunded_at: None,
            })
        })
        .collect();
    events::record(tx, &events).await?;
    Ok(ids)
}

/// The accepted placements' order rows (one statement); returns their ids by hold token.
async fn write_orders(
    tx: &mut MySqlConnection,
    product_id: i64,
    placed: &[(&Hold, Placed)],
    now: NaiveDateTime,
    expires_at: NaiveDateTime,
) -> Result<HashMap<String, i64>, AppError> {
    if placed.is_empty() {
        return Ok(HashMap::new());
    }
    let mut insert = QueryBuilder::new(
        "INSERT INTO orders (user_id, product_id, quantity, unit_price, total_amount, status, \
         created_at, expires_at, updated_at, hold) ",
    );
    insert.push_values(placed, |mut row, (hold, p)| {
        row.push_bind(p.user_id)
            .push_bind(product_id)
            .push_bind(p.quantity)
            .push_bind(p.unit_price)
            .push_bind(p.total_amount)
            .push_bind(OrderStatus::Pending.as_str())
            .push_bind(now)
            .push_bind(expires_at)
            .push_bind(now)
            .push_bind(hold.as_str());
    });
    // The rows of one INSERT get ids from the first one up (consecutive or not): read them
    // back by their hold tokens from there.
    let first = insert.build().execute(&mut *tx).await?.last_insert_id();
    let mut ids = QueryBuilder::new("SELECT hold, id FROM orders WHERE id >= ");
    ids.push_bind(first).push(" AND hold IN (");
    let mut list = ids.separated(", ");
    for (hold, _) in placed {
        list.push_bind(hold.as_str());
    }
    ids.push(")");
    Ok(ids
        .build_query_as::<(String, i64)>()
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect())
}

pub(super) fn push_ids(query: &mut QueryBuilder<'_, sqlx::MySql>, ids: &[i64]) {
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
}
