use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{
    PendingCaps, PendingLogin, SessionFilter, SessionRecord, SessionStore, StoreError, StoreKey,
};

/// SipHash of a SHA-256 output buys nothing: see [`super::record::KeyHasher`].
type KeyHasher = std::hash::BuildHasherDefault<super::record::KeyHasher>;

/// Sessions in this process only: fast, and gone at restart. Sharded maps, no lock
/// held across an await (every operation is synchronous inside). Sessions are
/// indexed by (a hash of) `sid` and `sub` so logouts don't scan.
#[derive(Default)]
pub struct MemoryStore {
    sessions: DashMap<StoreKey, Arc<SessionRecord>, KeyHasher>,
    by_sid: NameIndex,
    by_sub: NameIndex,
    /// Hashes `sub`s and `sid`s for the indexes (random keys per store).
    names: std::hash::RandomState,
    pending: Mutex<PendingTable>,
    refresh_locks: DashMap<StoreKey, (String, Instant)>,
    seen_once: DashMap<StoreKey, i64>,
}

/// Pending logins and, per client network, their keys oldest first. One lock: the
/// caps and the eviction must judge one consistent table (login traffic only, never
/// the proxy path, and never held across an await).
#[derive(Default)]
struct PendingTable {
    logins: HashMap<StoreKey, PendingLogin, KeyHasher>,
    by_network: HashMap<String, BTreeSet<(i64, [u8; 32])>>,
}

impl PendingTable {
    fn insert(&mut self, key: StoreKey, pending: PendingLogin) {
        self.remove(&key);
        self.by_network
            .entry(pending.network.clone())
            .or_default()
            .insert((pending.expires_at, *key.as_bytes()));
        self.logins.insert(key, pending);
    }

    fn remove(&mut self, key: &StoreKey) -> Option<PendingLogin> {
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
            .map(|(_, (_, key))| StoreKey::from_bytes(*key));
        victim.map_or(0, |key| usize::from(self.remove(&key).is_some()))
    }
}

/// Sessions by the hash of a name (`sub` or `sid`), not the name itself: no copy of
/// every name, no list for the usual one session. Two names may share a hash, so a
/// lookup keeps only the sessions whose name matches.
type NameIndex = DashMap<u64, Keys, KeyHasher>;

/// The sessions under one name hash: most users have one session (and a provider
/// session one login), kept in the entry itself.
enum Keys {
    One(StoreKey),
    Many(Vec<StoreKey>),
}

impl Keys {
    fn as_slice(&self) -> &[StoreKey] {
        match self {
            Self::One(key) => std::slice::from_ref(key),
            Self::Many(keys) => keys,
        }
    }
}

fn index_add(index: &NameIndex, name: u64, key: StoreKey) {
    index
        .entry(name)
        .and_modify(|keys| {
            if !keys.as_slice().contains(&key) {
                let mut all = keys.as_slice().to_vec();
                all.push(key);
                *keys = Keys::Many(all);
            }
        })
        .or_insert(Keys::One(key));
}

fn index_remove(index: &NameIndex, name: u64, key: &StoreKey) {
    index.remove_if_mut(&name, |_, keys| {
        match keys {
            Keys::One(k) => return k == key,
            Keys::Many(all) => all.retain(|k| k != key),
        }
        if let Keys::Many(all) = keys
            && let [only] = all.as_slice()
        {
            *keys = Keys::One(*only);
        }
        keys.as_slice().is_empty()
    });
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn pending_table(&self) -> MutexGuard<'_, PendingTable> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn name(&self, name: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.names, name)
    }

    fn index(&self, record: &SessionRecord) {
        index_add(&self.by_sub, self.name(&record.sub), record.key);
        if let Some(sid) = &record.sid {
            index_add(&self.by_sid, self.name(sid), record.key);
        }
    }

    fn unindex(&self, record: &SessionRecord) {
        index_remove(&self.by_sub, self.name(&record.sub), &record.key);
        if let Some(sid) = &record.sid {
            index_remove(&self.by_sid, self.name(sid), &record.key);
        }
    }

    /// The sessions under `name`'s hash in `index` for which `is_named` holds.
    fn lookup(
        &self,
        index: &NameIndex,
        name: &str,
        is_named: impl Fn(&SessionRecord) -> bool,
    ) -> Vec<Arc<SessionRecord>> {
        let keys = index
            .get(&self.name(name))
            .map(|k| k.as_slice().to_vec())
            .unwrap_or_default();
        keys.iter()
            .filter_map(|k| self.sessions.get(k).map(|r| r.clone()))
            .filter(|r| is_named(r))
            .collect()
    }
}

