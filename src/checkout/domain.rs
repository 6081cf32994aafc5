//! The rules of one checkout batch, free of I/O.
//!
//! A batch has locked its rows (the orders it pays, their users and the placers, the
//! product); [`decide`] then takes its requests in arrival order and decides each one on
//! its own, exactly as if they had run one after another: a refusal changes nothing and
//! touches no neighbour, and every acceptance is seen by the requests after it (two orders
//! of one user share one balance and one hold, units taken by one placement are gone for
//! the next and count towards its buyer's limit).
//!
//! A placement is refused by the first rule it breaks, in SPEC's order: the sale window,
//! the stock, the per-customer limit, the price, the points.

use std::collections::HashMap;

use chrono::NaiveDateTime;

use crate::{
    auth::Caller,
    catalog::domain::{check_limit, SaleWindow},
    error::AppError,
    orders::domain::{check_price, total, LineAsk, Order, Quantity},
    points::domain::Points,
};

/// The product row as locked: its price, stock figures and fairness rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProductRow {
    pub price: i64,
    /// Units not yet sold (reserved ones included).
    pub stock: i64,
    /// Units held by PENDING orders.
    pub reserved: i64,
    pub sold: i64,
    pub per_user_limit: Option<i64>,
    pub window: SaleWindow,
}

impl ProductRow {
    /// What a new order may still take.
    pub fn available(&self) -> i64 {
        self.stock - self.reserved
    }
}

/// The rows a batch holds locks on, updated as its requests are decided.
#[derive(Clone, Debug, Default)]
pub struct Locked {
    /// `None`: no such product.
    pub product: Option<ProductRow>,
    /// The points of every user the batch locked (placers and payers).
    pub users: HashMap<i64, Points>,
    /// Units each placer holds of the product in PENDING and PAID orders; read only when
    /// the product has a `per_user_limit` (a placer missing here holds none).
    pub holdings: HashMap<i64, i64>,
    /// The orders the batch pays, by id.
    pub orders: HashMap<i64, Order>,
}

/// One request of a batch, as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// A new order of `quantity` units at the unit `price` the buyer saw.
    Place {
        user_id: i64,
        quantity: Quantity,
        price: i64,
    },
    /// The payment of an order by `caller` (another user's order reads as missing).
    Pay { caller: Caller, order_id: i64 },
    /// Already answered before the rules (a replayed key, a key in use).
    Answered,
}

/// An accepted placement: the order row to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub user_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
    pub total_amount: i64,
}

/// An accepted payment: what to write for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paid {
    pub order_id: i64,
    pub user_id: i64,
    pub quantity: i64,
    pub amount: i64,
    pub balance_after: i64,
}

#[derive(Debug)]
pub enum Decision {
    Answered,
    Place(Result<Placed, AppError>),
    Pay(Result<Paid, AppError>),
}

/// Decides every request in order against `locked`, which ends as the rows must be written;
/// `now` is the database's clock.
pub fn decide(locked: &mut Locked, requests: &[Request], now: NaiveDateTime) -> Vec<Decision> {
    requests
        .iter()
        .map(|request| match *request {
            Request::Answered => Decision::Answered,
            Request::Place {
                user_id,
                quantity,
                price,
            } => Decision::Place(place(locked, user_id, quantity, price, now)),
            Request::Pay { caller, order_id } => Decision::Pay(pay(locked, caller, order_id, now)),
        })
        .collect()
}

fn place(
    locked: &mut Locked,
    user_id: i64,
    quantity: Quantity,
    seen: i64,
    now: NaiveDateTime,
) -> Result<Placed, AppError> {
    let product = locked.product.as_mut().ok_or(AppError::ProductNotFound)?;
    let points = *locked.users.get(&user_id).ok_or(AppError::UserNotFound)?;
    product.window.check(now)?;
    let q = quantity.get();
    if q > product.available() {
        return Err(AppError::OutOfStock {
            available: product.available().max(0),
            requested: q,
        });
    }
    let held = locked.holdings.get(&user_id).copied().unwrap_or(0);
    check_limit(product.per_user_limit, held, q)?;
    check_price(seen, product.price)?;
    let total_amount = total(product.price, quantity)?;
    let points = points.hold(total_amount)?;
    product.reserved += q;
    locked.users.insert(user_id, points);
    locked.holdings.insert(user_id, held + q);
    Ok(Placed {
        user_id,
        quantity: q,
        unit_price: product.price,
        total_amount,
    })
}

