//! Routes' own user tokens: a token per API.
//!
//! A route with `resource` and/or `scopes` on a user-token kind gets an access token
//! of its own, obtained with the session's refresh token (a refresh-token grant with
//! `resource` / `scope`: RFC 8707 §2.2, Entra's per-resource `.default` scopes, Okta's
//! and Keycloak's scopes). A `token = "exchange"` route gets the session's access token
//! exchanged for one for its audience (RFC 8693). Either is an [`Audience`]; its token
//! is kept sealed in the session next to the login's tokens ([`Tokens::route_tokens`]).
//!
//! The guarantees of the login's refresh hold per audience:
//! - **One grant per session and audience per expiry**, across instances: in the
//!   process, one task per (session, audience) does the grant and the others wait
//!   for it; across processes the session's one refresh lock serialises every grant
//!   of the session (the login's and every audience's), and whoever holds it re-reads
//!   the session first, so a token obtained elsewhere is reused.
//! - **One refresh token.** A downscoped refresh may rotate the refresh token: the new
//!   one replaces the session's, in the same sealed blob as the audience's new token,
//!   written under the lock — so the login's refresh and every other audience use the
//!   new one from then on, and no rotated token is ever sent twice.
//! - **Failures stay on the route.** `invalid_grant` on a refresh ends the session
//!   (as for the login's token); a provider that is down answers 503 (the current
//!   token is used while it is valid); any other refusal (`invalid_target`,
//!   `invalid_scope`, an exchange refused by policy, …) is 403 `forbidden` for that
//!   route only, never a logout, and the log names the route.
//! - **A token only for its route**: the caller attaches it to the route's upstream.
//!
//! A refresh-token grant's ID token (if the provider sends one) is not kept: the
//! session's ID token and claims come from the login's own refreshes.

use std::sync::Arc;
use std::time::Instant;

use axum::http::HeaderValue;
use tokio::sync::watch;

use super::{Outcome, REFUSED_BACKOFF, Timings, TokenManager, UNAVAILABLE_BACKOFF};
use crate::config::{RouteConfig, TokenKind};
use crate::error::ApiError;
use crate::oidc::{Oidc, OidcError};
use crate::primitives::now_secs;
use crate::session::{EndReason, RouteToken, SessionRecord, SessionStore, StoreKey, Tokens};

/// How a route's own token is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// A refresh-token grant with `resource` / `scope`.
    Refresh,
    /// Token exchange (RFC 8693) of the session's access token.
    Exchange,
}

/// What a route's own token is for. Routes asking for the same share one token.
#[derive(Debug)]
pub struct Audience {
    /// Names the token in the session (and the grant in flight).
    pub key: String,
    pub grant: Grant,
    pub resource: Option<String>,
    pub scope: Option<String>,
    /// Token exchange's `audience`.
    pub audience: Option<String>,
    /// The first route asking for it, for logs.
    pub route: String,
}

impl Audience {
    /// The route's own token, if it has one (see `RouteConfig::has_own_user_token`).
    pub fn of_route(c: &RouteConfig) -> Option<Self> {
        if !c.has_own_user_token() {
            return None;
        }
        let grant = if c.token == TokenKind::Exchange {
            Grant::Exchange
        } else {
            Grant::Refresh
        };
        let resource = c.resource.as_ref().map(|r| r.to_string());
        let scope = c.scopes.as_ref().map(|s| s.join(" "));
        let audience = c.audience.clone();
        let key = format!(
            "{}|{}|{}|{}",
            match grant {
                Grant::Refresh => "refresh",
                Grant::Exchange => "exchange",
            },
            audience.as_deref().unwrap_or(""),
            resource.as_deref().unwrap_or(""),
            scope.as_deref().unwrap_or("")
        );
        Some(Self {
            key,
            grant,
            resource,
            scope,
            audience,
            route: c.prefix.clone(),
        })
    }

    /// What the token must name in its `aud` when it is a JWT.
    fn expected_aud(&self) -> Option<&str> {
        match self.grant {
            Grant::Refresh => self.resource.as_deref(),
            Grant::Exchange => self.audience.as_deref().or(self.resource.as_deref()),
        }
    }
}

