//! The SQLite store's in-process copy of session records: what lets a request for a
//! session this process has seen skip the file and the blocking pool.
//!
//! **Bounded.** At most `capacity` records, in 64 shards (each its own short `Mutex`,
//! never held across an await or any I/O). A full shard makes room with the CLOCK
//! rule (a second chance for records read since the hand last passed them): O(1)
//! amortised, no list to relink on every read.
//!
//! **Coherent.** The cache never decides anything on its own: an entry is dropped by
//! every write of this process and by every change another process logs (see the
//! change log in the parent module). Each shard counts its evictions (a
//! *generation*): a reader takes the count before it reads the file and fills the
//! cache only if the count is unchanged under the shard lock, so a copy read before
//! a concurrent change can never land after that change's eviction. And the cache is
//! only *trusted* while the change log has been read recently ([`RecordCache::is_followed`]);
//! otherwise every read goes to the file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::super::{SessionRecord, StoreKey};

type KeyHasher = std::hash::BuildHasherDefault<super::super::record::KeyHasher>;

const SHARDS: usize = 64;

pub(super) struct RecordCache {
    shards: Box<[Mutex<Shard>]>,
    /// When the change log was last read in full, in ms since `epoch` (0: never, or
    /// the last read failed).
    followed_at: AtomicU64,
    epoch: Instant,
}

struct Shard {
    index: HashMap<StoreKey, usize, KeyHasher>,
    slots: Vec<Slot>,
    hand: usize,
    capacity: usize,
    /// Bumped by every eviction from this shard.
    generation: u64,
}

struct Slot {
    key: StoreKey,
    record: Arc<SessionRecord>,
    referenced: bool,
}

/// What a reader took before it read the file: see [`RecordCache::fill`].
#[derive(Clone, Copy)]
pub(super) struct Snapshot(u64);

