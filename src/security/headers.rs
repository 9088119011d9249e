//! The outer headers layer: what holds for every request and every answer, whoever
//! handles it — the API routes, `/bff/*`, the SPA's files, health checks, 404s, and the
//! admin listener.
//!
//! On the way in, before any handler (so before any upstream is called):
//! - `TRACE`, `TRACK` and `CONNECT` are refused with 405 `method_not_allowed` and an
//!   `Allow` header. `TRACE` echoes the request — with the `Authorization` header
//!   Portcullis adds — back to the page (cross-site tracing); `CONNECT` would make the
//!   gateway a tunnel. Methods are case-sensitive (RFC 9110 §9.1), but some upstreams
//!   upper-case them, so `trace` is refused too.
//! - `Host` is validated (RFC 9112 §3.2): more than one `Host` line, a `Host` that is
//!   not `host[:port]`, or an HTTP/1.1 request without one is 400 `invalid_request`.
//!   HTTP/2 carries the authority in `:authority`; a `Host` beside it must name the
//!   same (RFC 9113 §8.3.1). An absolute-form request's authority wins over `Host`
//!   (RFC 9112 §3.2.2), as it does in frontend selection.
//!
//! On the way out: `X-Content-Type-Options: nosniff` on every answer, so no answer —
//! an error's JSON, a proxied upstream's body, a static file — is ever sniffed into
//! HTML or script. Answers hyper writes itself, before a request exists (a malformed
//! request line, an oversized head), don't pass here.

use axum::extract::Request;
use axum::http::uri::Authority;
use axum::http::{HeaderValue, Method, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// What a 405 says is allowed (a proxied route's upstream may allow less).
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// The layer (`axum::middleware::from_fn`), as the admin listener uses it.
pub async fn layer(request: Request, next: Next) -> Response {
    around(request, |request| next.run(request)).await
}

/// The rules of the module docs around `next` (the main listener's phase, see
/// `server::App`).
pub async fn around<F, Fut>(request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let mut response = match check_request(&request) {
        Ok(()) => next(request).await,
        Err(e) => e.into_response(),
    };
    nosniff(&mut response);
    response
}

/// The way out of the module docs: `X-Content-Type-Options: nosniff`.
pub fn nosniff(response: &mut Response) {
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// The method and `Host` rules of the module docs.
pub fn check_request(request: &Request) -> Result<(), ApiError> {
    check_method(request.method())?;
    check_host(request)
}

/// Refuses `TRACE`, `TRACK` and `CONNECT`, in any casing.
pub fn check_method(method: &Method) -> Result<(), ApiError> {
    let m = method.as_str();
    if ["TRACE", "TRACK", "CONNECT"]
        .iter()
        .any(|r| m.eq_ignore_ascii_case(r))
    {
        return Err(ApiError::MethodNotAllowed {
            method: method.clone(),
            allow: ALLOWED_METHODS,
        });
    }
    Ok(())
}

fn check_host(request: &Request) -> Result<(), ApiError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ApiError::invalid("more than one Host header"));
    }
    let Some(host) = host else {
        return match request.version() {
            Version::HTTP_11 => Err(ApiError::invalid("the Host header is required")),
            _ => Ok(()),
        };
    };
    // An empty Host is what a client sends for a target without authority (RFC 9110 §7.2).
    if host.is_empty() {
        return Ok(());
    }
    let Some(authority) = valid_host(host.as_bytes()) else {
        return Err(ApiError::invalid("the Host header is not host[:port]"));
    };
    if request.version() >= Version::HTTP_2
        && let Some(target) = request.uri().authority()
        && !target.as_str().eq_ignore_ascii_case(authority)
    {
        return Err(ApiError::invalid("the Host header differs from :authority"));
    }
    Ok(())
}

