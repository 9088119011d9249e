//! The cookies Portcullis sets, and reading them back.
//!
//! The session cookie carries only the opaque id and is `HttpOnly` (no script can
//! read it), `Secure`, `SameSite=Strict` by default (not sent on cross-site
//! requests: the first CSRF layer), `Path=/` with no `Domain` and the `__Host-`
//! prefix (the browser pins it to this exact origin; a sibling subdomain can't set
//! or shadow it).
//!
//! The login-binding cookie ties a pending login to the browser that started it,
//! so a `state` stolen or injected into another browser is useless. It is
//! `SameSite=Lax` because it must come back on the provider's top-level redirect
//! to `/bff/callback`. Its value is the server-issued binding of each of the
//! browser's logins in progress, `.`-separated: many tabs can log in at once, and a
//! value the client sends is never adopted for a new login (`bff::login`).

use axum::http::{HeaderMap, HeaderValue, header};
use cookie::{Cookie, SameSite};

use crate::config::SameSite as ConfigSameSite;

/// Name of the login-binding cookie (without `[[frontends]]`).
pub use crate::config::values::LOGIN_COOKIE;

/// Finds the first cookie named `name` in the request's `Cookie` headers: the value of
/// the first `name=value` pair of any line, spaces and tabs around the name and the
/// value and the value's surrounding `"` left out.
///
/// Read as bytes, pair by pair (`memchr` finds each `;`), rather than as `str`, which
/// checks every byte of the line first. A value that is not visible ASCII (spaces and
/// tabs inside allowed) is not returned, but another cookie's bytes outside it don't
/// hide it: a browser that keeps a script's UTF-8 cookie beside the session's still
/// sends a session.
///
/// `name` is a cookie name as the configuration allows (a token: no `=`, `;` or blank).
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    debug_assert!(
        !name.contains(['=', ';', ' ', '\t']),
        "{name:?} is not a cookie name"
    );
    if name.is_empty() {
        return None;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .find_map(|line| in_line(line.as_bytes(), name.as_bytes()))
}

/// The value of the first pair named `name` in one `Cookie` line.
fn in_line<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a str> {
    pairs(line)
        .find_map(|pair| match name_and_value(pair) {
            (n, value) if n == name => value,
            _ => None,
        })
        .and_then(|value| {
            let quote = |c: &u8| *c == b'"';
            let value = &value[value.iter().take_while(|c| quote(c)).count()..];
            let value = &value[..value.len() - value.iter().rev().take_while(|c| quote(c)).count()];
            // Header bytes are visible ASCII, blanks or obs-text: ASCII is readable.
            std::str::from_utf8(value).ok().filter(|v| v.is_ascii())
        })
}

/// A `Cookie` pair's name and, after its first `=`, its value, blanks around each
/// left out (a pair without `=` is all name).
pub fn name_and_value(pair: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr::memchr(b'=', pair) {
        Some(at) => (pair[..at].trim_ascii(), Some(pair[at + 1..].trim_ascii())),
        None => (pair.trim_ascii(), None),
    }
}

/// The `;`-separated parts of a `Cookie` line, as they are (`memchr` finds each `;`).
pub fn pairs(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(line);
    std::iter::from_fn(move || {
        let line = rest?;
        Some(match memchr::memchr(b';', line) {
            Some(end) => {
                rest = Some(&line[end + 1..]);
                &line[..end]
            }
            None => {
                rest = None;
                line
            }
        })
    })
}

fn build(name: &str, value: &str, same_site: SameSite, max_age: Option<i64>) -> HeaderValue {
    let mut c = Cookie::build((name, value))
        .http_only(true)
        .secure(true)
        .same_site(same_site)
        .path("/");
    if let Some(age) = max_age {
        c = c.max_age(cookie::time::Duration::seconds(age));
    }
    HeaderValue::try_from(c.build().to_string()).expect("cookie names and values are header-safe")
}

/// The session cookie. A session cookie in the browser's sense (no `Max-Age`):
/// the server decides the session's lifetime.
pub fn session(name: &str, value: &str, same_site: ConfigSameSite) -> HeaderValue {
    let same_site = match same_site {
        ConfigSameSite::Strict => SameSite::Strict,
        ConfigSameSite::Lax => SameSite::Lax,
    };
    build(name, value, same_site, None)
}

/// Deletes a cookie set by [`session`] or [`login_binding`].
pub fn removal(name: &str) -> HeaderValue {
    build(name, "", SameSite::Strict, Some(0))
}

