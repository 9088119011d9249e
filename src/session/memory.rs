use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{
    PendingCaps, PendingLogin, SessionFilter, SessionKey, SessionRecord, SessionStore, StoreError,
};

/// SipHash of a SHA-256 output buys nothing: see [`super::record::KeyHasher`].
type KeyHasher = std::hash::BuildHasherDefault<super::record::KeyHasher>;

/// Sessions in this process only: fast, and gone at restart. Sharded maps, no lock
/// held across an await (every operation is synchronous inside). Sessions are
/// indexed by `sid` and `sub` so logouts don't scan.
#[derive(Default)]
pub struct MemoryStore {
    sessions: DashMap<SessionKey, Arc<SessionRecord>, KeyHasher>,
    by_sid: DashMap<String, Vec<SessionKey>>,
    by_sub: DashMap<String, Vec<SessionKey>>,
    pending: Mutex<PendingTable>,
    refresh_locks: DashMap<SessionKey, (String, Instant)>,
    seen_once: DashMap<SessionKey, i64>,
}

/// Pending logins and, per client network, their keys oldest first. One lock: the
/// caps and the eviction must judge one consistent table (login traffic only, never
/// the proxy path, and never held across an await).
#[derive(Default)]
struct PendingTable {
    logins: HashMap<SessionKey, PendingLogin, KeyHasher>,
    by_network: HashMap<String, BTreeSet<(i64, [u8; 32])>>,
}

impl PendingTable {
    fn insert(&mut self, key: SessionKey, pending: PendingLogin) {
        self.remove(&key);
        self.by_network
            .entry(pending.network.clone())
            .or_default()
            .insert((pending.expires_at, *key.as_bytes()));
        self.logins.insert(key, pending);
    }

    fn remove(&mut self, key: &SessionKey) -> Option<PendingLogin> {
        let pending = self.logins.remove(key)?;
        if let Some(keys) = self.by_network.get_mut(&pending.network) {
            keys.remove(&(pending.expires_at, *key.as_bytes()));
            if keys.is_empty() {
                self.by_network.remove(&pending.network);
            }
        }
        Some(pending)
    }

    fn remove_expired(&mut self, now: i64) {
        self.logins.retain(|_, p| now < p.expires_at);
        self.by_network.retain(|_, keys| {
            keys.retain(|(expires_at, _)| now < *expires_at);
            !keys.is_empty()
        });
    }

    fn in_network(&self, network: &str) -> usize {
        self.by_network.get(network).map_or(0, BTreeSet::len)
    }

    /// Removes the oldest pending login of the network holding the most (of those
    /// tied, the one whose oldest is oldest).
    fn evict_from_heaviest(&mut self) -> usize {
        let victim = self
            .by_network
            .values()
            .filter_map(|keys| Some((keys.len(), keys.first()?)))
            .max_by(|(n1, a), (n2, b)| n1.cmp(n2).then(b.cmp(a)))
            .map(|(_, (_, key))| SessionKey::from_bytes(*key));
        victim.map_or(0, |key| usize::from(self.remove(&key).is_some()))
    }
}

fn index_add(index: &DashMap<String, Vec<SessionKey>>, name: &str, key: SessionKey) {
    // Most users have one session (and a provider session one login): a `Vec` that
    // grows from 1 instead of the default 4 × 32 bytes.
    let mut keys = index
        .entry(name.to_owned())
        .or_insert_with(|| Vec::with_capacity(1));
    if !keys.contains(&key) {
        keys.push(key);
    }
}

fn index_remove(index: &DashMap<String, Vec<SessionKey>>, name: &str, key: &SessionKey) {
    index.remove_if_mut(name, |_, keys| {
        keys.retain(|k| k != key);
        keys.is_empty()
    });
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn pending_table(&self) -> MutexGuard<'_, PendingTable> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index(&self, record: &SessionRecord) {
        index_add(&self.by_sub, &record.sub, record.key);
        if let Some(sid) = &record.sid {
            index_add(&self.by_sid, sid, record.key);
        }
    }

    fn unindex(&self, record: &SessionRecord) {
        index_remove(&self.by_sub, &record.sub, &record.key);
        if let Some(sid) = &record.sid {
            index_remove(&self.by_sid, sid, &record.key);
        }
    }

    fn lookup(
        &self,
        index: &DashMap<String, Vec<SessionKey>>,
        name: &str,
    ) -> Vec<Arc<SessionRecord>> {
        let keys = index.get(name).map(|k| k.clone()).unwrap_or_default();
        keys.iter()
            .filter_map(|k| self.sessions.get(k).map(|r| r.clone()))
            .collect()
    }
}

