//! Sessions: the record, the [`SessionStore`] trait and its backends, the cookie, and
//! encryption of tokens at rest.
//!
//! The browser holds only an opaque 256-bit random id ([`SessionId`]). Stores never
//! see that id: they key sessions by its SHA-256 ([`StoreKey`]), so a copy of the
//! store can't be replayed as cookies. Tokens are sealed with AES-256-GCM
//! ([`cipher`]) before they reach any store, bound to the session key. This module
//! must never log an id, a cookie value or a token.

pub mod cipher;
pub mod cookie;
mod memory;
mod packed;
mod record;
mod redis;
mod sqlite;
mod store;
pub mod streams;
mod token_cache;

use std::sync::Arc;
use std::time::Duration;

pub use memory::MemoryStore;
pub use record::{
    Issued, OpenedTokens, PendingLogin, RouteToken, SessionId, SessionRecord, StoreKey, Tokens,
    authorization,
};
pub use redis::{RedisAddress, RedisStore};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use store::{PendingCaps, SessionFilter, SessionStore, Store, StoreError};

use crate::config::{SessionConfig, StoreKind};
use crate::primitives::now_secs;
use cipher::{CipherError, TokenCipher};

/// Why a session ended; the audit log and metrics carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Logout,
    Replaced,
    Revoked,
    /// The provider refused the refresh token (`invalid_grant`): the grant is gone.
    GrantRevoked,
    /// The user logged in more often than `session.max_per_user` allows.
    TooManySessions,
    /// The provider ended the login (OIDC Back-Channel Logout).
    BackchannelLogout,
    /// The provider ended the login (OIDC Front-Channel Logout).
    FrontchannelLogout,
    /// The access token expired and there is no refresh token.
    AccessExpired,
    IdleTimeout,
    AbsoluteTimeout,
    Unreadable,
    /// A refresh answered an ID token that failed OIDC Core §12.2 (another `sub`, …).
    InvalidIdToken,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::Replaced => "replaced_by_login",
            Self::Revoked => "revoked",
            Self::GrantRevoked => "invalid_grant",
            Self::BackchannelLogout => "backchannel_logout",
            Self::FrontchannelLogout => "frontchannel_logout",
            Self::TooManySessions => "max_per_user",
            Self::AccessExpired => "access_token_expired",
            Self::IdleTimeout => "idle_timeout",
            Self::AbsoluteTimeout => "absolute_timeout",
            Self::Unreadable => "unreadable",
            Self::InvalidIdToken => "invalid_id_token",
        }
    }
}

/// What a new session is made of, after a successful login.
pub struct NewSession {
    /// The frontend the session belongs to ("" for the single frontend).
    pub frontend: String,
    pub sub: String,
    pub sid: Option<String>,
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub tokens: Tokens,
    /// When the refresh token expires, if the provider said; caps the session.
    pub refresh_expires_at: Option<i64>,
}

/// Sessions as the rest of Portcullis sees them: the store plus the rules
/// (timeouts, encryption, touch policy).
pub struct Sessions {
    store: Store,
    cipher: TokenCipher,
    idle: i64,
    absolute: i64,
    max_per_user: Option<usize>,
    /// Rewrite `last_seen` only when it is at least this old: a read-mostly hot path
    /// instead of a write per request, at the price of an idle timeout that may run
    /// up to this much longer.
    touch_after: i64,
    /// Names this instance in the per-thread cache of opened tokens ([`token_cache`]).
    cache_owner: u64,
    /// The open streams of each session, ended with it ([`streams`]).
    streams: Arc<streams::Streams>,
}

impl Sessions {
    pub fn new(store: Store, cipher: TokenCipher, config: &SessionConfig) -> Self {
        let idle = secs(config.idle_timeout);
        Self {
            store,
            cipher,
            idle,
            absolute: secs(config.absolute_timeout),
            max_per_user: config.max_per_user,
            touch_after: (idle / 30).clamp(1, 60),
            cache_owner: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            streams: Arc::default(),
        }
    }