pub fn login_binding(name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
    build(name, value, SameSite::Lax, Some(max_age_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookie_has_every_attribute() {
        let v = session("__Host-portcullis", "abc", ConfigSameSite::Strict);
        let s = v.to_str().unwrap();
        assert!(s.starts_with("__Host-portcullis=abc"), "{s}");
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(s.contains(attr), "{attr} missing in {s}");
        }
        assert!(!s.to_ascii_lowercase().contains("domain"), "{s}");
        assert!(!s.contains("Max-Age"), "{s}");
        let lax = session("__Host-x", "v", ConfigSameSite::Lax);
        assert!(lax.to_str().unwrap().contains("SameSite=Lax"));
    }

    #[test]
    fn removal_expires_now() {
        let s = removal("__Host-portcullis");
        let s = s.to_str().unwrap();
        assert!(
            s.contains("Max-Age=0") && s.contains("Path=/") && s.contains("Secure"),
            "{s}"
        );
    }

    #[test]
    fn find_reads_the_named_cookie_only() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-portcullis=xyz;b=2"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(find(&h, "__Host-portcullis"), Some("xyz"));
        assert_eq!(find(&h, "c"), Some("3"));
        assert_eq!(find(&h, "portcullis"), None);
        assert_eq!(find(&h, "__Host-portcullis-login"), None);
        let empty = HeaderMap::new();
        assert_eq!(find(&empty, "a"), None);
        let mut odd = HeaderMap::new();
        odd.append(
            header::COOKIE,
            HeaderValue::from_static(";;=;noequals; a = 5 "),
        );
        assert_eq!(find(&odd, "a"), Some("5"));
    }

    /// The reading `find` had before it searched bytes: every line as `str`, split into
    /// pairs. It is the reference for every line it could read.
    fn split_reference<'a>(lines: &[&'a str], name: &str) -> Option<&'a str> {
        lines.iter().flat_map(|v| v.split(';')).find_map(|pair| {
            let (n, value) = pair.trim().split_once('=')?;
            (n.trim() == name).then(|| value.trim().trim_matches('"'))
        })
    }

    #[test]
    fn find_agrees_with_splitting_the_line_into_pairs_over_spellings() {
        let name = "__Host-portcullis";
        let names = [
            name,
            "__Host-portcullis-login",
            "x__Host-portcullis",
            "__Host-portculli",
            "a",
            "",
        ];
        let values = [
            "v1",
            "\"q\"",
            "\"\"qq\"\"",
            " sp ace ",
            "a=b",
            "",
            name,
            "=x",
        ];
        let joins = [";", "; ", " ;", ";\t", " ; ", ";;"];
        let around = ["=", " =", "= ", "\t=\t"];
        let mut pairs = Vec::new();
        for n in names {
            for v in values {
                for a in around {
                    pairs.push(format!("{n}{a}{v}"));
                }
            }
        }
        pairs.push("noequals".into());
        pairs.push(name.to_owned());
        pairs.push(format!("x={name}=inside"));
        let mut checked = 0;
        for (i, first) in pairs.iter().enumerate() {
            for (j, second) in pairs.iter().enumerate().step_by(7) {
                let join = joins[(i + j) % joins.len()];
                let line = format!("{first}{join}{second}");
                for lines in [vec![line.as_str()], vec![first.as_str(), second.as_str()]] {
                    let mut h = HeaderMap::new();
                    for l in &lines {
                        h.append(header::COOKIE, HeaderValue::from_str(l).unwrap());
                    }
                    for n in [name, "a"] {
                        assert_eq!(find(&h, n), split_reference(&lines, n), "{lines:?} {n}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 5_000, "{checked}");
    }

    #[test]
    fn another_cookies_bytes_dont_hide_the_session_but_its_own_bytes_must_be_readable() {
        let line = |bytes: &[u8]| {
            let mut h = HeaderMap::new();
            h.append(header::COOKIE, HeaderValue::from_bytes(bytes).unwrap());
            h
        };
        let name = "__Host-portcullis";
        let found = |bytes: &[u8]| find(&line(bytes), name).map(str::to_owned);
        assert_eq!(
            found("x=caf\u{e9}; __Host-portcullis=abc".as_bytes()).as_deref(),
            Some("abc")
        );
        assert_eq!(
            found(b"x=\xff; __Host-portcullis=abc; y=\x80").as_deref(),
            Some("abc")
        );
        assert_eq!(found(b"__Host-portcullis=ab\xffc"), None);
        assert_eq!(found(b"__Host-portcullis=\x80abc"), None);
        assert_eq!(
            found(b"__Host-portcullis=a b\tc").as_deref(),
            Some("a b\tc")
        );
        // Not a name that starts a pair: after a byte that isn't `;` or blank.
        assert_eq!(found(b"x\xff__Host-portcullis=abc"), None);
        assert_eq!(found(b"\xff;__Host-portcullis=abc").as_deref(), Some("abc"));
    }
}
