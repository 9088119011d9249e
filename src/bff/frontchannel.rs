//! `GET {prefix}/bff/frontchannel-logout?iss=…&sid=…`: OIDC Front-Channel Logout 1.0.
//!
//! When the user logs out at the provider, the provider's logout page loads this URL
//! in an iframe (§3), with its issuer and the login's `sid` (registered with
//! `frontchannel_logout_session_required = true`). The browser sends no session
//! cookie with it (a cross-site iframe, and the cookie is `SameSite=Strict`), so the
//! `sid` names the sessions to end — every session of that login at this frontend, in
//! every instance. It is the only provider-initiated logout Entra ID offers.
//!
//! Off unless `oidc.frontchannel_logout = true` (404). `iss` must be this frontend's
//! issuer (with an Entra multi-tenant template issuer: an allowed tenant's) and both
//! parameters are required (400 otherwise). The answer is a tiny page,
//! `Cache-Control: no-store`, framable only by the provider's origin
//! (`Content-Security-Policy: frame-ancestors <issuer origin>`, no `X-Frame-Options`).
//! Who can call it: anyone who knows a session's `sid` — the same authority the
//! specification gives the provider's iframe; the `sid` is the provider's random
//! session id, shown only to the SPA by `/bff/user` (which needs `X-CSRF`).

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::error::ApiError;
use crate::gateway::AppState;
use crate::gateway::Current;
use crate::session::{EndReason, SessionFilter};

#[derive(Deserialize)]
pub struct FrontchannelQuery {
    iss: Option<String>,
    sid: Option<String>,
}

/// Longest `sid` accepted (provider session ids are far shorter).
const MAX_SID: usize = 256;

pub async fn frontchannel_logout(
    State(state): State<AppState>,
    Current(fe): Current,
    Query(query): Query<FrontchannelQuery>,
) -> Response {
    if !fe.config.oidc.frontchannel_logout {
        return crate::error::not_found();
    }
    let (Some(iss), Some(sid)) = (query.iss.as_deref(), query.sid.as_deref()) else {
        return ApiError::invalid("iss and sid are required").into_response();
    };
    if !fe.oidc.is_own_issuer(iss).await {
        tracing::warn!(iss, "front-channel logout refused: another issuer");
        return ApiError::invalid("iss is not this client's issuer").into_response();
    }
    if sid.is_empty() || sid.len() > MAX_SID || sid.chars().any(char::is_control) {
        return ApiError::invalid("sid is not a valid value").into_response();
    }
    let gw = &state.gw;
    let ended = match gw
        .sessions
        .end_matching(
            &SessionFilter::Sid(sid.to_owned()),
            |record| record.frontend == fe.name && record.sid.as_deref() == Some(sid),
            EndReason::FrontchannelLogout,
        )
        .await
    {
        Ok(n) => n,
        Err(e) => return ApiError::from(e).into_response(),
    };
    tracing::info!(
        target: "portcullis::audit",
        event = "frontchannel_logout",
        sessions_ended = ended,
    );
    let ancestors = url::Url::parse(fe.oidc.issuer())
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "'none'".into());
    let csp = format!("default-src 'none'; frame-ancestors {ancestors}");
    let Ok(csp) = HeaderValue::from_str(&csp) else {
        return ApiError::Internal("frame-ancestors is not a header value".into()).into_response();
    };
    let mut response = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::CONTENT_SECURITY_POLICY, csp),
        ],
        "<!doctype html><meta charset=\"utf-8\"><title>Logged out</title><p id=\"logged-out\">Logged out.</p>\n",
    )
        .into_response();
    response.extensions_mut().insert(crate::security::Framable);
    response
}
