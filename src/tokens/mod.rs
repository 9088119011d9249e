//! The token manager: hands out the access token a request should carry.
//!
//! **User tokens** are refreshed ahead of expiry (`tokens.refresh_before`, never more
//! than half the token's lifetime). Providers rotate refresh tokens, and a rotated
//! token used twice revokes the whole grant — the classic BFF "refresh race" that
//! logs users out when a page fires many calls as the token expires. So:
//!
//! - **Single-flight per session.** However many requests of a session need a
//!   refresh at once, one task performs it; the others wait on a watch channel and
//!   take its result. Across processes the store's refresh lock (a lease with an
//!   owner token, released by compare-and-delete) makes it one per session
//!   cluster-wide; whoever gets the lock re-reads the session first, so a refresh
//!   done elsewhere is reused, and a rotated refresh token is never sent again.
//! - **Stored before released.** The new tokens are written to the store before any
//!   waiter proceeds.
//! - **Its own task.** The refresh is spawned, so a client hanging up can't cancel
//!   it halfway and lose the new refresh token.
//! - **Refreshed ID tokens are validated** (OIDC Core §12.2: same `iss`, `sub`,
//!   `aud`, `azp`, `auth_time`, `nonce` absent or the same, signature, `exp`, `iat`)
//!   before they replace the stored one. One that fails ends the session like
//!   `invalid_grant`, and nothing of that answer is kept (see [`refused_id_token`]).
//! - **Failures.** `invalid_grant` ends the session (`session_expired`). A provider
//!   that is down, slow or answering 5xx keeps the session: the current token is
//!   used while it is still valid (with a short back-off before the next try),
//!   otherwise `idp_unavailable`; the next request tries again.
//!
//! **Routes' own user tokens** (per-route `resource`/`scopes`, token exchange) follow
//! the same rules per audience, under the same per-session lock: see [`route`].
//!
//! **Client tokens** (client credentials) are cached per route scope/resource and
//! refreshed ahead of expiry, one fetch at a time.

mod client;
mod route;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;

pub use client::ClientSlot;
pub use route::{Audience, Grant};

use crate::error::ApiError;
use crate::oidc::{Oidc, OidcError, TokenResponse};
use crate::primitives::now_secs;
use crate::session::{
    EndReason, Issued, OpenedTokens, SessionRecord, SessionStore, Sessions, StoreKey, Tokens,
};

/// After the provider failed a refresh, sessions with a still-valid token don't
/// retry for this long (so an outage doesn't slow every request down by a timeout).
const UNAVAILABLE_BACKOFF: Duration = Duration::from_secs(5);
/// After the provider refused a route's token, that session's route answers the same
/// refusal for this long without asking again.
const REFUSED_BACKOFF: Duration = Duration::from_secs(30);
/// How often a request waiting for another instance's refresh re-reads the session.
const LOCK_POLL: Duration = Duration::from_millis(50);
/// How long refreshed tokens are offered to a failing store (within the lock's
/// lease, which outlasts `refresh_timeout` by 5 s), and how often.
const STORE_RETRY_FOR: Duration = Duration::from_secs(4);
const STORE_RETRY_EVERY: Duration = Duration::from_millis(200);

/// The result of one refresh, shared with every waiter.
#[derive(Clone, Debug)]
enum Outcome {
    Fresh(Arc<OpenedTokens>),
    /// The grant is gone (`invalid_grant`) or the session ended meanwhile.
    Ended,
    ProviderDown(String),
    StoreDown(String),
    /// The provider refused a route's token (not `invalid_grant`): that route only.
    Refused(String),
}

/// A grant in flight: its result, once there.
type Flight = watch::Receiver<Option<Outcome>>;

/// Which token of a session a refresh is for.
enum Target {
    /// The login's access token (and ID token).
    Login,
    /// A route's own token.
    Route(Arc<Audience>),
}

/// When tokens are renewed, and how long that may take.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    refresh_before: i64,
    /// How long a request waits for a refresh before it goes on without it.
    wait: Duration,
    /// How long the refresh itself waits for the provider's answer (see `Oidc::refresh`).
    refresh_timeout: Duration,
    /// The store refresh lock's lease: longer than any refresh can take.
    lease: Duration,
}

impl Timings {
    /// `refresh_before`: how long before expiry to refresh; `wait`: how long a
    /// request waits for a refresh; `refresh_timeout`: how long a refresh waits for
    /// the provider (the refresh lock's lease is derived from it).
    pub fn new(refresh_before: Duration, wait: Duration, refresh_timeout: Duration) -> Self {
        let refresh_timeout = refresh_timeout.max(wait);
        Self {
            refresh_before: refresh_before.as_secs() as i64,
            wait,
            refresh_timeout,
            lease: refresh_timeout + Duration::from_secs(5),
        }
    }

