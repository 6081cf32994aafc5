//! Point rules, free of I/O: what a valid charge is and what a balance may hold.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::AppError;

/// No balance may exceed this (SPEC P3).
pub const MAX_BALANCE: i64 = 1_000_000;
/// The smallest charge (SPEC P2).
pub const MIN_CHARGE: i64 = 1;

/// A charge amount: an integer of at least `MIN_CHARGE`. There is no per-charge maximum;
/// the cap applies to the balance after the charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Amount(i64);

impl Amount {
    /// Parses the JSON value of `amount`: anything but an integer ≥ 1 in 64-bit range is
    /// `INVALID_AMOUNT`.
    pub fn parse(value: &Value) -> Result<Self, AppError> {
        let amount = value.as_i64().ok_or_else(|| {
            AppError::InvalidAmount(
                "amount must be a whole number of points within 64-bit range".into(),
            )
        })?;
        if amount < MIN_CHARGE {
            return Err(AppError::InvalidAmount(format!(
                "amount must be at least {MIN_CHARGE}"
            )));
        }
        Ok(Self(amount))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A user's balance; always within `0..=MAX_BALANCE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance(i64);

impl Balance {
    pub fn new(value: i64) -> Self {
        debug_assert!((0..=MAX_BALANCE).contains(&value));
        Self(value)
    }

    pub fn get(self) -> i64 {
        self.0
    }

    /// The balance after charging `amount`, unless that passes the cap.
    pub fn charge(self, amount: Amount) -> Result<Balance, AppError> {
        self.credit(amount.get())
    }

    /// The balance after points come back (a refund of `amount`), unless that passes the
    /// cap.
    pub fn credit(self, amount: i64) -> Result<Balance, AppError> {
        match self.0.checked_add(amount) {
            Some(after) if after <= MAX_BALANCE => Ok(Balance(after)),
            _ => Err(AppError::BalanceLimitExceeded {
                balance: self.0,
                max_balance: MAX_BALANCE,
            }),
        }
    }
}

/// A user's points as a transaction has them locked: the balance, and the part of it the
/// user's PENDING orders hold (SPEC F1). What a new order may use is the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Points {
    pub balance: i64,
    /// Σ `total_amount` of the user's PENDING orders.
    pub held: i64,
}

impl Points {
    /// The points no PENDING order holds.
    pub fn available(self) -> i64 {
        self.balance - self.held
    }

    /// Holds `total` for a new order, unless the available points do not cover it.
    pub fn hold(self, total: i64) -> Result<Points, AppError> {
        if total > self.available() {
            return Err(AppError::InsufficientPoints {
                balance: self.balance,
                required: total,
                available: self.available(),
            });
        }
        Ok(Points {
            held: self.held + total,
            ..self
        })
    }

    /// Pays an order of `total` that holds it: the hold becomes the deduction, unless the
    /// balance does not cover it (Y5: only an order placed before holds existed can get
    /// there). `available` in the refusal is what this order could draw on: the balance
    /// less the holds of the user's other orders.
    pub fn pay(self, total: i64) -> Result<Points, AppError> {
        // A hold never exceeds what is held in all; orders older than holds held nothing.
        let others = (self.held - total).max(0);
        if total > self.balance {
            return Err(AppError::InsufficientPoints {
                balance: self.balance,
                required: total,
                available: self.balance - others,
            });
        }
        Ok(Points {
            balance: self.balance - total,
            held: others,
        })
    }

    /// Gives back an order's hold (cancelled or expired).
    pub fn release(self, total: i64) -> Points {
        Points {
            held: (self.held - total).max(0),
            ..self
        }
    }
}

/// The kind of a point history row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PointKind {
    Charge,
    Use,
    Refund,
}

impl PointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PointKind::Charge => "CHARGE",
            PointKind::Use => "USE",
            PointKind::Refund => "REFUND",
        }
    }
}

impl TryFrom<String> for PointKind {
    type Error = AppError;

