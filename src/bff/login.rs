use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use std::sync::Arc;

use super::login_error::LoginFailure;
use crate::error::ApiError;
use crate::frontend::Frontend;
use crate::gateway::{AppState, Current, Gateway};
use crate::oidc::{DpopKey, IdTokenClaims, OidcError, TokenResponse};
use crate::primitives::{constant_time_eq, now_secs, random_token, sha256_b64url};
use crate::security::limits::ClientNetwork;
use crate::session::{
    EndReason, Issued, NewSession, PendingCaps, PendingLogin, SessionId, SessionStore, StoreError,
    StoreKey, Tokens, cookie,
};

#[derive(Deserialize)]
pub struct LoginQuery {
    #[serde(rename = "returnUrl")]
    return_url: Option<String>,
    prompt: Option<String>,
    max_age: Option<String>,
    acr_values: Option<String>,
    login_hint: Option<String>,
    ui_locales: Option<String>,
}

/// The login parameters passed on to the provider, checked: each must be allowed
/// by `oidc.login_params`, `prompt` must be a known value the provider advertises,
/// `max_age` a number, the others short printable text.
fn login_params(
    query: &LoginQuery,
    allowed: &[String],
    meta: &crate::oidc::ProviderMetadata,
) -> Result<Vec<(&'static str, String)>, ApiError> {
    let given = [
        ("prompt", &query.prompt),
        ("max_age", &query.max_age),
        ("acr_values", &query.acr_values),
        ("login_hint", &query.login_hint),
        ("ui_locales", &query.ui_locales),
    ];
    let mut out = Vec::new();
    for (name, value) in given {
        let Some(value) = value else { continue };
        if !allowed.iter().any(|a| a == name) {
            return Err(ApiError::InvalidRequest(format!(
                "{name} is not allowed here"
            )));
        }
        if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
            return Err(ApiError::InvalidRequest(format!(
                "{name} is not a valid value"
            )));
        }
        match name {
            "prompt" => {
                let known = ["none", "login", "consent", "select_account"];
                let values: Vec<&str> = value.split(' ').collect();
                if values.iter().any(|v| !known.contains(v))
                    || (values.contains(&"none") && values.len() > 1)
                {
                    return Err(ApiError::invalid("prompt is not a valid value"));
                }
                if let Some(supported) = &meta.prompt_values_supported
                    && values.iter().any(|v| !supported.iter().any(|s| s == v))
                {
                    return Err(ApiError::invalid(
                        "the provider does not support this prompt",
                    ));
                }
            }
            "max_age"
                if value.len() > 10
                    || !value.bytes().all(|b| b.is_ascii_digit())
                    || value
                        .parse::<u64>()
                        .map_or(true, |n| n > crate::config::MAX_MAX_AGE_SECS) =>
            {
                return Err(ApiError::invalid(
                    "max_age must be a number of seconds, at most 366 days",
                ));
            }
            "acr_values" if !value.split(' ').all(crate::config::is_acr_value) => {
                return Err(ApiError::invalid(
                    "acr_values must be ACR values separated by single spaces",
                ));
            }
            _ => {}
        }
        out.push((name, value.clone()));
    }
    Ok(out)
}

/// The most binding values one browser's login-binding cookie carries (~700 bytes):
/// that many tabs of one browser can be logging in at once.
const MAX_BINDINGS: usize = 16;

