//! Points: balances, charges and the history that proves every change (SPEC P1–P4).

pub mod domain;
pub mod routes;
pub mod service;

pub use routes::router;
