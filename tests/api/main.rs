//! Integration tests: the real app on a random port, against real MariaDB and Redis.
//! One binary for all of them keeps build times down.

mod attack;
mod auth;
mod bad_input;
mod catalog;
mod checkout;
mod concurrency;
mod contract;
mod edges;
mod fairness;
mod faults;
mod haproxy;
mod helpers;
mod idempotency;
mod kafka;
mod lines;
mod mysql_faults;
mod mysql_replica;
mod openapi;
mod ops;
mod orders;
mod payments;
mod points;
mod proxy;
mod redis_cluster;
mod redis_paths;
mod refunds;
mod scaling;
