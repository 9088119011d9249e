use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::error::ApiError;
use crate::gateway::AppState;
use crate::gateway::Current;
use crate::session::{EndReason, SessionFilter, SessionStore, StoreKey};

/// Largest accepted back-channel logout request body.
const MAX_BODY: usize = 16 * 1024;
/// How much of an oversized body is read (and dropped) before refusing it.
const DRAIN_CAP: usize = 8 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// `POST /bff/backchannel-logout` (OpenID Connect Back-Channel Logout 1.0 §2.5–2.8):
/// validates the `logout_token` and ends the matching sessions — those of its `sid`,
/// or every session of its `sub` when there is no `sid`. 200 or 400, never cached.
///
/// Server-to-server: no cookie and no CSRF header are involved; the signed token is
/// the only authority. Answered quickly, since providers wait with a short timeout.
///
/// With several frontends each has its own endpoint (`{path_prefix}/bff/backchannel-logout`),
/// registered at the provider for its client: the token must be for that client, and
/// only that frontend's sessions end.
pub async fn backchannel_logout(
    State(state): State<AppState>,
    Current(fe): Current,
    request: Request,
) -> Response {
    let gw = &state.gw;
    let token = match read_logout_token(request).await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let logout = match fe.oidc.validate_logout_token(&token).await {
        Ok(l) => l,
        Err(crate::oidc::OidcError::Unavailable(detail)) => {
            // Can't fetch the keys: a retryable failure on the provider's side.
            return ApiError::IdpUnavailable(detail).into_response();
        }
        Err(e) => {
            tracing::warn!(error = %e, "back-channel logout refused");
            return ApiError::invalid("invalid logout token").into_response();
        }
    };
    // Replay defence: a `jti` is accepted once (per issuer), in every instance sharing the store.
    let once =
        StoreKey::hash(format!("{}\n{}\n{}", fe.oidc.issuer(), fe.name, logout.jti).as_bytes());
    match gw
        .sessions
        .store()
        .remember_once(once, logout.remember_until)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(jti = %logout.jti, "back-channel logout refused: replayed jti");
            return ApiError::invalid("invalid logout token").into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    }
    let filter = match (&logout.sid, &logout.sub) {
        (Some(sid), _) => SessionFilter::Sid(sid.clone()),
        (None, Some(sub)) => SessionFilter::Sub(sub.clone()),
        (None, None) => unreachable!("validated: sub or sid"),
    };
    let matches = |record: &crate::session::SessionRecord| {
        // With both claims, both must match. Another frontend's client: its own
        // logout token will come to its own endpoint.
        logout.sub.as_ref().is_none_or(|sub| *sub == record.sub) && record.frontend == fe.name
    };
    let ended = match gw
        .sessions
        .end_matching(&filter, matches, EndReason::BackchannelLogout)
        .await
    {
        Ok(n) => n,
        Err(e) => return ApiError::from(e).into_response(),
    };
    tracing::info!(
        target: "portcullis::audit",
        event = "backchannel_logout",
        sub = logout.sub.as_deref().unwrap_or(""),
        has_sid = logout.sid.is_some(),
        sessions_ended = ended,
    );
    let mut response = StatusCode::OK.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn read_logout_token(request: Request) -> Result<String, ApiError> {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let body = read_capped(request.into_body()).await?;
    if !is_form {
        return Err(ApiError::invalid(
            "expected an application/x-www-form-urlencoded body",
        ));
    }
    let mut token = None;
    for (name, value) in form_urlencoded::parse(&body) {
        if name == "logout_token" {
            if token.is_some() {
                return Err(ApiError::invalid("logout_token appears more than once"));
            }
            token = Some(value.into_owned());
        }
    }
    token
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::invalid("logout_token is missing"))
}

/// Reads at most [`MAX_BODY`] bytes. A larger body is refused with 400, after it has
/// been drained (up to [`DRAIN_CAP`] bytes and [`DRAIN_TIME`]) so the client reads a
/// clean answer instead of a reset connection; past those bounds it is cut off.
async fn read_capped(mut body: Body) -> Result<Vec<u8>, ApiError> {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut kept = Vec::new();
    let mut total = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) => {
                return Err(ApiError::invalid("the request body is broken or too slow"));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > DRAIN_CAP {
            return Err(ApiError::invalid("the request body is too large"));
        }
        if total <= MAX_BODY {
            kept.extend_from_slice(&data);
        }
    }
    if total > MAX_BODY {
        return Err(ApiError::invalid("the request body is too large"));
    }
    Ok(kept)
}