impl TokenManager {
    /// The `Authorization` value of `audience`'s token for the session of `record`,
    /// obtained or renewed if needed. `oidc` is the session's own client (its
    /// frontend's).
    pub async fn route_token(
        self: &Arc<Self>,
        oidc: &Arc<Oidc>,
        record: &SessionRecord,
        audience: &Arc<Audience>,
    ) -> Result<HeaderValue, ApiError> {
        let tokens = self.open(record).await?;
        let now = now_secs();
        let current = tokens.route_token(&audience.key);
        if let Some(t) = current
            && !self.timings.due(t.issued_at, t.expires_at, now)
        {
            // Built once per opened tokens, shared after (see `OpenedTokens`).
            return tokens
                .route_bearer(&audience.key)
                .ok_or_else(super::unusable_token);
        }
        let still_valid = current
            .filter(|t| t.expires_at.is_none_or(|e| e > now))
            .map(|t| t.access_token.clone());
        match audience.grant {
            // The subject token: the login's, fresh (this may refresh it, and ends the
            // session on invalid_grant as any user route would).
            Grant::Exchange => {
                self.user_tokens(oidc, record).await?;
            }
            Grant::Refresh if tokens.refresh_token.is_none() => {
                return match still_valid {
                    Some(t) => bearer(&t),
                    None => Err(refused(
                        audience,
                        "the session has no refresh token to obtain this route's token with",
                    )),
                };
            }
            Grant::Refresh => {}
        }
        let backoff_key = (record.key, audience.key.clone());
        if still_valid.is_none()
            && let Some(entry) = self.route_refused.get(&backoff_key)
            && Instant::now() < entry.0
        {
            return Err(ApiError::Forbidden(format!(
                "route {}: {} (refused earlier; not asked again yet)",
                audience.route, entry.1
            )));
        }
        if let Some(t) = &still_valid
            && self
                .route_backoff
                .get(&backoff_key)
                .is_some_and(|until| Instant::now() < *until)
        {
            return bearer(t);
        }
        match self.obtain(oidc, record.key, audience).await {
            Outcome::Fresh(fresh) => {
                self.route_backoff.remove(&backoff_key);
                self.route_refused.remove(&backoff_key);
                match fresh.route_token(&audience.key) {
                    Some(t) => bearer(&t.access_token),
                    None => Err(ApiError::Internal(
                        "the route's token is missing after it was obtained".into(),
                    )),
                }
            }
            Outcome::Ended => Err(ApiError::SessionExpired),
            Outcome::Refused(detail) => {
                let error = refused(audience, &detail);
                self.route_refused
                    .insert(backoff_key, (Instant::now() + REFUSED_BACKOFF, detail));
                self.prune();
                match still_valid {
                    Some(t) => bearer(&t),
                    None => Err(error),
                }
            }
            Outcome::ProviderDown(detail) => {
                self.route_backoff
                    .insert(backoff_key, Instant::now() + UNAVAILABLE_BACKOFF);
                self.prune();
                match still_valid {
                    Some(t) => {
                        tracing::warn!(route = %audience.route, detail, "route token renewal failed; using the current token");
                        bearer(&t)
                    }
                    None => Err(ApiError::IdpUnavailable(format!(
                        "route {}: {detail}",
                        audience.route
                    ))),
                }
            }
            Outcome::StoreDown(detail) => match still_valid {
                Some(t) => bearer(&t),
                None => Err(ApiError::StoreUnavailable(detail)),
            },
        }
    }

    /// Keeps the per-route back-off maps bounded: past entries go once there are many
    /// (sessions that ended keep theirs until then).
    fn prune(&self) {
        const MANY: usize = 10_000;
        let now = Instant::now();
        if self.route_backoff.len() > MANY {
            self.route_backoff.retain(|_, until| *until > now);
        }
        if self.route_refused.len() > MANY {
            self.route_refused.retain(|_, (until, _)| *until > now);
        }
    }

