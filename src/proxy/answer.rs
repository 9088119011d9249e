//! What an upstream's answer may say to the browser: the upstream speaks on the SPA's
//! origin, so Portcullis keeps it from touching what Portcullis owns there.
//!
//! - **Portcullis's cookies are Portcullis's.** A `Set-Cookie` naming any frontend's
//!   session or login-binding cookie is dropped (and logged with the route, never the
//!   value): otherwise a header-injection bug or a compromised upstream could swap the
//!   victim into the attacker's session, plant a login binding, or delete the session.
//!   Names compare case-insensitively and with any `__Host-`/`__Secure-` prefix
//!   removed, so `__host-portcullis`, `__Secure-portcullis` and `portcullis` are
//!   refused too (cookie names are case-sensitive in RFC 6265, but browsers have
//!   matched the prefixes case-insensitively and servers differ; refusing more is
//!   cheap). A name-less cookie (`=name=value`, or no `=`), which browsers send back
//!   as its bare value, is judged by that value. `Clear-Site-Data` naming `"cookies"`
//!   (or `"*"`) would delete the session cookie too, so it is dropped as well.
//! - **Answers to session requests are never stored by a shared cache.** When the
//!   session's token went upstream, `Cache-Control` gets `private` (`public`,
//!   `s-maxage` and a field-qualified `private="…"` are removed: they would let a shared
//!   cache keep it), and CDN-targeted cache controls (`CDN-Cache-Control`,
//!   `Surrogate-Control`, RFC 9213) are removed. Routes whose answer depends on
//!   whether there is a session (`user_or_none`, `user_or_client`) get `Vary: Cookie`
//!   on every answer, so a cache never hands the anonymous answer to a signed-in user
//!   or the other way round. `none` and `client` routes keep the upstream's caching.
//! - **Upstream documents are sandboxed.** A document a browser would render with
//!   script — `text/html`, XHTML, SVG, XML, or no `Content-Type` at all — gets
//!   [`SANDBOX_CSP`] added beside the upstream's own policy (browsers enforce both),
//!   unless the route sets `html_sandbox = false`. (`nosniff` on every answer is the
//!   outer headers layer's, `security::headers`.)

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::TokenKind;
use crate::upstream::Route;

/// The policy of a proxied document. `sandbox` without `allow-scripts` or
/// `allow-same-origin`: no script runs, and the document is an opaque origin — it
/// can't read this origin's cookies or storage, and its requests are cross-site, so
/// the `SameSite=Strict` session cookie never goes with them. No forms, popups or
/// top-level navigation. `default-src 'none'` loads nothing, except this origin's
/// images and styles (inline ones too) so an upstream's plain pages still read well.
/// `frame-ancestors 'self'`: the SPA may frame it, no other site may.
pub const SANDBOX_CSP: &str = "sandbox; default-src 'none'; img-src 'self' data:; \
     style-src 'self' 'unsafe-inline'; frame-ancestors 'self'; base-uri 'none'; \
     form-action 'none'";

static CLEAR_SITE_DATA: HeaderName = HeaderName::from_static("clear-site-data");
static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// Phase: the upstream's headers made safe to hand to the browser. `own` are every
/// frontend's cookie names; `session` says whether the session's token went upstream.
pub fn clean(headers: &mut HeaderMap, route: &Route, own: &[String], session: bool) {
    // Taken before anything is removed: a name seen here may be gone by the time it is
    // looked at (the lookup then finds nothing); a name not seen is not there.
    let present = Present::of(headers);
    crate::upstream::rewrite::clean_response(headers);
    if present.set_cookie {
        drop_own_set_cookies(headers, own, route.label);
    }
    if present.clear_site_data && clears_cookies(headers) {
        tracing::warn!(
            route = route.label,
            "dropped an upstream Clear-Site-Data that would delete Portcullis's cookies"
        );
        headers.remove(&CLEAR_SITE_DATA);
    }
    if session {
        make_private(headers, present);
    }
    if matches!(route.token, TokenKind::UserOrNone | TokenKind::UserOrClient) || session {
        vary_on_cookie(headers, present);
    }
    if route.html_sandbox && is_document(headers) {
        headers.append(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(SANDBOX_CSP),
        );
    }
}

