//! The idle HTTP/1.1 connections of the lean client ([`super::client`]), one pool per
//! thread: a runtime is one thread (thread-per-core), so the pool is a thread-local
//! behind a `RefCell` — no lock, and a connection is only ever used by the runtime
//! whose task drives it.
//!
//! Per upstream authority the idle connections form a LIFO stack (the most recently
//! used connection is the warmest and the least likely to have been closed by the
//! upstream), capped at [`Settings::max_idle`] (the oldest goes past the cap) and
//! emptied of connections idle longer than [`Settings::idle_timeout`], on use and by
//! a reaper task while the pool holds any. Only a connection that is ready for its
//! next request is kept: one that errored, was closed, or is still busy is dropped
//! (dropping the sender closes the connection).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::body::Body;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

/// The pool's limits, the same for every authority.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Idle connections kept per authority.
    pub max_idle: usize,
    /// An idle connection older than this is closed.
    pub idle_timeout: Duration,
}

/// Where a connection goes back to: its upstream's scheme (TLS or not) and authority.
///
/// Compared and hashed byte for byte, not as [`Authority`](http::uri::Authority) does
/// (case-insensitively, one lowercased byte at a time into the hasher: ~400
/// instructions per lookup, two lookups per request). An authority spelled in
/// two cases gets two pools, which is harmless.
#[derive(Debug, Clone)]
pub struct Key {
    tls: bool,
    authority: http::uri::Authority,
}

impl Key {
    pub fn new(tls: bool, authority: http::uri::Authority) -> Self {
        Self { tls, authority }
    }

    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.tls == other.tls && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.tls.hash(state);
        self.authority.as_str().hash(state);
    }
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    /// A fast hasher: the keys are the configured upstreams' (no one else chooses
    /// them), and SipHash of the authority, byte by byte, cost ~1,000 instructions per
    /// checkout and as many per check-in.
    hosts: HashMap<Key, VecDeque<Idle>, foldhash::fast::RandomState>,
    /// The reaper task, while one runs (on this thread's runtime).
    reaper: Option<tokio::task::JoinHandle<()>>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// The most recently used idle connection to `key` that is still open and ready, if
/// any (the others met on the way are closed).
pub fn checkout(key: &Key, settings: Settings) -> Option<SendRequest<Body>> {
    POOL.with_borrow_mut(|pool| {
        let idle = pool.hosts.get_mut(key)?;
        let now = Instant::now();
        while let Some(conn) = idle.pop_back() {
            if now.duration_since(conn.since) >= settings.idle_timeout {
                // The newest is too old: so is every other.
                idle.clear();
                break;
            }
            if conn.sender.is_ready() {
                return Some(conn.sender);
            }
        }
        None
    })
}

/// Gives a connection back after its answer ended. Kept if it is ready for another
/// request; one the upstream is closing (or that errored) is dropped. One not ready
/// yet but still open is waited for by a small task.
pub fn checkin(key: Key, sender: SendRequest<Body>, settings: Settings) {
    if sender.is_ready() {
        keep(key, sender, settings);
    } else if !sender.is_closed()
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        let mut sender = sender;
        runtime.spawn(async move {
            if sender.ready().await.is_ok() {
                keep(key, sender, settings);
            }
        });
    }
}

fn keep(key: Key, sender: SendRequest<Body>, settings: Settings) {
    if settings.max_idle == 0 {
        return;
    }
    POOL.with_borrow_mut(|pool| {
        let idle = pool.hosts.entry(key).or_default();
        if idle.len() >= settings.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle {
            sender,
            since: Instant::now(),
        });
        // (A reaper of a runtime since shut down is finished.)
        if pool.reaper.as_ref().is_none_or(|r| r.is_finished())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            pool.reaper = Some(runtime.spawn(reap(settings.idle_timeout)));
        }
    });
}

/// Closes the connections idle longer than `timeout`, every `timeout`, until the
/// pool is empty.
async fn reap(timeout: Duration) {
    loop {
        tokio::time::sleep(timeout).await;
        let done = POOL.with_borrow_mut(|pool| {
            let now = Instant::now();
            pool.hosts.retain(|_, idle| {
                while idle
                    .front()
                    .is_some_and(|c| now.duration_since(c.since) >= timeout || c.sender.is_closed())
                {
                    idle.pop_front();
                }
                !idle.is_empty()
            });
            let done = pool.hosts.is_empty();
            if done {
                pool.reaper = None;
            }
            done
        });
        if done {
            return;
        }
    }
}

/// How many idle connections to `key` this thread's pool holds (tests).
#[cfg(test)]
pub fn idle_count(key: &Key) -> usize {
    POOL.with_borrow(|pool| pool.hosts.get(key).map_or(0, VecDeque::len))
}
