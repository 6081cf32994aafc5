//! Payments: paying a PENDING order with points, all effects in one transaction (SPEC Y1–Y6).

pub mod routes;
pub mod service;

pub use routes::router;
