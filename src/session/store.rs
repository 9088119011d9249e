use std::future::Future;
use std::sync::Arc;

use super::{MemoryStore, PendingLogin, RedisStore, SessionRecord, SqliteStore, StoreKey};

/// A store failure: the store is unreachable or broken. Never "not found".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The client's network holds `security.pending_logins_per_network` pending logins.
    #[error("too many pending logins from this network")]
    PendingFull,
}

impl From<StoreError> for crate::error::ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(detail) => Self::StoreUnavailable(detail),
            StoreError::PendingFull => Self::RateLimited {
                retry_after_secs: 5,
            },
        }
    }
}

/// The bounds on pending logins a store enforces in [`SessionStore::put_pending`].
///
/// `total` bounds memory; it is not a refusal: when it is reached the store evicts
/// the oldest pending login of the network holding the most, so a flood from a few
/// networks pushes out only its own logins and a real user (one pending login on
/// its own network) keeps its place. `per_network` refuses a network that already
/// holds that many, so one network can't take the whole table either. Pending logins
/// past their expiry count for neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingCaps {
    pub total: usize,
    pub per_network: usize,
}

/// Which sessions an administrative lookup or a logout is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionFilter {
    All,
    /// Sessions of one provider session (`sid` claim).
    Sid(String),
    /// Sessions of one user (`sub` claim).
    Sub(String),
}

impl SessionFilter {
    pub fn matches(&self, record: &SessionRecord) -> bool {
        match self {
            Self::All => true,
            Self::Sid(sid) => record.sid.as_deref() == Some(sid),
            Self::Sub(sub) => record.sub == *sub,
        }
    }
}

