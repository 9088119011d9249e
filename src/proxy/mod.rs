//! The API reverse proxy: the handler of API routes — session, CSRF and token
//! injection, then the upstream layer's rewrite and client.
//!
//! A proxied request goes through named phases, each a function of its own:
//! [`RouteTable::matching`](crate::upstream::RouteTable::matching) → [`authorize`] (session, CSRF, token) →
//! [`rewrite::rewrite_request`] → forward → [`answer::clean`] → stream back.
//! Bodies stream both ways; nothing is buffered. An API route is never answered
//! with a redirect: failures are the contract's JSON errors.

pub mod answer;
mod dpop;
mod stream_end;
pub mod websocket;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::Response;

use crate::config::TokenKind;
use crate::error::ApiError;
use crate::frontend::Frontend;
use crate::gateway::{AppState, Gateway};
use crate::session::Tokens;
use crate::upstream::{Route, rewrite};

/// Proxies `request` over `route`.
pub async fn proxy(
    state: &AppState,
    frontend: &Frontend,
    route: &Route,
    request: Request,
) -> Result<Response, ApiError> {
    if websocket::is_upgrade(request.headers()) {
        return websocket::proxy(state, frontend, route, request).await;
    }
    if let Some(nonce) = &route.dpop {
        return dpop::proxy(state, frontend, route, nonce, request).await;
    }
    let (mut parts, body) = request.into_parts();
    let credential = credential(&state.gw, frontend, route, &parts.headers).await?;
    let session = credential.uses_session();
    // The session's answer may stream: it ends with the session (see `stream_end`).
    let session_id = if session {
        session_id(&parts.headers, frontend)
    } else {
        None
    };
    let token = credential.into_header()?;
    prepare(&mut parts, frontend, route, token)?;
    let response = forward(state, route, Request::from_parts(parts, body)).await?;
    let response = finish(response, frontend, route, session);
    Ok(match session_id {
        Some(id) if stream_end::may_run_long(response.headers()) => {
            stream_end::bind(response, state.gw.sessions.streams(), id.key(), route.label)
        }
        _ => response,
    })
}

/// The id of the session the request's cookie names (already loaded and checked by
/// [`credential`]).
fn session_id(
    headers: &axum::http::HeaderMap,
    frontend: &Frontend,
) -> Option<crate::session::SessionId> {
    crate::session::cookie::find(headers, &frontend.cookie_name)
        .and_then(crate::session::SessionId::parse)
}

/// What a route sends upstream, before it becomes a header.
pub(crate) enum Credential {
    None,
    /// A ready `Authorization` value (the gateway's client-credentials token).
    Header(HeaderValue),
    /// The session's tokens (the route uses the user's token).
    User(Arc<Tokens>),
}

/// Phase: decide which token the request carries. Routes that use the session
/// require `X-CSRF: 1`; `user` routes require a live session; `client` routes carry
/// the gateway's own client-credentials token.
pub async fn authorize(
    gw: &Arc<Gateway>,
    frontend: &Frontend,
    route: &Route,
    headers: &axum::http::HeaderMap,
) -> Result<Option<HeaderValue>, ApiError> {
    credential(gw, frontend, route, headers)
        .await?
        .into_header()
}

impl Credential {
    /// Did the session's token go upstream? (Its answer is then the user's alone.)
    pub(crate) fn uses_session(&self) -> bool {
        matches!(self, Self::User(_))
    }

    /// The `Authorization` value, a user token as `Bearer`.
    fn into_header(self) -> Result<Option<HeaderValue>, ApiError> {
        Ok(match self {
            Self::None => None,
            Self::Header(value) => Some(value),
            Self::User(tokens) => Some(bearer(&tokens.access_token)?),
        })
    }
}

