//! DPoP routes (`routes.dpop`, RFC 9449 §7): the user's DPoP-bound access token goes
//! as `Authorization: DPoP <token>` with a `DPoP` proof made for this one request —
//! `htm` the method, `htu` the upstream URI actually requested (after the route's
//! rewrite, without query), `ath` the token's hash, and the upstream's latest nonce.
//!
//! Resource-server nonces (§9): an upstream that answers 401 with
//! `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a `DPoP-Nonce` gets the nonce
//! kept for its origin. A request without a body is then sent once more, with a new
//! proof carrying the nonce; a request with a body is not buffered for that (bodies
//! stream), so its 401 goes back to the client, and the next request carries the
//! nonce. Nonces from successful answers are kept too.
//!
//! Other routes never come here: their hot path is [`super::proxy`] unchanged. A
//! session without a DPoP key (from before `oidc.dpop` was on) and client tokens go
//! as `Bearer`, as anywhere else.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use http_body::Body as _;

use super::{Route, rewrite};
use crate::config::TokenKind;
use crate::error::ApiError;
use crate::frontend::Frontend;
use crate::oidc::DpopKey;
use crate::oidc::dpop::{self, NonceSlot};
use crate::server::{AppState, Gateway};

static DPOP: HeaderName = HeaderName::from_static(dpop::DPOP_HEADER);

/// What goes upstream on a DPoP route.
enum Credential {
    None,
    /// A Bearer token (a client token, or a session without a DPoP key).
    Header(HeaderValue),
    /// The user's DPoP-bound token and the session's key.
    Bound {
        access_token: String,
        key: Box<DpopKey>,
    },
}

/// Proxies `request` over a DPoP `route`; `nonce` is the upstream origin's.
pub(super) async fn proxy(
    state: &AppState,
    frontend: &Frontend,
    route: &Route,
    nonce: &NonceSlot,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let credential = credential(&state.gw, frontend, route, &parts.headers).await?;
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (bearer, bound) = match credential {
        Credential::None => (None, None),
        Credential::Header(value) => (Some(value), None),
        Credential::Bound { access_token, key } => (None, Some((access_token, key))),
    };
    rewrite::rewrite_request(&mut parts, route, bearer, peer, &frontend.rewrite)?;
    #[cfg(feature = "otel")]
    crate::telemetry::otel::inject(&parts.extensions, &mut parts.headers);
    let Some((access_token, key)) = bound else {
        let response = forward(state, route, Request::from_parts(parts, body)).await?;
        return Ok(finish(response));
    };

    let htu = dpop::htu(&parts.uri);
    let mut authorization = HeaderValue::try_from(format!("DPoP {access_token}"))
        .map_err(|_| ApiError::Internal("access token is not a header value".into()))?;
    authorization.set_sensitive(true);
    parts.headers.insert(header::AUTHORIZATION, authorization);
    let first = proof(&key, &parts.method, &htu, nonce, &access_token)?;
    parts.headers.insert(DPOP.clone(), first);
    // Only a request without a body can be sent again (bodies are streamed, not kept).
    let replay = body.is_end_stream().then(|| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        )
    });

    let response = forward(state, route, Request::from_parts(parts, body)).await?;
    let learned = nonce.update_from(response.headers());
    let response = match replay {
        Some((method, uri, mut headers))
            if response.status() == StatusCode::UNAUTHORIZED
                && learned
                && dpop::asks_for_nonce(response.headers()) =>
        {
            tracing::debug!(upstream = %route.upstream_label(), "the upstream asked for a DPoP nonce; retrying");
            headers.insert(
                DPOP.clone(),
                proof(&key, &method, &htu, nonce, &access_token)?,
            );
            let mut retry = Request::new(Body::empty());
            *retry.method_mut() = method;
            *retry.uri_mut() = uri;
            *retry.headers_mut() = headers;
            *retry.version_mut() = axum::http::Version::HTTP_11;
            let again = forward(state, route, retry).await?;
            nonce.update_from(again.headers());
            again
        }
        _ => response,
    };
    Ok(finish(response))
}

fn proof(
    key: &DpopKey,
    method: &Method,
    htu: &str,
    nonce: &NonceSlot,
    access_token: &str,
) -> Result<HeaderValue, ApiError> {
    let jwt = key
        .proof(
            method.as_str(),
            htu,
            nonce.get().as_deref(),
            Some(access_token),
        )
        .map_err(|e| ApiError::Internal(format!("DPoP proof: {e}")))?;
    let mut value = HeaderValue::try_from(jwt)
        .map_err(|_| ApiError::Internal("DPoP proof is not a header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Phase: which token, as [`super::authorize`], but keeping the bound token and key.
async fn credential(
    gw: &Arc<Gateway>,
    frontend: &Frontend,
    route: &Route,
    headers: &axum::http::HeaderMap,
) -> Result<Credential, ApiError> {
    if !matches!(
        route.token,
        TokenKind::User | TokenKind::UserOrNone | TokenKind::UserOrClient
    ) {
        // Not reached with a validated config (dpop needs a user token kind).
        return Ok(
            match super::authorize(gw, frontend, route, headers).await? {
                Some(value) => Credential::Header(value),
                None => Credential::None,
            },
        );
    }
    let Some((_, record)) = crate::bff::current_session(gw, frontend, headers).await? else {
        return match route.token {
            TokenKind::UserOrNone => Ok(Credential::None),
            TokenKind::UserOrClient => {
                let slot = route
                    .client_token
                    .as_ref()
                    .ok_or(ApiError::Internal("route has no client token".into()))?;
                slot.authorization(&frontend.oidc, gw.config.tokens.refresh_before)
                    .await
                    .map(Credential::Header)
            }
            _ => Err(ApiError::Unauthenticated),
        };
    };
    crate::security::check_csrf_header(headers)?;
    let tokens = gw.tokens.user_tokens(gw, &record).await?;
    if tokens.token_type.eq_ignore_ascii_case("dpop") {
        let key = crate::tokens::session_dpop_key(&frontend.oidc, &tokens).map_err(|e| {
            ApiError::Internal(format!("the session's DPoP key can't be used: {e}"))
        })?;
        if let Some(key) = key {
            return Ok(Credential::Bound {
                access_token: tokens.access_token.clone(),
                key: Box::new(key),
            });
        }
    }
    let mut value = HeaderValue::try_from(format!("Bearer {}", tokens.access_token))
        .map_err(|_| ApiError::Internal("access token is not a header value".into()))?;
    value.set_sensitive(true);
    Ok(Credential::Header(value))
}

/// Phase: forward, with the route's timeout, as [`super::proxy`] does.
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
        Ok(Err(e)) => Err(ApiError::UpstreamUnavailable(super::upstream_failure(
            route, &e,
        ))),
        Ok(Ok(response)) => Ok(response),
    }
}

fn finish(response: axum::http::Response<hyper::body::Incoming>) -> Response {
    let (mut parts, body) = response.into_parts();
    parts.version = axum::http::Version::HTTP_11;
    rewrite::clean_response(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}