    fn try_from(value: String) -> Result<Self, AppError> {
        Ok(match value.as_str() {
            "CHARGE" => PointKind::Charge,
            "USE" => PointKind::Use,
            "REFUND" => PointKind::Refund,
            other => {
                return Err(AppError::Internal(anyhow::anyhow!(
                    "unknown point kind {other}"
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(e: AppError) -> &'static str {
        e.code().code
    }

    #[test]
    fn amount_must_be_a_positive_integer() {
        assert_eq!(Amount::parse(&json!(1)).unwrap().get(), 1);
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!("10"),
            json!(null),
            json!(1e30),
            json!(u64::MAX),
        ] {
            assert_eq!(
                code(Amount::parse(&bad).unwrap_err()),
                "INVALID_AMOUNT",
                "{bad}"
            );
        }
    }

    #[test]
    fn there_is_no_per_charge_maximum_below_the_cap() {
        let b = Balance::new(0)
            .charge(Amount::parse(&json!(MAX_BALANCE)).unwrap())
            .unwrap();
        assert_eq!(b.get(), MAX_BALANCE);
    }

    #[test]
    fn a_charge_past_the_cap_is_refused() {
        let one = Amount::parse(&json!(1)).unwrap();
        assert_eq!(
            code(Balance::new(MAX_BALANCE).charge(one).unwrap_err()),
            "BALANCE_LIMIT_EXCEEDED"
        );
        let huge = Amount::parse(&json!(i64::MAX)).unwrap();
        assert_eq!(
            code(Balance::new(5).charge(huge).unwrap_err()),
            "BALANCE_LIMIT_EXCEEDED"
        );
    }

    #[test]
    fn a_refund_past_the_cap_is_refused_and_names_the_balance() {
        assert_eq!(Balance::new(10).credit(5).unwrap().get(), 15);
        let err = Balance::new(999_990).credit(11).unwrap_err();
        assert!(matches!(
            err,
            AppError::BalanceLimitExceeded {
                balance: 999_990,
                max_balance: MAX_BALANCE
            }
        ));
    }

    #[test]
    fn kinds_read_back_from_their_column() {
        for k in [PointKind::Charge, PointKind::Use, PointKind::Refund] {
            assert_eq!(PointKind::try_from(k.as_str().to_string()).unwrap(), k);
        }
        assert!(PointKind::try_from("GIFT".to_string()).is_err());
    }

    #[test]
    fn an_order_holds_what_it_costs_and_only_what_is_available() {
        let p = Points {
            balance: 300,
            held: 0,
        };
        let p = p.hold(200).unwrap();
        assert_eq!((p.balance, p.held, p.available()), (300, 200, 100));
        match p.hold(200).unwrap_err() {
            AppError::InsufficientPoints {
                balance,
                required,
                available,
            } => assert_eq!((balance, required, available), (300, 200, 100)),
            other => panic!("{other:?}"),
        }
        let p = p.release(200);
        assert_eq!(p.available(), 300);
    }

    #[test]
    fn paying_turns_the_hold_into_the_deduction() {
        let p = Points {
            balance: 300,
            held: 250,
        };
        let paid = p.pay(200).unwrap();
        assert_eq!((paid.balance, paid.held, paid.available()), (100, 50, 50));
        assert_eq!(p.available(), paid.available());
    }

    #[test]
    fn paying_needs_enough_points() {
        let p = Points {
            balance: 99,
            held: 0,
        };
        assert_eq!(code(p.pay(100).unwrap_err()), "INSUFFICIENT_POINTS");
        assert_eq!(
            Points {
                balance: 100,
                held: 100
            }
            .pay(100)
            .unwrap(),
            Points {
                balance: 0,
                held: 0
            }
        );
    }
}

/// The point ledger over any sequence of charges, refunds (credits), holds, payments and
/// releases: the balance always equals the start plus what was credited minus what was
/// paid, and nothing leaves `0 ≤ held ≤ balance ≤ MAX_BALANCE`.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Credit(i64),
        Hold(i64),
        Pay(i64),
        Release(i64),
    }

    fn an_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1i64..=400_000).prop_map(Op::Credit),
            (1i64..=300_000).prop_map(Op::Hold),
            (1i64..=300_000).prop_map(Op::Pay),
            (1i64..=300_000).prop_map(Op::Release),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn the_ledger_always_sums_and_stays_in_bounds(
            start in 0i64..=MAX_BALANCE,
            ops in prop::collection::vec(an_op(), 0..40),
        ) {
            let mut points = Points { balance: start, held: 0 };
            // What the ledger (point_history) would record: credits and uses.
            let (mut credited, mut used) = (0i64, 0i64);
            // What the user's PENDING orders hold (each hold one order, paid or released whole).
            let mut holds: Vec<i64> = Vec::new();
            for op in ops {
                match op {
                    Op::Credit(amount) => {
                        if let Ok(after) = Balance::new(points.balance).credit(amount) {
                            points.balance = after.get();
                            credited += amount;
                        } else {
                            prop_assert!(points.balance + amount > MAX_BALANCE);
                        }
                    }
                    Op::Hold(total) => {
                        if let Ok(after) = points.hold(total) {
                            points = after;
                            holds.push(total);
                        } else {
                            prop_assert!(total > points.available());
                        }
                    }
                    Op::Pay(pick) | Op::Release(pick) if !holds.is_empty() => {
                        let total = holds.remove(pick as usize % holds.len());
                        points = match op {
                            Op::Pay(_) => {
                                let paid = points.pay(total);
                                prop_assert!(paid.is_ok(), "a held order could not be paid: {:?}", points);
                                used += total;
                                paid.unwrap()
                            }
                            _ => points.release(total),
                        };
                    }
                    Op::Pay(_) | Op::Release(_) => {}
                }
                prop_assert_eq!(points.balance, start + credited - used);
                prop_assert_eq!(points.held, holds.iter().sum::<i64>());
                prop_assert!(0 <= points.held && points.held <= points.balance && points.balance <= MAX_BALANCE, "{:?}", points);
            }
        }
    }
}