/// Which of the names [`clean`] acts on an answer carries, from one pass over its
/// names: an upstream's answer usually carries none of them, and a lookup by name
/// (hash and probe) per name cost more than the pass.
#[derive(Clone, Copy, Default)]
struct Present {
    set_cookie: bool,
    clear_site_data: bool,
    cache_control: bool,
    /// A CDN-targeted cache control (`Surrogate-Control`, `*CDN-Cache-Control`).
    cdn_control: bool,
    vary: bool,
}

impl Present {
    fn of(headers: &HeaderMap) -> Self {
        let mut p = Self::default();
        for name in headers.keys() {
            if name == header::SET_COOKIE {
                p.set_cookie = true;
            } else if name == header::CACHE_CONTROL {
                p.cache_control = true;
            } else if name == header::VARY {
                p.vary = true;
            } else if name == CLEAR_SITE_DATA {
                p.clear_site_data = true;
            } else if is_cdn_control(name) {
                p.cdn_control = true;
            }
        }
        p
    }
}

/// A CDN-targeted cache control (RFC 9213), which overrides `Cache-Control` at the CDN.
fn is_cdn_control(name: &HeaderName) -> bool {
    name == SURROGATE_CONTROL || name.as_str().ends_with("cdn-cache-control")
}

/// The name a `Set-Cookie` value sets, as a browser reads it: before the first `=` of
/// the part before the first `;`, trimmed; a name-less cookie is judged by its value.
fn cookie_name(value: &[u8]) -> &[u8] {
    let pair = value.split(|&b| b == b';').next().unwrap_or_default();
    let pair = pair.trim_ascii();
    let (name, rest) = match pair.iter().position(|&b| b == b'=') {
        Some(i) => (pair[..i].trim_ascii(), &pair[i + 1..]),
        None => (&b""[..], pair),
    };
    if !name.is_empty() {
        return name;
    }
    // `=x=y` and `x` set a cookie without a name whose value the browser sends alone.
    let rest = rest.trim_ascii();
    match rest.iter().position(|&b| b == b'=') {
        Some(i) => rest[..i].trim_ascii(),
        None => rest,
    }
}

/// `name` without a leading `__Host-` or `__Secure-` (any casing).
fn unprefixed(name: &[u8]) -> &[u8] {
    for prefix in [&b"__host-"[..], b"__secure-"] {
        if name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix) {
            return &name[prefix.len()..];
        }
    }
    name
}

/// Does a `Set-Cookie` value name one of `own` (see the module docs)?
pub fn names_own_cookie(value: &[u8], own: &[String]) -> bool {
    let name = unprefixed(cookie_name(value));
    own.iter()
        .any(|o| unprefixed(o.as_bytes()).eq_ignore_ascii_case(name))
}

fn drop_own_set_cookies(headers: &mut HeaderMap, own: &[String], route: &str) {
    let set = headers.get_all(header::SET_COOKIE);
    if !set.iter().any(|v| names_own_cookie(v.as_bytes(), own)) {
        return;
    }
    let kept: Vec<HeaderValue> = set
        .iter()
        .filter(|v| !names_own_cookie(v.as_bytes(), own))
        .cloned()
        .collect();
    let dropped = headers.get_all(header::SET_COOKIE).iter().count() - kept.len();
    tracing::warn!(
        route,
        dropped,
        "dropped an upstream Set-Cookie naming a Portcullis cookie"
    );
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
}

