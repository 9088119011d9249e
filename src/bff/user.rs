use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::login::redirect;
use super::{current_session, logout_sid};
use crate::error::ApiError;
use crate::server::AppState;
use crate::session::{EndReason, cookie};

/// `GET /bff/user` (with `X-CSRF: 1`): the user's claims, never a token.
pub async fn user(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    crate::security::check_csrf_header(&headers)?;
    let gw = &state.gw;
    let (_, record) = current_session(gw, &headers)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let mut claims: Map<String, Value> = serde_json::from_str(&record.claims).unwrap_or_default();
    let sid = logout_sid(&record);
    let logout_url = format!(
        "/bff/logout?sid={}",
        form_urlencoded::byte_serialize(sid.as_bytes()).collect::<String>()
    );
    claims.insert("sid".into(), Value::String(sid));
    claims.insert(
        "bff:session_expires_in".into(),
        gw.sessions.expires_in(&record).into(),
    );
    claims.insert("bff:logout_url".into(), Value::String(logout_url));
    Ok(axum::Json(claims).into_response())
}

#[derive(Deserialize)]
pub struct LogoutQuery {
    sid: Option<String>,
}

/// `GET /bff/logout?sid=SID`: ends the session, revokes the refresh token, and sends
/// the browser to the provider's end-session endpoint. Without a session there is
/// nothing to protect and the browser just goes on to the post-logout page.
pub async fn logout(
    State(state): State<AppState>,
    Query(query): Query<LogoutQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let gw = &state.gw;
    let clear = cookie::removal(&gw.config.session.cookie_name);
    let Some((_, record)) = current_session(gw, &headers).await? else {
        let to = gw.oidc.post_logout_redirect_uri().unwrap_or("/");
        return Ok(redirect(to, [clear]));
    };
    let expected = logout_sid(&record);
    match query.sid.as_deref() {
        Some(sid) if crate::oidc::constant_time_eq(sid.as_bytes(), expected.as_bytes()) => {}
        Some(_) => return Err(ApiError::invalid("sid does not match the session")),
        None => return Err(ApiError::invalid("sid is missing")),
    }
    let tokens = gw.sessions.open_tokens(&record).ok();
    gw.sessions.end(&record.key, EndReason::Logout).await?;

    let id_token_hint = tokens.as_ref().and_then(|t| t.id_token.clone());
    if let Some(refresh_token) = tokens.and_then(|t| t.refresh_token) {
        // Revocation must not hold up the browser, and a failure doesn't undo the logout.
        let gw = state.gw.clone();
        tokio::spawn(async move {
            match gw.oidc.revoke_refresh_token(&refresh_token).await {
                Ok(true) => tracing::info!("refresh token revoked"),
                Ok(false) => tracing::debug!("the provider has no revocation endpoint"),
                Err(e) => tracing::warn!(error = %e, "refresh token revocation failed"),
            }
        });
    }
    let to = match gw.oidc.end_session_url(id_token_hint.as_deref()).await {
        Some(url) => url,
        None => gw.oidc.post_logout_redirect_uri().unwrap_or("/").to_owned(),
    };
    Ok(redirect(&to, [clear]))
}