/// The shared part of [`authorize`]: the credential, with the user's tokens left
/// whole (DPoP routes bind them to a proof instead of sending them as Bearer).
pub(crate) async fn credential(
    gw: &Arc<Gateway>,
    frontend: &Frontend,
    route: &Route,
    headers: &axum::http::HeaderMap,
) -> Result<Credential, ApiError> {
    let client_token = || async {
        let slot = route
            .client_token
            .as_ref()
            .ok_or(ApiError::Internal("route has no client token".into()))?;
        slot.authorization(&frontend.oidc, gw.config.tokens.refresh_before)
            .await
            .map(Credential::Header)
    };
    match route.token {
        TokenKind::None => Ok(Credential::None),
        TokenKind::Client => client_token().await,
        TokenKind::User | TokenKind::UserOrNone | TokenKind::UserOrClient => {
            let Some((_, record)) = gw.current_session(frontend, headers).await? else {
                return match route.token {
                    TokenKind::UserOrNone => Ok(Credential::None),
                    TokenKind::UserOrClient => client_token().await,
                    _ => Err(ApiError::Unauthenticated),
                };
            };
            crate::security::check_csrf_header(headers)?;
            Ok(Credential::User(gw.tokens.user_tokens(gw, &record).await?))
        }
    }
}

/// `Authorization: <scheme> <token>`, marked sensitive (never logged by hyper).
pub(crate) fn authorization(scheme: &str, token: &str) -> Result<HeaderValue, ApiError> {
    let mut value = String::with_capacity(scheme.len() + 1 + token.len());
    value.push_str(scheme);
    value.push(' ');
    value.push_str(token);
    let mut value = HeaderValue::try_from(value)
        .map_err(|_| ApiError::Internal("access token is not a header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

fn bearer(token: &str) -> Result<HeaderValue, ApiError> {
    authorization("Bearer", token)
}

/// Phase: the browser's request made the upstream's (see [`rewrite::rewrite_request`]),
/// with the trace context when exporting traces.
fn prepare(
    parts: &mut axum::http::request::Parts,
    frontend: &Frontend,
    route: &Route,
    token: Option<HeaderValue>,
) -> Result<(), ApiError> {
    let peer = crate::security::peer_ip(&parts.extensions);
    rewrite::rewrite_request(parts, route, token, peer, &frontend.rewrite)?;
    #[cfg(feature = "otel")]
    crate::telemetry::otel::inject(&parts.extensions, &mut parts.headers);
    Ok(())
}

/// Phase: send to the upstream within the route's timeout (504 past it, 502 when
/// it can't be reached), measured.
async fn forward(
    state: &AppState,
    route: &Route,
    request: Request,
) -> Result<axum::http::Response<hyper::body::Incoming>, ApiError> {
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(route.timeout, state.upstream.request(request)).await;
    crate::telemetry::metrics().upstream_call(route.label, started.elapsed(), &result);
    match result {
        Err(_) => Err(ApiError::UpstreamTimeout),
        Ok(Err(e)) => Err(ApiError::UpstreamUnavailable(upstream_failure(route, &e))),
        Ok(Ok(response)) => Ok(response),
    }
}

/// Phase: the upstream's answer made ours (see [`answer`]), body streamed. `session`:
/// the session's token went upstream.
fn finish(
    response: axum::http::Response<hyper::body::Incoming>,
    frontend: &Frontend,
    route: &Route,
    session: bool,
) -> Response {
    let (mut parts, body) = response.into_parts();
    // Our answer is ours: HTTP/1.1 (or what the browser spoke), whatever the upstream used.
    parts.version = axum::http::Version::HTTP_11;
    answer::clean(
        &mut parts.headers,
        route,
        &frontend.rewrite.own_cookies,
        session,
    );
    Response::from_parts(parts, Body::new(body))
}

/// The log detail of a failed upstream call: the upstream and the whole error chain
/// (a refused TLS client certificate or an untrusted server certificate is only named
/// a few levels down).
pub(crate) fn upstream_failure(route: &Route, e: &(dyn std::error::Error + 'static)) -> String {
    use std::fmt::Write;
    let mut detail = format!("{} ({e}", route.upstream_label());
    let mut cause = e.source();
    while let Some(c) = cause {
        let _ = write!(detail, ": {c}");
        cause = c.source();
    }
    detail.push(')');
    detail
}
