//! Orders: reading, cancelling, refunding, and the expiry of unpaid ones (SPEC O1, O2,
//! R1–R4; statuses PENDING → PAID | CANCELLED | EXPIRED, PAID → REFUNDED). Placing one is
//! the checkout's.

pub mod domain;
pub mod expiry;
pub mod routes;
pub mod service;

pub use routes::router;
