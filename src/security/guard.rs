//! The request guard's rules: the `Origin` and `Sec-Fetch-Site` layers of the CSRF defence,
//! CORS, HSTS and the `/bff/*` body limit, in front of every handler.
//!
//! Which requests are protected: `/bff/user`, `POST /bff/logout`, and every
//! proxied request of a route with `csrf = true` (the default). Not protected, on
//! purpose: `/bff/login` (a top-level navigation, possibly from a link elsewhere;
//! login CSRF is stopped by the state binding), `/bff/callback` (the provider's
//! cross-site redirect), `GET /bff/logout` (guarded by its `sid`), the back-channel
//! logout endpoint (server-to-server, authenticated by its signed token), health
//! checks and the SPA's files.
//!
//! The layers, each enough on its own against a cross-site page:
//! 1. `SameSite=Strict` on the session cookie (session::cookie).
//! 2. `X-CSRF: 1` on every call that uses the session (forces a CORS preflight,
//!    which fails for foreign origins) — checked where the session is used.
//! 3. `Sec-Fetch-Site`, when the browser sends it, must be `same-origin` or `none`
//!    (or the request comes from an allowed origin).
//! 4. `Origin`, when present, must be the public origin or an allowed origin.
//!
//! CORS is off unless `security.allowed_origins` names origins: then their
//! preflights are answered and their responses carry `Access-Control-Allow-Origin`
//! with that exact origin and credentials. Never `*`, never a reflected arbitrary
//! origin.
//!
//! The middleware that applies them to every request is `server::guard`.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// What the guard needs, prepared once from the config.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    pub public_origin: String,
    pub allowed_origins: Vec<String>,
    pub hsts: bool,
    pub max_bff_body: u64,
    pub max_head: usize,
    /// `host:port` of the public origin when navigations on another loopback host
    /// name are sent there (`server::guard`'s wrong-host redirect).
    pub canonical_host: Option<String>,
}

impl GuardConfig {
    pub fn new(config: &crate::config::Config) -> Self {
        Self {
            public_origin: config.server.public_origin.origin().ascii_serialization(),
            allowed_origins: config
                .security
                .allowed_origins
                .iter()
                .map(|o| o.origin().ascii_serialization())
                .collect(),
            hsts: config.server.public_origin.scheme() == "https",
            max_bff_body: config.security.max_bff_body_bytes,
            max_head: config.security.max_header_bytes,
            canonical_host: canonical_host(config),
        }
    }

    /// The `Origin` value if it is one of the allowed *other* origins.
    pub fn allowed_cross_origin<'a>(
        &self,
        origin: Option<&'a HeaderValue>,
    ) -> Option<&'a HeaderValue> {
        let o = origin?;
        let text = o.to_str().ok()?;
        self.allowed_origins.iter().any(|a| a == text).then_some(o)
    }
}

/// The public origin's `host:port`, when the wrong-host redirect applies: the public
/// origin is a loopback one and on the port `server.listen` binds, so the browser
/// talks to this process directly. Behind a proxy (another port, another host) the
/// `Host` a request carries may be the proxy's idea, and redirecting would loop.
fn canonical_host(config: &crate::config::Config) -> Option<String> {
    let origin = &config.server.public_origin;
    let port = origin.port_or_known_default()?;
    let host = origin.host_str()?;
    (is_loopback_name(host) && port == config.server.listen.port())
        .then(|| format!("{host}:{port}"))
}

/// `localhost`, `*.localhost`, or a loopback address (IPv6 in brackets or not).
pub fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What the guard reads of a request's header lines, from one pass over them (a
/// lookup by name hashes the name and probes the table: the pass over a request's
/// few lines costs less than the five lookups it replaces).
#[derive(Debug, Default)]
pub struct HeadFacts<'a> {
    /// The header lines' size as sent (`name: value\r\n` each).
    lines_size: usize,
    content_lengths: usize,
    codings: usize,
    /// The first `Transfer-Encoding` line.
    coding: Option<&'a HeaderValue>,
    /// The first `Sec-Fetch-Site` line.
    site: Option<&'a HeaderValue>,
    /// The first `Origin` line.
    pub origin: Option<&'a HeaderValue>,
}

impl<'a> HeadFacts<'a> {
    pub fn of(headers: &'a HeaderMap) -> Self {
        let mut facts = Self::default();
        for (name, value) in headers {
            facts.lines_size += name.as_str().len() + value.len() + 4;
            if name == header::CONTENT_LENGTH {
                facts.content_lengths += 1;
            } else if name == header::TRANSFER_ENCODING {
                facts.codings += 1;
                facts.coding.get_or_insert(value);
            } else if name == header::ORIGIN {
                facts.origin.get_or_insert(value);
            } else if name == crate::security::SEC_FETCH_SITE {
                facts.site.get_or_insert(value);
            }
        }
        facts
    }
}

