//! One test suite for every [`SessionStore`] backend. A new backend is added to
//! `store_suite!` below and must pass all of it unchanged.

use std::sync::Arc;

use super::*;

pub(super) fn record(sub: &str, sid: Option<&str>, now: i64) -> Arc<SessionRecord> {
    Arc::new(SessionRecord {
        key: SessionId::generate().key(),
        sub: sub.into(),
        sid: sid.map(Into::into),
        frontend: String::new(),
        claims: format!(r#"{{"sub":"{sub}"}}"#),
        sealed_tokens: vec![1, 2, 3, 4],
        created_at: now,
        last_seen: now,
        expires_at: now + 3600,
        version: 1,
    })
}

fn pending(expires_at: i64) -> PendingLogin {
    PendingLogin {
        binding: "b".into(),
        pkce_verifier: "v".into(),
        nonce: "n".into(),
        return_url: "/".into(),
        silent: false,
        expires_at,
        frontend: String::new(),
        network: "192.0.2.1/32".into(),
        acr_values: None,
        max_age: None,
    }
}

/// A pending login from `network`.
fn pending_from(network: &str, expires_at: i64) -> PendingLogin {
    PendingLogin {
        network: network.into(),
        ..pending(expires_at)
    }
}

const ROOMY: PendingCaps = PendingCaps {
    total: 100,
    per_network: 100,
};

/// The frontend a session belongs to survives every store operation.
pub async fn frontend_is_kept(store: impl SessionStore) {
    let now = now_secs();
    let mut admin = (*record("alice", Some("sid-fe"), now)).clone();
    admin.frontend = "admin".into();
    let admin = Arc::new(admin);
    let plain = record("alice", Some("sid-fe"), now);
    store.insert(admin.clone()).await.unwrap();
    store.insert(plain.clone()).await.unwrap();
    assert_eq!(
        store.get(&admin.key).await.unwrap().unwrap().frontend,
        "admin"
    );
    assert_eq!(store.get(&plain.key).await.unwrap().unwrap().frontend, "");
    let mut updated = (*admin).clone();
    updated.version += 1;
    assert!(store.update(Arc::new(updated)).await.unwrap());
    assert_eq!(
        store.get(&admin.key).await.unwrap().unwrap().frontend,
        "admin"
    );
    let mut found: Vec<String> = store
        .find(&SessionFilter::Sid("sid-fe".into()))
        .await
        .unwrap()
        .iter()
        .map(|r| r.frontend.clone())
        .collect();
    found.sort();
    assert_eq!(found, ["", "admin"]);
}

pub async fn insert_get_remove(store: impl SessionStore) {
    let now = now_secs();
    let r = record("alice", Some("sid-1"), now);
    assert!(store.get(&r.key).await.unwrap().is_none());
    store.insert(r.clone()).await.unwrap();
    assert_eq!(store.get(&r.key).await.unwrap().as_deref(), Some(&*r));
    assert_eq!(store.remove(&r.key).await.unwrap().as_deref(), Some(&*r));
    assert!(store.get(&r.key).await.unwrap().is_none());
    assert!(store.remove(&r.key).await.unwrap().is_none());
}

pub async fn insert_replaces(store: impl SessionStore) {
    let now = now_secs();
    let r = record("alice", None, now);
    store.insert(r.clone()).await.unwrap();
    let mut updated = (*r).clone();
    updated.sealed_tokens = vec![9; 40];
    updated.version = 2;
    store.insert(Arc::new(updated.clone())).await.unwrap();
    assert_eq!(store.get(&r.key).await.unwrap().as_deref(), Some(&updated));
}

pub async fn touch_moves_last_seen_forward_only(store: impl SessionStore) {
    let now = now_secs();
    let r = record("alice", None, now);
    store.insert(r.clone()).await.unwrap();
    store.touch(&r.key, now + 100).await.unwrap();
    assert_eq!(
        store.get(&r.key).await.unwrap().unwrap().last_seen,
        now + 100
    );
    store
        .touch(&SessionId::generate().key(), now)
        .await
        .unwrap();
}

pub async fn find_by_sid_and_sub(store: impl SessionStore) {
    let now = now_secs();
    let a1 = record("alice", Some("s1"), now);
    let a2 = record("alice", Some("s2"), now);
    let b = record("bob", Some("s3"), now);
    for r in [&a1, &a2, &b] {
        store.insert(r.clone()).await.unwrap();
    }
    let keys = |v: Vec<Arc<SessionRecord>>| {
        let mut k: Vec<_> = v.iter().map(|r| *r.key.as_bytes()).collect();
        k.sort();
        k
    };
    let mut alice = vec![*a1.key.as_bytes(), *a2.key.as_bytes()];
    alice.sort();
    assert_eq!(
        keys(
            store
                .find(&SessionFilter::Sub("alice".into()))
                .await
                .unwrap()
        ),
        alice
    );
    assert_eq!(
        keys(store.find(&SessionFilter::Sid("s3".into())).await.unwrap()),
        vec![*b.key.as_bytes()]
    );
    assert!(
        store
            .find(&SessionFilter::Sid("nope".into()))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.find(&SessionFilter::All).await.unwrap().len(), 3);
}

pub async fn expired_sessions_are_swept(store: impl SessionStore) {
    let now = now_secs();
    let live = record("alice", None, now);
    let mut absolute = (*record("bob", None, now)).clone();
    absolute.expires_at = now - 1;
    let mut idle = (*record("carol", None, now)).clone();
    idle.last_seen = now - 2000;
    store.insert(live.clone()).await.unwrap();
    store.insert(Arc::new(absolute.clone())).await.unwrap();
    store.insert(Arc::new(idle.clone())).await.unwrap();
    // Memory and SQLite delete both here; Redis has already expired them by its TTLs.
    assert!(store.remove_expired(now, 1800).await.unwrap() <= 2);
    assert!(store.get(&live.key).await.unwrap().is_some());
    assert!(store.get(&absolute.key).await.unwrap().is_none());
    assert!(store.get(&idle.key).await.unwrap().is_none());
}

pub async fn pending_logins_are_single_use(store: impl SessionStore) {
    let now = now_secs();
    let key = StoreKey::hash(b"state-1");
    store
        .put_pending(key, pending(now + 600), ROOMY)
        .await
        .unwrap();
    assert_eq!(
        store.take_pending(&key, now).await.unwrap(),
        Some(pending(now + 600))
    );
    assert_eq!(store.take_pending(&key, now).await.unwrap(), None);
    // Taken, it no longer counts for its network.
    let one = PendingCaps {
        total: 100,
        per_network: 1,
    };
    for i in 0..3u8 {
        let key = StoreKey::hash(&[b's', i]);
        store
            .put_pending(key, pending(now + 600), one)
            .await
            .unwrap();
        store.take_pending(&key, now).await.unwrap().unwrap();
    }
}

pub async fn pending_logins_expire(store: impl SessionStore) {
    let now = now_secs();
    let key = StoreKey::hash(b"state-2");
    store
        .put_pending(key, pending(now + 5), ROOMY)
        .await
        .unwrap();
    assert_eq!(store.take_pending(&key, now + 10).await.unwrap(), None);
}

/// One network holds at most `per_network` live pending logins; other networks are
/// not affected, and a taken or expired login frees its place.
pub async fn pending_logins_are_capped_per_network(store: impl SessionStore) {
    let now = now_secs();
    let caps = PendingCaps {
        total: 100,
        per_network: 3,
    };
    // One of them has already expired: it counts for nothing.
    store
        .put_pending(StoreKey::hash(b"stale"), pending_from("a", now - 1), caps)
        .await
        .unwrap();
    for i in 0..3u8 {
        let evicted = store
            .put_pending(
                StoreKey::hash(&[b'a', i]),
                pending_from("a", now + 600),
                caps,
            )
            .await
            .unwrap();
        assert_eq!(evicted, 0);
    }
    let err = store
        .put_pending(
            StoreKey::hash(b"a more"),
            pending_from("a", now + 600),
            caps,
        )
        .await;
    assert!(matches!(err, Err(StoreError::PendingFull)), "{err:?}");
    store
        .put_pending(StoreKey::hash(b"b"), pending_from("b", now + 600), caps)
        .await
        .expect("another network is not affected");
    store
        .take_pending(&StoreKey::hash(&[b'a', 0]), now)
        .await
        .unwrap()
        .unwrap();
    store
        .put_pending(
            StoreKey::hash(b"a more"),
            pending_from("a", now + 600),
            caps,
        )
        .await
        .expect("a taken login frees its place");
    // The refused one was not stored; the others all are.
    for i in 1..3u8 {
        assert!(
            store
                .take_pending(&StoreKey::hash(&[b'a', i]), now)
                .await
                .unwrap()
                .is_some()
        );
    }
}

/// The total cap is a memory bound, never a refusal: a full store evicts the oldest
/// login of the network holding the most, so a flood pushes out its own logins and a
/// user on another network keeps theirs.
pub async fn a_full_store_evicts_from_the_heaviest_network(store: impl SessionStore) {
    let now = now_secs();
    let caps = PendingCaps {
        total: 5,
        per_network: 100,
    };
    let flood = |i: u8| StoreKey::hash(&[b'f', i]);
    let user = StoreKey::hash(b"user");
    // The user's login is the oldest of all.
    store
        .put_pending(user, pending_from("user", now + 500), caps)
        .await
        .unwrap();
    store
        .put_pending(StoreKey::hash(b"x"), pending_from("x", now + 550), caps)
        .await
        .unwrap();
    // An expired login is dropped before anything live is evicted.
    store
        .put_pending(flood(0), pending_from("flood", now - 1), caps)
        .await
        .unwrap();
    for i in 1..=3u8 {
        let evicted = store
            .put_pending(
                flood(i),
                pending_from("flood", now + 600 + i64::from(i)),
                caps,
            )
            .await
            .unwrap();
        assert_eq!(evicted, 0, "login {i}: the expired one made room");
    }
    // Full (5 live): every further login evicts the flood's oldest, never the user's.
    for i in 4..=20u8 {
        let evicted = store
            .put_pending(
                flood(i),
                pending_from("flood", now + 600 + i64::from(i)),
                caps,
            )
            .await
            .unwrap();
        assert_eq!(evicted, 1, "login {i}");
        assert_eq!(
            store.take_pending(&flood(i - 3), now).await.unwrap(),
            None,
            "the flood's oldest ({}) was evicted",
            i - 3
        );
    }
    // Another new network evicts from the flood too.
    let evicted = store
        .put_pending(StoreKey::hash(b"y"), pending_from("y", now + 700), caps)
        .await
        .unwrap();
    assert_eq!(evicted, 1);
    assert!(store.take_pending(&user, now).await.unwrap().is_some());
    assert!(
        store
            .take_pending(&StoreKey::hash(b"x"), now)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .take_pending(&StoreKey::hash(b"y"), now)
            .await
            .unwrap()
            .is_some()
    );
    assert!(store.take_pending(&flood(20), now).await.unwrap().is_some());
}

/// Concurrent logins never exceed a cap.
pub async fn pending_caps_hold_under_concurrency(store: impl SessionStore) {
    let store = Arc::new(store);
    let now = now_secs();
    let caps = PendingCaps {
        total: 100,
        per_network: 5,
    };
    let tasks: Vec<_> = (0..20u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_pending(
                        StoreKey::hash(&[b'c', i]),
                        pending_from("c", now + 600),
                        caps,
                    )
                    .await
            })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => stored += 1,
            Err(StoreError::PendingFull) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(stored, 5);
}

