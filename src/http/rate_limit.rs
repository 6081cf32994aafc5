//! Rate limits with `governor` (GCRA): one quota per client IP on every route except the
//! probes and `/metrics`, and a stricter one per authenticated user on writes. A refusal is
//! 429 `RATE_LIMITED` with `Retry-After`. Idle keys are evicted by [`RateLimits::evict_idle`],
//! so the keyed state cannot grow without bound.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{
    clock::{Clock, DefaultClock},
    DefaultKeyedRateLimiter, Quota,
};

use crate::{
    auth::{bearer, TokenService},
    config::RateLimitConfig,
    error::AppError,
};

/// Routes that are never limited: probes and scraping must work under any load.
const EXEMPT: &[&str] = &["/healthz", "/readyz", "/metrics"];

pub struct RateLimits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_user_write: Option<DefaultKeyedRateLimiter<i64>>,
    clock: DefaultClock,
    /// Tells the user of a write from its bearer token.
    tokens: Arc<TokenService>,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    per_sec: u32,
    burst: u32,
) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(DefaultKeyedRateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

impl RateLimits {
    /// A rate of 0 turns that limit off.
    pub fn new(config: &RateLimitConfig, tokens: Arc<TokenService>) -> Self {
        Self {
            per_ip: limiter(config.per_ip_per_sec, config.per_ip_burst),
            per_user_write: limiter(config.user_write_per_sec, config.user_write_burst),
            clock: DefaultClock::default(),
            tokens,
        }
    }

    /// Forgets keys whose bucket is full again (they would be admitted as new anyway).
    pub fn evict_idle(&self) {
        if let Some(l) = &self.per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_user_write {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Number of keys held, for metrics.
    pub fn tracked_keys(&self) -> usize {
        self.per_ip.as_ref().map_or(0, |l| l.len())
            + self.per_user_write.as_ref().map_or(0, |l| l.len())
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &Option<DefaultKeyedRateLimiter<K>>,
        key: &K,
        scope: &'static str,
    ) -> Result<(), AppError> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            metrics::counter!("rate_limited_total", "limit" => scope).increment(1);
            let wait = not_until.wait_time_from(self.clock.now());
            AppError::RateLimited {
                retry_after_secs: wait.as_secs() + 1,
            }
        })
    }
}

/// The middleware: per-IP first, then per-user on writes that carry a valid token.
pub async fn enforce(State(limits): State<Arc<RateLimits>>, req: Request, next: Next) -> Response {
    match admit(&limits, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn admit(limits: &RateLimits, req: &Request) -> Result<(), AppError> {
    let path = req.uri().path();
    if EXEMPT.contains(&path) {
        return Ok(());
    }
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        limits.check(&limits.per_ip, &peer.ip(), "ip")?;
    }
    let is_write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if is_write && limits.per_user_write.is_some() && !path.starts_with("/v1/admin") {
        let user = bearer(req.headers()).and_then(|token| limits.tokens.verify(token).ok());
        if let Some(user) = user {
            limits.check(&limits.per_user_write, &user, "user_write")?;
        }
    }
    Ok(())
}
