//! Rate limits with `governor` (GCRA): one quota per client IP on every route except the
//! probes and `/metrics`, and a stricter one per authenticated user on writes. A refusal is
//! 429 `RATE_LIMITED` with `Retry-After`.
//!
//! The client is the TCP peer, unless the peer is a trusted proxy (`TRUSTED_PROXIES`): then
//! it is the right-most address of `X-Forwarded-For` that is not itself a trusted proxy (a
//! client can prepend anything to that header, but not what the proxies append). IPv6
//! clients are keyed by their /64, which one household or host holds whole.
//!
//! Memory is bounded: idle keys are evicted every minute ([`RateLimits::evict_idle`]), and
//! when more than `MAX_CLIENTS` are tracked anyway (many clients in a minute) every request
//! shares one overflow bucket until eviction brings the count down.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use ipnet::IpNet;

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
/// Most client keys tracked before every request shares the overflow bucket.
pub const MAX_CLIENTS: usize = 100_000;
/// How often (in requests) the tracked count is looked at.
const COUNT_EVERY: u64 = 256;
/// The key of the overflow bucket.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

pub struct RateLimits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_user_write: Option<DefaultKeyedRateLimiter<i64>>,
    clock: DefaultClock,
    /// Tells the user of a write from its bearer token.
    tokens: Arc<TokenService>,
    /// `TRUSTED_PROXIES`.
    trusted: Vec<IpNet>,
    /// Whether more than `MAX_CLIENTS` keys are tracked (looked at every `COUNT_EVERY`
    /// requests and at each eviction).
    overflowing: AtomicBool,
    requests: AtomicU64,
}

/// The client of a request from `peer`: the peer itself, or, when the peer is a trusted
/// proxy, the right-most address of `X-Forwarded-For` (all its values, in order) that is not
/// a trusted proxy; an entry that is not an address ends the walk at the hop before it.
pub fn client_address(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded_for
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rev()
    {
        match entry.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => return client,
        }
    }
    client
}

/// The rate-limit key of a client: an IPv4 address, or an IPv6 address's /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
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
    pub fn new(config: &RateLimitConfig, tokens: Arc<TokenService>, trusted: Vec<IpNet>) -> Self {
        Self {
            per_ip: limiter(config.per_ip_per_sec, config.per_ip_burst),
            per_user_write: limiter(config.user_write_per_sec, config.user_write_burst),
            clock: DefaultClock::default(),
            tokens,
            trusted,
            overflowing: AtomicBool::new(false),
            requests: AtomicU64::new(0),
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
        self.look_at_count();
    }

    fn look_at_count(&self) {
        let tracked = self.per_ip.as_ref().map_or(0, |l| l.len());
        let over = tracked >= MAX_CLIENTS;
        if over != self.overflowing.swap(over, Ordering::Relaxed) {
            tracing::warn!(
                tracked,
                over,
                "rate limiter: clients beyond the tracked bound share one bucket"
            );
        }
    }

    /// The key a request from `peer` with these `X-Forwarded-For` values is limited by.
    fn key(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        if self
            .requests
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(COUNT_EVERY)
        {
            self.look_at_count();
        }
        if self.overflowing.load(Ordering::Relaxed) {
            return OVERFLOW;
        }
        client_key(client_address(peer, forwarded_for, &self.trusted))
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
    if let (Some(ConnectInfo(peer)), true) = (
        req.extensions().get::<ConnectInfo<SocketAddr>>(),
        limits.per_ip.is_some(),
    ) {
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let key = limits.key(peer.ip(), &forwarded);
        limits.check(&limits.per_ip, &key, "ip")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // An untrusted peer's header is ignored, however it reads.
        assert_eq!(
            client_address(ip("203.0.113.9"), &["1.2.3.4"], &trusted),
            ip("203.0.113.9")
        );
        // Behind a trusted proxy: the right-most untrusted address; what the client wrote
        // before it (spoofed) does not count.
        assert_eq!(
            client_address(ip("10.0.0.5"), &["6.6.6.6, 198.51.100.7"], &trusted),
            ip("198.51.100.7")
        );
        // Two trusted hops, the header in two lines.
        assert_eq!(
            client_address(
                ip("10.0.0.5"),
                &["6.6.6.6, 198.51.100.7", "10.0.0.9"],
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Junk at the end: the last trusted hop is all that is known.
        assert_eq!(
            client_address(ip("10.0.0.5"), &["junk"], &trusted),
            ip("10.0.0.5")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_address(ip("10.0.0.5"), &[], &trusted),
            ip("10.0.0.5")
        );
        // Nothing trusted by default.
        assert_eq!(
            client_address(ip("10.0.0.5"), &["1.2.3.4"], &[]),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:bbbb::9")),
            client_key(ip("2001:db8:1:2:aaaa::1"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:3::1")),
            client_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(client_key(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
