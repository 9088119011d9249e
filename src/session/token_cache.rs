//! Opened tokens, cached per worker thread, so the proxy path does not decrypt and
//! parse ~2 KiB of sealed JSON on every request of a session.
//!
//! Safe by construction:
//! - **The store is still read on every request.** The cache is consulted only after
//!   `Sessions::load` found the live session, so a logout, a revocation or an expiry
//!   takes effect at once, on this instance and on every other one sharing the store.
//! - **An entry is tied to one sealed blob.** It is used only if the record's blob is
//!   the one it was opened from: same key id, same random 96-bit nonce, same length
//!   and same GCM tag. Every seal draws a fresh nonce, so refreshed tokens (a new
//!   blob) are never answered from the old entry; a blob that differs elsewhere but
//!   keeps the nonce and tag would be a forgery, which opening refuses anyway.
//! - **Short-lived and bounded.** Entries are used [`TTL`] at most; a thread holds at
//!   most [`CAPACITY`] of them (about 2 KiB of plaintext each, one per session it
//!   served in the last minute, not one per session); `Sessions::end` drops the ended
//!   session's entry of the thread that ends it, and every opening on a thread drops
//!   that thread's entries past their [`TTL`] once a [`TTL`] has gone by since it
//!   last did. Plaintext tokens thus stay in memory until the first opening on their
//!   thread a minute or more after their last use, in the process that already holds
//!   the keys.
//! - Per thread (each worker is its own runtime): no lock, no contention.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::record::KeyHasher;
use super::{OpenedTokens, StoreKey};

/// How long an entry may be used after it was opened.
pub const TTL: Duration = Duration::from_secs(60);
/// Entries per thread.
pub const CAPACITY: usize = 4096;

/// What names a sealed blob: its header (version, key id, nonce), its length and its
/// GCM tag (the last 16 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    head: [u8; 17],
    tag: [u8; 16],
    len: usize,
}

impl Fingerprint {
    pub fn of(sealed: &[u8]) -> Option<Self> {
        if sealed.len() < 17 + 16 {
            return None;
        }
        let mut head = [0u8; 17];
        head.copy_from_slice(&sealed[..17]);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&sealed[sealed.len() - 16..]);
        Some(Self {
            head,
            tag,
            len: sealed.len(),
        })
    }
}

struct Entry {
    fingerprint: Fingerprint,
    tokens: Arc<OpenedTokens>,
    opened: Instant,
}

type Map = HashMap<(u64, StoreKey), Entry, BuildHasherDefault<KeyHasher>>;

#[derive(Default)]
struct Cache {
    map: Map,
    /// When entries past their TTL were last dropped (`None`: never).
    swept: Option<Instant>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// The tokens opened from `fingerprint` for session `key` of the `Sessions` instance
/// `owner`, if this thread opened them less than [`TTL`] ago.
pub fn get(owner: u64, key: &StoreKey, fingerprint: &Fingerprint) -> Option<Arc<OpenedTokens>> {
    CACHE.with_borrow(|c| {
        let e = c.map.get(&(owner, *key))?;
        (e.fingerprint == *fingerprint && e.opened.elapsed() < TTL).then(|| e.tokens.clone())
    })
}

pub fn put(owner: u64, key: StoreKey, fingerprint: Fingerprint, tokens: Arc<OpenedTokens>) {
    put_at(owner, key, fingerprint, tokens, Instant::now());
}

fn put_at(
    owner: u64,
    key: StoreKey,
    fingerprint: Fingerprint,
    tokens: Arc<OpenedTokens>,
    now: Instant,
) {
    CACHE.with_borrow_mut(|c| {
        let sweep_due = c.swept.is_none_or(|t| now.duration_since(t) >= TTL);
        let full = c.map.len() >= CAPACITY && !c.map.contains_key(&(owner, key));
        if sweep_due || full {
            c.map.retain(|_, e| now.duration_since(e.opened) < TTL);
            c.swept = Some(now);
            if c.map.len() >= CAPACITY {
                c.map.clear();
            }
        }
        c.map.insert(
            (owner, key),
            Entry {
                fingerprint,
                tokens,
                opened: now,
            },
        );
    });
}

pub fn forget(owner: u64, key: &StoreKey) {
    CACHE.with_borrow_mut(|c| c.map.remove(&(owner, *key)));
}

#[cfg(test)]
mod tests {
    use crate::session::{MemoryStore, NewSession, Sessions, Store, Tokens, cipher};