/// Layers 3 and 4: `Sec-Fetch-Site` and `Origin`.
pub fn check_request_origin(
    public_origin: &str,
    head: &HeadFacts<'_>,
    cross_allowed: bool,
) -> Result<(), ApiError> {
    if let Some(site) = head.site {
        let ok = matches!(site.as_bytes(), b"same-origin" | b"none") || cross_allowed;
        if !ok {
            return Err(ApiError::Csrf(
                "cross-site request refused (Sec-Fetch-Site)",
            ));
        }
    }
    if let Some(origin) = head.origin {
        let ok = origin.as_bytes() == public_origin.as_bytes() || cross_allowed;
        if !ok {
            return Err(ApiError::Csrf(
                "request from a foreign origin refused (Origin)",
            ));
        }
    }
    Ok(())
}

/// Marks a request whose head carried both `Content-Length` and
/// `Transfer-Encoding` (found by the listener's framing inspector, because hyper drops
/// the `Content-Length` of such a request before any handler sees it).
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

/// Ambiguous message framing is refused before anything reaches an upstream
/// (RFC 9112 §6.3; request smuggling): `Content-Length` together with
/// `Transfer-Encoding`, several `Content-Length`s, or a transfer coding other than
/// a lone `chunked`. The connection is closed after the refusal.
pub fn check_framing(head: &HeadFacts<'_>) -> Result<(), ApiError> {
    if head.content_lengths > 1 {
        return Err(ApiError::invalid("several Content-Length headers"));
    }
    if let Some(first) = head.coding {
        if head.content_lengths > 0 {
            return Err(ApiError::invalid(
                "Content-Length together with Transfer-Encoding",
            ));
        }
        if head.codings > 1 || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(ApiError::invalid("unsupported Transfer-Encoding"));
        }
    }
    Ok(())
}

/// The size of the request head as sent: request line and header lines.
pub fn head_size(request: &Request, head: &HeadFacts<'_>) -> usize {
    request.method().as_str().len()
        + request
            .uri()
            .path_and_query()
            .map_or(1, |p| p.as_str().len())
        + 12
        + head.lines_size
}

pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub fn with_cors(mut response: Response, origin: Option<&HeaderValue>, hsts: bool) -> Response {
    let h = response.headers_mut();
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    response
}

pub fn preflight(origin: &HeaderValue, headers: &HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE"),
    );
    let requested = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        requested.unwrap_or(HeaderValue::from_static("x-csrf, content-type")),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(name, value)` lines as a header map, in order.
    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in lines {
            h.append(
                axum::http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// The checks as they read the map before [`HeadFacts`]: a lookup per name.
    fn by_lookup(h: &HeaderMap, cross: bool) -> (Result<(), String>, Result<(), String>, usize) {
        let framing = (|| {
            let lengths = h.get_all(header::CONTENT_LENGTH).iter().count();
            if lengths > 1 {
                return Err("several".to_owned());
            }
            let mut codings = h.get_all(header::TRANSFER_ENCODING).iter();
            if let Some(first) = codings.next() {
                if lengths > 0 {
                    return Err("together".to_owned());
                }
                if codings.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
                    return Err("unsupported".to_owned());
                }
            }
            Ok(())
        })();
        let origin = (|| {
            if let Some(site) = h.get("sec-fetch-site")
                && !(matches!(site.as_bytes(), b"same-origin" | b"none") || cross)
            {
                return Err("site".to_owned());
            }
            if let Some(o) = h.get(header::ORIGIN)
                && !(o.as_bytes() == b"https://app.example" || cross)
            {
                return Err("origin".to_owned());
            }
            Ok(())
        })();
        let size = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        (framing, origin, size)
    }

    fn by_facts(h: &HeaderMap, cross: bool) -> (Result<(), String>, Result<(), String>, usize) {
        let facts = HeadFacts::of(h);
        // The refusal's reason, by the word the lookup reference names it with.
        let reason = |e: ApiError| {
            let text = e.to_string();
            ["several", "together", "unsupported", "site", "origin"]
                .into_iter()
                .find(|r| text.contains(r))
                .map_or(text.clone(), str::to_owned)
        };
        (
            check_framing(&facts).map_err(reason),
            check_request_origin("https://app.example", &facts, cross).map_err(reason),
            facts.lines_size,
        )
    }

    #[test]
    fn one_pass_over_the_lines_decides_as_a_lookup_per_name_did() {
        let lines: &[(&str, &str)] = &[
            ("content-length", "5"),
            ("Content-Length", "6"),
            ("transfer-encoding", "chunked"),
            ("Transfer-Encoding", "CHUNKED"),
            ("transfer-encoding", "gzip, chunked"),
            ("origin", "https://app.example"),
            ("Origin", "https://evil.example"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin"),
            ("Sec-Fetch-Site", "cross-site"),
            ("sec-fetch-site", "none"),
            ("sec-fetch-site", "same-site"),
            ("x-csrf", "1"),
            ("cookie", "a=1"),
        ];
        let mut checked = 0;
        // Every subset of up to three lines, in every order the index walk gives.
        for a in 0..lines.len() {
            for b in 0..lines.len() {
                for c in [None, Some(0), Some(5), Some(9), Some(13)] {
                    let mut chosen = vec![lines[a], lines[b]];
                    chosen.extend(c.map(|c| lines[c]));
                    let h = headers(&chosen);
                    for cross in [false, true] {
                        assert_eq!(
                            by_facts(&h, cross),
                            by_lookup(&h, cross),
                            "{chosen:?} {cross}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1_500, "{checked}");
    }
}
