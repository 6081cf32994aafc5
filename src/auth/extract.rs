//! The `Caller` and `Admin` extractors. Generic over the router's state: they need only
//! [`Auth`], which the state hands out by `FromRef`.

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header::AUTHORIZATION, request::Parts, HeaderMap},
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use std::sync::Arc;

use super::tokens::TokenService;
use crate::{config::Config, error::AppError};

/// What the extractors need: the user token service and the admin token.
#[derive(Clone)]
pub struct Auth {
    pub tokens: Arc<TokenService>,
    pub admin_token: Option<Arc<str>>,
}

impl Auth {
    pub fn new(config: &Config) -> Self {
        Self {
            tokens: Arc::new(TokenService::new(&config.auth)),
            admin_token: config.admin_token.as_deref().map(Arc::from),
        }
    }
}

/// The user a request acts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Authenticated by a valid token whose `sub` is this user id.
    User(i64),
    /// `AUTH_DISABLED=true`: the request may act for any user (development only).
    Anyone,
}

impl Caller {
    /// `FORBIDDEN` unless the caller may act for `user_id`.
    pub fn act_for(self, user_id: i64) -> Result<(), AppError> {
        if self.owns(user_id) {
            Ok(())
        } else {
            Err(AppError::Forbidden)
        }
    }

    /// Whether a resource owned by `owner` is visible to the caller.
    pub fn owns(self, owner: i64) -> bool {
        match self {
            Caller::User(id) => id == owner,
            Caller::Anyone => true,
        }
    }

    /// The namespace of this caller's idempotency keys.
    pub fn scope(self, operation: &str) -> String {
        match self {
            Caller::User(id) => format!("user:{id}|{operation}"),
            Caller::Anyone => format!("anyone|{operation}"),
        }
    }
}

/// The token of an `Authorization: Bearer …` header (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Auth: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let auth = Auth::from_ref(state);
        if auth.tokens.disabled() {
            return Ok(Caller::Anyone);
        }
        let token = bearer(&parts.headers).ok_or(AppError::Unauthorized)?;
        auth.tokens.verify(token).map(Caller::User)
    }
}

/// The operator, authenticated by `ADMIN_TOKEN`. With no token configured the admin
/// routes answer 404, as if they did not exist.
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    Auth: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let auth = Auth::from_ref(state);
        let expected = auth
            .admin_token
            .as_deref()
            .ok_or_else(|| AppError::NotFound("no such route".into()))?;
        let given = bearer(&parts.headers).ok_or(AppError::Unauthorized)?;
        // Hashing first makes the comparison constant-time in the length too.
        let same: bool = Sha256::digest(given.as_bytes())
            .ct_eq(&Sha256::digest(expected.as_bytes()))
            .into();
        if same {
            Ok(Admin)
        } else {
            Err(AppError::Unauthorized)
        }
    }
}
