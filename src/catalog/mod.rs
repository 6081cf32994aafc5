//! Catalog: product listing, details and the best sellers (SPEC C1, C2).

pub mod cache;
pub mod domain;
pub mod ranking;
pub mod routes;
pub mod service;
pub mod store;

pub use routes::router;