    /// Opens the configured store.
    pub async fn open(config: &SessionConfig) -> Result<Self, String> {
        let cipher = TokenCipher::from_config(&config.keys)?;
        let store = match config.store {
            StoreKind::Memory => Store::Memory(MemoryStore::new()),
            StoreKind::Sqlite => Store::Sqlite(
                SqliteStore::open_with(
                    &config.sqlite_path,
                    SqliteOptions {
                        cache_size: config.sqlite_cache_size,
                        idle_timeout: secs(config.idle_timeout),
                    },
                )
                .await
                .map_err(|e| {
                    format!(
                        "session.sqlite_path: {e}: the folder must exist or be creatable and be \
                         writable by this user; set session.sqlite_path to such a place (a relative \
                         path written in the config file is relative to the file's folder)"
                    )
                })?,
            ),
            StoreKind::Redis => {
                let url = config
                    .redis_url
                    .as_ref()
                    .ok_or("session.redis_url: required for store = \"redis\"")?;
                Store::Redis(RedisStore::open(url.expose(), secs(config.idle_timeout)).await?)
            }
        };
        Ok(Self::new(store, cipher, config))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates a session with a fresh id and stores it.
    pub async fn create(
        &self,
        new: NewSession,
    ) -> Result<(SessionId, Arc<SessionRecord>), StoreError> {
        let id = SessionId::generate();
        let key = id.key();
        let now = now_secs();
        let mut expires_at = now + self.absolute;
        if let Some(refresh_end) = new.refresh_expires_at {
            expires_at = expires_at.min(refresh_end);
        }
        let sealed = self.seal_tokens(&key, &new.tokens);
        // Kept for the session's life (the memory store holds it): no spare capacity.
        let mut claims = serde_json::Value::Object(new.claims).to_string();
        claims.shrink_to_fit();
        let record = SessionRecord {
            key,
            sub: new.sub,
            sid: new.sid,
            frontend: new.frontend,
            claims,
            sealed_tokens: sealed,
            created_at: now,
            last_seen: now,
            expires_at,
            version: 1,
        };
        let record = Arc::new(record);
        self.store.insert(record.clone()).await?;
        if let Some(max) = self.max_per_user {
            self.enforce_max_per_user(&record, max).await?;
        }
        Ok((id, record))
    }

    /// Ends the user's oldest sessions beyond `max` (the new one always stays).
    async fn enforce_max_per_user(
        &self,
        newest: &SessionRecord,
        max: usize,
    ) -> Result<(), StoreError> {
        let mut sessions = self
            .store
            .find(&SessionFilter::Sub(newest.sub.clone()))
            .await?;
        // The limit is per frontend: an admin login doesn't end a customer session.
        sessions.retain(|s| s.frontend == newest.frontend);
        if sessions.len() <= max {
            return Ok(());
        }
        // Oldest first; the new session sorts last whatever the clock says.
        sessions.sort_by_key(|s| (s.key == newest.key, s.created_at));
        let excess = sessions.len() - max;
        for old in sessions.iter().take(excess) {
            self.end(&old.key, EndReason::TooManySessions).await?;
        }
        Ok(())
    }

    /// Loads the live session named by `id` for `frontend`. A session of another
    /// frontend is reported as absent (and left alone); an expired session is deleted
    /// and reported as absent; a used one has its idle clock reset (see `touch_after`).
    pub async fn load(
        &self,
        id: &SessionId,
        frontend: &str,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.load_with(id, frontend, true).await
    }

    /// [`Sessions::load`], with `slide = false` leaving the idle clock alone: a
    /// request that only looks at the session (an SPA polling `/bff/user?slide=false`)
    /// doesn't keep an unattended session alive.
    pub async fn load_with(
        &self,
        id: &SessionId,
        frontend: &str,
        slide: bool,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let key = id.key();
        let Some(record) = self.store.get(&key).await? else {
            return Ok(None);
        };
        if record.frontend != frontend {
            tracing::warn!(
                session = %key.log_label(),
                "a session cookie was presented to another frontend than its own; refused"
            );
            return Ok(None);
        }
        let now = now_secs();
        if let Some(reason) = self.expired(&record, now) {
            if self.store.remove(&key).await?.is_some() {
                record.audited(|who| crate::telemetry::audit_session_ended(reason.as_str(), who));
            }
            self.streams.end(&key, streams::Ended::Here(reason));
            return Ok(None);
        }
        if slide && now - record.last_seen >= self.touch_after {
            self.store.touch(&key, now).await?;
        }
        Ok(Some(record))
    }

    fn expired(&self, record: &SessionRecord, now: i64) -> Option<EndReason> {
        if now >= record.expires_at {
            Some(EndReason::AbsoluteTimeout)
        } else if now >= record.last_seen + self.idle {
            Some(EndReason::IdleTimeout)
        } else {
            None
        }
    }

    /// Seconds until the session ends if it stays idle from now on.
    pub fn expires_in(&self, record: &SessionRecord) -> i64 {
        let now = now_secs();
        (record.expires_at.min(now + self.idle) - now).max(0)
    }

    /// Seconds until the session ends if it stays idle, counted from its last use as
    /// stored (what a load without sliding leaves in place).
    pub fn expires_in_unslid(&self, record: &SessionRecord) -> i64 {
        let now = now_secs();
        (record.expires_at.min(record.last_seen + self.idle) - now).max(0)
    }

    /// Ends a session. Returns the removed record, if it was there.
    pub async fn end(
        &self,
        key: &StoreKey,
        reason: EndReason,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        token_cache::forget(self.cache_owner, key);
        // Announced first: the stream watcher may find the session gone before the
        // streams are told why, and must not call it an end from elsewhere.
        self.streams.ending(key, reason);
        let removed = match self.store.remove(key).await {
            Ok(removed) => removed,
            Err(e) => {
                self.streams.not_ending(key);
                return Err(e);
            }
        };
        if let Some(record) = &removed {
            record.audited(|who| crate::telemetry::audit_session_ended(reason.as_str(), who));
        }
        self.streams.end(key, streams::Ended::Here(reason));
        Ok(removed)
    }

    /// Ends every session the store finds for `filter` that `matches` says to end
    /// (a logout's other conditions: its frontend, its `sub`). Returns how many ended.
    /// A store failure stops there: the sessions ended so far stay ended.
    pub async fn end_matching(
        &self,
        filter: &SessionFilter,
        matches: impl Fn(&SessionRecord) -> bool,
        reason: EndReason,
    ) -> Result<usize, StoreError> {
        let mut ended = 0;
        for record in self.store.find(filter).await? {
            if matches(&record) && self.end(&record.key, reason).await?.is_some() {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// The registry of the sessions' open streams.
    pub fn streams(&self) -> &Arc<streams::Streams> {
        &self.streams
    }

    /// Ends the streams of sessions that ended elsewhere (another instance, another
    /// process) or timed out, every [`streams::WATCH_EVERY`]; runs until dropped
    /// (see [`streams`]). A store failure leaves the streams open: an outage is
    /// not a logout.
    pub async fn watch_streams(&self) {
        let mut tick = tokio::time::interval(streams::WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for key in self.streams.sessions() {
                match self.store.get(&key).await {
                    Ok(None) => self.streams.end(&key, streams::Ended::Elsewhere),
                    Ok(Some(record)) => {
                        if let Some(reason) = self.expired(&record, now_secs())
                            && let Err(e) = self.end(&key, reason).await
                        {
                            tracing::warn!(error = %e, "ending a timed-out session with open streams failed");
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "stream watch: store unavailable");
                        break;
                    }
                }
            }
        }
    }

    pub fn open_tokens(&self, record: &SessionRecord) -> Result<Tokens, CipherError> {
        let plain = self
            .cipher
            .open(&record.sealed_tokens, record.key.as_bytes())?;
        packed::unpack(&plain).map_err(|_| CipherError::Malformed)
    }

    /// [`Self::open_tokens`], answered from this thread's cache of opened tokens when
    /// the record's sealed blob is the one opened there less than a minute ago (see
    /// [`token_cache`]): the proxy's per-request call.
    pub fn open_tokens_cached(
        &self,
        record: &SessionRecord,
    ) -> Result<Arc<OpenedTokens>, CipherError> {
        let fingerprint = token_cache::Fingerprint::of(&record.sealed_tokens);
        if let Some(f) = &fingerprint
            && let Some(tokens) = token_cache::get(self.cache_owner, &record.key, f)
        {
            return Ok(tokens);
        }
        let tokens = Arc::new(OpenedTokens::new(self.open_tokens(record)?));
        if let Some(f) = fingerprint {
            token_cache::put(self.cache_owner, record.key, f, tokens.clone());
        }
        Ok(tokens)
    }

    fn seal_tokens(&self, key: &StoreKey, tokens: &Tokens) -> Vec<u8> {
        self.cipher.seal(&packed::pack(tokens), key.as_bytes())
    }

    /// The record with new tokens (after a refresh): sealed, version bumped, its end
    /// capped by the refresh token's lifetime when the provider said it.
    pub fn with_tokens(
        &self,
        record: &SessionRecord,
        tokens: &Tokens,
        refresh_expires_at: Option<i64>,
    ) -> SessionRecord {
        let mut updated = record.clone();
        updated.sealed_tokens = self.seal_tokens(&record.key, tokens);
        updated.version += 1;
        if let Some(end) = refresh_expires_at {
            updated.expires_at = updated.expires_at.min(end);
        }
        updated
    }

    /// Deletes sessions past their idle or absolute timeout; returns how many.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        self.store.remove_expired(now_secs(), self.idle).await
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

#[cfg(test)]
mod lifetime_tests;
#[cfg(test)]
mod store_tests;
