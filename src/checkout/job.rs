//! What waits in a product's batch: a placement or a payment, and its answer.

use crate::{
    auth::Caller,
    error::AppError,
    idempotency::{Claim, Stored},
    orders::domain::{Order, Quantity},
    payments::domain::PaymentView,
    stock::Hold,
};

/// What a buyer asks for: how many units of which product, at the unit price they saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewOrder {
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: Quantity,
    pub price: i64,
}

/// One request waiting for its product's next batch.
#[derive(Debug)]
pub enum Job {
    Place {
        order: NewOrder,
        /// The stock gate's reservation (or a fresh token when the gate was bypassed).
        hold: Hold,
        claim: Option<Claim>,
    },
    Pay {
        caller: Caller,
        order_id: i64,
        claim: Option<Claim>,
    },
    /// A placement refused before any batch (by the stock gate, the limit, the sale
    /// window) whose request carried a key: its refusal is kept under the key in the
    /// batch's transaction, with the others', instead of a transaction of its own.
    Refuse { refusal: AppError, claim: Claim },
}

impl Job {
    pub fn claim(&self) -> Option<&Claim> {
        match self {
            Job::Place { claim, .. } | Job::Pay { claim, .. } => claim.as_ref(),
            Job::Refuse { claim, .. } => Some(claim),
        }
    }
}

/// A job's answer.
#[derive(Debug)]
pub enum Done {
    Placed(Order),
    Paid(PaymentView),
    Replayed(Stored),
}

pub type Answer = Result<Done, AppError>;