/// `host` as text when it is `host[:port]`. The last valid value this thread saw is
/// remembered (a frontend's requests all carry the same `Host`): parsing one as an
/// `Authority` copies it into a new buffer, per request.
fn valid_host(host: &[u8]) -> Option<&str> {
    thread_local! {
        static LAST_VALID: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let text = std::str::from_utf8(host).ok()?;
    if !host.is_empty() && LAST_VALID.with_borrow(|last| last.as_slice() == host) {
        return Some(text);
    }
    let valid = !text.contains('@')
        && text.parse::<Authority>().is_ok_and(|a| {
            !a.host().is_empty() && (!has_port(a.as_str()) || a.port_u16().is_some())
        });
    if !valid {
        return None;
    }
    if host.len() <= 256 {
        LAST_VALID.with_borrow_mut(|last| {
            last.clear();
            last.extend_from_slice(host);
        });
    }
    Some(text)
}

/// Does `authority` end in `:port` (an IPv6 literal's colons are inside brackets)?
fn has_port(authority: &str) -> bool {
    authority
        .rsplit_once(':')
        .is_some_and(|(host, _)| !host.starts_with('[') || host.ends_with(']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, uri: &str, hosts: &[&[u8]]) -> Request {
        let mut r = Request::new(axum::body::Body::empty());
        *r.version_mut() = version;
        *r.uri_mut() = uri.parse().unwrap();
        for h in hosts {
            r.headers_mut()
                .append(header::HOST, HeaderValue::from_bytes(h).unwrap());
        }
        r
    }

    #[test]
    fn methods_that_echo_or_tunnel_are_refused() {
        for m in ["TRACE", "TRACK", "CONNECT", "trace", "Track", "connect"] {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(check_method(&method).is_err(), "{m}");
        }
        for m in ["GET", "POST", "OPTIONS", "PROPFIND", "TRACEX", "PATCH"] {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(check_method(&method).is_ok(), "{m}");
        }
    }

    #[test]
    fn host_rules() {
        let ok = |v, uri, hosts: &[&[u8]]| check_host(&request(v, uri, hosts)).is_ok();
        assert!(ok(Version::HTTP_11, "/", &[b"app.example.com"]));
        assert!(ok(Version::HTTP_11, "/", &[b"app.example.com:8443"]));
        assert!(ok(Version::HTTP_11, "/", &[b"[::1]:8080"]));
        assert!(ok(Version::HTTP_11, "/", &[b""]));
        assert!(ok(Version::HTTP_10, "/", &[]));
        assert!(ok(Version::HTTP_2, "https://a.example/", &[]));
        assert!(ok(Version::HTTP_2, "https://a.example/", &[b"A.example"]));
        // Absolute form: the target's authority wins; Host is still required and valid.
        assert!(ok(Version::HTTP_11, "http://a.example/", &[b"b.example"]));

        assert!(!ok(Version::HTTP_11, "/", &[]));
        assert!(!ok(Version::HTTP_11, "http://a.example/", &[]));
        assert!(!ok(Version::HTTP_11, "/", &[b"a.example", b"a.example"]));
        assert!(!ok(Version::HTTP_10, "/", &[b"a.example", b"b.example"]));
        assert!(!ok(Version::HTTP_2, "https://a.example/", &[b"b.example"]));
        for bad in [
            &b"a b"[..],
            b"evil.example/path",
            b"user@a.example",
            b"a.example:port",
            b"a.example:99999",
            b":80",
            b"a.example\xff",
            b"a.example?x",
            b"a.example#x",
        ] {
            assert!(
                !ok(Version::HTTP_11, "/", &[bad]),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            // The remembered last valid Host answers only for exactly that value.
            assert!(ok(Version::HTTP_11, "/", &[b"a.example"]));
            assert!(ok(Version::HTTP_11, "/", &[b"a.example"]));
            assert!(!ok(Version::HTTP_11, "/", &[bad]));
            assert!(!ok(Version::HTTP_2, "https://b.example/", &[b"a.example"]));
        }
    }
}