pub async fn concurrent_sessions_do_not_interfere(store: impl SessionStore) {
    let store = Arc::new(store);
    let now = now_secs();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let r = record(&format!("user{i}"), None, now);
            store.insert(r.clone()).await.unwrap();
            assert_eq!(
                store.get(&r.key).await.unwrap().unwrap().sub,
                format!("user{i}")
            );
            r.key
        }));
    }
    for t in tasks {
        let key = t.await.unwrap();
        assert!(store.get(&key).await.unwrap().is_some());
    }
    store.ping().await.unwrap();
    assert!(store.count(now).await.unwrap() >= 32);
}

pub async fn update_only_replaces_live_sessions(store: impl SessionStore) {
    let now = now_secs();
    let r = record("alice", None, now);
    assert!(
        !store.update(r.clone()).await.unwrap(),
        "update must not create"
    );
    assert!(store.get(&r.key).await.unwrap().is_none());
    store.insert(r.clone()).await.unwrap();
    let mut refreshed = (*r).clone();
    refreshed.sealed_tokens = vec![7; 10];
    refreshed.version = 2;
    assert!(store.update(Arc::new(refreshed.clone())).await.unwrap());
    assert_eq!(
        store.get(&r.key).await.unwrap().unwrap().sealed_tokens,
        vec![7; 10]
    );
    store.remove(&r.key).await.unwrap();
    assert!(
        !store.update(Arc::new(refreshed)).await.unwrap(),
        "a logged-out session stays gone"
    );
    assert!(store.get(&r.key).await.unwrap().is_none());
}

