//! commerce-api: users hold points, browse products, see the best sellers, order (stock is
//! reserved) and pay with points — correct under heavy concurrency, MySQL as the truth.

pub mod admin;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod http;
pub mod idempotency;
pub mod openapi;
pub mod ops;
pub mod orders;
pub mod payments;
pub mod points;
pub mod redis_store;
pub mod seed;
pub mod stock;
pub mod telemetry;

pub use app::{build_app, AppState};