    /// Is it time to refresh these tokens?
    pub fn needs_refresh(&self, tokens: &Tokens, now: i64) -> bool {
        self.due(tokens.access_issued_at, tokens.access_expires_at, now)
    }

    /// Is a token obtained at `issued` that expires at `expires` due for renewal?
    fn due(&self, issued: Option<i64>, expires: Option<i64>, now: i64) -> bool {
        let Some(expires_at) = expires else {
            return false;
        };
        let lifetime = issued.map_or(i64::MAX, |issued| (expires_at - issued).max(0));
        let ahead = self.refresh_before.min(lifetime / 2);
        now >= expires_at - ahead
    }
}

/// The token manager. It holds the sessions and its own bookkeeping; the OIDC
/// client that renews a session's tokens is the session's frontend's, handed in by
/// the caller with each request (and moved into the refresh task it may start).
pub struct TokenManager {
    sessions: Arc<Sessions>,
    timings: Timings,
    inflight: Mutex<HashMap<StoreKey, watch::Receiver<Option<Outcome>>>>,
    backoff: DashMap<StoreKey, Instant>,
    /// Grants of routes' own tokens in flight, per session and audience key.
    route_inflight: Mutex<HashMap<(StoreKey, String), Flight>>,
    route_backoff: DashMap<(StoreKey, String), Instant>,
    /// A route token the provider refused (`invalid_target`, …): until when, and why —
    /// a misconfigured route is not sent to the provider on every request.
    route_refused: DashMap<(StoreKey, String), (Instant, String)>,
}

impl TokenManager {
    /// Shared: a refresh task holds it (and nothing else of the gateway).
    pub fn new(sessions: Arc<Sessions>, timings: Timings) -> Arc<Self> {
        Arc::new(Self {
            sessions,
            timings,
            inflight: Mutex::new(HashMap::new()),
            backoff: DashMap::new(),
            route_inflight: Mutex::new(HashMap::new()),
            route_backoff: DashMap::new(),
            route_refused: DashMap::new(),
        })
    }

    /// The session's opened tokens; a session whose tokens can't be opened ends.
    async fn open(&self, record: &SessionRecord) -> Result<Arc<OpenedTokens>, ApiError> {
        match self.sessions.open_tokens_cached(record) {
            Ok(tokens) => Ok(tokens),
            Err(e) => {
                // Sealed under a key no longer in `session.keys` (or damaged): the
                // session can't be used again, so it ends instead of failing forever.
                tracing::warn!(session = %record.key.log_label(), error = %e, "session tokens can't be opened; ending the session");
                self.sessions
                    .end(&record.key, EndReason::Unreadable)
                    .await?;
                Err(ApiError::SessionExpired)
            }
        }
    }

    /// The user's current tokens for `record`, refreshed if needed, or why there are
    /// none. `oidc` is the session's own client (its frontend's).
    pub async fn user_tokens(
        self: &Arc<Self>,
        oidc: &Arc<Oidc>,
        record: &SessionRecord,
    ) -> Result<Arc<OpenedTokens>, ApiError> {
        let tokens = self.open(record).await?;
        let now = now_secs();
        if !self.timings.needs_refresh(&tokens, now) {
            return Ok(tokens);
        }
        let still_valid = tokens.access_expires_at.is_none_or(|e| e > now);
        if tokens.refresh_token.is_none() {
            if still_valid {
                return Ok(tokens);
            }
            self.sessions
                .end(&record.key, EndReason::AccessExpired)
                .await?;
            return Err(ApiError::SessionExpired);
        }
        if still_valid
            && self
                .backoff
                .get(&record.key)
                .is_some_and(|until| Instant::now() < *until)
        {
            return Ok(tokens);
        }
        match self.refresh(oidc, record.key).await {
            Outcome::Fresh(fresh) => {
                self.backoff.remove(&record.key);
                Ok(fresh)
            }
            Outcome::Ended => Err(ApiError::SessionExpired),
            Outcome::ProviderDown(detail) => {
                self.backoff
                    .insert(record.key, Instant::now() + UNAVAILABLE_BACKOFF);
                if still_valid {
                    tracing::warn!(session = %record.key.log_label(), detail, "refresh failed; using the current token");
                    Ok(tokens)
                } else {
                    Err(ApiError::IdpUnavailable(detail))
                }
            }
            Outcome::StoreDown(detail) if still_valid => {
                tracing::warn!(detail, "refresh lock unavailable; using the current token");
                Ok(tokens)
            }
            Outcome::StoreDown(detail) => Err(ApiError::StoreUnavailable(detail)),
            Outcome::Refused(detail) => Err(ApiError::Forbidden(detail)),
        }
    }