impl SessionStore for MemoryStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        Ok(self.sessions.get(key).map(|r| r.clone()))
    }

    async fn insert(&self, record: Arc<SessionRecord>) -> Result<(), StoreError> {
        self.index(&record);
        if let Some(old) = self.sessions.insert(record.key, record.clone())
            && (old.sub != record.sub || old.sid != record.sid)
        {
            self.unindex(&old);
            self.index(&record);
        }
        Ok(())
    }

    async fn update(&self, record: Arc<SessionRecord>) -> Result<bool, StoreError> {
        let old = match self.sessions.get_mut(&record.key) {
            Some(mut entry) => std::mem::replace(entry.value_mut(), record.clone()),
            None => return Ok(false),
        };
        if old.sub != record.sub || old.sid != record.sid {
            self.unindex(&old);
            self.index(&record);
        }
        Ok(true)
    }

    async fn touch(&self, key: &SessionKey, last_seen: i64) -> Result<(), StoreError> {
        if let Some(mut entry) = self.sessions.get_mut(key) {
            let record = Arc::make_mut(entry.value_mut());
            record.last_seen = record.last_seen.max(last_seen);
        }
        Ok(())
    }

    async fn remove(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let removed = self.sessions.remove(key).map(|(_, r)| r);
        if let Some(record) = &removed {
            self.unindex(record);
        }
        Ok(removed)
    }

    async fn find(&self, filter: &SessionFilter) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
        Ok(match filter {
            SessionFilter::All => self.sessions.iter().map(|r| r.value().clone()).collect(),
            SessionFilter::Sid(sid) => self.lookup(&self.by_sid, sid),
            SessionFilter::Sub(sub) => self.lookup(&self.by_sub, sub),
        })
    }

    async fn remove_expired(&self, now: i64, idle: i64) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        self.sessions.retain(|_, r| {
            let live = now < r.expires_at && now < r.last_seen + idle;
            if !live {
                expired.push(r.clone());
            }
            live
        });
        for record in &expired {
            self.unindex(record);
        }
        self.pending_table().remove_expired(now);
        self.seen_once.retain(|_, until| now < *until);
        Ok(expired.len())
    }

    async fn put_pending(
        &self,
        key: SessionKey,
        pending: PendingLogin,
        caps: PendingCaps,
    ) -> Result<usize, StoreError> {
        let mut table = self.pending_table();
        // Expired logins count for nothing; forgetting them is a full pass, so only
        // when a cap looks reached.
        if table.logins.len() >= caps.total
            || table.in_network(&pending.network) >= caps.per_network
        {
            table.remove_expired(super::now_secs());
        }
        if table.in_network(&pending.network) >= caps.per_network {
            return Err(StoreError::PendingFull);
        }
        let mut evicted = 0;
        while table.logins.len() >= caps.total {
            match table.evict_from_heaviest() {
                0 => break,
                n => evicted += n,
            }
        }
        table.insert(key, pending);
        Ok(evicted)
    }

    async fn take_pending(
        &self,
        key: &SessionKey,
        now: i64,
    ) -> Result<Option<PendingLogin>, StoreError> {
        Ok(self
            .pending_table()
            .remove(key)
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

    async fn remember_once(&self, key: SessionKey, expires_at: i64) -> Result<bool, StoreError> {
        let now = super::now_secs();
        let mut first = false;
        self.seen_once
            .entry(key)
            .and_modify(|until| {
                if *until <= now {
                    *until = expires_at;
                    first = true;
                }
            })
            .or_insert_with(|| {
                first = true;
                expires_at
            });
        Ok(first)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn count(&self, now: i64) -> Result<u64, StoreError> {
        Ok(self.sessions.iter().filter(|r| now < r.expires_at).count() as u64)
    }
}
