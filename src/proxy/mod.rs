//! The API reverse proxy: the handler of API routes — session, CSRF and token
//! injection, then the upstream layer's rewrite and client.
//!
//! A proxied request goes through named phases, each a function of its own:
//! [`RouteTable::matching`](crate::upstream::RouteTable::matching) → [`authorize`] (session, CSRF, token) →
//! [`rewrite::rewrite_request`] → forward → [`answer::clean`] → stream back.
//! Bodies stream both ways; nothing is buffered. An API route is never answered
//! with a redirect: failures are the contract's JSON errors.

pub mod access;
pub mod answer;
mod dpop;
pub mod grpc;
pub mod step_up;
mod stream_end;
pub mod websocket;

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use crate::config::TokenKind;
use crate::error::ApiError;
use crate::frontend::Frontend;
use crate::gateway::{AppState, Gateway};
use crate::session::{OpenedTokens, StoreKey};
use crate::upstream::{Route, UpstreamClient, UpstreamProtocol, rewrite};

/// Phase: the runtime's client that speaks `route`'s upstream protocol.
pub fn client_for<'a>(state: &'a AppState, route: &Route) -> &'a UpstreamClient {
    match route.protocol {
        UpstreamProtocol::Http1 | UpstreamProtocol::Negotiated => &state.upstream,
        UpstreamProtocol::Https1 => &state.protocol_clients.https1,
        UpstreamProtocol::H2c => &state.protocol_clients.h2c,
    }
}

/// Proxies `request` over `route`. A gRPC caller gets Portcullis's refusals with a
/// `grpc-status` ([`grpc`]).
pub async fn proxy(
    state: &AppState,
    frontend: &Frontend,
    route: &Route,
    peer: Option<IpAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    access::check_method(route, request.method())?;
    // The WebSocket and DPoP paths are boxed: their futures (~3–4 KB) would otherwise
    // be part of every proxied request's, and every request's box that much larger
    // (see `server::listen`).
    if websocket::is_upgrade(request.headers()) {
        return crate::primitives::pin_in_place(|| {
            websocket::proxy(state, frontend, route, peer, request)
        })
        .await;
    }
    if grpc::is_grpc(request.headers()) {
        return Ok(proxy_request(state, frontend, route, peer, request)
            .await
            .unwrap_or_else(grpc::error_response));
    }
    proxy_request(state, frontend, route, peer, request).await
}

async fn proxy_request(
    state: &AppState,
    frontend: &Frontend,
    route: &Route,
    peer: Option<IpAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    if let Some(nonce) = &route.dpop {
        return crate::primitives::pin_in_place(|| {
            dpop::proxy(state, frontend, route, nonce, peer, request)
        })
        .await;
    }
    let (mut parts, body) = request.into_parts();
    let credential = credential(
        &state.gw,
        frontend,
        route,
        Csrf::Header {
            event_source: Some(&parts.method),
        },
        &parts.headers,
    )
    .await?;
    let session = credential.session();
    let token = credential.into_header()?;
    prepare(&mut parts, frontend, route, token, peer)?;
    let response = forward(state, route, Request::from_parts(parts, body)).await?;
    let response = finish(response, frontend, route, session.is_some());
    // The session's answer may stream: it ends with the session (see `stream_end`).
    Ok(match session {
        Some(key) if stream_end::may_run_long(response.headers()) => {
            stream_end::bind(response, state.gw.sessions.streams(), key, route.label)
        }
        _ => response,
    })
}

/// What a route sends upstream, before it becomes a header.
pub(crate) enum Credential {
    None,
    /// A ready `Authorization` value (the gateway's client-credentials token).
    Header(HeaderValue),
    /// The session's tokens (the route uses the user's token), and the session's key.
    User(Arc<OpenedTokens>, StoreKey),
    /// The route's own user token (per-route audience, token exchange), ready, and the
    /// session's key.
    RouteUser(HeaderValue, StoreKey),
}

/// How a request that uses the session proves it isn't cross-site.
#[derive(Clone, Copy)]
pub(crate) enum Csrf<'a> {
    /// `X-CSRF: 1`; on an `event_source` route a same-origin `EventSource` with this
    /// method may go without it (`security::event_source`).
    Header {
        event_source: Option<&'a axum::http::Method>,
    },
    /// Already proven by the caller: a WebSocket handshake's required `Origin`
    /// (`websocket::check_origin`), which stands in for the header a WebSocket can't carry.
    OriginChecked,
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
    credential(
        gw,
        frontend,
        route,
        Csrf::Header { event_source: None },
        headers,
    )
    .await?
    .into_header()
}