    /// Joins the (session, audience) grant in this process, or starts it.
    async fn obtain(
        self: &Arc<Self>,
        oidc: &Arc<Oidc>,
        key: StoreKey,
        audience: &Arc<Audience>,
    ) -> Outcome {
        let flight = (key, audience.key.clone());
        let mut rx = {
            let mut inflight = self
                .route_inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match inflight.get(&flight) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(flight.clone(), rx.clone());
                    let (this, oidc) = (self.clone(), oidc.clone());
                    let audience = audience.clone();
                    // Logged as the request that started it.
                    crate::telemetry::scope::spawn(async move {
                        let target = super::Target::Route(audience);
                        let outcome = this.refresh_session(&oidc, key, &target).await;
                        let _ = tx.send(Some(outcome));
                        this.route_inflight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&flight);
                    });
                    rx
                }
            }
        };
        match tokio::time::timeout(self.timings.wait, rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().expect("waited for Some"),
            Ok(Err(_)) => Outcome::ProviderDown("the token task ended without a result".into()),
            Err(_) => Outcome::ProviderDown("the provider has not answered yet".into()),
        }
    }

    /// The grant for `audience`, under the session's refresh lock (see the module docs).
    pub(super) async fn obtain_locked(
        &self,
        oidc: &Oidc,
        key: &StoreKey,
        audience: &Audience,
    ) -> Outcome {
        let record = match self.sessions.store().get(key).await {
            Ok(Some(r)) => r,
            Ok(None) => return Outcome::Ended,
            Err(e) => return Outcome::StoreDown(e.to_string()),
        };
        let Ok(mut tokens) = self.sessions.open_tokens(&record) else {
            return Outcome::Ended;
        };
        if is_fresh(&self.timings, &tokens, audience, now_secs()) {
            return Outcome::Fresh(Arc::new(tokens.into()));
        }
        let started = Instant::now();
        let answer = match audience.grant {
            Grant::Refresh => {
                let Some(refresh_token) = tokens.refresh_token.as_deref() else {
                    return Outcome::Refused("the session has no refresh token".into());
                };
                oidc.refresh_for(
                    refresh_token,
                    audience.resource.as_deref(),
                    audience.scope.as_deref(),
                    self.timings.refresh_timeout,
                )
                .await
            }
            Grant::Exchange => {
                oidc.exchange_token(
                    &tokens.access_token,
                    audience.audience.as_deref(),
                    audience.resource.as_deref(),
                    audience.scope.as_deref(),
                )
                .await
            }
        };
        let outcome_label = |o: &'static str| match audience.grant {
            Grant::Refresh => o,
            Grant::Exchange => "exchange",
        };
        match answer {
            Ok(response) => {
                let now = now_secs();
                let mut refresh_expires_at = None;
                if audience.grant == Grant::Refresh {
                    // Rotated: from now on the session's only refresh token, for every audience.
                    if let Some(rotated) = response.refresh_token {
                        tokens.refresh_token = Some(rotated);
                    }
                    refresh_expires_at = response
                        .refresh_expires_in
                        .filter(|s| *s > 0)
                        .map(|s| now + s);
                }
                let mismatch = audience
                    .expected_aud()
                    .and_then(|want| wrong_audience(&response.access_token, want));
                if mismatch.is_none() {
                    tokens.set_route_token(RouteToken {
                        key: audience.key.clone(),
                        access_token: response.access_token,
                        expires_at: response.expires_in.map(|s| now + s),
                        issued_at: Some(now),
                    });
                }
                // Stored even when the token is refused: the refresh token may have rotated.
                let updated = self
                    .sessions
                    .with_tokens(&record, &tokens, refresh_expires_at);
                match self.sessions.store().update(Arc::new(updated)).await {
                    Ok(true) => {}
                    Ok(false) => return Outcome::Ended,
                    Err(e) => return Outcome::StoreDown(e.to_string()),
                }
                if let Some(why) = mismatch {
                    record.audited(|who| {
                        crate::telemetry::audit_refresh(who, "refused", started.elapsed())
                    });
                    return Outcome::Refused(why);
                }
                record.audited(|who| {
                    crate::telemetry::audit_refresh(
                        who,
                        outcome_label("success"),
                        started.elapsed(),
                    )
                });
                tracing::info!(route = %audience.route, session = %record.key.log_label(), "route token obtained");
                Outcome::Fresh(Arc::new(tokens.into()))
            }
            Err(e) if e.is_invalid_grant() && audience.grant == Grant::Refresh => {
                record.audited(|who| {
                    crate::telemetry::audit_refresh(who, "invalid_grant", started.elapsed())
                });
                match self.sessions.end(key, EndReason::GrantRevoked).await {
                    Ok(_) => Outcome::Ended,
                    Err(e) => Outcome::StoreDown(e.to_string()),
                }
            }
            Err(e @ OidcError::Refused { .. }) => {
                record.audited(|who| {
                    crate::telemetry::audit_refresh(who, "refused", started.elapsed())
                });
                Outcome::Refused(e.to_string())
            }
            Err(e) => {
                if let OidcError::InvalidResponse(_) = e {
                    tracing::error!(route = %audience.route, error = %e, "the provider's answer for a route token is not usable");
                }
                record.audited(|who| {
                    crate::telemetry::audit_refresh(who, "provider_unavailable", started.elapsed())
                });
                Outcome::ProviderDown(e.to_string())
            }
        }
    }
}

