//! The transactions of orders of several products: placing them and paying them, a batch
//! of them at a time ([`commit`]).
//!
//! Group commit for carts: the carts (placements and payments) waiting on an instance go
//! together into one transaction, one batch in flight per instance, like a product's
//! batch — one commit, one fsync for all of them. Each cart runs in it exactly as it would
//! alone, after a savepoint: its own key claimed, its rows locked (user, then its products
//! in ascending id), decided all or nothing by `place_lines`/`pay_lines` against the rows
//! as the carts before it left them, written; a refused cart rolls back to its savepoint
//! and changes nothing. Two carts of a batch may lock rows in an order across them that is
//! not the global one (cart 1's user, products; cart 2's user, products): a transaction of
//! another instance meeting it in a circle is a deadlock InnoDB breaks, and the batch runs
//! again — never seen by a buyer (the retries are counted and bounded).
//!
//! Lock order, the global one of `store.rs` (its header): **idempotency key** → **the
//! order's rows** (a payment: its own row, then its further lines, ids ascending) →
//! **the user** → **the products, ids ascending** → the day's `daily_sales` rows (product
//! ids ascending) → new rows. A batch of one product takes the same steps with one
//! product, so a cart waits on a hot product's row between two of its batches, exactly as
//! a batch of another instance does, and two carts naming the same products in any order
//! lock them in the same order: nobody waits in a circle. A deadlock or lock-wait timeout
//! (InnoDB's gap locks can still make one) rolls everything back and runs it again.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDateTime;
use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

// On a line of its own: scripts/check-imports.py reads an `as` inside a group as the end
// of the group.
use crate::orders::service::lock as lock_order;

use super::{
    batch::Pending,
    domain::{pay_lines, place_lines, LockedLines, Placed},
    store::{push_ids, LockedProduct, LOCKED_PRODUCT},
};
use crate::{
    auth::Caller,
    db,
    error::AppError,
    events::{self, Event, OrderEvent},
    idempotency::{self, Claim, Claimed, Outcome, Stored},
    orders::domain::{Lines, Order, OrderStatus, OrderView},
    payments::domain::{PaymentStatus, PaymentView},
    points::{
        domain::{PointKind, Points},
        service as points,
    },
    stock::Hold,
};

/// A cart waiting for the instance's next batch of carts.
pub enum CartJob {
    Place {
        user_id: i64,
        lines: Lines,
        hold: Hold,
        claim: Option<Claim>,
    },
    Pay {
        caller: Caller,
        order_id: i64,
        claim: Option<Claim>,
    },
}

impl CartJob {
    fn claim(&self) -> Option<&Claim> {
        match self {
            CartJob::Place { claim, .. } | CartJob::Pay { claim, .. } => claim.as_ref(),
        }
    }
}

/// A cart's answer: what [`place`] or [`pay`] would have answered alone.
pub enum CartDone {
    Placed(Outcome<OrderView, Vec<Order>>),
    Paid(Outcome<PaymentView, PaidLines>),
}

pub type CartAnswer = Result<CartDone, AppError>;

/// Commits one batch of carts, running it again after a deadlock or lock timeout; returns
/// each cart's answer. A cart whose client gave up before the batch ran is left out.
pub async fn commit(
    pool: &MySqlPool,
    carts: &[Pending<CartJob, CartAnswer>],
    order_ttl: chrono::Duration,
) -> Result<(Vec<CartAnswer>, u32), AppError> {
    db::retried(|| once(pool, carts, order_ttl)).await
}

