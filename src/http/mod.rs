//! HTTP plumbing shared by every feature: extractors that turn axum's rejections into
//! problem+json, the id type of path and body fields, and the fallbacks.

pub mod caching;
pub mod extract;
pub mod middleware;
pub mod pagination;
pub mod rate_limit;
pub mod server;

pub use extract::{nullable, AppJson, AppPath, AppQuery, Id};

use chrono::NaiveDateTime;

/// Serialises a stored UTC `DATETIME` as an RFC 3339 string (`2026-11-24T05:18:00.123Z`).
pub fn utc<S: serde::Serializer>(value: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::db::rfc3339(value))
}

/// An optional UTC time as RFC 3339 or `null`, both ways (`#[serde(with = "…")]`).
pub mod utc_opt {
    use chrono::NaiveDateTime;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<NaiveDateTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => super::utc(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDateTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                chrono::DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.naive_utc())
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}
