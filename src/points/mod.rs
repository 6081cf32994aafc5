//! Points: balances, charges and the history that proves every change (SPEC P1–P4).

pub mod domain;
mod routes;
pub mod service;

pub use routes::router;