pub async fn refresh_lock_is_exclusive_and_leased(store: impl SessionStore) {
    let key = SessionId::generate().key();
    let other = SessionId::generate().key();
    assert!(store.try_lock_refresh(&key, "a", 60_000).await.unwrap());
    assert!(
        !store.try_lock_refresh(&key, "b", 60_000).await.unwrap(),
        "held by a"
    );
    assert!(
        store.try_lock_refresh(&other, "b", 60_000).await.unwrap(),
        "locks are per session"
    );
    store.unlock_refresh(&key, "b").await.unwrap();
    assert!(
        !store.try_lock_refresh(&key, "b", 60_000).await.unwrap(),
        "only the owner releases"
    );
    store.unlock_refresh(&key, "a").await.unwrap();
    assert!(store.try_lock_refresh(&key, "b", 100).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert!(
        store.try_lock_refresh(&key, "c", 60_000).await.unwrap(),
        "an expired lease is free"
    );
    store.unlock_refresh(&key, "b").await.unwrap();
    assert!(
        !store.try_lock_refresh(&key, "d", 60_000).await.unwrap(),
        "b's late release must not free c's lock"
    );
}

pub async fn refresh_lock_admits_one_of_many(store: impl SessionStore) {
    let store = Arc::new(store);
    let key = SessionId::generate().key();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .try_lock_refresh(&key, &format!("o{i}"), 60_000)
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1);
}