impl RecordCache {
    pub(super) fn new(capacity: usize) -> Self {
        let shards = (0..SHARDS)
            .map(|i| {
                let capacity = capacity / SHARDS + usize::from(i < capacity % SHARDS);
                Mutex::new(Shard {
                    index: HashMap::default(),
                    slots: Vec::new(),
                    hand: 0,
                    capacity,
                    generation: 0,
                })
            })
            .collect();
        Self {
            shards,
            followed_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn shard(&self, key: &StoreKey) -> MutexGuard<'_, Shard> {
        // Keys are SHA-256 outputs: the last byte is as good a shard index as any (the
        // maps inside hash the first bytes).
        let i = key.as_bytes()[31] as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, key: &StoreKey) -> Option<Arc<SessionRecord>> {
        let mut shard = self.shard(key);
        let i = *shard.index.get(key)?;
        let slot = &mut shard.slots[i];
        slot.referenced = true;
        Some(slot.record.clone())
    }

    pub(super) fn snapshot(&self, key: &StoreKey) -> Snapshot {
        Snapshot(self.shard(key).generation)
    }

    /// Caches `record` (replacing any copy) unless its shard saw an eviction since
    /// `snapshot`: then the record may predate a change, and the next read goes to
    /// the file again.
    pub(super) fn fill(&self, record: Arc<SessionRecord>, snapshot: Snapshot) {
        let mut shard = self.shard(&record.key);
        if shard.generation != snapshot.0 || shard.capacity == 0 {
            return;
        }
        if let Some(&i) = shard.index.get(&record.key) {
            let slot = &mut shard.slots[i];
            slot.record = record;
            slot.referenced = true;
            return;
        }
        let key = record.key;
        let slot = Slot {
            key,
            record,
            referenced: false,
        };
        if shard.slots.len() < shard.capacity {
            let i = shard.slots.len();
            shard.slots.push(slot);
            shard.index.insert(key, i);
            return;
        }
        // CLOCK: the first slot not read since the hand last passed it makes room.
        loop {
            let hand = shard.hand;
            shard.hand = (hand + 1) % shard.slots.len();
            let victim = &mut shard.slots[hand];
            if victim.referenced {
                victim.referenced = false;
                continue;
            }
            let old = std::mem::replace(victim, slot).key;
            shard.index.remove(&old);
            shard.index.insert(key, hand);
            return;
        }
    }

    /// Moves a cached copy's `last_seen` forward (this process used the session). The
    /// copy is replaced, not changed in place: readers may hold it.
    pub(super) fn touch(&self, key: &StoreKey, last_seen: i64) {
        let Some(current) = self.get(key) else { return };
        if current.last_seen >= last_seen {
            return;
        }
        // Cloned outside the lock; put back only if nothing replaced it meanwhile.
        let mut touched = (*current).clone();
        touched.last_seen = last_seen;
        let mut shard = self.shard(key);
        if let Some(&i) = shard.index.get(key)
            && Arc::ptr_eq(&shard.slots[i].record, &current)
        {
            shard.slots[i].record = Arc::new(touched);
        }
    }

    pub(super) fn evict(&self, key: &StoreKey) {
        let mut shard = self.shard(key);
        shard.generation += 1;
        let Some(i) = shard.index.remove(key) else {
            return;
        };
        shard.slots.swap_remove(i);
        if let Some(moved) = shard.slots.get(i) {
            let moved = moved.key;
            shard.index.insert(moved, i);
        }
        if shard.hand >= shard.slots.len() {
            shard.hand = 0;
        }
    }

    pub(super) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.generation += 1;
            shard.index.clear();
            shard.slots.clear();
            shard.hand = 0;
        }
    }

    /// Records cached now.
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).slots.len())
            .sum()
    }

    pub(super) fn now_ms(&self) -> u64 {
        // +1: 0 means "not followed".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// The change log was read in full by a read that started at `at` (from [`Self::now_ms`]).
    pub(super) fn followed(&self, at: u64) {
        self.followed_at.store(at, Ordering::Release);
    }

    /// Reading the change log failed: the cache is no longer trusted.
    pub(super) fn unfollowed(&self) {
        self.followed_at.store(0, Ordering::Release);
    }

    /// Whether the change log was read in full within the last `window_ms`: every
    /// change committed before that read's start has been evicted.
    pub(super) fn is_followed(&self, window_ms: u64) -> bool {
        let at = self.followed_at.load(Ordering::Acquire);
        at != 0 && self.now_ms().saturating_sub(at) <= window_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;

    fn record() -> Arc<SessionRecord> {
        Arc::new(SessionRecord {
            key: SessionId::generate().key(),
            sub: "alice".into(),
            sid: None,
            frontend: String::new(),
            claims: "{}".into(),
            sealed_tokens: vec![1],
            created_at: 1,
            last_seen: 1,
            expires_at: i64::MAX,
            version: 1,
        })
    }

    #[test]
    fn the_bound_holds_and_recently_read_records_stay() {
        let cache = RecordCache::new(640);
        let fill = |r: &Arc<SessionRecord>| cache.fill(r.clone(), cache.snapshot(&r.key));
        let hot: Vec<_> = (0..64).map(|_| record()).collect();
        hot.iter().for_each(fill);
        let mut misses = 0;
        for _ in 0..10 {
            for r in &hot {
                if cache.get(&r.key).is_none() {
                    misses += 1;
                    fill(r);
                }
            }
            // Half the capacity of records read once, between two reads of the hot ones.
            (0..320).map(|_| record()).for_each(|r| fill(&r));
            assert!(cache.len() <= 640, "{}", cache.len());
        }
        assert_eq!(cache.len(), 640);
        // Without the second chance (FIFO) about half the hot records would go per wave.
        assert!(misses < 64 * 10 / 4, "{misses} misses of {}", 64 * 10);
    }

    #[test]
    fn a_fill_that_raced_an_eviction_is_dropped() {
        let cache = RecordCache::new(100);
        let r = record();
        let before = cache.snapshot(&r.key);
        cache.evict(&r.key); // a change arrived while the reader read the file
        cache.fill(r.clone(), before);
        assert!(cache.get(&r.key).is_none());
        cache.fill(r.clone(), cache.snapshot(&r.key));
        assert!(cache.get(&r.key).is_some());
        let before = cache.snapshot(&r.key);
        cache.clear();
        cache.fill(r.clone(), before);
        assert!(cache.get(&r.key).is_none());
    }

    #[test]
    fn evictions_keep_the_index_right() {
        let cache = RecordCache::new(64 * 8);
        let records: Vec<_> = (0..300).map(|_| record()).collect();
        for r in &records {
            cache.fill(r.clone(), cache.snapshot(&r.key));
        }
        for r in records.iter().step_by(3) {
            cache.evict(&r.key);
        }
        for (i, r) in records.iter().enumerate() {
            let got = cache.get(&r.key);
            if i % 3 == 0 {
                assert!(got.is_none());
            } else if let Some(got) = got {
                assert_eq!(got.key, r.key);
            }
        }
        cache.touch(&records[1].key, 99);
        if let Some(r) = cache.get(&records[1].key) {
            assert_eq!(r.last_seen, 99);
        }
        let none = RecordCache::new(0);
        let r = record();
        none.fill(r.clone(), none.snapshot(&r.key));
        assert_eq!(none.len(), 0);
    }
}
