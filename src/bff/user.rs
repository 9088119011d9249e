use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::login::redirect;
use super::logout_sid;
use crate::error::ApiError;
use crate::frontend::Frontend;
use crate::gateway::AppState;
use crate::gateway::Current;
use crate::session::{EndReason, SessionRecord, cookie};

#[derive(Deserialize)]
pub struct UserQuery {
    /// `anonymous=null`: without a session, answer 200 `null` instead of 401
    /// `unauthenticated` — for an SPA's first look, which a browser would otherwise
    /// log as a failed request on every visit by someone not logged in.
    anonymous: Option<String>,
    slide: Option<String>,
}

/// `GET /bff/user` (with `X-CSRF: 1`): the user's claims, never a token.
/// `?slide=false` answers without extending the session's idle timeout (for SPAs
/// that poll: an unattended tab then still times out); `bff:session_expires_in`
/// then counts from the session's last real use.
pub async fn user(
    State(state): State<AppState>,
    Current(fe): Current,
    Query(query): Query<UserQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    crate::security::check_csrf_header(&headers)?;
    let slide = match query.slide.as_deref() {
        None | Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(_) => return Err(ApiError::invalid("slide must be true or false")),
    };
    let gw = &state.gw;
    let Some((_, record)) = gw.current_session_with(&fe, &headers, slide).await? else {
        return match query.anonymous.as_deref() {
            Some("null") => Ok(axum::Json(Value::Null).into_response()),
            _ => Err(ApiError::Unauthenticated),
        };
    };
    let mut claims: Map<String, Value> = serde_json::from_str(&record.claims).unwrap_or_default();
    let sid = logout_sid(&record);
    let logout_url = format!(
        "{}/bff/logout?sid={}",
        fe.prefix,
        form_urlencoded::byte_serialize(sid.as_bytes()).collect::<String>()
    );
    claims.insert("sid".into(), Value::String(sid));
    let expires_in = if slide {
        gw.sessions.expires_in(&record)
    } else {
        gw.sessions.expires_in_unslid(&record)
    };
    claims.insert("bff:session_expires_in".into(), expires_in.into());
    claims.insert("bff:logout_url".into(), Value::String(logout_url));
    Ok(axum::Json(claims).into_response())
}

#[derive(Deserialize)]
pub struct LogoutQuery {
    sid: Option<String>,
}

/// `GET /bff/logout?sid=SID`: ends the session, revokes the refresh token, and sends
/// the browser to the provider's end-session endpoint. `sid` is required (a
/// cross-site page can't know it); when the session is already gone the browser
/// just goes on to the post-logout page.
///
/// **Logout CSRF.** A foreign page can navigate the browser here (a link, a form,
/// an `<img>`), but under `SameSite=Strict` the browser sends no session cookie with
/// it, and the browser would still apply a `Set-Cookie` in the answer. So an answer
/// touches cookies only when the request carried this frontend's session cookie:
/// with a live session, after the `sid` matched (a wrong `sid` is a 400 and the
/// session stays); with a dead one (ended in another tab, timed out, unreadable),
/// removing it changes nothing for the user. Without the cookie nothing is ended
/// and nothing is removed: the browser goes to the post-logout page as it is.
pub async fn logout(
    State(state): State<AppState>,
    Current(fe): Current,
    Query(query): Query<LogoutQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let gw = &state.gw;
    let sid = query
        .sid
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or(ApiError::invalid("sid is missing"))?;
    let Some((_, record)) = gw.current_session(&fe, &headers).await? else {
        // Already logged out (another tab, a timeout), or a cross-site request that
        // carries no cookie: nothing to end, go on.
        return Ok(match removal_if_sent(&fe, &headers) {
            Some(clear) => redirect(&after_logout(&fe), [clear]),
            None => redirect(&after_logout(&fe), []),
        });
    };
    if !crate::primitives::constant_time_eq(sid.as_bytes(), logout_sid(&record).as_bytes()) {
        return Err(ApiError::invalid("sid does not match the session"));
    }
    let to = end_session(&state, &fe, &record).await?;
    Ok(redirect(&to, [cookie::removal(&fe.cookie_name)]))
}

/// The removal of this frontend's session cookie, when the request carried one (that
/// named no live session): a request without it gets no `Set-Cookie` at all.
fn removal_if_sent(fe: &Frontend, headers: &HeaderMap) -> Option<HeaderValue> {
    cookie::find(headers, &fe.cookie_name).map(|_| cookie::removal(&fe.cookie_name))
}

/// `POST /bff/logout` (with `X-CSRF: 1`), for SPAs that navigate themselves: ends
/// the session like `GET /bff/logout` and answers `{"logout_url": …}`, the
/// provider's end-session URL to send the browser to. Like the `GET`, it removes the
/// session cookie only when the request carried it.
pub async fn logout_post(
    State(state): State<AppState>,
    Current(fe): Current,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    crate::security::check_csrf_header(&headers)?;
    let gw = &state.gw;
    let to = match gw.current_session(&fe, &headers).await? {
        Some((_, record)) => end_session(&state, &fe, &record).await?,
        None => after_logout(&fe),
    };
    let mut response = axum::Json(serde_json::json!({ "logout_url": to })).into_response();
    if let Some(clear) = removal_if_sent(&fe, &headers) {
        response
            .headers_mut()
            .insert(axum::http::header::SET_COOKIE, clear);
    }
    Ok(response)
}

/// The post-logout page: `oidc.post_logout_redirect_uri`, else the frontend's root.
fn after_logout(fe: &Frontend) -> String {
    match fe.oidc.post_logout_redirect_uri() {
        Some(uri) => uri.to_owned(),
        None => fe.path("/"),
    }
}

/// Ends the session, revokes its refresh token in the background (RFC 7009; a
/// failure is logged and doesn't undo the logout), and returns where the browser
/// goes next: the provider's end-session endpoint (RP-Initiated Logout, with
/// `id_token_hint` and `client_id`) or the post-logout page.
async fn end_session(
    state: &AppState,
    fe: &std::sync::Arc<Frontend>,
    record: &SessionRecord,
) -> Result<String, ApiError> {
    let gw = &state.gw;
    let tokens = gw.sessions.open_tokens(record).ok();
    gw.sessions.end(&record.key, EndReason::Logout).await?;
    let id_token_hint = tokens.as_ref().and_then(|t| t.id_token.clone());
    if let Some(refresh_token) = tokens.and_then(|t| t.refresh_token) {
        let fe = fe.clone();
        let (sub, session) = (record.sub.clone(), record.key.log_label());
        tokio::spawn(async move {
            use crate::telemetry::audit_revocation as audit;
            match fe.oidc.revoke_refresh_token(&refresh_token).await {
                Ok(true) => audit(&sub, &session, "revoked", None),
                Ok(false) => audit(&sub, &session, "unsupported", None),
                Err(e) => audit(&sub, &session, "failed", Some(&e.to_string())),
            }
        });
    }
    Ok(
        match fe.oidc.end_session_url(id_token_hint.as_deref()).await {
            Some(url) => url,
            None => after_logout(fe),
        },
    )
}
