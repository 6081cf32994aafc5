//! commerce-api: users hold points, browse products, see the best sellers, order (stock is
//! reserved) and pay with points — correct under heavy concurrency, MySQL as the truth.
//!
//! Layers, imports flowing one way (down):
//! - `app`: the composition root (state, router, background work);
//! - features, one folder each: `points`, `catalog`, `checkout` (placing and paying, grouped
//!   per product), `orders`, `payments`, `admin`, `events`, `ops`; inside each, `domain`
//!   (rules and shapes, no I/O), `service` (use cases with their SQL), `routes`;
//! - infrastructure, importing no feature: `db`, `redis_store`, `stock` (the Redis stock
//!   gate), `idempotency`, `auth`, `http`, `error`, `config`, `telemetry`.

pub mod admin;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod checkout;
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