impl Credential {
    /// The session whose token goes upstream, if one does (its answer is then the
    /// user's alone, and ends with the session).
    pub(crate) fn session(&self) -> Option<StoreKey> {
        match self {
            Self::User(_, key) | Self::RouteUser(_, key) => Some(*key),
            Self::None | Self::Header(_) => None,
        }
    }

    /// The `Authorization` value, a user token as `Bearer`.
    fn into_header(self) -> Result<Option<HeaderValue>, ApiError> {
        Ok(match self {
            Self::None => None,
            Self::Header(value) | Self::RouteUser(value, _) => Some(value),
            Self::User(tokens, _) => Some(bearer(&tokens)?),
        })
    }
}

/// The shared part of [`authorize`]: the credential, with the user's tokens left
/// whole (DPoP routes bind them to a proof instead of sending them as Bearer).
/// `csrf`: how a request that uses the session proves it isn't cross-site.
pub(crate) async fn credential(
    gw: &Arc<Gateway>,
    frontend: &Frontend,
    route: &Route,
    csrf: Csrf<'_>,
    headers: &axum::http::HeaderMap,
) -> Result<Credential, ApiError> {
    let client_token = || async {
        let slot = route
            .client_token
            .as_ref()
            .ok_or_else(|| ApiError::Internal("route has no client token".into()))?;
        slot.authorization(&frontend.oidc, gw.config.tokens.refresh_before)
            .await
            .map(Credential::Header)
    };
    match route.token {
        TokenKind::None => Ok(Credential::None),
        TokenKind::Client => client_token().await,
        TokenKind::User | TokenKind::UserOrNone | TokenKind::UserOrClient | TokenKind::Exchange => {
            let Some((_, record)) = gw.current_session(frontend, headers).await? else {
                return match route.token {
                    TokenKind::UserOrNone => Ok(Credential::None),
                    TokenKind::UserOrClient => client_token().await,
                    _ => Err(ApiError::Unauthenticated),
                };
            };
            match csrf {
                Csrf::OriginChecked => {}
                Csrf::Header {
                    event_source: Some(method),
                } if route.event_source
                    && crate::security::event_source::proves_same_origin(
                        method,
                        headers,
                        &frontend.origin_text,
                    ) => {}
                Csrf::Header { .. } => crate::security::check_csrf_header(headers)?,
            }
            access::check_session(frontend, route, &record)?;
            if let Some(audience) = &route.user_token {
                // This route's token only: another route's never reaches this upstream.
                return Ok(Credential::RouteUser(
                    gw.tokens
                        .route_token(&frontend.oidc, &record, audience)
                        .await?,
                    record.key,
                ));
            }
            Ok(Credential::User(
                gw.tokens.user_tokens(&frontend.oidc, &record).await?,
                record.key,
            ))
        }
    }
}

/// `Authorization: <scheme> <token>` (see [`crate::session::authorization`]).
pub(crate) fn authorization(scheme: &str, token: &str) -> Result<HeaderValue, ApiError> {
    crate::session::authorization(scheme, token).ok_or_else(crate::tokens::unusable_token)
}

/// The session's `Authorization: Bearer` value: built once per opened tokens, shared
/// after (see [`OpenedTokens`]).
pub(crate) fn bearer(tokens: &OpenedTokens) -> Result<HeaderValue, ApiError> {
    tokens.bearer().ok_or_else(crate::tokens::unusable_token)
}

/// Phase: the browser's request made the upstream's (see [`rewrite::rewrite_request`]),
/// with the trace context when exporting traces.
fn prepare(
    parts: &mut axum::http::request::Parts,
    frontend: &Frontend,
    route: &Route,
    token: Option<HeaderValue>,
    peer: Option<IpAddr>,
) -> Result<(), ApiError> {
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
) -> Result<axum::http::Response<crate::upstream::UpstreamBody>, ApiError> {
    let started = tokio::time::Instant::now();
    // The deadline from the same clock reading as the measurement.
    let result = tokio::time::timeout_at(
        started + route.timeout,
        client_for(state, route).request(request),
    )
    .await;
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
    response: axum::http::Response<crate::upstream::UpstreamBody>,
    frontend: &Frontend,
    route: &Route,
    session: bool,
) -> Response {
    // RFC 9470: the upstream wants a stronger or fresher login than the session's.
    if session
        && response.status() == axum::http::StatusCode::UNAUTHORIZED
        && let Some(asked) = step_up::challenge(response.headers())
    {
        return step_up::required(
            frontend,
            asked.acr_values.as_deref(),
            asked.max_age,
            format!("route {}: the upstream asks for step-up", route.prefix),
        )
        .into_response();
    }
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