fn clears_cookies(headers: &HeaderMap) -> bool {
    headers.get_all(&CLEAR_SITE_DATA).iter().any(|v| {
        let v = v.as_bytes();
        contains_ignore_case(v, b"\"cookies\"") || contains_ignore_case(v, b"\"*\"")
    })
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// `Cache-Control` directives, split on commas outside quoted strings.
fn directives(value: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    value
        .split(move |c: char| {
            if escaped {
                escaped = false;
                return false;
            }
            match c {
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => return true,
                _ => {}
            }
            false
        })
        .map(str::trim)
        .filter(|d| !d.is_empty())
}

/// The directive's name, lowercase comparison left to the caller.
fn directive_name(d: &str) -> &str {
    d.split_once('=').map_or(d, |(n, _)| n).trim()
}

/// Would a shared cache be allowed to keep this `Cache-Control` directive's answer,
/// or is it a directive `private` replaces?
fn shared_only(d: &str) -> bool {
    let name = directive_name(d);
    name.eq_ignore_ascii_case("public")
        || name.eq_ignore_ascii_case("s-maxage")
        || (name.eq_ignore_ascii_case("private") && d.contains('='))
}

fn is_bare_private(d: &str) -> bool {
    d.eq_ignore_ascii_case("private")
}

static PRIVATE: HeaderValue = HeaderValue::from_static("private");

fn make_private(headers: &mut HeaderMap, present: Present) {
    if present.cdn_control {
        let cdn: Vec<HeaderName> = headers
            .keys()
            .filter(|k| is_cdn_control(k))
            .cloned()
            .collect();
        for k in cdn {
            headers.remove(k);
        }
    }
    if !present.cache_control {
        headers.insert(header::CACHE_CONTROL, PRIVATE.clone());
        return;
    }
    let values = headers.get_all(header::CACHE_CONTROL);
    let mut iter = values.iter();
    let Some(first) = iter.next() else {
        headers.insert(header::CACHE_CONTROL, PRIVATE.clone());
        return;
    };
    let single = iter.next().is_none();
    // The usual cases cost nothing: already `private` (or `no-store`) and nothing shared.
    if single && let Ok(v) = first.to_str() {
        let shared = directives(v).any(shared_only);
        let private =
            directives(v).any(|d| is_bare_private(d) || d.eq_ignore_ascii_case("no-store"));
        if private && !shared {
            return;
        }
    }
    let mut value = String::from("private");
    for v in headers.get_all(header::CACHE_CONTROL) {
        // Unreadable: dropped (`private` alone is the safe answer).
        let Ok(v) = v.to_str() else { continue };
        for d in directives(v).filter(|d| !shared_only(d) && !is_bare_private(d)) {
            value.push_str(", ");
            value.push_str(d);
        }
    }
    let value = HeaderValue::try_from(value).unwrap_or_else(|_| PRIVATE.clone());
    headers.insert(header::CACHE_CONTROL, value);
}

static COOKIE_VARY: HeaderValue = HeaderValue::from_static("Cookie");

fn vary_on_cookie(headers: &mut HeaderMap, present: Present) {
    let covered = present.vary
        && headers.get_all(header::VARY).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .any(|f| f == b"*" || f.eq_ignore_ascii_case(b"cookie"))
        });
    if !covered {
        headers.append(header::VARY, COOKIE_VARY.clone());
    }
}

/// Would a browser render this answer as a document that can run script?
fn is_document(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return true; // unlabelled: what a browser makes of it is up to the browser
    };
    let essence = ct
        .as_bytes()
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let is = |t: &[u8]| essence.eq_ignore_ascii_case(t);
    let ends = |t: &[u8]| essence.len() >= t.len() && is_suffix(essence, t);
    essence.is_empty()
        || is(b"text/html")
        || is(b"application/xhtml+xml")
        || is(b"text/xml")
        || is(b"application/xml")
        || is(b"text/xsl")
        || ends(b"+xml")
        || !essence.contains(&b'/')
}

