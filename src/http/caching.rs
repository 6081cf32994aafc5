//! HTTP caching of public reads (SPEC §3 "Catalog reads are HTTP-cacheable"): a strong
//! `ETag` of the body, `Cache-Control: public, max-age=N`, and 304 without a body when the
//! request's `If-None-Match` names the current tag.
//!
//! The tag is computed once, when a body enters a cache, and kept beside it
//! ([`Tagged`]), so a cached read costs no hashing. Every instance computes the same tag
//! for the same bytes (a fixed-key SipHash), so a client may switch instances behind a
//! load balancer and still get its 304.

use std::hash::{DefaultHasher, Hasher};

use axum::{
    body::Bytes,
    extract::FromRequestParts,
    http::{header, request::Parts, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

/// A request's `If-None-Match` values (usually none), taken without copying its other
/// headers.
#[derive(Clone, Debug, Default)]
pub struct IfNoneMatch(Vec<HeaderValue>);

impl IfNoneMatch {
    pub fn new(values: impl IntoIterator<Item = HeaderValue>) -> Self {
        Self(values.into_iter().collect())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::new(
            parts.headers.get_all(header::IF_NONE_MATCH).iter().cloned(),
        ))
    }
}

/// A response body and its strong entity tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tagged {
    pub body: Bytes,
    pub etag: HeaderValue,
}

impl Tagged {
    pub fn new(body: impl Into<Bytes>) -> Self {
        let body = body.into();
        let mut hasher = DefaultHasher::new();
        hasher.write(&body);
        let etag = HeaderValue::from_str(&format!("\"{:016x}\"", hasher.finish()))
            .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
        Self { body, etag }
    }

    /// The body as JSON with its caching headers, or 304 when `request` already holds it.
    pub fn respond(&self, request: &IfNoneMatch, max_age_secs: u64) -> Response {
        let cache_control = match max_age_secs {
            0 => HeaderValue::from_static("public, max-age=0"),
            1 => HeaderValue::from_static("public, max-age=1"),
            2 => HeaderValue::from_static("public, max-age=2"),
            n => HeaderValue::from_str(&format!("public, max-age={n}"))
                .unwrap_or_else(|_| HeaderValue::from_static("public, max-age=0")),
        };
        let headers = [
            (header::ETAG, self.etag.clone()),
            (header::CACHE_CONTROL, cache_control),
        ];
        if matches(request, &self.etag) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        let mut response = (headers, self.body.clone()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// Whether `If-None-Match` names `etag` (or is `*`). GET compares tags weakly
/// (RFC 9110 §13.1.2): a `W/` prefix on the client's tag does not matter.
fn matches(request: &IfNoneMatch, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    request
        .0
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/").as_bytes() == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> IfNoneMatch {
        IfNoneMatch::new([HeaderValue::from_str(value).unwrap()])
    }

    #[test]
    fn the_same_bytes_get_the_same_strong_tag() {
        let a = Tagged::new(&b"{\"a\":1}"[..]);
        let b = Tagged::new(&b"{\"a\":1}"[..]);
        let c = Tagged::new(&b"{\"a\":2}"[..]);
        assert_eq!(a.etag, b.etag);
        assert_ne!(a.etag, c.etag);
        assert!(a.etag.to_str().unwrap().starts_with('"'));
    }

    #[test]
    fn a_matching_tag_is_304_without_a_body() {
        let t = Tagged::new(&b"[]"[..]);
        let tag = t.etag.to_str().unwrap().to_string();
        assert_eq!(t.respond(&with(&tag), 3).status(), 304);
        assert_eq!(
            t.respond(&with(&format!("\"x\", W/{tag}")), 3).status(),
            304
        );
        assert_eq!(t.respond(&with("*"), 3).status(), 304);
        let fresh = t.respond(&with("\"other\""), 3);
        assert_eq!(fresh.status(), 200);
        assert_eq!(fresh.headers()[header::CACHE_CONTROL], "public, max-age=3");
        assert_eq!(fresh.headers()[header::ETAG], t.etag);
        assert_eq!(t.respond(&IfNoneMatch::default(), 0).status(), 200);
    }
}