/// The binding values in a login-binding cookie, oldest first, malformed ones dropped.
fn bindings(cookie_value: Option<&str>) -> Vec<&str> {
    cookie_value
        .unwrap_or_default()
        .split('.')
        .filter(|v| {
            v.len() == 43
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .collect()
}

/// The login-binding cookie after starting one more login with the fresh binding
/// `fresh`: the browser's earlier values (so its other tabs' logins still finish),
/// then `fresh`, at most [`MAX_BINDINGS`]. When full, the second-oldest goes: the
/// oldest stays, as the name of this browser for the per-browser cap.
fn with_binding(earlier: &[&str], fresh: &str) -> String {
    let mut values = earlier.to_vec();
    while values.len() >= MAX_BINDINGS {
        values.remove(1.min(values.len() - 1));
    }
    values.push(fresh);
    values.join(".")
}

/// `GET /bff/login?returnUrl=/path`: starts a login and redirects to the provider.
///
/// **The binding is always the server's.** Each login gets a fresh random binding
/// value; the pending login stores only its hash, and the login-binding cookie
/// carries it (beside the values of this browser's other logins in progress, so
/// many tabs can log in at once). A value the client sends is never adopted as a
/// new login's binding: a cookie planted in the victim's browser (by a sibling
/// site, an upstream's `Set-Cookie`, …) can't pre-bind the victim's login to a value
/// the attacker knows, so a `state`/`code` leaked from the victim's login is useless
/// in the attacker's browser.
///
/// **Bounded without a kill switch**: the pending login is stored under the client
/// network's cap and the total memory bound ([`PendingCaps`]; see
/// `security::limits`), so a flood of cookie-less logins from a few networks can't
/// lock real users out.
pub async fn login(
    State(state): State<AppState>,
    Current(fe): Current,
    Query(query): Query<LoginQuery>,
    network: Option<axum::Extension<ClientNetwork>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let gw = &state.gw;
    let return_url = match query.return_url.as_deref() {
        None => fe.path("/"),
        Some(url) => {
            crate::security::validate_return_url(url, &fe.origin).map_err(ApiError::invalid)?
        }
    };
    let meta = fe.oidc.metadata().await.map_err(provider_down)?;
    let extra = login_params(&query, &fe.config.oidc.login_params, &meta)?;
    let silent = query.prompt.as_deref() == Some("none");

    let login_state = random_token();
    let nonce = random_token();
    let verifier = random_token();
    let challenge = sha256_b64url(verifier.as_bytes());

    let earlier = bindings(cookie::find(&headers, &fe.login_cookie));
    let binding = random_token();
    let ttl = fe.config.oidc.pending_login_ttl.as_secs() as i64;
    // The per-browser cap counts by the browser's oldest binding (a fresh browser:
    // this one). A client that sends none meets the per-network limits instead.
    gw.limits
        .check_browser(&hash_b64(earlier.first().copied().unwrap_or(&binding)))?;
    let network = network.map(|n| n.0.0.to_string()).unwrap_or_default();
    let pending = PendingLogin {
        binding: hash_b64(&binding),
        pkce_verifier: verifier,
        nonce: nonce.clone(),
        return_url,
        expires_at: now_secs() + ttl,
        silent,
        frontend: fe.name.clone(),
        network,
        acr_values: query
            .acr_values
            .clone()
            .filter(|_| extra.iter().any(|(n, _)| *n == "acr_values")),
        max_age: extra
            .iter()
            .find(|(n, _)| *n == "max_age")
            .and_then(|(_, v)| v.parse().ok()),
    };
    let caps = PendingCaps {
        total: fe.config.oidc.max_pending_logins,
        per_network: gw.config.security.pending_logins_per_network,
    };
    let evicted = gw
        .sessions
        .store()
        .put_pending(StoreKey::hash(login_state.as_bytes()), pending, caps)
        .await
        .map_err(|e| {
            if matches!(e, StoreError::PendingFull) {
                crate::security::audit_rate_limited("pending logins of the client network");
            }
            ApiError::from(e)
        })?;
    if evicted > 0 {
        tracing::warn!(
            target: "portcullis::audit",
            event = "pending_login_evicted",
            evicted,
            "pending logins are at oidc.max_pending_logins: the heaviest network's oldest made room"
        );
    }

    let location = fe
        .oidc
        .authorization_redirect(&meta, &login_state, &nonce, &challenge, &extra)
        .await
        .map_err(|e| match e {
            OidcError::Unavailable(_) => provider_down(e),
            other => {
                tracing::warn!(error = %other, "pushed authorization request failed");
                ApiError::IdpUnavailable(other.to_string())
            }
        })?;
    Ok(redirect(
        &location,
        [cookie::login_binding(
            &fe.login_cookie,
            &with_binding(&earlier, &binding),
            ttl,
        )],
    ))
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /bff/callback`: finishes a login. Any failure makes no session; it answers
/// the JSON error (400 for the login itself), or for a browser navigation a page of
/// the SPA with `?bff_error=CODE` (see [`login_error`](super::login_error)).
pub async fn callback(
    State(state): State<AppState>,
    Current(fe): Current,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    let navigation = crate::security::is_navigation(&headers);
    match finish_login(&state, &fe, &query, &headers).await {
        Ok(response) => response,
        Err(failure) => failure.into_answer(&fe, navigation),
    }
}

/// The callback, phase by phase. Every failure after the login is known carries its
/// `returnUrl` (see [`LoginFailure::of`]).
async fn finish_login(
    state: &AppState,
    fe: &Arc<Frontend>,
    query: &CallbackQuery,
    headers: &HeaderMap,
) -> Result<Response, LoginFailure> {
    let gw = &state.gw;
    let pending = claim_login(gw, fe, query, headers).await?;
    let fail = |e: ApiError| LoginFailure::from(e).of(&pending.return_url);
    let code = match provider_answer(fe, query, &pending).await? {
        Answer::Code(code) => code,
        Answer::NotLoggedIn => return Ok(redirect(&pending.return_url, [])),
    };
    let (response, dpop) = redeem(fe, code, &pending).await.map_err(fail)?;
    let id = verify_id_token(fe, &response, &pending)
        .await
        .map_err(fail)?;
    check_step_up(&pending, &id.all).map_err(fail)?;
    let claims = user_claims_of(fe, &response, dpop.as_ref(), id.all, &id.sub)
        .await
        .map_err(fail)?;
    let (tokens, refresh_expires_at) = login_tokens(response, dpop);
    let new = NewSession {
        frontend: fe.name.clone(),
        sub: id.sub,
        sid: id.sid,
        claims,
        tokens,
        refresh_expires_at,
    };
    let session_id = start_session(gw, fe, headers, new).await.map_err(fail)?;
    let session_cookie =
        cookie::session(&fe.cookie_name, &session_id.to_cookie_value(), fe.same_site);
    Ok(redirect(&pending.return_url, [session_cookie]))
}

/// Phase: the login the callback's `state` names — taken (a `state` works once),
/// started by this frontend, in this browser.
async fn claim_login(
    gw: &Gateway,
    fe: &Frontend,
    query: &CallbackQuery,
    headers: &HeaderMap,
) -> Result<PendingLogin, LoginFailure> {
    let expired = || {
        LoginFailure::new(
            "login_expired",
            ApiError::invalid("unknown, used or expired login state"),
        )
    };
    let login_state = query
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| LoginFailure::new("login_expired", ApiError::invalid("state is missing")))?;
    let pending = gw
        .sessions
        .store()
        .take_pending(&StoreKey::hash(login_state.as_bytes()), now_secs())
        .await
        .map_err(ApiError::from)?
        .ok_or_else(expired)?;
    if pending.frontend != fe.name {
        tracing::warn!("a login started by one frontend came back to another; refused");
        return Err(expired());
    }
    // Any of the browser's bindings: each tab's login has its own.
    let binding_ok = bindings(cookie::find(headers, &fe.login_cookie))
        .iter()
        .fold(false, |ok, b| {
            constant_time_eq(hash_b64(b).as_bytes(), pending.binding.as_bytes()) | ok
        });
    if !binding_ok {
        return Err(LoginFailure::new(
            "login_other_browser",
            ApiError::invalid("the login was not started in this browser"),
        )
        .of(&pending.return_url));
    }
    Ok(pending)
}

/// What the provider sent the browser back with.
enum Answer<'q> {
    /// An authorization code to redeem.
    Code(&'q str),
    /// A silent login's "the user must log in": not logged in, no error.
    NotLoggedIn,
}

/// Phase: the authorization response — from the issuer the user was sent to, and
/// either a code or the provider's refusal.
async fn provider_answer<'q>(
    fe: &Frontend,
    query: &'q CallbackQuery,
    pending: &PendingLogin,
) -> Result<Answer<'q>, LoginFailure> {
    let back = pending.return_url.as_str();
    let fail = |e: ApiError| LoginFailure::from(e).of(back);
    let meta = fe
        .oidc
        .metadata()
        .await
        .map_err(provider_down)
        .map_err(fail)?;
    // RFC 9207 / RFC 9700 §4.4: the response must come from the issuer we sent the user to.
    match query.iss.as_deref() {
        Some(iss) if iss != fe.oidc.issuer() => {
            return Err(fail(ApiError::invalid(
                "iss does not match the issuer (possible mix-up attack)",
            )));
        }
        None if meta.authorization_response_iss_parameter_supported => {
            return Err(fail(ApiError::invalid(
                "iss is missing from the authorization response",
            )));
        }
        _ => {}
    }
    if let Some(error) = &query.error {
        // A silent login that needs the user: a clean "not logged in", back to the SPA.
        let needs_user = [
            "login_required",
            "consent_required",
            "interaction_required",
            "account_selection_required",
        ];
        if pending.silent && needs_user.contains(&error.as_str()) {
            tracing::info!(error = %error, "silent login: not logged in at the provider");
            return Ok(Answer::NotLoggedIn);
        }
        tracing::warn!(
            error = %error,
            error_description = query.error_description.as_deref().unwrap_or_default(),
            "the provider refused the login"
        );
        let mut refused = LoginFailure::new(
            "login_refused",
            ApiError::InvalidRequest(format!("the provider refused the login: {error}")),
        )
        .of(back);
        refused.provider_error = Some(error.clone());
        return Err(refused);
    }
    query
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(Answer::Code)
        .ok_or_else(|| fail(ApiError::invalid("code is missing")))
}

/// Phase: the code redeemed for tokens (with the PKCE verifier), bound to a new
/// DPoP key when DPoP is on — the session's key from now on.
async fn redeem(
    fe: &Frontend,
    code: &str,
    pending: &PendingLogin,
) -> Result<(TokenResponse, Option<DpopKey>), ApiError> {
    // DPoP: the session's key is made now, before the exchange binds the tokens to it.
    let dpop = if fe.oidc.dpop_enabled() {
        Some(DpopKey::generate().map_err(ApiError::Internal)?)
    } else {
        None
    };
    let response = fe
        .oidc
        .exchange_code(code, &pending.pkce_verifier, dpop.as_ref())
        .await
        .map_err(login_failed)?;
    Ok((response, dpop))
}

/// Phase: the answer's ID token, validated for this login (its `nonce`).
async fn verify_id_token(
    fe: &Frontend,
    response: &TokenResponse,
    pending: &PendingLogin,
) -> Result<IdTokenClaims, ApiError> {
    let id_token = response
        .id_token
        .as_deref()
        .ok_or_else(|| ApiError::invalid("the provider sent no ID token"))?;
    fe.oidc
        .validate_id_token(id_token, &pending.nonce)
        .await
        .map_err(login_failed)
}

/// Phase: the user's claims — the ID token's, then userinfo's when
/// `oidc.userinfo` asks for them (the ID token's win).
async fn user_claims_of(
    fe: &Frontend,
    response: &TokenResponse,
    dpop: Option<&DpopKey>,
    id_claims: Map<String, Value>,
    sub: &str,
) -> Result<Map<String, Value>, ApiError> {
    let mut claims = user_claims(id_claims);
    if fe.oidc.wants_userinfo() {
        let info = fe
            .oidc
            .userinfo(&response.access_token, sub, dpop)
            .await
            .map_err(login_failed)?;
        for (k, v) in info {
            claims.entry(k).or_insert(v);
        }
    }
    Ok(claims)
}

/// The session's tokens from the provider's answer, and when its refresh token
/// expires (if the provider said).
fn login_tokens(response: TokenResponse, dpop: Option<DpopKey>) -> (Tokens, Option<i64>) {
    let now = now_secs();
    let issued = Issued::from(response);
    let refresh_expires_at = issued.refresh_expires_at(now);
    let dpop_key = dpop.as_ref().map(DpopKey::to_stored);
    (Tokens::issued(issued, now, dpop_key), refresh_expires_at)
}

/// Phase: the new session, under a new id; the session this browser had before ends.
async fn start_session(
    gw: &Gateway,
    fe: &Frontend,
    headers: &HeaderMap,
    new: NewSession,
) -> Result<SessionId, ApiError> {
    if let Some((_, old)) = gw.current_session(fe, headers).await? {
        gw.sessions.end(&old.key, EndReason::Replaced).await?;
    }
    let (session_id, record) = gw.sessions.create(new).await?;
    record.audited(crate::telemetry::audit_login);
    Ok(session_id)
}

/// How far the provider's clock may be ahead of ours when `auth_time` is checked.
const AUTH_TIME_LEEWAY_SECS: i64 = 60;

/// Step-up (RFC 9470, OIDC Core 3.1.2.1): when the login asked for `acr_values`, the
/// ID token's `acr` must be one of them; when it asked for `max_age`, the ID token
/// must have an `auth_time` at most that old. A provider that ignored the request
/// does not make a session: the login fails with 400 and the browser's earlier
/// session, if any, stays as it was.
fn check_step_up(pending: &PendingLogin, claims: &Map<String, Value>) -> Result<(), ApiError> {
    let sub = claims
        .get("sub")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let refuse = |why: &'static str| {
        tracing::warn!(
            target: "portcullis::audit",
            event = "step_up_refused",
            problem = why,
            sub,
        );
        Err(ApiError::InvalidRequest(format!(
            "the provider did not perform the requested authentication: {why}"
        )))
    };
    if let Some(asked) = &pending.acr_values {
        let acr = claims.get("acr").and_then(Value::as_str);
        if !acr.is_some_and(|acr| asked.split(' ').any(|a| a == acr)) {
            return refuse("the ID token's acr is not one of the acr_values asked for");
        }
    }
    if let Some(max_age) = pending.max_age {
        let auth_time = claims
            .get("auth_time")
            .and_then(|t| t.as_i64().or_else(|| t.as_f64().map(|f| f as i64)));
        let Some(auth_time) = auth_time else {
            return refuse("the ID token has no auth_time, and max_age was asked for");
        };
        let age = now_secs() - auth_time;
        if age > max_age as i64 + AUTH_TIME_LEEWAY_SECS {
            return refuse("the ID token's auth_time is older than the max_age asked for");
        }
    }
    Ok(())
}

/// Claims that describe the user, without the protocol's bookkeeping.
fn user_claims(mut claims: Map<String, Value>) -> Map<String, Value> {
    for protocol in [
        "nonce", "at_hash", "c_hash", "s_hash", "exp", "iat", "nbf", "aud", "azp", "jti",
    ] {
        claims.remove(protocol);
    }
    claims
}

fn hash_b64(value: &str) -> String {
    sha256_b64url(value.as_bytes())
}

fn provider_down(e: OidcError) -> ApiError {
    ApiError::IdpUnavailable(e.to_string())
}

/// A failed code exchange or token validation: the provider being down is a 503,
/// everything else a 400 with the reason in the log.
fn login_failed(e: OidcError) -> ApiError {
    match e {
        OidcError::Unavailable(_) => ApiError::IdpUnavailable(e.to_string()),
        other => {
            tracing::warn!(error = %other, "login failed");
            ApiError::InvalidRequest("the login could not be completed".into())
        }
    }
}

pub(super) fn redirect<const N: usize>(location: &str, cookies: [HeaderValue; N]) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    let h = response.headers_mut();
    match HeaderValue::try_from(location) {
        Ok(v) => h.insert(header::LOCATION, v),
        Err(_) => {
            return ApiError::Internal("redirect location is not a header value".into())
                .into_response();
        }
    };
    for c in cookies {
        h.append(header::SET_COOKIE, c);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_token_is_held_to_the_step_up_asked_for() {
        let pending = |acr: Option<&str>, max_age: Option<u64>| PendingLogin {
            binding: String::new(),
            pkce_verifier: String::new(),
            nonce: String::new(),
            return_url: "/".into(),
            expires_at: 0,
            silent: false,
            frontend: String::new(),
            network: String::new(),
            acr_values: acr.map(str::to_owned),
            max_age,
        };
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        let now = now_secs();
        let fresh = claims(serde_json::json!({"sub": "a", "acr": "gold", "auth_time": now - 5}));
        let old = claims(serde_json::json!({"sub": "a", "acr": "silver", "auth_time": now - 3600}));
        let none = claims(serde_json::json!({"sub": "a"}));
        assert!(check_step_up(&pending(None, None), &none).is_ok());
        assert!(check_step_up(&pending(Some("gold platinum"), None), &fresh).is_ok());
        assert!(check_step_up(&pending(Some("platinum gold"), Some(60)), &fresh).is_ok());
        assert!(check_step_up(&pending(Some("gold"), None), &old).is_err());
        assert!(check_step_up(&pending(Some("gol"), None), &fresh).is_err());
        assert!(check_step_up(&pending(Some("gold"), None), &none).is_err());
        assert!(check_step_up(&pending(None, Some(300)), &old).is_err());
        assert!(check_step_up(&pending(None, Some(300)), &none).is_err());
        assert!(
            check_step_up(&pending(None, Some(0)), &fresh).is_ok(),
            "60 s of skew"
        );
        assert!(check_step_up(&pending(None, Some(7200)), &old).is_ok());
        let float = claims(serde_json::json!({"auth_time": (now - 10) as f64 + 0.5}));
        assert!(check_step_up(&pending(None, Some(60)), &float).is_ok());
    }

    #[test]
    fn the_binding_cookie_keeps_other_tabs_and_stays_bounded() {
        let values: Vec<String> = (0..40).map(|_| random_token()).collect();
        let mut cookie = String::new();
        for (i, v) in values.iter().enumerate() {
            let earlier = bindings(Some(&cookie));
            assert_eq!(earlier.len(), i.min(MAX_BINDINGS));
            cookie = with_binding(&earlier, v);
            assert!(cookie.len() <= MAX_BINDINGS * 44, "{}", cookie.len());
            let now = bindings(Some(&cookie));
            // The newest, the ones just before it, and the browser's first stay.
            assert_eq!(now.last(), Some(&v.as_str()));
            assert_eq!(now.first(), Some(&values[0].as_str()));
            if i > 0 {
                assert!(now.contains(&values[i - 1].as_str()));
            }
        }
        // Malformed parts are dropped, never adopted.
        let good = random_token();
        let sent = format!("short.{good}.{}!.{}", &good[..42], "x".repeat(44));
        assert_eq!(bindings(Some(&sent)), vec![good.as_str()]);
        assert!(bindings(None).is_empty() && bindings(Some("")).is_empty());
    }
}
