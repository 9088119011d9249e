//! Where a failed login ends: a page of the SPA for a person, the JSON error for code.
//!
//! A login callback is the provider sending the *browser* back, so a failure there
//! (an expired or foreign `state`, the provider's `error=`, a failed code exchange)
//! is seen by a person. When the callback is a top-level navigation
//! ([`is_navigation`](crate::security::is_navigation)), the browser is sent to a page
//! of the SPA with a machine-readable code in the query, `?bff_error=CODE`, so the
//! SPA can say what happened and offer to log in again; a `fetch`/XHR caller still
//! gets the contract's JSON error. The page is `oidc.login_error_path` when set, else
//! the login's own `returnUrl` (a path validated when the login started), else the
//! frontend's root: always a local path of this frontend, never a URL from the
//! request, so this is no open redirector. The detail is logged as for the JSON error.
//!
//! The codes ([`LoginFailure::code`]):
//! - `login_expired` — the login is unknown, already used or older than
//!   `oidc.pending_login_ttl` (a bookmarked or reloaded callback, a slow login)
//! - `login_other_browser` — the login was started in another browser, or on another
//!   host name of this gateway (its binding cookie is missing)
//! - `login_refused` — the provider answered `error=` (the user cancelled, the client
//!   is not allowed, …); its code is added as `provider_error=` when it is plain
//! - `login_failed` — anything else about the response (mix-up `iss`, a failed code
//!   exchange or ID token validation)
//! - `idp_unavailable`, `store_unavailable`, `internal_error` — as the JSON error would say

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorCode};
use crate::frontend::Frontend;

/// A failed callback: the JSON error, the code the SPA gets, and the login's `returnUrl`
/// when the login was known.
#[derive(Debug)]
pub struct LoginFailure {
    pub error: ApiError,
    pub code: &'static str,
    pub return_url: Option<String>,
    /// The provider's `error` code, for `login_refused`.
    pub provider_error: Option<String>,
}

impl LoginFailure {
    pub fn new(code: &'static str, error: ApiError) -> Self {
        Self {
            error,
            code,
            return_url: None,
            provider_error: None,
        }
    }

    /// The failure of a login whose `returnUrl` is known.
    pub fn of(mut self, return_url: &str) -> Self {
        self.return_url = Some(return_url.to_owned());
        self
    }

    /// The answer: the SPA page for a navigation, else the JSON error.
    pub fn into_answer(self, frontend: &Frontend, navigation: bool) -> Response {
        if !navigation {
            return self.error.into_response();
        }
        self.error.log();
        let base = match (&frontend.config.oidc.login_error_path, &self.return_url) {
            (Some(path), _) => path.clone(),
            (None, Some(url)) => url.clone(),
            (None, None) => frontend.path("/"),
        };
        let mut params = format!("bff_error={}", self.code);
        if let Some(e) = self.provider_error.as_deref().filter(|e| plain_code(e)) {
            params.push_str("&provider_error=");
            params.push_str(e);
        }
        let location = with_query(&base, &params);
        let Ok(value) = HeaderValue::try_from(location) else {
            return ApiError::Internal("login error location is not a header value".into())
                .into_response();
        };
        let mut response = (
            StatusCode::FOUND,
            [
                (header::LOCATION, value),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response();
        response
            .extensions_mut()
            .insert(ErrorCode(self.error.code()));
        response
    }
}

impl From<ApiError> for LoginFailure {
    fn from(error: ApiError) -> Self {
        let code = match &error {
            ApiError::IdpUnavailable(_) => "idp_unavailable",
            ApiError::StoreUnavailable(_) => "store_unavailable",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal(_) => "internal_error",
            _ => "login_failed",
        };
        Self::new(code, error)
    }
}

/// An OAuth error code as RFC 6749 §4.1.2.1 allows it, short: safe to pass on as is.
fn plain_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `path` with `params` added to its query, before any fragment.
fn with_query(path: &str, params: &str) -> String {
    let (before, fragment) = match path.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (path, None),
    };
    let sep = if before.contains('?') { '&' } else { '?' };
    let mut out = format!("{before}{sep}{params}");
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_goes_into_the_query_before_the_fragment() {
        assert_eq!(with_query("/", "bff_error=x"), "/?bff_error=x");
        assert_eq!(with_query("/a?b=1", "bff_error=x"), "/a?b=1&bff_error=x");
        assert_eq!(
            with_query("/a?b=1#/route", "bff_error=x"),
            "/a?b=1&bff_error=x#/route"
        );
        assert_eq!(with_query("/a#f", "bff_error=x"), "/a?bff_error=x#f");
    }

    #[test]
    fn only_plain_provider_codes_are_passed_on() {
        assert!(plain_code("access_denied"));
        assert!(!plain_code(""));
        assert!(!plain_code("a&b=c"));
        assert!(!plain_code("Access Denied"));
        assert!(!plain_code(&"a".repeat(65)));
    }
}
