//! Orders: placing one reserves its stock until it is paid, cancelled or expires
//! (SPEC O1, O2; statuses PENDING → PAID | CANCELLED | EXPIRED).

pub mod domain;
pub mod expiry;
pub mod routes;
pub mod service;

pub use routes::router;
