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

/// Finds the first cookie named `name` in the request's `Cookie` headers.
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, value) = pair.trim().split_once('=')?;
            (n.trim() == name).then(|| value.trim().trim_matches('"'))
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
}