    fn tokens(access: &str) -> Tokens {
        Tokens {
            access_token: access.into(),
            token_type: "Bearer".into(),
            access_expires_at: None,
            access_issued_at: None,
            refresh_token: Some("RT".into()),
            id_token: None,
            scope: None,
            dpop_key: None,
            route_tokens: Vec::new(),
        }
    }

    fn opened(access: &str) -> std::sync::Arc<crate::session::OpenedTokens> {
        std::sync::Arc::new(tokens(access).into())
    }

    fn sessions() -> Sessions {
        let config = crate::config::SessionConfig {
            keys: vec![crate::config::Secret::new(cipher::generate_key())],
            ..Default::default()
        };
        let cipher = cipher::TokenCipher::from_config(&config.keys).unwrap();
        Sessions::new(Store::Memory(MemoryStore::new()), cipher, &config)
    }

    /// Plaintext past its TTL doesn't stay for want of a full map: the next opening on
    /// the thread a TTL later drops it.
    #[test]
    fn expired_entries_are_dropped_by_a_later_opening() {
        use super::{CACHE, Fingerprint, TTL, put_at};
        use crate::session::StoreKey;
        let blob = [7u8; 64];
        let f = Fingerprint::of(&blob).unwrap();
        let (old, new) = (StoreKey::hash(b"old"), StoreKey::hash(b"new"));
        let t0 = std::time::Instant::now();
        put_at(1, old, f, opened("AT-old"), t0);
        put_at(1, new, f, opened("AT-new"), t0 + TTL / 2);
        let held = |k| CACHE.with_borrow(|c| c.map.contains_key(&(1, k)));
        assert!(held(old) && held(new), "within a TTL nothing is dropped");
        put_at(1, new, f, opened("AT-new"), t0 + TTL + TTL / 2);
        assert!(!held(old), "an entry past its TTL is dropped");
        assert!(held(new));
    }

    #[tokio::test]
    async fn a_cached_answer_is_always_the_tokens_of_the_blob_in_the_record() {
        let sessions = sessions();
        let (_, record) = sessions
            .create(NewSession {
                frontend: String::new(),
                sub: "alice".into(),
                sid: None,
                claims: Default::default(),
                tokens: tokens("AT-1"),
                refresh_expires_at: None,
            })
            .await
            .unwrap();
        let first = sessions.open_tokens_cached(&record).unwrap();
        assert_eq!(first.access_token, "AT-1");
        let again = sessions.open_tokens_cached(&record).unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&first, &again),
            "served from the cache"
        );

        // Refreshed tokens: a new blob, never answered with the old entry (and back).
        let refreshed = sessions.with_tokens(&record, &tokens("AT-2"), None);
        assert_eq!(
            sessions
                .open_tokens_cached(&refreshed)
                .unwrap()
                .access_token,
            "AT-2"
        );
        assert_eq!(
            sessions.open_tokens_cached(&record).unwrap().access_token,
            "AT-1"
        );

        // A damaged blob is opened (and refused), not answered from the cache.
        let mut damaged = (*record).clone();
        let n = damaged.sealed_tokens.len();
        damaged.sealed_tokens[n - 1] ^= 1;
        assert!(sessions.open_tokens_cached(&damaged).is_err());

        // Another `Sessions` (other keys) never sees this one's entries.
        let other = self::sessions();
        assert!(other.open_tokens_cached(&record).is_err());

        // Ending the session forgets its entry.
        sessions
            .end(&record.key, crate::session::EndReason::Logout)
            .await
            .unwrap();
        assert!(
            super::get(
                sessions.cache_owner,
                &record.key,
                &super::Fingerprint::of(&record.sealed_tokens).unwrap()
            )
            .is_none()
        );
    }
}
