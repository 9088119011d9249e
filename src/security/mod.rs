//! Browser-facing defences: return-URL validation (no open redirector), the CSRF
//! header check, and the security headers on everything Portcullis answers itself.
//!
//! CSRF model: the session cookie is `SameSite=Strict`, and every call that uses the
//! session must carry `X-CSRF: 1`. A custom header can't be sent cross-origin without
//! a CORS preflight, which Portcullis never approves for foreign origins, so a forged
//! cross-site request never carries it. This module must never trust a header for
//! anything but a refusal.

pub mod event_source;
pub mod guard;
pub mod headers;
pub mod limits;

pub use guard::GuardConfig;
pub use limits::Limits;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;

/// Longest accepted `returnUrl`.
const MAX_RETURN_URL: usize = 2048;

/// The TCP peer of a request that went through axum's router (`server` puts it
/// there for the router's handlers; the API path is given it instead).
pub fn peer_addr(extensions: &axum::http::Extensions) -> Option<std::net::SocketAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
}

/// [`peer_addr`]'s address.
pub fn peer_ip(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    peer_addr(extensions).map(|p| p.ip())
}

/// Is `peer` one of `server.trusted_proxies`, whose `X-Forwarded-*`, `X-Request-Id`
/// and trace context are believed?
pub fn is_trusted_proxy(trusted: &[ipnet::IpNet], peer: Option<std::net::IpAddr>) -> bool {
    peer.is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip)))
}

/// Is this request a browser's top-level navigation (the user sees the answer as a
/// page), rather than a `fetch`/XHR call (the SPA reads it as data)?
/// `Sec-Fetch-Mode: navigate` says so; a browser that sends another `Sec-Fetch-Mode`
/// is not navigating; without the header (old browsers, some proxies strip it) an
/// `Accept` that asks for `text/html` decides. Only ever used to pick the *form* of
/// an answer (a page of the SPA or the JSON error), never to allow anything.
pub fn is_navigation(headers: &HeaderMap) -> bool {
    match headers.get(&SEC_FETCH_MODE) {
        Some(mode) => mode.as_bytes() == b"navigate",
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html")),
    }
}

/// Accepts `returnUrl` only when it is a path on this origin.
///
/// Refused: anything that does not start with a single `/` (absolute URLs, schemes,
/// `//host`), backslashes (`/\host` is `//host` to browsers), control characters and
/// whitespace (browsers strip tabs and newlines, so `/\t/host` would become `//host`),
/// non-ASCII, and anything that still resolves off-origin when joined to the public
/// origin.
pub fn validate_return_url(value: &str, origin: &url::Url) -> Result<String, &'static str> {
    if value.is_empty() {
        return Err("returnUrl is empty");
    }
    if value.len() > MAX_RETURN_URL {
        return Err("returnUrl is too long");
    }
    if !value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("returnUrl contains whitespace, control or non-ASCII characters");
    }
    if value.contains('\\') {
        return Err("returnUrl contains a backslash");
    }
    if !value.starts_with('/') || value.starts_with("//") {
        return Err("returnUrl must be a local path starting with a single '/'");
    }
    let lower = value.to_ascii_lowercase();
    if lower.starts_with("/%2f") || lower.starts_with("/%5c") {
        return Err("returnUrl must be a local path starting with a single '/'");
    }
    let joined = origin
        .join(value)
        .map_err(|_| "returnUrl is not a valid path")?;
    if joined.origin() != origin.origin() {
        return Err("returnUrl leaves this origin");
    }
    Ok(value.to_owned())
}

/// Audit event: a CSRF defence refused a request.
pub fn audit_csrf_rejected(why: &str) {
    tracing::warn!(target: "portcullis::audit", event = "csrf_rejected", reason = why);
}

/// Audit event: a rate limit refused a request.
pub fn audit_rate_limited(what: &str) {
    tracing::warn!(target: "portcullis::audit", event = "rate_limited", limit = what);
}

/// `Sec-Fetch-Site` and `Sec-Fetch-Mode` (Fetch Metadata), as ready names: a lookup by
/// `&str` parses the name first (~150 instructions).
pub static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
pub static SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");

/// The CSRF header every call that uses the session must carry.
pub const CSRF_HEADER: HeaderName = HeaderName::from_static("x-csrf");

/// Requires `X-CSRF: 1`.
pub fn check_csrf_header(headers: &HeaderMap) -> Result<(), ApiError> {
    let refused = match headers.get(&CSRF_HEADER) {
        Some(v) if v.as_bytes() == b"1" => return Ok(()),
        Some(_) => "the X-CSRF header must be \"1\"",
        None => "the X-CSRF: 1 header is required",
    };
    audit_csrf_rejected(refused);
    Err(ApiError::Csrf(refused))
}

/// Headers on every `/bff/*` answer: never cached, never framed, never sniffed,
/// no referrer (codes and state must not leak).
pub async fn bff_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let framable = response.extensions().get::<Framable>().is_some();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if framable {
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    } else {
        frame_and_sniff(h);
    }
    response
}

/// Put on a `/bff` answer that may be framed (the front-channel logout page, which the
/// provider loads in an iframe): it carries its own `Content-Security-Policy:
/// frame-ancestors`, and [`bff_headers`] then adds no `X-Frame-Options: DENY`.
#[derive(Debug, Clone, Copy)]
pub struct Framable;

/// Headers on everything Portcullis serves itself: never framed, never sniffed.
pub fn frame_and_sniff(h: &mut HeaderMap) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> url::Url {
        url::Url::parse("https://app.example.com").unwrap()
    }

    #[test]
    fn local_paths_are_accepted() {
        for ok in [
            "/",
            "/dashboard",
            "/a/b?c=d&e=%2F#frag",
            "/path;x=1",
            "/~user",
            "/a//b",
        ] {
            assert_eq!(
                validate_return_url(ok, &origin()).as_deref(),
                Ok(ok),
                "{ok}"
            );
        }
    }

    #[test]
    fn anything_that_can_leave_the_origin_is_refused() {
        let attacks = [
            "https://evil.com",
            "http://evil.com/",
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "\\/evil.com",
            "javascript:alert(1)",
            "data:text/html,x",
            "evil.com",
            "/\t/evil.com",
            "/\n/evil.com",
            "/\r\n/evil.com",
            "\u{0}/",
            " /",
            "/ ",
            "/%2F%2Fevil.com",
            "/%2f/evil.com",
            "/%5Cevil.com",
            "/\u{3000}/evil.com",
            "/ƒoo",
            "",
            "https:evil.com",
            "HTTPS://EVIL.COM",
            "//evil.com/..",
            "/\\/evil.com",
            "//\\evil.com",
            "/%2f%2fevil.com",
            "/%5c%5cevil.com",
            "\t//evil.com",
            "/\u{b}/evil.com",
            "/\u{7f}/evil.com",
            "//%09evil.com",
        ];
        for bad in attacks {
            assert!(
                validate_return_url(bad, &origin()).is_err(),
                "accepted {bad:?}"
            );
        }
        assert!(validate_return_url(&format!("/{}", "a".repeat(3000)), &origin()).is_err());
    }

    #[test]
    fn csrf_header_must_be_exactly_one() {
        let mut h = HeaderMap::new();
        assert!(check_csrf_header(&h).is_err());
        h.insert(CSRF_HEADER, HeaderValue::from_static("0"));
        assert!(check_csrf_header(&h).is_err());
        h.insert(CSRF_HEADER, HeaderValue::from_static("1"));
        assert!(check_csrf_header(&h).is_ok());
    }
}