    /// Joins the session's refresh in this process, or starts it.
    async fn refresh(self: &Arc<Self>, oidc: &Arc<Oidc>, key: StoreKey) -> Outcome {
        let mut rx = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key, rx.clone());
                    let (this, oidc) = (self.clone(), oidc.clone());
                    // Logged as the request that started it.
                    crate::telemetry::scope::spawn(async move {
                        let outcome = this.refresh_session(&oidc, key, &Target::Login).await;
                        // Publish, then forget: a request that starts after this finds no
                        // entry, and its own refresh re-reads the (already updated) session.
                        let _ = tx.send(Some(outcome));
                        this.inflight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&key);
                    });
                    rx
                }
            }
        };
        // The refresh goes on in its task even if this request stops waiting.
        match tokio::time::timeout(self.timings.wait, rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().expect("waited for Some"),
            Ok(Err(_)) => Outcome::ProviderDown("the refresh task ended without a result".into()),
            Err(_) => Outcome::ProviderDown("the provider has not answered the refresh yet".into()),
        }
    }

    /// One refresh of one session's `target` token, under the store's refresh lock
    /// (one lock per session: the login's and every route's grants take turns).
    async fn refresh_session(&self, oidc: &Arc<Oidc>, key: StoreKey, target: &Target) -> Outcome {
        let store = self.sessions.store();
        let owner = crate::primitives::random_token();
        let lease = self.timings.lease;
        let started = Instant::now();
        loop {
            match store
                .try_lock_refresh(&key, &owner, lease.as_millis() as u64)
                .await
            {
                Ok(true) => break,
                Ok(false) => {
                    // Another instance is refreshing this session: wait for its result.
                    tokio::time::sleep(LOCK_POLL).await;
                    match self.fresh_tokens_in_store(&key, target).await {
                        Ok(Some(outcome)) => return outcome,
                        Ok(None) if started.elapsed() < lease * 2 => continue,
                        Ok(None) => {
                            return Outcome::ProviderDown(
                                "timed out waiting for another refresh".into(),
                            );
                        }
                        Err(e) => return Outcome::StoreDown(e.to_string()),
                    }
                }
                Err(e) => return Outcome::StoreDown(e.to_string()),
            }
        }
        let outcome = match target {
            Target::Login => self.refresh_locked(oidc, &key).await,
            Target::Route(audience) => self.obtain_locked(oidc, &key, audience).await,
        };
        if let Err(e) = store.unlock_refresh(&key, &owner).await {
            // A store failing over: try again in the background, so the session's next
            // refresh is not blocked for the whole lease.
            tracing::warn!(error = %e, "refresh lock release failed; trying again until its lease ends");
            let sessions = self.sessions.clone();
            tokio::spawn(async move {
                let deadline = started + lease;
                while Instant::now() + STORE_RETRY_EVERY < deadline {
                    tokio::time::sleep(STORE_RETRY_EVERY).await;
                    if sessions.store().unlock_refresh(&key, &owner).await.is_ok() {
                        return;
                    }
                }
            });
        }
        outcome
    }

    /// `Some` when the stored session no longer needs a refresh (someone else did it)
    /// or is gone.
    async fn fresh_tokens_in_store(
        &self,
        key: &StoreKey,
        target: &Target,
    ) -> Result<Option<Outcome>, crate::session::StoreError> {
        let Some(record) = self.sessions.store().get(key).await? else {
            return Ok(Some(Outcome::Ended));
        };
        let Ok(tokens) = self.sessions.open_tokens(&record) else {
            return Ok(Some(Outcome::Ended));
        };
        let fresh = match target {
            Target::Login => !self.timings.needs_refresh(&tokens, now_secs()),
            Target::Route(audience) => {
                route::is_fresh(&self.timings, &tokens, audience, now_secs())
            }
        };
        if !fresh {
            Ok(None)
        } else {
            Ok(Some(Outcome::Fresh(Arc::new(tokens.into()))))
        }
    }

    async fn refresh_locked(&self, oidc: &Arc<Oidc>, key: &StoreKey) -> Outcome {
        // Re-read under the lock: the tokens we were asked about may already be replaced.
        let record = match self.sessions.store().get(key).await {
            Ok(Some(r)) => r,
            Ok(None) => return Outcome::Ended,
            Err(e) => return Outcome::StoreDown(e.to_string()),
        };
        let Ok(tokens) = self.sessions.open_tokens(&record) else {
            return Outcome::Ended;
        };
        if !self.timings.needs_refresh(&tokens, now_secs()) {
            return Outcome::Fresh(Arc::new(tokens.into()));
        }
        let Some(refresh_token) = tokens.refresh_token.as_deref() else {
            return Outcome::Ended;
        };
        // DPoP: the refresh is signed with the session's own key, so the new access
        // token is bound to the same key (RFC 9449 §5).
        let dpop = match session_dpop_key(oidc, &tokens) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(session = %record.key.log_label(), error = %e, "session DPoP key unusable; ending the session");
                return match self.sessions.end(key, EndReason::Unreadable).await {
                    Ok(_) => Outcome::Ended,
                    Err(e) => Outcome::StoreDown(e.to_string()),
                };
            }
        };
        let started = Instant::now();
        match oidc
            .refresh(refresh_token, self.timings.refresh_timeout, dpop.as_ref())
            .await
        {
            Ok(response) => {
                let mut keep_stored_id_token = false;
                if let Some(id_token) = &response.id_token {
                    match oidc
                        .validate_refreshed_id_token(
                            id_token,
                            tokens.id_token.as_deref(),
                            &record.sub,
                        )
                        .await
                    {
                        Ok(_) => {}
                        // The provider's metadata or keys can't be fetched right now. The
                        // answer came from the token endpoint over TLS with client
                        // authentication, and its refresh token is the session's only one
                        // (the old one may be spent by rotation): keep the new tokens and
                        // the stored ID token, never end the session for an outage. The
                        // next refresh's ID token is validated again.
                        Err(OidcError::Unavailable(e)) => {
                            tracing::warn!(
                                frontend = %record.frontend,
                                error = %e,
                                "the refreshed ID token could not be validated (provider keys unavailable); keeping the stored ID token"
                            );
                            keep_stored_id_token = true;
                        }
                        Err(e) => {
                            return self
                                .refused_id_token(oidc, &record, response, e, started)
                                .await;
                        }
                    }
                }
                let now = now_secs();
                let issued = Issued::from(response);
                let refresh_expires_at = issued.refresh_expires_at(now);
                let fresh = tokens.refreshed(issued, now, keep_stored_id_token, dpop.is_some());
                let updated = Arc::new(self.sessions.with_tokens(
                    &record,
                    &fresh,
                    refresh_expires_at,
                ));
                // The provider may have rotated the refresh token: the new one exists
                // only here. A store that fails (e.g. a Redis master failing over) is
                // tried again for a while, still under the lock (its lease has 5 s to
                // spare beyond `refresh_timeout` for this), or the session would be lost.
                let retry_until = Instant::now() + STORE_RETRY_FOR;
                loop {
                    match self.sessions.store().update(updated.clone()).await {
                        Ok(true) => {
                            record.audited(|who| {
                                crate::telemetry::audit_refresh(who, "success", started.elapsed())
                            });
                            break Outcome::Fresh(Arc::new(fresh.into()));
                        }
                        Ok(false) => break Outcome::Ended,
                        Err(e) if Instant::now() + STORE_RETRY_EVERY < retry_until => {
                            tracing::warn!(session = %record.key.log_label(), error = %e, "storing refreshed tokens failed; trying again");
                            tokio::time::sleep(STORE_RETRY_EVERY).await;
                        }
                        Err(e) => {
                            tracing::error!(session = %record.key.log_label(), error = %e, "storing refreshed tokens failed; a rotated refresh token is lost");
                            break Outcome::StoreDown(e.to_string());
                        }
                    }
                }
            }
            Err(e) if e.is_invalid_grant() => {
                record.audited(|who| {
                    crate::telemetry::audit_refresh(who, "invalid_grant", started.elapsed())
                });
                match self.sessions.end(key, EndReason::GrantRevoked).await {
                    Ok(_) => Outcome::Ended,
                    Err(e) => Outcome::StoreDown(e.to_string()),
                }
            }
            Err(e) => {
                let detail = e.to_string();
                if let OidcError::Refused { .. } | OidcError::InvalidResponse(_) = e {
                    // invalid_client and the like: a configuration problem, not the user's fault.
                    tracing::error!(error = %detail, "refresh refused; keeping the session");
                }
                record.audited(|who| {
                    crate::telemetry::audit_refresh(who, "provider_unavailable", started.elapsed())
                });
                Outcome::ProviderDown(detail)
            }
        }
    }

    /// A refresh whose ID token failed OIDC Core §12.2 (another user, another login,
    /// a bad signature, …). Nothing of that answer is stored: its tokens can't be
    /// trusted to be this session's user's, and keeping the session without them
    /// doesn't work either — the old refresh token is spent once the provider
    /// rotated it, and sending it again would revoke the grant. So the session ends,
    /// as after `invalid_grant` (the user logs in again), and the answer's new refresh
    /// token is revoked at the provider in the background so that it doesn't outlive
    /// the session.
    async fn refused_id_token(
        &self,
        oidc: &Arc<Oidc>,
        record: &SessionRecord,
        response: TokenResponse,
        error: OidcError,
        started: Instant,
    ) -> Outcome {
        tracing::error!(
            session = %record.key.log_label(),
            error = %error,
            "the provider's refreshed ID token failed validation (OIDC Core 12.2); nothing of this refresh is kept and the session ends"
        );
        record.audited(|who| {
            crate::telemetry::audit_refresh(who, "invalid_id_token", started.elapsed())
        });
        if let Some(refresh_token) = response.refresh_token {
            let oidc = oidc.clone();
            let (sub, session) = (record.sub.clone(), record.key.log_label());
            tokio::spawn(async move {
                use crate::telemetry::audit_revocation as audit;
                match oidc.revoke_refresh_token(&refresh_token).await {
                    Ok(true) => audit(&sub, &session, "revoked", None),
                    Ok(false) => audit(&sub, &session, "unsupported", None),
                    Err(e) => audit(&sub, &session, "failed", Some(&e.to_string())),
                }
            });
        }
        match self
            .sessions
            .end(&record.key, EndReason::InvalidIdToken)
            .await
        {
            Ok(_) => Outcome::Ended,
            Err(e) => Outcome::StoreDown(e.to_string()),
        }
    }
}

