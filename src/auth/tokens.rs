//! HS256 JWTs: verification of user tokens and minting for the admin route.

use chrono::{DateTime, Utc};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{config::AuthConfig, error::AppError};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MintedToken {
    pub token: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: DateTime<Utc>,
}

pub struct TokenService {
    keys: Option<(EncodingKey, DecodingKey)>,
    validation: Validation,
    config: AuthConfig,
    /// Tokens that passed verification: token → (user id, `exp`). A buyer's order and
    /// payment, and the rate limiter's look at the same request, then cost one HMAC, not
    /// three (the profile of the refusal path had JWT decoding at 7 %). Only what fully
    /// verified is kept, under its exact string; `exp` is checked again on every hit.
    verified: moka::sync::Cache<Box<str>, (i64, i64)>,
}

/// Clock skew tolerated between the token's issuer and this instance, in seconds (`exp`,
/// `nbf`, `iat`).
const LEEWAY_SECS: u64 = 5;

/// How many verified tokens are remembered, and for how long at most: the buyers of the
/// last minute (a verification costs microseconds; an entry ~300 bytes, so 20,000 are ~6 MB).
const VERIFIED_CAPACITY: u64 = 20_000;
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl TokenService {
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        // A token not valid before a time is not valid before it (with the same leeway).
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not merely right when present.
        let mut required = vec!["exp", "sub"];
        required.extend(config.issuer.as_ref().map(|_| "iss"));
        required.extend(config.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &config.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let keys = config.jwt_secret.as_ref().map(|secret| {
            (
                EncodingKey::from_secret(secret.as_bytes()),
                DecodingKey::from_secret(secret.as_bytes()),
            )
        });
        Self {
            keys,
            validation,
            config: config.clone(),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(VERIFIED_TTL)
                .build(),
        }
    }

    /// True when `AUTH_DISABLED=true`: every user route is open.
    pub fn disabled(&self) -> bool {
        self.config.disabled
    }

    /// The user id in a valid token's `sub`; anything else is `UNAUTHORIZED`.
    pub fn verify(&self, token: &str) -> Result<i64, AppError> {
        let (_, key) = self.keys.as_ref().ok_or(AppError::Unauthorized)?;
        let unexpired = |exp: i64| exp >= Utc::now().timestamp() - self.validation.leeway as i64;
        if let Some((id, exp)) = self.verified.get(token) {
            return if unexpired(exp) {
                Ok(id)
            } else {
                Err(AppError::Unauthorized)
            };
        }
        let data =
            decode::<Claims>(token, key, &self.validation).map_err(|_| AppError::Unauthorized)?;
        // Issued in the future: a clock far off, or a forged lifetime.
        if data
            .claims
            .iat
            .is_some_and(|iat| iat > Utc::now().timestamp() + LEEWAY_SECS as i64)
        {
            return Err(AppError::Unauthorized);
        }
        match data.claims.sub.parse::<i64>() {
            Ok(id) if id > 0 => {
                self.verified.insert(token.into(), (id, data.claims.exp));
                Ok(id)
            }
            _ => Err(AppError::Unauthorized),
        }
    }

    /// A token for `user_id`, valid `AUTH_TOKEN_TTL_SECS`.
    pub fn mint(&self, user_id: i64) -> Result<MintedToken, AppError> {
        let (key, _) = self.keys.as_ref().ok_or_else(|| {
            AppError::NotFound("tokens cannot be minted without AUTH_JWT_SECRET".into())
        })?;
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(self.config.token_ttl).map_err(anyhow::Error::from)?;
        let expires_at = now + ttl;
        let claims = Claims {
            sub: user_id.to_string(),
            exp: expires_at.timestamp(),
            iat: Some(now.timestamp()),
            nbf: None,
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
        };
        let token =
            encode(&Header::new(Algorithm::HS256), &claims, key).map_err(anyhow::Error::from)?;
        Ok(MintedToken { token, expires_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(secret: &str) -> AuthConfig {
        AuthConfig {
            jwt_secret: Some(secret.into()),
            disabled: false,
            issuer: None,
            audience: None,
            token_ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let tokens = TokenService::new(&config("s3cret"));
        let minted = tokens.mint(42).unwrap();
        assert_eq!(tokens.verify(&minted.token).unwrap(), 42);
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_tampered_one_is_not_remembered() {
        let tokens = TokenService::new(&config("s3cret-of-the-cache"));
        let minted = tokens.mint(7).unwrap();
        assert_eq!(tokens.verify(&minted.token).unwrap(), 7);
        assert_eq!(tokens.verify(&minted.token).unwrap(), 7, "from the cache");
        let mut tampered = minted.token.clone();
        tampered.push('x');
        assert!(tokens.verify(&tampered).is_err());
        // The cache keeps `exp`: past it (and the leeway) the token is refused, cached or not.
        let past = Utc::now().timestamp() - 60;
        tokens
            .verified
            .insert(minted.token.as_str().into(), (7, past));
        assert!(tokens.verify(&minted.token).is_err());
    }

    #[test]
    fn other_secrets_and_garbage_are_refused() {
        let minted = TokenService::new(&config("one")).mint(1).unwrap();
        let other = TokenService::new(&config("two"));
        assert!(other.verify(&minted.token).is_err());
        assert!(other.verify("not.a.jwt").is_err());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let plain = TokenService::new(&config("k")).mint(3).unwrap();
        let mut strict = config("k");
        strict.issuer = Some("idp".into());
        strict.audience = Some("commerce".into());
        let strict = TokenService::new(&strict);
        assert!(strict.verify(&plain.token).is_err());
        assert_eq!(strict.verify(&strict.mint(3).unwrap().token).unwrap(), 3);
    }
}