/// Where sessions and pending logins live. Every backend passes the same test suite
/// (`store_tests`). Implementations must not block the async runtime, must not
/// interpret the sealed tokens, and keep pending logins single-use.
pub trait SessionStore: Send + Sync + 'static {
    fn get(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<Arc<SessionRecord>>, StoreError>> + Send;

    /// Inserts or replaces the session with this key.
    fn insert(
        &self,
        record: Arc<SessionRecord>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces an existing session (token refresh); returns `false`, and stores
    /// nothing, when the session is gone — a refresh never brings back a session
    /// that was logged out meanwhile.
    fn update(
        &self,
        record: Arc<SessionRecord>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records use at `last_seen` (idle timeout). A missing session is not an error.
    /// A backend may write it behind the request (SQLite: within a second), as long as
    /// its own reads see it at once.
    fn touch(
        &self,
        key: &StoreKey,
        last_seen: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes a session and returns it, if it was there.
    fn remove(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<Arc<SessionRecord>>, StoreError>> + Send;

    /// The sessions matching `filter`, in no particular order.
    fn find(
        &self,
        filter: &SessionFilter,
    ) -> impl Future<Output = Result<Vec<Arc<SessionRecord>>, StoreError>> + Send;

    /// Removes sessions whose absolute expiry has passed or which were idle for `idle` seconds.
    fn remove_expired(
        &self,
        now: i64,
        idle: i64,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Keeps a pending login under `key` (the hash of its `state`) within `caps`:
    /// refuses with [`StoreError::PendingFull`] when `pending.network` already holds
    /// `caps.per_network` live pending logins; when `caps.total` live ones exist,
    /// first removes the oldest (earliest expiry) of the network holding the most.
    /// Returns how many live pending logins were evicted (0 or 1). Atomic: concurrent
    /// calls, also from other instances, never exceed either cap.
    fn put_pending(
        &self,
        key: StoreKey,
        pending: PendingLogin,
        caps: PendingCaps,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Removes and returns the pending login under `key`, unless it has expired by `now`.
    fn take_pending(
        &self,
        key: &StoreKey,
        now: i64,
    ) -> impl Future<Output = Result<Option<PendingLogin>, StoreError>> + Send;

    /// Takes the session's refresh lock for `lease_ms` unless someone else holds it.
    /// `owner` is a random token naming the holder; an expired lease is free again,
    /// so a crashed holder can't block the session for longer than the lease.
    fn try_lock_refresh(
        &self,
        key: &StoreKey,
        owner: &str,
        lease_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Releases the refresh lock if `owner` still holds it (compare-and-delete).
    fn unlock_refresh(
        &self,
        key: &StoreKey,
        owner: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records a one-time identifier (the hash of a logout token's `iss` and `jti`)
    /// until `expires_at`. Returns `true` the first time, `false` for a replay.
    fn remember_once(
        &self,
        key: StoreKey,
        expires_at: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Checks the store answers (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How many sessions have not reached their absolute expiry by `now` (the
    /// `sessions_active` gauge; idle sessions count until they are swept).
    fn count(&self, now: i64) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The configured backend. An enum rather than a trait object: the hot path stays
/// free of boxed futures.
#[allow(clippy::large_enum_variant)] // one per process, built once and never moved
pub enum Store {
    Memory(MemoryStore),
    Sqlite(SqliteStore),
    Redis(RedisStore),
}

/// Calls the backend, timing the operation for `store_operation_duration_seconds`
/// and counting failures in `store_errors_total`.
///
/// Redis's futures are boxed: the `redis` crate's are ~4 KB, and inline they would
/// make every future that awaits the store that large whatever the backend — the
/// session lookup, the token manager's, the proxy's, and so every request's box (see
/// `server::listen`; with the other rare paths boxed too, the proxy's future went
/// from 6,744 to 2,944 bytes: docs/performance.md). The memory store's (~24 bytes)
/// and SQLite's (~100) stay inline; one allocation is nothing beside a Redis round
/// trip.
macro_rules! dispatch {
    ($self:ident, $op:literal, $s:ident => $call:expr) => {{
        let started = std::time::Instant::now();
        let result = match $self {
            Store::Memory($s) => $call.await,
            Store::Sqlite($s) => $call.await,
            Store::Redis($s) => crate::primitives::pin_in_place(|| $call).await,
        };
        let ok = !matches!(result, Err(StoreError::Unavailable(_)));
        crate::telemetry::metrics().store_op($self.backend(), $op, started.elapsed(), ok);
        result
    }};
}

impl Store {
    /// The backend's name, as a metric label.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Sqlite(_) => "sqlite",
            Store::Redis(_) => "redis",
        }
    }
}

impl SessionStore for Store {
    async fn get(&self, key: &StoreKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        dispatch!(self, "get", s => s.get(key))
    }
    async fn insert(&self, record: Arc<SessionRecord>) -> Result<(), StoreError> {
        dispatch!(self, "insert", s => s.insert(record))
    }
    async fn update(&self, record: Arc<SessionRecord>) -> Result<bool, StoreError> {
        dispatch!(self, "update", s => s.update(record))
    }
    async fn touch(&self, key: &StoreKey, last_seen: i64) -> Result<(), StoreError> {
        dispatch!(self, "touch", s => s.touch(key, last_seen))
    }
    async fn remove(&self, key: &StoreKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        dispatch!(self, "remove", s => s.remove(key))
    }
    async fn find(&self, filter: &SessionFilter) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
        dispatch!(self, "find", s => s.find(filter))
    }
    async fn remove_expired(&self, now: i64, idle: i64) -> Result<usize, StoreError> {
        dispatch!(self, "remove_expired", s => s.remove_expired(now, idle))
    }
    async fn put_pending(
        &self,
        key: StoreKey,
        pending: PendingLogin,
        caps: PendingCaps,
    ) -> Result<usize, StoreError> {
        dispatch!(self, "put_pending", s => s.put_pending(key, pending, caps))
    }
    async fn take_pending(
        &self,
        key: &StoreKey,
        now: i64,
    ) -> Result<Option<PendingLogin>, StoreError> {
        dispatch!(self, "take_pending", s => s.take_pending(key, now))
    }
    async fn try_lock_refresh(
        &self,
        key: &StoreKey,
        owner: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        dispatch!(self, "try_lock_refresh", s => s.try_lock_refresh(key, owner, lease_ms))
    }
    async fn unlock_refresh(&self, key: &StoreKey, owner: &str) -> Result<(), StoreError> {
        dispatch!(self, "unlock_refresh", s => s.unlock_refresh(key, owner))
    }
    async fn remember_once(&self, key: StoreKey, expires_at: i64) -> Result<bool, StoreError> {
        dispatch!(self, "remember_once", s => s.remember_once(key, expires_at))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, "ping", s => s.ping())
    }
    async fn count(&self, now: i64) -> Result<u64, StoreError> {
        dispatch!(self, "count", s => s.count(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store's futures stay small whatever the backend: Redis's (the `redis`
    /// crate's, ~4 KB and more) are boxed (see `dispatch!`), so the session lookup on
    /// every proxied request doesn't carry a Redis-sized state for the memory and
    /// SQLite stores. The futures are made, never polled.
    #[test]
    fn the_stores_futures_do_not_carry_redis_sized_state() {
        let store = Store::Memory(MemoryStore::new());
        let record = super::super::store_tests::record("alice", None, 0);
        let key = record.key;
        let sizes = [
            ("get", std::mem::size_of_val(&store.get(&key))),
            (
                "update",
                std::mem::size_of_val(&store.update(record.clone())),
            ),
            ("touch", std::mem::size_of_val(&store.touch(&key, 0))),
            ("remove", std::mem::size_of_val(&store.remove(&key))),
        ];
        for (op, size) in sizes {
            assert!(size < 1024, "Store::{op}'s future is {size} bytes");
        }
    }
}