fn pay(
    locked: &mut Locked,
    caller: Caller,
    order_id: i64,
    now: NaiveDateTime,
) -> Result<Paid, AppError> {
    let order = locked
        .orders
        .get_mut(&order_id)
        .filter(|o| caller.owns(o.user_id))
        .ok_or(AppError::OrderNotFound)?;
    let next = order.status.pay(order.expires_at <= now)?;
    let points = *locked
        .users
        .get(&order.user_id)
        .ok_or(AppError::UserNotFound)?;
    let after = points.pay(order.total_amount)?;
    let product = locked.product.as_mut().ok_or(AppError::ProductNotFound)?;
    let q = order.quantity;
    if product.stock < q || product.reserved < q {
        return Err(AppError::OutOfStock {
            available: product.available().max(0),
            requested: q,
        });
    }
    product.stock -= q;
    product.reserved -= q;
    product.sold += q;
    locked.users.insert(order.user_id, after);
    order.status = next;
    order.paid_at = Some(now);
    Ok(Paid {
        order_id,
        user_id: order.user_id,
        quantity: q,
        amount: order.total_amount,
        balance_after: after.balance,
    })
}

/// The rows an order of several products locks: its user's points, and per product (by
/// id) the row and the units the user holds of it (read only under a `per_user_limit`).
#[derive(Clone, Debug, Default)]
pub struct LockedLines {
    /// `None`: no such user.
    pub points: Option<Points>,
    pub products: HashMap<i64, ProductRow>,
    pub holdings: HashMap<i64, i64>,
}

/// The rank of a line's refusal in SPEC's precedence: sale window, stock, per-user limit,
/// price, points.
fn precedence(e: &AppError) -> u8 {
    match e {
        AppError::SaleNotStarted { .. } | AppError::SaleEnded { .. } => 0,
        AppError::OutOfStock { .. } | AppError::OutOfStockForNow { .. } => 1,
        AppError::PurchaseLimitReached { .. } => 2,
        AppError::PriceMismatch { .. } => 3,
        _ => 4,
    }
}

/// The refusal of an order of several lines (SPEC L2): the failing lines (product, the
/// first rule each breaks), the answer named by the first rule in SPEC's order among them
/// (ties: the lowest product id). `None` when no line failed.
pub fn refuse_lines(failing: Vec<(i64, AppError)>) -> Option<AppError> {
    let first = failing
        .iter()
        .enumerate()
        .min_by_key(|(i, (product_id, e))| (precedence(e), *product_id, *i))
        .map(|(_, (_, e))| e.duplicate())?;
    Some(AppError::Lines {
        first: Box::new(first),
        lines: failing,
    })
}

/// An order of several lines, all or nothing (SPEC L2, L3): every line is judged by the
/// window, stock, per-user limit and price rules exactly as a one-line order is; if any
/// fails, nothing changes and the refusal lists every failing line. Then the points: the
/// order's total must be available (F1). On success `locked` holds the reserved units and
/// the user's hold, and the rows to write come back in product order.
pub fn place_lines(
    locked: &mut LockedLines,
    user_id: i64,
    lines: &[LineAsk],
    now: NaiveDateTime,
) -> Result<Vec<Placed>, AppError> {
    let points = locked.points.ok_or(AppError::UserNotFound)?;
    let mut failing = Vec::new();
    let mut placed = Vec::with_capacity(lines.len());
    for line in lines {
        let product = locked
            .products
            .get(&line.product_id)
            .ok_or(AppError::ProductNotFound)?;
        let held = locked.holdings.get(&line.product_id).copied().unwrap_or(0);
        match judge_line(product, held, line, now) {
            Ok(p) => placed.push(Placed { user_id, ..p }),
            Err(e) => failing.push((line.product_id, e)),
        }
    }
    if let Some(refusal) = refuse_lines(failing) {
        return Err(refusal);
    }
    let total_amount = placed
        .iter()
        .try_fold(0i64, |sum, p| sum.checked_add(p.total_amount))
        .ok_or_else(|| AppError::Validation("order total is out of range".into()))?;
    let after = points.hold(total_amount).map_err(|e| AppError::Lines {
        first: Box::new(e),
        lines: Vec::new(),
    })?;
    for (line, p) in lines.iter().zip(&placed) {
        if let Some(product) = locked.products.get_mut(&line.product_id) {
            product.reserved += p.quantity;
        }
        *locked.holdings.entry(line.product_id).or_default() += p.quantity;
    }
    locked.points = Some(after);
    Ok(placed)
}