pub async fn one_time_ids_are_seen_once(store: impl SessionStore) {
    let now = now_secs();
    let jti = StoreKey::hash(b"iss|jti-1");
    assert!(store.remember_once(jti, now + 600).await.unwrap());
    assert!(
        !store.remember_once(jti, now + 600).await.unwrap(),
        "a replay"
    );
    assert!(
        store
            .remember_once(StoreKey::hash(b"iss|jti-2"), now + 600)
            .await
            .unwrap()
    );
    let old = StoreKey::hash(b"iss|jti-old");
    assert!(store.remember_once(old, now - 1).await.unwrap());
    assert!(
        store.remember_once(old, now + 600).await.unwrap(),
        "an expired entry is forgotten"
    );
}

pub async fn indexes_follow_changes(store: impl SessionStore) {
    let now = now_secs();
    let r = record("alice", Some("s1"), now);
    store.insert(r.clone()).await.unwrap();
    let mut moved = (*r).clone();
    moved.sid = Some("s2".into());
    moved.sub = "alice2".into();
    store.insert(Arc::new(moved)).await.unwrap();
    assert!(
        store
            .find(&SessionFilter::Sid("s1".into()))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .find(&SessionFilter::Sub("alice".into()))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .find(&SessionFilter::Sid("s2".into()))
            .await
            .unwrap()
            .len(),
        1
    );
    store.remove(&r.key).await.unwrap();
    assert!(
        store
            .find(&SessionFilter::Sub("alice2".into()))
            .await
            .unwrap()
            .is_empty()
    );
    let mut expired = (*record("bob", Some("s3"), now)).clone();
    expired.expires_at = now - 1;
    store.insert(Arc::new(expired)).await.unwrap();
    store.remove_expired(now, 1800).await.unwrap();
    assert!(
        store
            .find(&SessionFilter::Sid("s3".into()))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .find(&SessionFilter::Sub("bob".into()))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Calls `$callback!($args; every suite test's name)`: the one list of the suite.
macro_rules! with_suite_names {
    ($callback:ident!($($args:tt)*)) => {
        $callback!($($args)*; insert_get_remove, insert_replaces,
            touch_moves_last_seen_forward_only, find_by_sid_and_sub,
            expired_sessions_are_swept, pending_logins_are_single_use,
            pending_logins_expire, pending_logins_are_capped_per_network,
            a_full_store_evicts_from_the_heaviest_network, pending_caps_hold_under_concurrency,
            concurrent_sessions_do_not_interfere, update_only_replaces_live_sessions,
            refresh_lock_is_exclusive_and_leased, refresh_lock_admits_one_of_many,
            one_time_ids_are_seen_once, indexes_follow_changes,
            frontend_is_kept);
    };
}

macro_rules! store_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            with_suite_names!(store_suite!(@tests $make));
        }
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $make.await;
                super::$name(store).await;
            }
        )*
    };
}

