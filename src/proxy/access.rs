//! Phase: a route's access rules, applied before anything goes upstream.
//!
//! - **Methods** (`routes[].methods`): an allow-list; any other method is answered
//!   405 `method_not_allowed` with `Allow`, before the session is even loaded (the
//!   browser-based-apps BCP recommends limiting each endpoint to its methods). `GET`
//!   brings `HEAD`.
//! - **Claims** (`routes[].require`): every rule must hold on the session's claims
//!   (the ID token's, then userinfo's, as stored at login); else 403 `forbidden`,
//!   with an audit event naming the route and the rule (never the claim's value).
//! - **Step-up** (`routes[].acr_values`, `routes[].max_age`): the session's `acr`
//!   must be one of the route's and its `auth_time` recent enough; else 401
//!   `step_up_required` with a login URL that asks the provider for them (see
//!   [`super::step_up`]). A provider that ignores the request gives a session that
//!   still does not pass the route.
//!
//! A route without rules carries no `upstream::access::Access` and pays nothing.

use axum::http::Method;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::frontend::Frontend;
use crate::session::SessionRecord;
use crate::upstream::Route;
pub(crate) use crate::upstream::access::auth_time;
use crate::upstream::access::holds;

/// Phase: the route's method allow-list (405 with `Allow` for any other method).
pub fn check_method(route: &Route, method: &Method) -> Result<(), ApiError> {
    let Some((methods, allow)) = route.access.as_ref().and_then(|a| a.methods.as_ref()) else {
        return Ok(());
    };
    if methods.contains(method) {
        return Ok(());
    }
    Err(ApiError::MethodNotAllowed {
        method: method.clone(),
        allow,
    })
}

/// Phase: the route's claim and step-up rules on the session `record`.
pub fn check_session(
    frontend: &Frontend,
    route: &Route,
    record: &SessionRecord,
) -> Result<(), ApiError> {
    let Some(access) = route.access.as_deref().filter(|a| a.reads_claims()) else {
        return Ok(());
    };
    let claims: Map<String, Value> = serde_json::from_str(&record.claims)
        .map_err(|e| ApiError::Internal(format!("the session's claims are not JSON: {e}")))?;
    for (i, rule) in access.require.iter().enumerate() {
        if !holds(rule, &claims) {
            tracing::warn!(
                target: "portcullis::audit",
                event = "access_denied",
                route = route.label,
                rule = i,
                claim = %rule.claim.label(),
                sub = %record.sub,
                session = %record.key.log_label(),
            );
            return Err(ApiError::Forbidden(format!(
                "route {}: require[{i}] ({}) does not hold",
                route.prefix,
                rule.claim.label()
            )));
        }
    }
    let acr_ok = access.acr_values.as_ref().is_none_or(|(values, _)| {
        claims
            .get("acr")
            .and_then(Value::as_str)
            .is_some_and(|acr| values.iter().any(|v| v == acr))
    });
    let age_ok = access.max_age.is_none_or(|max_age| {
        auth_time(&claims)
            .is_some_and(|t| crate::primitives::now_secs().saturating_sub(t) <= max_age as i64)
    });
    if acr_ok && age_ok {
        return Ok(());
    }
    let why = match (acr_ok, age_ok) {
        (false, true) => "the session's acr is not one of the route's acr_values",
        (true, false) => "the session's authentication is older than the route's max_age",
        _ => "the session's acr and auth_time don't meet the route's acr_values and max_age",
    };
    Err(super::step_up::required(
        frontend,
        access
            .acr_values
            .as_ref()
            .map(|(_, joined)| joined.as_str()),
        access.max_age,
        format!("route {}: {why}", route.prefix),
    ))
}
