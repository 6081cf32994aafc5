//! HTTP plumbing shared by every feature: extractors that turn axum's rejections into
//! problem+json, the id type of path and body fields, and the fallbacks.

pub mod caching;
pub mod extract;
pub mod middleware;
pub mod pagination;
pub mod rate_limit;

pub use extract::{AppJson, AppPath, AppQuery, Id};

use chrono::{NaiveDateTime, SecondsFormat};

/// Serialises a stored UTC `DATETIME` as an RFC 3339 string (`2026-11-24T05:18:00.123Z`).
pub fn utc<S: serde::Serializer>(value: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&value.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true))
}