/// One line against its product: the first rule it breaks, or its row.
fn judge_line(
    product: &ProductRow,
    held: i64,
    line: &LineAsk,
    now: NaiveDateTime,
) -> Result<Placed, AppError> {
    product.window.check(now)?;
    let q = line.quantity.get();
    if q > product.available() {
        return Err(AppError::OutOfStock {
            available: product.available().max(0),
            requested: q,
        });
    }
    check_limit(product.per_user_limit, held, q)?;
    check_price(line.price, product.price)?;
    Ok(Placed {
        user_id: 0,
        quantity: q,
        unit_price: product.price,
        total_amount: total(product.price, line.quantity)?,
    })
}

/// The payment of an order of several lines (its own row first, then its further lines),
/// all or nothing: the order must be PENDING and unexpired by `now`, the user's balance
/// must cover the total, every line's product must still have its reserved units. On
/// success `locked` holds the new figures, every row is PAID, and the payment comes back.
pub fn pay_lines(
    locked: &mut LockedLines,
    caller: Caller,
    rows: &mut [Order],
    now: NaiveDateTime,
) -> Result<Paid, AppError> {
    let order = rows
        .first()
        .filter(|o| caller.owns(o.user_id))
        .ok_or(AppError::OrderNotFound)?;
    let next = order.status.pay(order.expires_at <= now)?;
    let (order_id, user_id) = (order.id, order.user_id);
    let amount = rows
        .iter()
        .try_fold(0i64, |sum, o| sum.checked_add(o.total_amount))
        .ok_or_else(|| anyhow::anyhow!("an order total out of range"))?;
    let points = locked.points.ok_or(AppError::UserNotFound)?;
    let after = points.pay(amount)?;
    for row in rows.iter() {
        let product = locked
            .products
            .get(&row.product_id)
            .ok_or(AppError::ProductNotFound)?;
        if product.stock < row.quantity || product.reserved < row.quantity {
            return Err(AppError::OutOfStock {
                available: product.available().max(0),
                requested: row.quantity,
            });
        }
    }
    for row in rows.iter_mut() {
        if let Some(product) = locked.products.get_mut(&row.product_id) {
            product.stock -= row.quantity;
            product.reserved -= row.quantity;
            product.sold += row.quantity;
        }
        row.status = next;
        row.paid_at = Some(now);
    }
    locked.points = Some(after);
    Ok(Paid {
        order_id,
        user_id,
        quantity: rows.iter().map(|o| o.quantity).sum(),
        amount,
        balance_after: after.balance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::domain::OrderStatus;

    fn now() -> NaiveDateTime {
        chrono::DateTime::from_timestamp(2_000_000_000, 0)
            .unwrap()
            .naive_utc()
    }

    fn order(id: i64, user_id: i64, quantity: i64, total_amount: i64) -> Order {
        Order {
            id,
            user_id,
            product_id: 7,
            quantity,
            unit_price: total_amount / quantity,
            total_amount,
            status: OrderStatus::Pending,
            created_at: now(),
            expires_at: now() + chrono::Duration::minutes(10),
            paid_at: None,
            hold: format!("h{id}"),
            parent_id: None,
            line_count: 1,
        }
    }

    /// The rows locked: each user's `held` is what their PENDING orders among `orders`
    /// hold.
    fn locked(stock: i64, reserved: i64, users: &[(i64, i64)], orders: Vec<Order>) -> Locked {
        let held = |user: i64| {
            orders
                .iter()
                .filter(|o| o.user_id == user && o.status == OrderStatus::Pending)
                .map(|o| o.total_amount)
                .sum()
        };
        Locked {
            product: Some(ProductRow {
                price: 100,
                stock,
                reserved,
                sold: 0,
                per_user_limit: None,
                window: SaleWindow::default(),
            }),
            users: users
                .iter()
                .map(|&(id, balance)| {
                    (
                        id,
                        Points {
                            balance,
                            held: held(id),
                        },
                    )
                })
                .collect(),
            holdings: HashMap::new(),
            orders: orders.into_iter().map(|o| (o.id, o)).collect(),
        }
    }

    fn pay(user: i64, order_id: i64) -> Request {
        Request::Pay {
            caller: Caller::User(user),
            order_id,
        }
    }

    fn place(user_id: i64, quantity: i64, price: i64) -> Request {
        Request::Place {
            user_id,
            quantity: Quantity::parse(quantity).unwrap(),
            price,
        }
    }

    fn code(d: &Decision) -> &'static str {
        match d {
            Decision::Place(Err(e)) | Decision::Pay(Err(e)) => e.code().code,
            Decision::Place(Ok(_)) | Decision::Pay(Ok(_)) => "OK",
            Decision::Answered => "ANSWERED",
        }
    }

    #[test]
    fn two_payments_of_one_user_see_each_others_deductions() {
        let mut l = locked(
            10,
            3,
            &[(1, 250)],
            vec![
                order(1, 1, 1, 100),
                order(2, 1, 1, 100),
                order(3, 1, 1, 100),
            ],
        );
        let d = decide(&mut l, &[pay(1, 1), pay(1, 2), pay(1, 3)], now());
        assert_eq!(
            d.iter().map(code).collect::<Vec<_>>(),
            ["OK", "OK", "INSUFFICIENT_POINTS"]
        );
        assert_eq!(l.users[&1].balance, 50);
        let p = l.product.unwrap();
        assert_eq!((p.stock, p.reserved, p.sold), (8, 1, 2));
        assert_eq!(l.orders[&3].status, OrderStatus::Pending);
        match &d[2] {
            Decision::Pay(Err(AppError::InsufficientPoints {
                balance,
                required,
                available,
            })) => {
                assert_eq!((*balance, *required, *available), (50, 100, 50))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_request_fails_alone() {
        let mut expired = order(2, 2, 1, 100);
        expired.expires_at = now();
        let mut paid = order(3, 3, 1, 100);
        paid.status = OrderStatus::Paid;
        let mut l = locked(
            10,
            3,
            &[(1, 1000), (2, 1000), (3, 1000), (4, 1000)],
            vec![order(1, 1, 1, 100), expired, paid],
        );
        let requests = [
            pay(1, 1),
            pay(2, 2),
            pay(3, 3),
            place(4, 1, 90),
            place(99, 1, 100),
            pay(4, 1), // user 4 paying user 1's order: as if missing
            pay(1, 1), // paid a moment ago in this very batch
            Request::Answered,
            place(4, 2, 100),
        ];
        let d = decide(&mut l, &requests, now());
        assert_eq!(
            d.iter().map(code).collect::<Vec<_>>(),
            [
                "OK",
                "ORDER_NOT_PAYABLE",
                "ORDER_NOT_PAYABLE",
                "PRICE_MISMATCH",
                "USER_NOT_FOUND",
                "ORDER_NOT_FOUND",
                "ORDER_NOT_PAYABLE",
                "ANSWERED",
                "OK"
            ]
        );
        let p = l.product.unwrap();
        assert_eq!((p.stock, p.reserved, p.sold), (9, 4, 1));
    }

    #[test]
    fn another_users_order_reads_as_missing() {
        let mut l = locked(10, 1, &[(1, 1000)], vec![order(1, 1, 1, 100)]);
        let d = decide(&mut l, &[pay(2, 1), pay(1, 404)], now());
        assert_eq!(
            d.iter().map(code).collect::<Vec<_>>(),
            ["ORDER_NOT_FOUND", "ORDER_NOT_FOUND"]
        );
    }

    #[test]
    fn placements_take_units_in_arrival_order_and_never_more_than_there_are() {
        let mut l = locked(5, 2, &[(1, 1000), (2, 1000)], vec![]);
        let d = decide(
            &mut l,
            &[place(1, 2, 100), place(2, 2, 100), place(1, 1, 100)],
            now(),
        );
        assert_eq!(
            d.iter().map(code).collect::<Vec<_>>(),
            ["OK", "OUT_OF_STOCK", "OK"]
        );
        match &d[1] {
            Decision::Place(Err(AppError::OutOfStock {
                available,
                requested,
            })) => {
                assert_eq!((*available, *requested), (1, 2))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(l.product.unwrap().reserved, 5);
    }

    #[test]
    fn a_payment_needs_the_units_it_reserved() {
        let mut l = locked(0, 0, &[(1, 1000)], vec![order(1, 1, 2, 200)]);
        let d = decide(&mut l, &[pay(1, 1)], now());
        assert_eq!(code(&d[0]), "OUT_OF_STOCK");
        assert_eq!(l.users[&1].balance, 1000);
        assert_eq!(l.orders[&1].status, OrderStatus::Pending);
    }

    #[test]
    fn a_missing_product_refuses_placements() {
        let mut l = Locked {
            users: [(
                1,
                Points {
                    balance: 0,
                    held: 0,
                },
            )]
            .into(),
            ..Locked::default()
        };
        let d = decide(&mut l, &[place(1, 1, 100)], now());
        assert_eq!(code(&d[0]), "PRODUCT_NOT_FOUND");
    }

    #[test]
    fn placements_hold_points_and_one_users_orders_count_together() {
        // Points for three units of 100: two, then two more (refused: 100 available),
        // then one.
        let mut l = locked(10, 0, &[(1, 300)], vec![]);
        let d = decide(
            &mut l,
            &[place(1, 2, 100), place(1, 2, 100), place(1, 1, 100)],
            now(),
        );
        assert_eq!(
            d.iter().map(code).collect::<Vec<_>>(),
            ["OK", "INSUFFICIENT_POINTS", "OK"]
        );
        match &d[1] {
            Decision::Place(Err(AppError::InsufficientPoints {
                balance,
                required,
                available,
            })) => assert_eq!((*balance, *required, *available), (300, 200, 100)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            l.users[&1],
            Points {
                balance: 300,
                held: 300
            }
        );
        assert_eq!(l.product.unwrap().reserved, 3);
    }

    #[test]
    fn a_user_with_no_points_reserves_nothing() {
        let mut l = locked(500, 0, &[(1, 0)], vec![]);
        let d = decide(&mut l, &[place(1, 500, 100)], now());
        assert_eq!(code(&d[0]), "INSUFFICIENT_POINTS");
        assert_eq!(l.product.unwrap().reserved, 0);
        assert_eq!(l.users[&1].held, 0);
    }

    #[test]
    fn a_placed_order_is_payable_as_far_as_points_go() {
        let mut l = locked(10, 0, &[(1, 250)], vec![]);
        let placed = decide(&mut l, &[place(1, 2, 100)], now());
        let Decision::Place(Ok(p)) = placed[0] else {
            panic!("{placed:?}")
        };
        let mut o = order(1, 1, p.quantity, p.total_amount);
        o.id = 9;
        l.orders.insert(9, o);
        // Another order of the same user cannot take the held points; the payment can.
        let d = decide(&mut l, &[place(1, 1, 100), pay(1, 9)], now());
        assert_eq!(
            d.iter().map(code).collect::<Vec<_>>(),
            ["INSUFFICIENT_POINTS", "OK"]
        );
        assert_eq!(
            l.users[&1],
            Points {
                balance: 50,
                held: 0
            }
        );
    }

    #[test]
    fn the_limit_counts_held_units_and_the_batchs_own() {
        let mut l = locked(10, 0, &[(1, 10_000), (2, 10_000)], vec![]);
        if let Some(p) = l.product.as_mut() {
            p.per_user_limit = Some(2);
        }
        l.holdings.insert(1, 1);
        let d = decide(
            &mut l,
            &[
                place(1, 1, 100),
                place(1, 1, 100),
                place(2, 2, 100),
                place(2, 1, 100),
            ],
            now(),
        );
        assert_eq!(
            d.iter().map(code).collect::<Vec<_>>(),
            [
                "OK",
                "PURCHASE_LIMIT_REACHED",
                "OK",
                "PURCHASE_LIMIT_REACHED"
            ]
        );
        match &d[1] {
            Decision::Place(Err(AppError::PurchaseLimitReached { limit, held })) => {
                assert_eq!((*limit, *held), (2, 2))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((l.holdings[&1], l.holdings[&2]), (2, 2));
        assert_eq!(l.product.unwrap().reserved, 3);
    }

    #[test]
    fn the_first_broken_rule_names_the_refusal() {
        // Every rule broken at once, then mended one at a time in SPEC's order: sale
        // window, stock, per-user limit, price, points.
        let mut l = locked(1, 0, &[(1, 50)], vec![]);
        l.holdings.insert(1, 5);
        let later = now() + chrono::Duration::seconds(30);
        let set = |l: &mut Locked, f: &dyn Fn(&mut ProductRow)| {
            if let Some(p) = l.product.as_mut() {
                f(p)
            }
        };
        set(&mut l, &|p| {
            p.per_user_limit = Some(5);
            p.window = SaleWindow::new(Some(later), None).unwrap();
        });
        let mut seen = Vec::new();
        for mend in 0..5 {
            match mend {
                1 => set(&mut l, &|p| p.window = SaleWindow::default()),
                2 => set(&mut l, &|p| p.stock = 10),
                3 => set(&mut l, &|p| p.per_user_limit = None),
                4 => set(&mut l, &|p| p.price = 90),
                _ => {}
            }
            let d = decide(&mut l.clone(), &[place(1, 2, 90)], now());
            seen.push(code(&d[0]));
        }
        assert_eq!(
            seen,
            [
                "SALE_NOT_STARTED",
                "OUT_OF_STOCK",
                "PURCHASE_LIMIT_REACHED",
                "PRICE_MISMATCH",
                "INSUFFICIENT_POINTS"
            ]
        );
        let mut ended = l.clone();
        set(&mut ended, &|p| {
            p.window = SaleWindow::new(None, Some(now())).unwrap()
        });
        let d = decide(&mut ended, &[place(1, 2, 90)], now());
        assert_eq!(code(&d[0]), "SALE_ENDED");
    }
}

/// Properties of [`decide`] over any batch: generated locked rows (consistent, as MySQL
/// holds them) and any mix of placements and payments, valid or not.
#[cfg(test)]
mod properties {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::{orders::domain::OrderStatus, points::domain::MAX_BALANCE};

    const PRICE: i64 = 100;

    fn now() -> NaiveDateTime {
        chrono::DateTime::from_timestamp(2_000_000_000, 0)
            .unwrap()
            .naive_utc()
    }

    /// An order of the batch's product as generated: (user 1–4, quantity 1–3, status:
    /// 0 PENDING, 1 PENDING past its expiry, 2 PAID, 3 CANCELLED).
    fn an_order() -> impl Strategy<Value = (i64, i64, u8)> {
        (1i64..=4, 1i64..=3, 0u8..4)
    }

    fn a_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            // Users 1–4 exist, 5 does not; the price seen is right or stale.
            (
                1i64..=5,
                1i64..=4,
                prop_oneof![Just(PRICE), Just(PRICE + 1)]
            )
                .prop_map(|(user_id, quantity, price)| Request::Place {
                    user_id,
                    quantity: Quantity::parse(quantity).unwrap(),
                    price,
                }),
            // Orders 1–8 (some missing); the caller the owner or not.
            (1i64..=4, 1i64..=9).prop_map(|(user, order_id)| Request::Pay {
                caller: Caller::User(user),
                order_id,
            }),
            Just(Request::Answered),
        ]
    }

    /// Consistent locked rows: `reserved` is what the PENDING orders hold, each user holds
    /// their PENDING orders' totals and has at least that much, the holdings count
    /// PENDING and PAID units.
    fn rows() -> impl Strategy<Value = Locked> {
        (
            prop::collection::vec(an_order(), 0..8),
            0i64..8,
            prop::collection::vec(0i64..600, 4),
            prop::option::of(1i64..=6),
            0u8..6,
        )
            .prop_map(|(orders, free, spare, limit, window)| {
                let later = now() + chrono::Duration::minutes(10);
                let orders: HashMap<i64, Order> = orders
                    .into_iter()
                    .enumerate()
                    .map(|(i, (user_id, quantity, status))| {
                        let id = i as i64 + 1;
                        let order = Order {
                            id,
                            user_id,
                            product_id: 7,
                            quantity,
                            unit_price: PRICE,
                            total_amount: quantity * PRICE,
                            status: match status {
                                0 | 1 => OrderStatus::Pending,
                                2 => OrderStatus::Paid,
                                _ => OrderStatus::Cancelled,
                            },
                            created_at: now(),
                            expires_at: if status == 1 { now() } else { later },
                            paid_at: None,
                            hold: format!("h{id}"),
                            parent_id: None,
                            line_count: 1,
                        };
                        (id, order)
                    })
                    .collect();
                let pending = |user: Option<i64>| -> (i64, i64) {
                    orders
                        .values()
                        .filter(|o| o.status == OrderStatus::Pending)
                        .filter(|o| user.is_none_or(|u| o.user_id == u))
                        .fold((0, 0), |(q, t), o| (q + o.quantity, t + o.total_amount))
                };
                let reserved = pending(None).0;
                let users = (1..=4)
                    .map(|u| {
                        let held = pending(Some(u)).1;
                        let balance = (held + spare[(u - 1) as usize]).min(MAX_BALANCE);
                        (u, Points { balance, held })
                    })
                    .collect();
                let holdings = (1..=4)
                    .map(|u| {
                        let units = orders
                            .values()
                            .filter(|o| o.user_id == u)
                            .filter(|o| {
                                matches!(o.status, OrderStatus::Pending | OrderStatus::Paid)
                            })
                            .map(|o| o.quantity)
                            .sum();
                        (u, units)
                    })
                    .collect();
                let hour = chrono::Duration::hours(1);
                let window = match window {
                    0 => SaleWindow::new(Some(now() + hour), None).unwrap(),
                    1 => SaleWindow::new(None, Some(now() - hour)).unwrap(),
                    _ => SaleWindow::default(),
                };
                Locked {
                    product: Some(ProductRow {
                        price: PRICE,
                        stock: reserved + free,
                        reserved,
                        sold: 3,
                        per_user_limit: limit,
                        window,
                    }),
                    users,
                    holdings,
                    orders,
                }
            })
    }

    type Snapshot = (
        Option<ProductRow>,
        BTreeMap<i64, Points>,
        BTreeMap<i64, i64>,
        BTreeMap<i64, (OrderStatus, Option<NaiveDateTime>)>,
    );

    fn snapshot(l: &Locked) -> Snapshot {
        (
            l.product,
            l.users.iter().map(|(k, v)| (*k, *v)).collect(),
            l.holdings.iter().map(|(k, v)| (*k, *v)).collect(),
            l.orders
                .iter()
                .map(|(k, o)| (*k, (o.status, o.paid_at)))
                .collect(),
        )
    }

    fn outcome(d: &Decision) -> String {
        match d {
            Decision::Answered => "answered".into(),
            Decision::Place(Ok(p)) => format!("{p:?}"),
            Decision::Pay(Ok(p)) => format!("{p:?}"),
            Decision::Place(Err(e)) | Decision::Pay(Err(e)) => e.code().code.into(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// The batch decides each request exactly as if it ran alone after the ones before
        /// it, and a refused request changes nothing at all.
        #[test]
        fn a_batch_decides_each_request_as_if_alone_in_arrival_order(
            start in rows(),
            requests in prop::collection::vec(a_request(), 0..16),
        ) {
            let mut batch = start.clone();
            let together: Vec<String> = decide(&mut batch, &requests, now()).iter().map(outcome).collect();
            let mut one_by_one = start;
            let mut alone = Vec::new();
            for request in &requests {
                let before = snapshot(&one_by_one);
                let decided = decide(&mut one_by_one, std::slice::from_ref(request), now());
                if matches!(decided[0], Decision::Place(Err(_)) | Decision::Pay(Err(_)) | Decision::Answered) {
                    prop_assert_eq!(snapshot(&one_by_one), before, "{:?} refused yet changed the rows", request);
                }
                alone.push(outcome(&decided[0]));
            }
            prop_assert_eq!(together, alone);
            prop_assert_eq!(snapshot(&batch), snapshot(&one_by_one));
        }

        /// Whatever the batch: stock is never oversold or negative, units are conserved,
        /// no balance leaves 0..=MAX_BALANCE, nobody holds more than they have, the points
        /// ledger sums (each balance falls by exactly its payments, each hold moves by
        /// exactly its placements and payments), and no accepted placement passes the limit.
        #[test]
        fn no_batch_breaks_stock_points_or_the_limit(
            start in rows(),
            requests in prop::collection::vec(a_request(), 0..16),
        ) {
            let mut end = start.clone();
            let decisions = decide(&mut end, &requests, now());
            let (p0, p1) = (start.product.unwrap(), end.product.unwrap());
            prop_assert!(0 <= p1.reserved && p1.reserved <= p1.stock, "{:?}", p1);
            prop_assert_eq!(p1.stock + p1.sold, p0.stock + p0.sold);
            let placed: Vec<&Placed> = decisions.iter().filter_map(|d| match d {
                Decision::Place(Ok(p)) => Some(p),
                _ => None,
            }).collect();
            let paid: Vec<&Paid> = decisions.iter().filter_map(|d| match d {
                Decision::Pay(Ok(p)) => Some(p),
                _ => None,
            }).collect();
            let q_placed: i64 = placed.iter().map(|p| p.quantity).sum();
            let q_paid: i64 = paid.iter().map(|p| p.quantity).sum();
            prop_assert_eq!(p1.sold, p0.sold + q_paid);
            prop_assert_eq!(p1.reserved, p0.reserved + q_placed - q_paid);
            for (user, after) in &end.users {
                let before = start.users[user];
                prop_assert!(0 <= after.held && after.held <= after.balance && after.balance <= MAX_BALANCE, "{:?}", after);
                let spent: i64 = paid.iter().filter(|p| p.user_id == *user).map(|p| p.amount).sum();
                let held: i64 = placed.iter().filter(|p| p.user_id == *user).map(|p| p.total_amount).sum();
                prop_assert_eq!(after.balance, before.balance - spent);
                prop_assert_eq!(after.held, before.held + held - spent);
                for p in paid.iter().filter(|p| p.user_id == *user) {
                    prop_assert!(p.balance_after >= after.balance);
                }
                // Units held: what the rows said plus what this batch placed, counted here
                // apart from the rules' own bookkeeping.
                let units = start.holdings.get(user).copied().unwrap_or(0)
                    + placed.iter().filter(|p| p.user_id == *user).map(|p| p.quantity).sum::<i64>();
                prop_assert_eq!(end.holdings.get(user).copied().unwrap_or(0), units);
                if let (Some(limit), true) = (p1.per_user_limit, placed.iter().any(|p| p.user_id == *user)) {
                    prop_assert!(units <= limit, "user {} holds {} past {}", user, units, limit);
                }
            }
            for p in &paid {
                prop_assert_eq!(end.orders[&p.order_id].status, OrderStatus::Paid);
            }
        }
    }

    /// Rows of three products (ids 1–3) an order of several lines locks, and its user.
    fn lines_rows() -> impl Strategy<Value = LockedLines> {
        (
            prop::collection::vec(
                (
                    0i64..6,
                    0i64..4,
                    prop::option::of(1i64..=4),
                    0u8..5,
                    0i64..4,
                ),
                3,
            ),
            0i64..1_500,
            0i64..500,
        )
            .prop_map(|(products, balance, held)| {
                let hour = chrono::Duration::hours(1);
                let mut rows = LockedLines {
                    points: Some(Points {
                        balance: balance + held,
                        held,
                    }),
                    ..LockedLines::default()
                };
                for (i, (free, reserved, limit, window, holding)) in
                    products.into_iter().enumerate()
                {
                    let id = i as i64 + 1;
                    rows.products.insert(
                        id,
                        ProductRow {
                            price: PRICE,
                            stock: free + reserved,
                            reserved,
                            sold: 0,
                            per_user_limit: limit,
                            window: match window {
                                0 => SaleWindow::new(Some(now() + hour), None).unwrap(),
                                1 => SaleWindow::new(None, Some(now() - hour)).unwrap(),
                                _ => SaleWindow::default(),
                            },
                        },
                    );
                    rows.holdings.insert(id, holding.min(reserved));
                }
                rows
            })
    }

    fn some_lines() -> impl Strategy<Value = Vec<LineAsk>> {
        prop::collection::btree_map(
            1i64..=3,
            (
                1i64..=4,
                prop_oneof![4 => Just(PRICE), 1 => Just(PRICE + 1)],
            ),
            1..=3,
        )
        .prop_map(|lines| {
            lines
                .into_iter()
                .map(|(product_id, (quantity, price))| LineAsk {
                    product_id,
                    quantity: Quantity::parse(quantity).unwrap(),
                    price,
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// An order of several lines is all or nothing (SPEC L2, L3): it is placed exactly
        /// when every line alone would be (window, stock, limit, price) and the total's
        /// points are available; placed, each product's reservations rise by its line
        /// alone and never pass its stock, each limit holds, the hold grows by the total;
        /// refused, nothing changed and every failing line is listed.
        #[test]
        fn an_order_of_several_lines_is_all_or_nothing(
            start in lines_rows(),
            lines in some_lines(),
        ) {
            let mut end = start.clone();
            let decided = place_lines(&mut end, 1, &lines, now());
            let alone: Vec<bool> = lines
                .iter()
                .map(|l| {
                    let p = start.products[&l.product_id];
                    let held = start.holdings.get(&l.product_id).copied().unwrap_or(0);
                    judge_line(&p, held, l, now()).is_ok()
                })
                .collect();
            let total: i64 = lines.iter().map(|l| l.quantity.get() * PRICE).sum();
            let points = start.points.unwrap();
            let payable = total <= points.available();
            match decided {
                Ok(placed) => {
                    prop_assert!(alone.iter().all(|ok| *ok) && payable);
                    prop_assert_eq!(placed.len(), lines.len());
                    for l in &lines {
                        let (p0, p1) = (start.products[&l.product_id], end.products[&l.product_id]);
                        prop_assert_eq!(p1.reserved, p0.reserved + l.quantity.get());
                        prop_assert!(p1.reserved <= p1.stock);
                        let units = end.holdings[&l.product_id];
                        if let Some(limit) = p1.per_user_limit {
                            prop_assert!(units <= limit);
                        }
                    }
                    prop_assert_eq!(end.points.unwrap().held, points.held + total);
                }
                Err(AppError::Lines { first, lines: failing }) => {
                    prop_assert!(!(alone.iter().all(|ok| *ok) && payable));
                    prop_assert_eq!(end.products, start.products);
                    prop_assert_eq!(end.points, start.points);
                    prop_assert_eq!(end.holdings, start.holdings);
                    let expected: Vec<i64> = lines
                        .iter()
                        .zip(&alone)
                        .filter(|(_, ok)| !**ok)
                        .map(|(l, _)| l.product_id)
                        .collect();
                    let listed: Vec<i64> = failing.iter().map(|(p, _)| *p).collect();
                    prop_assert_eq!(&listed, &expected);
                    if expected.is_empty() {
                        prop_assert_eq!(first.code().code, "INSUFFICIENT_POINTS");
                    } else {
                        let rank = failing.iter().map(|(_, e)| precedence(e)).min();
                        prop_assert_eq!(Some(precedence(&first)), rank);
                    }
                }
                Err(other) => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