impl SessionStore for MemoryStore {
    async fn get(&self, key: &StoreKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
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

    async fn touch(&self, key: &StoreKey, last_seen: i64) -> Result<(), StoreError> {
        if let Some(mut entry) = self.sessions.get_mut(key) {
            let record = Arc::make_mut(entry.value_mut());
            record.last_seen = record.last_seen.max(last_seen);
        }
        Ok(())
    }

    async fn remove(&self, key: &StoreKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let removed = self.sessions.remove(key).map(|(_, r)| r);
        if let Some(record) = &removed {
            self.unindex(record);
        }
        Ok(removed)
    }

    async fn find(&self, filter: &SessionFilter) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
        Ok(match filter {
            SessionFilter::All => self.sessions.iter().map(|r| r.value().clone()).collect(),
            SessionFilter::Sid(sid) => self.lookup(&self.by_sid, sid, |r| {
                r.sid.as_deref() == Some(sid.as_str())
            }),
            SessionFilter::Sub(sub) => self.lookup(&self.by_sub, sub, |r| r.sub == *sub),
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
        key: StoreKey,
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
        key: &StoreKey,
        now: i64,
    ) -> Result<Option<PendingLogin>, StoreError> {
        Ok(self
            .pending_table()
            .remove(key)
            .filter(|p| now < p.expires_at))
    }

    async fn try_lock_refresh(
        &self,
        key: &StoreKey,
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

    async fn unlock_refresh(&self, key: &StoreKey, owner: &str) -> Result<(), StoreError> {
        self.refresh_locks
            .remove_if(key, |_, (holder, _)| holder == owner);
        Ok(())
    }

    async fn remember_once(&self, key: StoreKey, expires_at: i64) -> Result<bool, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::store_tests::record;

    async fn found(store: &MemoryStore, filter: SessionFilter) -> Vec<String> {
        let found = store.find(&filter).await.unwrap();
        found.iter().map(|r| r.sub.clone()).collect()
    }

    /// The indexes keep hashes of names: sessions of another name under the same
    /// hash (a collision) are never answered.
    #[tokio::test]
    async fn a_lookup_answers_only_the_sessions_of_that_name() {
        let store = MemoryStore::new();
        let (alice, bob) = (
            record("alice", Some("s-1"), 0),
            record("bob", Some("s-2"), 0),
        );
        store.insert(alice.clone()).await.unwrap();
        store.insert(bob.clone()).await.unwrap();
        // Bob's session filed under Alice's names, as a collision would.
        index_add(&store.by_sub, store.name("alice"), bob.key);
        index_add(&store.by_sid, store.name("s-1"), bob.key);
        assert_eq!(
            found(&store, SessionFilter::Sub("alice".into())).await,
            ["alice"]
        );
        assert_eq!(
            found(&store, SessionFilter::Sid("s-1".into())).await,
            ["alice"]
        );
        // Removing Alice leaves Bob's entry under her hash, and Bob findable.
        store.remove(&alice.key).await.unwrap();
        assert!(
            found(&store, SessionFilter::Sub("alice".into()))
                .await
                .is_empty()
        );
        assert_eq!(
            found(&store, SessionFilter::Sub("bob".into())).await,
            ["bob"]
        );
    }
}