/// The session's part of the provider's answer (the token manager is the lowest
/// layer that sees both the OIDC client's answer and the session's tokens).
impl From<TokenResponse> for Issued {
    fn from(r: TokenResponse) -> Self {
        Self {
            access_token: r.access_token,
            token_type: r.token_type,
            expires_in: r.expires_in,
            refresh_token: r.refresh_token,
            refresh_expires_in: r.refresh_expires_in,
            id_token: r.id_token,
            scope: r.scope,
        }
    }
}

/// The session's DPoP key when DPoP is on and the session has one (sessions from
/// before `oidc.dpop` was turned on have none and keep Bearer tokens).
/// A token that can't be sent: it is not a header value.
pub fn unusable_token() -> ApiError {
    ApiError::Internal("access token is not a header value".into())
}

pub fn session_dpop_key(
    oidc: &Oidc,
    tokens: &Tokens,
) -> Result<Option<crate::oidc::DpopKey>, String> {
    match &tokens.dpop_key {
        Some(stored) if oidc.dpop_enabled() => crate::oidc::DpopKey::from_stored(stored).map(Some),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(issued: i64, expires: i64) -> Tokens {
        Tokens {
            access_token: "a".into(),
            token_type: "Bearer".into(),
            access_expires_at: Some(expires),
            access_issued_at: Some(issued),
            refresh_token: Some("r".into()),
            id_token: None,
            scope: None,
            dpop_key: None,
            route_tokens: Vec::new(),
        }
    }

    #[test]
    fn refresh_ahead_is_capped_at_half_the_lifetime() {
        let m = Timings::new(
            Duration::from_secs(60),
            Duration::from_secs(10),
            Duration::from_secs(60),
        );
        // Long-lived token: refresh 60 s ahead.
        assert!(!m.needs_refresh(&tokens(0, 3600), 3539));
        assert!(m.needs_refresh(&tokens(0, 3600), 3540));
        // 10 s token: refresh 5 s ahead, not 60 s (which would be always).
        assert!(!m.needs_refresh(&tokens(100, 110), 104));
        assert!(m.needs_refresh(&tokens(100, 110), 105));
        // No expiry known: never.
        let mut t = tokens(0, 0);
        t.access_expires_at = None;
        assert!(!m.needs_refresh(&t, i64::MAX / 2));
        // Expired: always.
        assert!(m.needs_refresh(&tokens(0, 10), 20));
    }
}
