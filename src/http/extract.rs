//! Extractors whose rejections are `AppError`s, so every bad input gets a problem+json 4xx.

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection, QueryRejection},
        FromRequest, FromRequestParts, Request,
    },
    http::{request::Parts, StatusCode},
};
use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize};

use crate::error::AppError;

/// Largest request body accepted (SPEC §4 `PAYLOAD_TOO_LARGE`).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A positive 64-bit id (SPEC §2); zero, negatives and non-numbers are refused while parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Id(i64);

impl Id {
    pub fn new(value: i64) -> Option<Self> {
        (value > 0).then_some(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(d)?;
        Id::new(value).ok_or_else(|| serde::de::Error::custom("an id must be a positive integer"))
    }
}

/// A body field that can be absent (leave it), `null` (clear it) or a value (set it):
/// `#[serde(default, deserialize_with = "nullable", skip_serializing_if = "Option::is_none")]`
/// on an `Option<Option<T>>`. Absent is `None`, `null` is `Some(None)`.
pub fn nullable<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `axum::Json` with problem+json rejections.
pub struct AppJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AppJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => AppError::UnsupportedMediaType(
            "the body must be JSON with Content-Type: application/json".into(),
        ),
        JsonRejection::JsonDataError(e) => AppError::Validation(e.body_text()),
        JsonRejection::JsonSyntaxError(e) => AppError::Validation(e.body_text()),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            AppError::PayloadTooLarge(MAX_BODY_BYTES)
        }
        other => AppError::Validation(other.body_text()),
    }
}

/// `axum::extract::Path` with problem+json rejections.
pub struct AppPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for AppPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> AppError {
    AppError::Validation(format!("invalid path parameter: {}", rejection.body_text()))
}

/// `axum::extract::Query` with problem+json rejections.
pub struct AppQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for AppQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> AppError {
    AppError::Validation(rejection.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_positive() {
        assert!(serde_json::from_str::<Id>("1").is_ok());
        assert!(serde_json::from_str::<Id>("0").is_err());
        assert!(serde_json::from_str::<Id>("-5").is_err());
        assert!(serde_json::from_str::<Id>("1.5").is_err());
        assert!(serde_json::from_str::<Id>("\"7\"").is_err());
        assert!(serde_json::from_str::<Id>("99999999999999999999").is_err());
    }
}