fn is_suffix(s: &[u8], suffix: &[u8]) -> bool {
    s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Vec<String> {
        vec![
            "__Host-portcullis".into(),
            "__Host-portcullis-login".into(),
            "__Host-shop".into(),
            "__Host-shop-login".into(),
        ]
    }

    #[test]
    fn set_cookies_naming_ours_are_recognised() {
        for bad in [
            "__Host-portcullis=evil",
            "__Host-portcullis=evil; Path=/; Secure; HttpOnly; SameSite=Strict",
            "   __Host-portcullis=evil",
            "\t__Host-portcullis =evil",
            "__host-portcullis=evil",
            "__HOST-PORTCULLIS=evil",
            "__Secure-portcullis=evil; Secure",
            "__secure-Portcullis=evil",
            "portcullis=evil",
            "__Host-portcullis-login=planted; Max-Age=600",
            "__Host-shop=other-frontend",
            "__Host-portcullis=; Max-Age=0",
            "__Host-portcullis",
            "=__Host-portcullis=evil",
            " = __Host-portcullis=evil; Path=/",
            "__Host-portcullis=evil; __Host-portcullis=again",
        ] {
            assert!(names_own_cookie(bad.as_bytes(), &own()), "{bad:?}");
        }
        for ok in [
            "theme=dark",
            "__Host-portcullisx=1",
            "portcullis-theme=1",
            "x=__Host-portcullis",
            "x=1; __Host-portcullis=attribute-not-a-name",
            "__Host-__Host-portcullis=1",
            "",
        ] {
            assert!(!names_own_cookie(ok.as_bytes(), &own()), "{ok:?}");
        }
    }

    /// `headers` as [`clean`] leaves a session's answer on a `user` route.
    fn cleaned(headers: &mut HeaderMap) {
        let route = crate::upstream::test_route("/api", "http://up:1", false, TokenKind::User);
        clean(headers, &route, &own(), true);
    }

    #[test]
    fn an_answer_is_cleaned_whatever_it_carries_and_wherever_it_names_it() {
        // Each case: the upstream's headers, then the names and values left.
        type Lines = &'static [(&'static str, &'static str)];
        let cases: &[(Lines, Lines)] = &[
            // The usual answer: nothing to drop; private, Vary: Cookie.
            (
                &[
                    ("content-type", "application/json"),
                    ("content-length", "2"),
                ],
                &[
                    ("cache-control", "private"),
                    ("content-length", "2"),
                    ("content-type", "application/json"),
                    ("vary", "Cookie"),
                ],
            ),
            // Everything at once, in other casings, beside lines that stay.
            (
                &[
                    ("content-type", "application/json"),
                    ("Set-Cookie", "__HOST-portcullis=planted; Path=/"),
                    ("set-cookie", "theme=dark"),
                    ("Clear-Site-Data", "\"cache\", \"COOKIES\""),
                    ("Cache-Control", "public, max-age=60"),
                    ("VARY", "Accept"),
                    ("Surrogate-Control", "max-age=600"),
                    ("Fastly-CDN-Cache-Control", "max-age=600"),
                ],
                &[
                    ("cache-control", "private, max-age=60"),
                    ("content-type", "application/json"),
                    ("set-cookie", "theme=dark"),
                    ("vary", "Accept"),
                    ("vary", "Cookie"),
                ],
            ),
            // A Clear-Site-Data that spares cookies stays; a Vary that covers Cookie is
            // enough; a private Cache-Control is kept as it is.
            (
                &[
                    ("content-type", "application/json"),
                    ("clear-site-data", "\"cache\""),
                    ("vary", "accept, cookie"),
                    ("cache-control", "no-store"),
                ],
                &[
                    ("cache-control", "no-store"),
                    ("clear-site-data", "\"cache\""),
                    ("content-type", "application/json"),
                    ("vary", "accept, cookie"),
                ],
            ),
            // Headers the upstream's Connection names go first; what is left of the
            // rest is still made safe.
            (
                &[
                    ("content-type", "application/json"),
                    ("connection", "keep-alive, cache-control, vary, set-cookie"),
                    ("cache-control", "public"),
                    ("vary", "Cookie"),
                    ("set-cookie", "__Host-portcullis=planted"),
                ],
                &[
                    ("cache-control", "private"),
                    ("content-type", "application/json"),
                    ("vary", "Cookie"),
                ],
            ),
        ];
        for (given, left) in cases {
            let mut h = HeaderMap::new();
            for (name, value) in *given {
                h.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            cleaned(&mut h);
            let mut got: Vec<(&str, &str)> = h
                .iter()
                .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
                .collect();
            got.sort_unstable();
            assert_eq!(got, *left, "{given:?}");
        }
    }

    fn cc(values: &[&str]) -> String {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        }
        cleaned(&mut h);
        let all: Vec<_> = h
            .get_all(header::CACHE_CONTROL)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        all.join(" | ")
    }

    #[test]
    fn session_answers_become_private() {
        assert_eq!(cc(&[]), "private");
        assert_eq!(cc(&["max-age=600"]), "private, max-age=600");
        assert_eq!(cc(&["public, max-age=600"]), "private, max-age=600");
        assert_eq!(cc(&["PUBLIC, S-MAXAGE=600"]), "private");
        assert_eq!(cc(&["max-age=60, s-maxage=600"]), "private, max-age=60");
        assert_eq!(cc(&["private"]), "private");
        assert_eq!(cc(&["no-store"]), "no-store");
        assert_eq!(cc(&["private, max-age=5"]), "private, max-age=5");
        assert_eq!(
            cc(&["private=\"set-cookie, x\", max-age=600"]),
            "private, max-age=600"
        );
        assert_eq!(
            cc(&["public", "max-age=600", "must-revalidate"]),
            "private, max-age=600, must-revalidate"
        );
        assert_eq!(
            cc(&["no-cache=\"a,public\", public"]),
            "private, no-cache=\"a,public\""
        );

        let mut h = HeaderMap::new();
        h.insert("cdn-cache-control", HeaderValue::from_static("max-age=600"));
        h.insert(
            "cloudflare-cdn-cache-control",
            HeaderValue::from_static("max-age=600"),
        );
        h.insert("surrogate-control", HeaderValue::from_static("max-age=600"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        cleaned(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["cache-control", "content-type", "vary", "x-kept"]);
    }

    #[test]
    fn vary_cookie_is_added_once() {
        let vary = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::VARY, HeaderValue::from_str(v).unwrap());
            }
            cleaned(&mut h);
            h.get_all(header::VARY)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(vary(&[]), ["Cookie"]);
        assert_eq!(vary(&["Accept-Encoding"]), ["Accept-Encoding", "Cookie"]);
        assert_eq!(vary(&["accept, COOKIE"]), ["accept, COOKIE"]);
        assert_eq!(vary(&["*"]), ["*"]);
    }

    #[test]
    fn documents_are_recognised() {
        let doc = |ct: Option<&[u8]>| {
            let mut h = HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_bytes(ct).unwrap());
            }
            is_document(&h)
        };
        for yes in [
            &b"text/html"[..],
            b"TEXT/HTML",
            b"Text/Html; charset=utf-8",
            b" text/html ;charset=x",
            b"application/xhtml+xml",
            b"image/svg+xml",
            b"text/xml",
            b"application/xml",
            b"application/rss+xml",
            b"",
            b"html",
        ] {
            assert!(doc(Some(yes)), "{:?}", String::from_utf8_lossy(yes));
        }
        assert!(doc(None));
        for no in [
            &b"application/json"[..],
            b"text/plain",
            b"image/png",
            b"application/octet-stream",
            b"text/css",
            b"text/html-sandboxed",
        ] {
            assert!(!doc(Some(no)), "{:?}", String::from_utf8_lossy(no));
        }
    }
}
