//! Payments: reading one and listing a user's (SPEC Y1–Y6 are decided by the checkout,
//! which writes them; a refund marks one REFUNDED).

pub mod domain;
pub mod routes;
pub mod service;

pub use routes::router;
