//! Operator routes behind `ADMIN_TOKEN`: users, products, and demo tokens.

pub mod routes;
pub mod service;

pub use routes::router;
