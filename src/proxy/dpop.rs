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

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use http_body::Body as _;

use super::{Credential, authorization, bearer, credential, finish, forward, prepare};
use crate::error::ApiError;
use crate::frontend::Frontend;
use crate::gateway::{AppState, Gateway};
use crate::oidc::DpopKey;
use crate::oidc::dpop::{self, NonceSlot};
use crate::session::OpenedTokens;
use crate::upstream::Route;

static DPOP: HeaderName = HeaderName::from_static(dpop::DPOP_HEADER);

/// Proxies `request` over a DPoP `route`; `nonce` is the upstream origin's.
pub(super) async fn proxy(
    state: &AppState,
    frontend: &Frontend,
    route: &Route,
    nonce: &NonceSlot,
    peer: Option<std::net::IpAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let bound = bind(&state.gw, frontend, route, &parts.method, &parts.headers).await?;
    let (bearer, bound, session) = match bound {
        Bound::No { token, session } => (token, None, session),
        Bound::Yes { tokens, key } => (None, Some((tokens, key)), true),
    };
    prepare(&mut parts, frontend, route, bearer, peer)?;
    let Some((tokens, key)) = bound else {
        let response = forward(state, route, Request::from_parts(parts, body)).await?;
        return Ok(finish(response, frontend, route, session));
    };

    let access_token = tokens.access_token.as_str();
    let htu = dpop::htu(&parts.uri);
    parts
        .headers
        .insert(header::AUTHORIZATION, authorization("DPoP", access_token)?);
    let first = proof(&key, &parts.method, &htu, nonce, access_token)?;
    parts.headers.insert(DPOP.clone(), first);
    // Only a request without a body can be sent again (bodies are streamed, not kept).
    let mut replay = body.is_end_stream().then(|| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        )
    });
    let mut first = Some(Request::from_parts(parts, body));
    let response = dpop::with_nonce_retry(route.authority.as_str(), || {
        // The first send takes the request; a second (asked only while `replay` is
        // kept) sends its copy with a new proof, carrying the nonce just learned.
        let request = match first.take() {
            Some(request) => Ok(request),
            None => replay_with_proof(replay.take(), &key, &htu, nonce, access_token),
        };
        let can_retry = replay.is_some();
        async move {
            let response = forward(state, route, request?).await?;
            let asked = nonce.asked_by(response.status(), response.headers()) && can_retry;
            Ok::<_, ApiError>(dpop::Sent::of(response, asked))
        }
    })
    .await?;
    Ok(finish(response, frontend, route, true))
}

/// The copy of a bodiless request, sent again with a new proof.
fn replay_with_proof(
    replay: Option<(Method, axum::http::Uri, axum::http::HeaderMap)>,
    key: &DpopKey,
    htu: &str,
    nonce: &NonceSlot,
    access_token: &str,
) -> Result<Request, ApiError> {
    let Some((method, uri, mut headers)) = replay else {
        return Err(ApiError::Internal(
            "a DPoP request with a body can't be sent twice".into(),
        ));
    };
    headers.insert(DPOP.clone(), proof(key, &method, htu, nonce, access_token)?);
    let mut retry = Request::new(Body::empty());
    *retry.method_mut() = method;
    *retry.uri_mut() = uri;
    *retry.headers_mut() = headers;
    *retry.version_mut() = axum::http::Version::HTTP_11;
    Ok(retry)
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

/// What goes upstream on a DPoP route.
enum Bound {
    /// A Bearer token (a client token, or a session without a DPoP key), or none;
    /// `session`: the token is the session's.
    No {
        token: Option<HeaderValue>,
        session: bool,
    },
    /// The user's DPoP-bound tokens and the session's key.
    Yes {
        tokens: Arc<OpenedTokens>,
        key: Box<DpopKey>,
    },
}

/// Phase: [`credential`], keeping a DPoP-bound user token with its session's key.
async fn bind(
    gw: &Arc<Gateway>,
    frontend: &Frontend,
    route: &Route,
    method: &Method,
    headers: &axum::http::HeaderMap,
) -> Result<Bound, ApiError> {
    let csrf = super::Csrf::Header {
        event_source: Some(method),
    };
    let tokens = match credential(gw, frontend, route, csrf, headers).await? {
        Credential::None => {
            return Ok(Bound::No {
                token: None,
                session: false,
            });
        }
        Credential::Header(value) => {
            return Ok(Bound::No {
                token: Some(value),
                session: false,
            });
        }
        // Never on a DPoP route (config validation), but a Bearer route token if so.
        Credential::RouteUser(value, _) => {
            return Ok(Bound::No {
                token: Some(value),
                session: true,
            });
        }
        Credential::User(tokens, _) => tokens,
    };
    if tokens.token_type.eq_ignore_ascii_case("dpop") {
        let key = crate::tokens::session_dpop_key(&frontend.oidc, &tokens).map_err(|e| {
            ApiError::Internal(format!("the session's DPoP key can't be used: {e}"))
        })?;
        if let Some(key) = key {
            return Ok(Bound::Yes {
                tokens,
                key: Box::new(key),
            });
        }
    }
    Ok(Bound::No {
        token: Some(bearer(&tokens)?),
        session: true,
    })
}
