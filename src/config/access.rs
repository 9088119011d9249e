//! Per-route access rules as configured: the `methods` allow-list, the claim
//! requirements (`require`) and the step-up requirements (`acr_values`, `max_age`),
//! and their validation. `proxy::access` applies them.

use serde::Deserialize;

use super::{ConfigError, RouteConfig, TokenKind, invalid};

/// One claim requirement of `routes[].require`: the session's claim `claim` (as the
/// provider sent it in the ID token or userinfo) must satisfy exactly one of
/// `equals`, `contains` or `contains_any`. All of a route's rules must hold.
///
/// ```toml
/// require = [
///   { claim = "groups", contains = "admins" },
///   { claim = "email_verified", equals = true },
///   { claim = ["realm_access", "roles"], contains_any = ["editor", "owner"] },
/// ]
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClaimRule {
    /// The claim: a name taken literally (dots included, as in Auth0's
    /// `https://example.com/roles`), or a list of names, a path into nested objects
    /// (Keycloak's `["realm_access", "roles"]`).
    pub claim: ClaimPath,
    /// The claim is exactly this string, boolean or integer.
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    /// The claim is an array holding this string, or this string itself.
    #[serde(default)]
    pub contains: Option<String>,
    /// The claim is an array holding at least one of these strings, or one of them.
    #[serde(default)]
    pub contains_any: Option<Vec<String>>,
}

/// A claim's name, or its path into nested objects.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ClaimPath {
    Name(String),
    Path(Vec<String>),
}

impl ClaimPath {
    /// The names from the top-level object down.
    pub fn segments(&self) -> &[String] {
        match self {
            Self::Name(n) => std::slice::from_ref(n),
            Self::Path(p) => p,
        }
    }

    /// For logs and errors: the names joined by " → ".
    pub fn label(&self) -> String {
        self.segments().join(" → ")
    }
}

/// The methods a route may never allow (`security::headers` refuses them everywhere).
const NEVER: &[&str] = &["TRACE", "TRACK", "CONNECT"];

/// The longest `acr_values` (all values, space-joined) and `max_age` a route may ask for:
/// the bounds `/bff/login` accepts.
pub const MAX_ACR_VALUES_LEN: usize = 256;
pub const MAX_MAX_AGE_SECS: u64 = 366 * 24 * 3600;

/// Is `value` one ACR value as Portcullis passes it on: the characters of a URI
/// (RFC 3986: letters, digits, `-._~:/?#[]@!$&'()*+,;=%`), so URNs and URLs fit, and
/// no space, quote, backslash, angle bracket or control character ever does.
pub fn is_acr_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b))
}

/// The access-rule keys of one frontend's routes; `prefix` as in `validate_routes`.
/// `login_params`: the frontend's `oidc.login_params` (a route's step-up login
/// needs `acr_values` / `max_age` among them).
pub(super) fn validate(
    routes: &[RouteConfig],
    login_params: &[String],
    prefix: &str,
) -> Result<(), ConfigError> {
    for (i, route) in routes.iter().enumerate() {
        let key = |field: &str| format!("{prefix}routes[{i}].{field}");
        if let Some(methods) = &route.methods {
            if methods.is_empty() {
                return Err(invalid(
                    &key("methods"),
                    "must name at least one method (leave it out to allow all)",
                ));
            }
            for (m, method) in methods.iter().enumerate() {
                let key = key(&format!("methods[{m}]"));
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(invalid(
                        &key,
                        format!(
                            "{method:?} is not an HTTP method (write it in capitals, e.g. \"GET\")"
                        ),
                    ));
                }
                if NEVER.contains(&method.as_str()) {
                    return Err(invalid(&key, format!("{method} is never proxied")));
                }
                if methods[..m].contains(method) {
                    return Err(invalid(&key, format!("{method} is listed twice")));
                }
            }
        }
        let session_only = |field: &str| {
            if matches!(route.token, TokenKind::User | TokenKind::Exchange) {
                Ok(())
            } else {
                Err(invalid(
                    &key(field),
                    "applies to routes that require a session (token = \"user\" or \"exchange\")",
                ))
            }
        };
        if let Some(rules) = &route.require {
            session_only("require")?;
            for (r, rule) in rules.iter().enumerate() {
                let key = |field: &str| key(&format!("require[{r}].{field}"));
                let segments = rule.claim.segments();
                if segments.is_empty() || segments.iter().any(String::is_empty) {
                    return Err(invalid(&key("claim"), "must name a claim"));
                }
                let given = [
                    rule.equals.is_some(),
                    rule.contains.is_some(),
                    rule.contains_any.is_some(),
                ];
                if given.iter().filter(|g| **g).count() != 1 {
                    return Err(invalid(
                        &key("claim"),
                        "needs exactly one of equals, contains, contains_any",
                    ));
                }
                if let Some(v) = &rule.equals
                    && !(v.is_string() || v.is_boolean() || v.is_i64() || v.is_u64())
                {
                    return Err(invalid(
                        &key("equals"),
                        "must be a string, a boolean or an integer",
                    ));
                }
                if rule.contains_any.as_ref().is_some_and(Vec::is_empty) {
                    return Err(invalid(&key("contains_any"), "must not be empty"));
                }
            }
        }
        if let Some(acr) = &route.acr_values {
            session_only("acr_values")?;
            if acr.is_empty() {
                return Err(invalid(&key("acr_values"), "must not be empty"));
            }
            if let Some(bad) = acr.iter().find(|v| !is_acr_value(v)) {
                return Err(invalid(
                    &key("acr_values"),
                    format!(
                        "{bad:?} is not an ACR value (the characters of a URI: no spaces, quotes or angle brackets)"
                    ),
                ));
            }
            if acr.iter().map(|v| v.len() + 1).sum::<usize>() > MAX_ACR_VALUES_LEN + 1 {
                return Err(invalid(
                    &key("acr_values"),
                    format!("must be at most {MAX_ACR_VALUES_LEN} characters in all"),
                ));
            }
            if !login_params.iter().any(|p| p == "acr_values") {
                return Err(invalid(
                    &key("acr_values"),
                    "needs \"acr_values\" in oidc.login_params (the step-up login sends it)",
                ));
            }
        }
        if let Some(max_age) = route.max_age {
            session_only("max_age")?;
            if max_age.as_secs() < 60 {
                return Err(invalid(
                    &key("max_age"),
                    "must be at least 60s (a login takes a while: a shorter one could never be met)",
                ));
            }
            if max_age.as_secs() > MAX_MAX_AGE_SECS {
                return Err(invalid(&key("max_age"), "must be at most 366 days"));
            }
            if !login_params.iter().any(|p| p == "max_age") {
                return Err(invalid(
                    &key("max_age"),
                    "needs \"max_age\" in oidc.login_params (the step-up login sends it)",
                ));
            }
        }
    }
    Ok(())
}