/// Does the stored session hold a fresh token for `audience`?
pub(super) fn is_fresh(t: &Timings, tokens: &Tokens, audience: &Audience, now: i64) -> bool {
    tokens
        .route_token(&audience.key)
        .is_some_and(|rt| !t.due(rt.issued_at, rt.expires_at, now))
}

/// `Some(why)` when `token` is a JWT whose `aud` does not name `want` — the provider
/// ignored the resource (no RFC 8707 support) or issued a token for another API.
/// Opaque tokens can't be checked here (the upstream introspects them).
fn wrong_audience(token: &str, want: &str) -> Option<String> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let names = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s == want,
        serde_json::Value::Array(a) => a.iter().any(|x| x.as_str() == Some(want)),
        _ => false,
    };
    match claims.get("aud") {
        Some(aud) if names(aud) => None,
        Some(aud) => Some(format!(
            "the provider's token is for {aud}, not {want} (does it support resource indicators, RFC 8707?)"
        )),
        None => Some(format!(
            "the provider's token has no aud, it was asked for {want} (does it support resource indicators, RFC 8707?)"
        )),
    }
}

fn refused(audience: &Audience, detail: &str) -> ApiError {
    tracing::warn!(route = %audience.route, detail, "the route's token could not be obtained");
    ApiError::Forbidden(format!("route {}: {detail}", audience.route))
}

fn bearer(token: &str) -> Result<HeaderValue, ApiError> {
    crate::session::authorization("Bearer", token).ok_or_else(super::unusable_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        use base64::Engine;
        let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        format!(
            "{}.{}.sig",
            e(br#"{"alg":"RS256"}"#),
            e(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn a_jwt_for_another_audience_is_refused_and_opaque_tokens_pass() {
        let want = "https://a.example/";
        assert_eq!(
            wrong_audience(&jwt(serde_json::json!({"aud": want})), want),
            None
        );
        assert_eq!(
            wrong_audience(&jwt(serde_json::json!({"aud": ["x", want]})), want),
            None
        );
        assert!(wrong_audience(&jwt(serde_json::json!({"aud": "https://b/"})), want).is_some());
        assert!(wrong_audience(&jwt(serde_json::json!({"sub": "alice"})), want).is_some());
        assert_eq!(wrong_audience("opaque-token-value", want), None);
    }

    #[test]
    fn routes_asking_for_the_same_share_a_key_and_others_do_not() {
        let route = |extra: &str| -> RouteConfig {
            let toml = format!(
                "[server]\npublic_origin = \"http://127.0.0.1:8080\"\n\
                 [oidc]\nissuer = \"http://127.0.0.1:9090\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
                 [session]\nkeys = [\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"]\n\
                 [[routes]]\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\n{extra}\n"
            );
            let config = crate::config::Config::from_toml(&toml, []).unwrap();
            config.frontend().routes[0].clone()
        };
        assert!(Audience::of_route(&route("")).is_none());
        assert!(Audience::of_route(&route("token = \"client\"\nscopes = [\"x\"]")).is_none());
        let a = Audience::of_route(&route("resource = \"https://a/\"")).unwrap();
        let a2 = Audience::of_route(&route("resource = \"https://a/\"")).unwrap();
        let b = Audience::of_route(&route("resource = \"https://a/\"\nscopes = [\"r\"]")).unwrap();
        let x =
            Audience::of_route(&route("token = \"exchange\"\nresource = \"https://a/\"")).unwrap();
        assert_eq!(a.key, a2.key);
        assert_ne!(a.key, b.key);
        assert_ne!(a.key, x.key);
        assert_eq!(x.grant, Grant::Exchange);
        assert_eq!(b.scope.as_deref(), Some("r"));
    }
}
