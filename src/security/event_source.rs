//! The CSRF rule for a browser's `EventSource` on routes with `event_source = true`.
//!
//! `new EventSource(url)` can't add a header, so it can't send `X-CSRF: 1`. On a route
//! that opts in, a request that uses the session is accepted without `X-CSRF` when, and
//! only when, the browser itself says it is a same-origin `EventSource`:
//!
//! - the method is `GET` and `Accept` names `text/event-stream` (what every
//!   `EventSource` sends);
//! - `Sec-Fetch-Site: same-origin` — the request was initiated by a document of this
//!   very origin, over every redirect it took;
//! - `Sec-Fetch-Mode: cors` and `Sec-Fetch-Dest: empty` — a script's request (an
//!   `EventSource` or `fetch`), not a navigation, a form, an `<img>`/`<script>`/`<link>`
//!   load or a frame;
//! - `Origin`, when present, is the public origin (`null` or any other value refuses).
//!
//! Chromium, Firefox and Safari send exactly these for a same-origin
//! `new EventSource("/api/…")` (`Sec-Fetch-Site: same-origin`, `Sec-Fetch-Mode: cors`,
//! `Sec-Fetch-Dest: empty`, and no `Origin`, since a same-origin GET carries none).
//!
//! **Why this is as strong as the header.** `X-CSRF` works because a page of another
//! origin can't make the browser send a custom header without a CORS preflight, which
//! Portcullis never approves for it. The `Sec-Fetch-*` headers are *forbidden request
//! headers*: no script (of any origin) can set or change them, the browser computes them
//! from who really initiated the request. So a request carrying
//! `Sec-Fetch-Site: same-origin` was made by this origin's own documents — exactly the
//! set of documents that can send `X-CSRF` anyway. Everything else keeps the header
//! rule: a browser without Fetch Metadata sends none of them and must send `X-CSRF`
//! (such a browser's `EventSource` fails closed, with 403 `csrf`); a cross-site or
//! same-site request says so and is refused before this (the guard's `Sec-Fetch-Site`
//! layer); a non-browser client can forge all of these headers but has no victim's
//! cookie to ride on. Upstream documents served on this origin are sandboxed into an
//! opaque origin (`proxy::answer`), so their requests are `cross-site`, not
//! `same-origin`. The session cookie is `SameSite=Strict` besides. `fetch()`-based
//! streams (and every other method) keep needing `X-CSRF`.

use axum::http::{HeaderMap, HeaderValue, Method, header};

/// Does this request prove itself a same-origin `EventSource` (see the module docs)?
/// `public_origin` is the frontend's origin, serialised (`https://app.example`).
pub fn proves_same_origin(method: &Method, headers: &HeaderMap, public_origin: &str) -> bool {
    let is = |name: &str, value: &[u8]| {
        let mut values = headers.get_all(name).iter();
        matches!((values.next(), values.next()), (Some(v), None) if v.as_bytes() == value)
    };
    *method == Method::GET
        && accepts_event_stream(headers.get_all(header::ACCEPT).iter())
        && is("sec-fetch-site", b"same-origin")
        && is("sec-fetch-mode", b"cors")
        && is("sec-fetch-dest", b"empty")
        && origin_is(headers, public_origin)
}

fn accepts_event_stream<'a>(mut values: impl Iterator<Item = &'a HeaderValue>) -> bool {
    values.any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|range| {
            let essence = range.split(|&b| b == b';').next().unwrap_or_default();
            essence
                .trim_ascii()
                .eq_ignore_ascii_case(b"text/event-stream")
        })
    })
}

/// No `Origin`, or exactly one that is the public origin.
fn origin_is(headers: &HeaderMap, public_origin: &str) -> bool {
    let mut values = headers.get_all(header::ORIGIN).iter();
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(v), None) => v.as_bytes() == public_origin.as_bytes(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "https://app.example";

    fn chromium() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("accept", "text/event-stream"),
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "cors"),
            ("sec-fetch-dest", "empty"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_same_origin_event_source_proves_itself() {
        assert!(proves_same_origin(&Method::GET, &chromium(), ORIGIN));
        let mut h = chromium();
        h.insert("origin", HeaderValue::from_static(ORIGIN));
        assert!(proves_same_origin(&Method::GET, &h, ORIGIN));
        let mut h = chromium();
        h.insert(
            "accept",
            HeaderValue::from_static("application/json, Text/Event-Stream;q=0.9"),
        );
        assert!(proves_same_origin(&Method::GET, &h, ORIGIN));
    }

    #[test]
    fn anything_else_needs_the_header() {
        assert!(!proves_same_origin(&Method::POST, &chromium(), ORIGIN));
        assert!(!proves_same_origin(&Method::HEAD, &chromium(), ORIGIN));
        for (name, value) in [
            ("accept", "application/json"),
            ("accept", "text/event-streamx"),
            ("sec-fetch-site", "same-site"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "none"),
            ("sec-fetch-site", "SAME-ORIGIN"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-mode", "no-cors"),
            ("sec-fetch-mode", "same-origin"),
            ("sec-fetch-dest", "document"),
            ("sec-fetch-dest", "iframe"),
            ("sec-fetch-dest", "script"),
            ("origin", "null"),
            ("origin", "https://evil.example"),
            ("origin", "https://app.example:8443"),
        ] {
            let mut h = chromium();
            h.insert(name, HeaderValue::from_static(value));
            assert!(
                !proves_same_origin(&Method::GET, &h, ORIGIN),
                "{name}: {value}"
            );
        }
        for missing in [
            "accept",
            "sec-fetch-site",
            "sec-fetch-mode",
            "sec-fetch-dest",
        ] {
            let mut h = chromium();
            h.remove(missing);
            assert!(
                !proves_same_origin(&Method::GET, &h, ORIGIN),
                "no {missing}"
            );
        }
        // Repeated Fetch Metadata is not what a browser sends.
        let mut h = chromium();
        h.append("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(!proves_same_origin(&Method::GET, &h, ORIGIN));
        let mut h = chromium();
        h.append("origin", HeaderValue::from_static(ORIGIN));
        h.append("origin", HeaderValue::from_static(ORIGIN));
        assert!(!proves_same_origin(&Method::GET, &h, ORIGIN));
    }
}