/// The whole suite, one test after another, on one real Redis Cluster (six
/// processes are too many to start per test), emptied between tests.
macro_rules! cluster_suite {
    (@all; $($name:ident),*) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn redis_cluster_store_suite() {
            let cluster = RedisCluster::start();
            $(
                cluster.flush();
                eprintln!("cluster: {}", stringify!($name));
                let store = RedisStore::open(&cluster.url(), 1800).await.unwrap();
                $name(store).await;
            )*
        }
    };
}

async fn memory() -> (MemoryStore, ()) {
    (MemoryStore::new(), ())
}

async fn redis() -> (RedisStore, RedisServer) {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url(), 1800).await.unwrap();
    (store, server)
}

async fn sqlite() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("sessions.db"))
        .await
        .unwrap();
    (store, dir)
}

store_suite!(memory_store, memory());
store_suite!(sqlite_store, sqlite());
store_suite!(redis_store, redis());
with_suite_names!(cluster_suite!(@all));

// The Redis processes these tests start come from tests/support/, shared through
// `#[path]` with the e2e harness (another crate): redis_server.rs is the one way the
// tests start a `redis-server`, and redis_cluster.rs names it as `super::redis_server`.
#[path = "../../tests/support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;
#[path = "../../tests/support/redis_cluster.rs"]
mod redis_cluster;
use redis_cluster::RedisCluster;

#[tokio::test]
async fn redis_down_is_unavailable_and_recovers() {
    let mut server = RedisServer::start();
    let store = RedisStore::open(&server.url(), 1800).await.unwrap();
    let r = record("alice", Some("s"), now_secs());
    store.insert(r.clone()).await.unwrap();
    server.stop();
    let started = std::time::Instant::now();
    assert!(
        matches!(store.get(&r.key).await, Err(StoreError::Unavailable(_)))
            || store.get(&r.key).await.is_err()
    );
    assert!(store.ping().await.is_err());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "fails fast, doesn't hang"
    );
    // Same port again: the store reconnects by itself (the data is gone: --save "").
    server.restart();
    let mut ok = false;
    for _ in 0..50 {
        if store.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "reconnected");
    store.insert(r.clone()).await.unwrap();
    assert!(store.get(&r.key).await.unwrap().is_some());
}

#[tokio::test]
async fn sqlite_keeps_sessions_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let r = record("alice", Some("sid"), now_secs());
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.insert(r.clone()).await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get(&r.key).await.unwrap().as_deref(), Some(&*r));
}

