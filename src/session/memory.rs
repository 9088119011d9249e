use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{PendingLogin, SessionFilter, SessionKey, SessionRecord, SessionStore, StoreError};

/// Sessions in this process only: fast, and gone at restart. Sharded maps, no lock
/// held across an await (every operation is synchronous inside).
#[derive(Default)]
pub struct MemoryStore {
    sessions: DashMap<SessionKey, Arc<SessionRecord>>,
    pending: DashMap<SessionKey, PendingLogin>,
    refresh_locks: DashMap<SessionKey, (String, Instant)>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl SessionStore for MemoryStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        Ok(self.sessions.get(key).map(|r| r.clone()))
    }

    async fn insert(&self, record: Arc<SessionRecord>) -> Result<(), StoreError> {
        self.sessions.insert(record.key, record);
        Ok(())
    }

    async fn update(&self, record: Arc<SessionRecord>) -> Result<bool, StoreError> {
        match self.sessions.get_mut(&record.key) {
            Some(mut entry) => {
                *entry.value_mut() = record;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn touch(&self, key: &SessionKey, last_seen: i64) -> Result<(), StoreError> {
        if let Some(mut entry) = self.sessions.get_mut(key) {
            Arc::make_mut(entry.value_mut()).last_seen = last_seen;
        }
        Ok(())
    }

    async fn remove(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        Ok(self.sessions.remove(key).map(|(_, r)| r))
    }

    async fn find(&self, filter: &SessionFilter) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
        Ok(self
            .sessions
            .iter()
            .filter(|r| filter.matches(r.value()))
            .map(|r| r.value().clone())
            .collect())
    }

    async fn remove_expired(&self, now: i64, idle: i64) -> Result<usize, StoreError> {
        let before = self.sessions.len();
        self.sessions
            .retain(|_, r| now < r.expires_at && now < r.last_seen + idle);
        self.pending.retain(|_, p| now < p.expires_at);
        Ok(before.saturating_sub(self.sessions.len()))
    }

    async fn put_pending(
        &self,
        key: SessionKey,
        pending: PendingLogin,
        max: usize,
    ) -> Result<(), StoreError> {
        if self.pending.len() >= max {
            let now = super::now_secs();
            self.pending.retain(|_, p| now < p.expires_at);
            if self.pending.len() >= max {
                return Err(StoreError::PendingFull);
            }
        }
        self.pending.insert(key, pending);
        Ok(())
    }

    async fn take_pending(
        &self,
        key: &SessionKey,
        now: i64,
    ) -> Result<Option<PendingLogin>, StoreError> {
        Ok(self
            .pending
            .remove(key)
            .map(|(_, p)| p)
            .filter(|p| now < p.expires_at))
    }

    async fn try_lock_refresh(
        &self,
        key: &SessionKey,
        owner: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut taken = false;
        self.refresh_locks
            .entry(*key)
            .and_modify(|(holder, until)| {
                if *until <= now {
                    *holder = owner.to_owned();
                    *until = now + Duration::from_millis(lease_ms);
                    taken = true;
                }
            })
            .or_insert_with(|| {
                taken = true;
                (owner.to_owned(), now + Duration::from_millis(lease_ms))
            });
        Ok(taken)
    }

    async fn unlock_refresh(&self, key: &SessionKey, owner: &str) -> Result<(), StoreError> {
        self.refresh_locks
            .remove_if(key, |_, (holder, _)| holder == owner);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