async fn once(
    pool: &MySqlPool,
    carts: &[Pending<CartJob, CartAnswer>],
    order_ttl: chrono::Duration,
) -> Result<Vec<CartAnswer>, AppError> {
    let mut tx = db::begin(pool).await?;
    let mut answers: Vec<CartAnswer> = Vec::with_capacity(carts.len());
    let mut records: Vec<(&Claim, Stored)> = Vec::new();
    let mut keys: HashSet<(&str, &str)> = HashSet::new();
    for (i, cart) in carts.iter().enumerate() {
        if cart.gave_up() {
            answers.push(Err(AppError::Timeout(0)));
            continue;
        }
        let claim = cart.job.claim();
        if let Some(c) = claim {
            // The same key twice in one batch: the first runs, the second is told to come
            // back (it will replay the first's answer).
            if !keys.insert((c.scope.as_str(), c.key.as_str())) {
                answers.push(Err(AppError::IdempotencyInProgress));
                continue;
            }
            match idempotency::claim(&mut tx, c).await {
                Ok(Claimed::New) => {}
                Ok(Claimed::Replay(stored)) => {
                    answers.push(Ok(replayed(&cart.job, stored)));
                    continue;
                }
                Err(e @ (AppError::IdempotencyInProgress | AppError::IdempotencyKeyReused)) => {
                    answers.push(Err(e));
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        sqlx::query(&format!("SAVEPOINT cart{i}"))
            .execute(&mut *tx)
            .await?;
        let done = match &cart.job {
            CartJob::Place {
                user_id,
                lines,
                hold,
                ..
            } => place_in(&mut tx, *user_id, lines, hold, order_ttl)
                .await
                .and_then(|rows| {
                    let view = OrderView::of_rows(&rows).ok_or(AppError::OrderNotFound)?;
                    Ok((
                        Stored::success_of(claim, &view),
                        CartDone::Placed(Outcome::Done(view, rows)),
                    ))
                }),
            CartJob::Pay {
                caller, order_id, ..
            } => pay_in(&mut tx, *caller, *order_id)
                .await
                .map(|(payment, paid)| {
                    (
                        Stored::success_of(claim, &payment),
                        CartDone::Paid(Outcome::Done(payment, paid)),
                    )
                }),
        };
        match done {
            Ok((stored, done)) => {
                if let (Some(c), Some(s)) = (claim, stored) {
                    records.push((c, s));
                }
                answers.push(Ok(done));
            }
            Err(e) if e.is_client_error() => {
                sqlx::query(&format!("ROLLBACK TO SAVEPOINT cart{i}"))
                    .execute(&mut *tx)
                    .await?;
                if let Some(c) = claim {
                    if e.is_kept() {
                        records.push((c, Stored::failure(&e)));
                    } else {
                        // An answer that says when to come back: the key stays free.
                        idempotency::release(&mut tx, c).await?;
                    }
                }
                answers.push(Err(e));
            }
            // An outage, or a deadlock: the whole batch rolls back (and runs again).
            Err(e) => return Err(e),
        }
    }
    idempotency::record(&mut tx, &records).await?;
    tx.commit().await?;
    Ok(answers)
}

/// The replay of a key's earlier answer, as the cart's kind of answer.
fn replayed(job: &CartJob, stored: Stored) -> CartDone {
    match job {
        CartJob::Place { .. } => CartDone::Placed(Outcome::Replayed(stored.replay())),
        CartJob::Pay { .. } => CartDone::Paid(Outcome::Replayed(stored.replay())),
    }
}

/// What a committed payment of several lines leaves for Redis: the order's hold, each
/// line's (product, units), the day they were sold.
pub struct PaidLines {
    pub hold: Hold,
    pub lines: Vec<(i64, i64)>,
    pub day: chrono::NaiveDate,
}

/// One cart's placement, all or nothing; its rows come back, its own first.
async fn place_in(
    tx: &mut MySqlConnection,
    user_id: i64,
    lines: &Lines,
    hold: &Hold,
    order_ttl: chrono::Duration,
) -> Result<Vec<Order>, AppError> {
    // 1. the user, 2. the products: every read that decides comes after these locks.
    let points = lock_user(tx, user_id).await?;
    let ids = lines.product_ids();
    let (products, now) = lock_products(tx, &ids).await?;
    let limited: Vec<i64> = products
        .iter()
        .filter(|(_, p)| p.per_user_limit.is_some())
        .map(|(id, _)| *id)
        .collect();
    let holdings = held_units(tx, user_id, &limited).await?;
    let mut locked = LockedLines {
        points,
        products,
        holdings,
    };
    let before = locked.products.clone();
    let placed = place_lines(&mut locked, user_id, lines.get(), now)?;

    // Writes: the products' reservations, the user's hold, the order's rows.
    write_products(tx, &before, &locked, now).await?;
    if let Some(p) = locked.points {
        sqlx::query("UPDATE users SET held = ? WHERE id = ?")
            .bind(p.held)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
    }
    let expires_at = now + order_ttl;
    let asked: Vec<(i64, &Placed)> = lines
        .get()
        .iter()
        .map(|l| l.product_id)
        .zip(&placed)
        .collect();
    let row = |id: i64, (product_id, p): (i64, &Placed), parent_id: Option<i64>| Order {
        id,
        user_id,
        product_id,
        quantity: p.quantity,
        unit_price: p.unit_price,
        total_amount: p.total_amount,
        status: OrderStatus::Pending,
        created_at: now,
        expires_at,
        paid_at: None,
        hold: hold.as_str().to_string(),
        parent_id,
        line_count: if parent_id.is_none() {
            i32::try_from(placed.len()).unwrap_or(i32::MAX)
        } else {
            0
        },
    };
    let (first, further) = asked
        .split_first()
        .ok_or_else(|| AppError::Validation("an order needs a line".into()))?;
    // The order's own row first: its id is the one the further lines name.
    let head = row(0, *first, None);
    let id = insert_rows(tx, std::slice::from_ref(&head)).await?;
    let mut rows = vec![Order { id, ..head }];
    let further: Vec<Order> = further.iter().map(|l| row(0, *l, Some(id))).collect();
    insert_rows(tx, &further).await?;
    rows.extend(further);
    Ok(rows)
}

/// One cart's payment, all or nothing.
async fn pay_in(
    tx: &mut MySqlConnection,
    caller: Caller,
    order_id: i64,
) -> Result<(PaymentView, PaidLines), AppError> {
    // 1. the order's rows, 2. the user, 3. the products.
    let mut rows = lock_order(tx, caller, order_id).await?;
    let user_id = rows[0].user_id;
    let points = lock_user(tx, user_id).await?;
    let mut ids: Vec<i64> = rows.iter().map(|o| o.product_id).collect();
    ids.sort_unstable();
    let (products, now) = lock_products(tx, &ids).await?;
    let mut locked = LockedLines {
        points,
        products,
        holdings: HashMap::new(),
    };
    let before = locked.products.clone();
    let paid = pay_lines(&mut locked, caller, &mut rows, now)?;

    // Writes: stock and sold, the balance and its history, the rows, the payment, the
    // day's sales, the event.
    write_products(tx, &before, &locked, now).await?;
    if let Some(p) = locked.points {
        sqlx::query("UPDATE users SET balance = ?, held = ? WHERE id = ?")
            .bind(p.balance)
            .bind(p.held)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
    }
    points::record(
        tx,
        &[(
            user_id,
            PointKind::Use,
            paid.amount,
            paid.balance_after,
            Some(order_id),
        )],
    )
    .await?;
    let mut update = QueryBuilder::new("UPDATE orders SET status = 'PAID', paid_at = ");
    update.push_bind(now).push(", updated_at = ").push_bind(now);
    update.push(" WHERE id IN (");
    let row_ids: Vec<i64> = rows.iter().map(|o| o.id).collect();
    push_ids(&mut update, &row_ids);
    update.push(")");
    update.build().execute(&mut *tx).await?;
    let payment_id = sqlx::query(
        "INSERT INTO payments (order_id, user_id, amount, status, balance_after, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(order_id)
    .bind(user_id)
    .bind(paid.amount)
    .bind(PaymentStatus::Completed.as_str())
    .bind(paid.balance_after)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .last_insert_id() as i64;
    let mut lines: Vec<(i64, i64)> = rows.iter().map(|o| (o.product_id, o.quantity)).collect();
    lines.sort_unstable();
    let mut sales = QueryBuilder::new("INSERT INTO daily_sales (day, product_id, quantity) ");
    sales.push_values(&lines, |mut row, (product_id, quantity)| {
        row.push_bind(now.date())
            .push_bind(*product_id)
            .push_bind(*quantity);
    });
    sales.push(" ON DUPLICATE KEY UPDATE quantity = quantity + VALUES(quantity)");
    sales.build().execute(&mut *tx).await?;
    let event = OrderEvent::of_rows(&rows, payment_id, now);
    events::record(tx, &[Event::order_paid(event)]).await?;
    Ok((
        PaymentView {
            payment_id,
            order_id,
            user_id,
            amount: paid.amount,
            status: PaymentStatus::Completed,
            balance_after: paid.balance_after,
            paid_at: now,
        },
        PaidLines {
            hold: Hold::stored(rows[0].hold.clone()),
            lines,
            day: now.date(),
        },
    ))
}

async fn lock_user(tx: &mut MySqlConnection, user_id: i64) -> Result<Option<Points>, AppError> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT balance, held FROM users WHERE id = ? FOR UPDATE")
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(row.map(|(balance, held)| Points { balance, held }))
}

/// Locks `ids` (ascending) and reads the database's clock with them; a missing product
/// refuses the order.
async fn lock_products(
    tx: &mut MySqlConnection,
    ids: &[i64],
) -> Result<(HashMap<i64, super::domain::ProductRow>, NaiveDateTime), AppError> {
    let mut q = QueryBuilder::new(format!(
        "SELECT {LOCKED_PRODUCT} FROM products WHERE id IN ("
    ));
    push_ids(&mut q, ids);
    q.push(") ORDER BY id FOR UPDATE");
    let rows: Vec<LockedProduct> = q.build_query_as().fetch_all(&mut *tx).await?;
    if rows.len() != ids.len() {
        return Err(AppError::ProductNotFound);
    }
    let now = rows.first().map_or_else(db::now, |p| p.clock);
    Ok((rows.iter().map(|p| (p.id, p.row())).collect(), now))
}

/// Units `user_id` holds of each of `products` in PENDING and PAID rows (SPEC F2, L3).
async fn held_units(
    tx: &mut MySqlConnection,
    user_id: i64,
    products: &[i64],
) -> Result<HashMap<i64, i64>, AppError> {
    if products.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q = QueryBuilder::new(
        "SELECT product_id, CAST(SUM(quantity) AS SIGNED) FROM orders WHERE user_id = ",
    );
    q.push_bind(user_id)
        .push(" AND status IN ('PENDING', 'PAID') AND product_id IN (");
    push_ids(&mut q, products);
    q.push(") GROUP BY product_id");
    Ok(q.build_query_as::<(i64, i64)>()
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect())
}

/// The products whose figures changed, in one statement.
async fn write_products(
    tx: &mut MySqlConnection,
    before: &HashMap<i64, super::domain::ProductRow>,
    locked: &LockedLines,
    now: NaiveDateTime,
) -> Result<(), AppError> {
    let mut changed: Vec<(i64, super::domain::ProductRow)> = locked
        .products
        .iter()
        .filter(|(id, p)| before.get(id) != Some(p))
        .map(|(id, p)| (*id, *p))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    changed.sort_unstable_by_key(|(id, _)| *id);
    let mut update = QueryBuilder::new("UPDATE products SET ");
    for (i, (column, figure)) in [
        (
            "stock",
            (|p: &super::domain::ProductRow| p.stock) as fn(&_) -> i64,
        ),
        ("reserved", |p| p.reserved),
        ("sold", |p| p.sold),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            update.push(", ");
        }
        update.push(format!("{column} = CASE id"));
        for (id, p) in &changed {
            update
                .push(" WHEN ")
                .push_bind(*id)
                .push(" THEN ")
                .push_bind(figure(p));
        }
        update.push(" END");
    }
    update.push(", updated_at = ").push_bind(now);
    update.push(" WHERE id IN (");
    let ids: Vec<i64> = changed.iter().map(|(id, _)| *id).collect();
    push_ids(&mut update, &ids);
    update.push(")");
    update.build().execute(&mut *tx).await?;
    Ok(())
}

/// Inserts order rows (one statement); returns the first one's id.
async fn insert_rows(tx: &mut MySqlConnection, rows: &[Order]) -> Result<i64, AppError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut insert = QueryBuilder::new(
        "INSERT INTO orders (user_id, product_id, quantity, unit_price, total_amount, status, \
         created_at, expires_at, updated_at, hold, parent_id, line_count) ",
    );
    insert.push_values(rows, |mut row, o| {
        row.push_bind(o.user_id)
            .push_bind(o.product_id)
            .push_bind(o.quantity)
            .push_bind(o.unit_price)
            .push_bind(o.total_amount)
            .push_bind(o.status.as_str())
            .push_bind(o.created_at)
            .push_bind(o.expires_at)
            .push_bind(o.created_at)
            .push_bind(&o.hold)
            .push_bind(o.parent_id)
            .push_bind(o.line_count);
    });
    Ok(insert.build().execute(&mut *tx).await?.last_insert_id() as i64)
}