#[tokio::test]
async fn sqlite_file_holds_no_plaintext_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::config::SessionConfig {
        store: crate::config::StoreKind::Sqlite,
        sqlite_path: dir.path().join("s.db"),
        keys: vec![crate::config::Secret::new(cipher::generate_key())],
        ..Default::default()
    };
    let sessions = Sessions::open(&config).await.unwrap();
    let tokens = Tokens {
        access_token: "AT-plaintext-marker".into(),
        token_type: "Bearer".into(),
        access_expires_at: None,
        access_issued_at: None,
        refresh_token: Some("RT-plaintext-marker".into()),
        id_token: None,
        scope: None,
        dpop_key: None,
        route_tokens: Vec::new(),
    };
    let (id, _) = sessions
        .create(NewSession {
            frontend: String::new(),
            sub: "alice".into(),
            sid: None,
            claims: Default::default(),
            tokens: tokens.clone(),
            refresh_expires_at: None,
        })
        .await
        .unwrap();
    let loaded = sessions.load(&id, "").await.unwrap().unwrap();
    assert_eq!(sessions.open_tokens(&loaded).unwrap(), tokens);
    drop(sessions);
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(!bytes.windows(16).any(|w| w == b"plaintext-marker"));
    assert!(
        !bytes
            .windows(43)
            .any(|w| w == id.to_cookie_value().as_bytes())
    );
}

/// A session's DPoP key lives in its sealed tokens: every store gives it back, and
/// records from before DPoP (no key in their tokens) still open.
async fn sessions_keep_the_dpop_key(store: Store) {
    let config = crate::config::SessionConfig {
        keys: vec![crate::config::Secret::new(cipher::generate_key())],
        ..Default::default()
    };
    let cipher = TokenCipher::from_config(&config.keys).unwrap();
    let sessions = Sessions::new(store, cipher, &config);
    // A stored DPoP key is an opaque text to the session layer (its format is oidc's).
    let key = format!("test-dpop-key-{}", crate::primitives::random_token());
    let mut tokens = Tokens {
        access_token: "AT".into(),
        token_type: "DPoP".into(),
        access_expires_at: None,
        access_issued_at: None,
        refresh_token: Some("RT".into()),
        id_token: None,
        scope: None,
        dpop_key: Some(key.clone()),
        route_tokens: Vec::new(),
    };
    let new = |tokens: &Tokens| NewSession {
        frontend: String::new(),
        sub: "alice".into(),
        sid: None,
        claims: Default::default(),
        tokens: tokens.clone(),
        refresh_expires_at: None,
    };
    let (id, _) = sessions.create(new(&tokens)).await.unwrap();
    let loaded = sessions.load(&id, "").await.unwrap().unwrap();
    let stored = key.clone();
    assert!(
        !loaded
            .sealed_tokens
            .windows(32)
            .any(|w| w == &stored.as_bytes()[..32]),
        "the key is sealed"
    );
    let opened = sessions.open_tokens(&loaded).unwrap();
    assert_eq!(opened, tokens);
    assert_eq!(opened.dpop_key.as_deref(), Some(key.as_str()));
    // A refresh keeps it.
    let updated = sessions.with_tokens(&loaded, &opened, None);
    assert!(sessions.store().update(Arc::new(updated)).await.unwrap());
    let loaded = sessions.load(&id, "").await.unwrap().unwrap();
    assert_eq!(
        sessions.open_tokens(&loaded).unwrap().dpop_key,
        tokens.dpop_key
    );

    // An older record: its sealed JSON has no `dpop_key` member at all.
    tokens.dpop_key = None;
    let (old_id, old) = sessions.create(new(&tokens)).await.unwrap();
    let plain = sessions
        .cipher
        .open(&old.sealed_tokens, old.key.as_bytes())
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain).contains("dpop_key"));
    let loaded = sessions.load(&old_id, "").await.unwrap().unwrap();
    assert_eq!(sessions.open_tokens(&loaded).unwrap().dpop_key, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_key_survives_every_store() {
    sessions_keep_the_dpop_key(Store::Memory(memory().await.0)).await;
    let (sqlite, _dir) = sqlite().await;
    sessions_keep_the_dpop_key(Store::Sqlite(sqlite)).await;
    let (redis, _server) = redis().await;
    sessions_keep_the_dpop_key(Store::Redis(redis)).await;
}
