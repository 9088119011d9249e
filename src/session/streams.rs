//! The live streams of each session (WebSockets, server-sent events, long downloads),
//! so that a session's end ends them too, on every instance.
//!
//! A stream registers under its session's key for as long as it is open and holds a
//! [`StreamGuard`], whose [`StreamGuard::ended`] resolves when the session ends:
//! - **here**: every end goes through `Sessions::end` (logout, back-channel logout,
//!   `invalid_grant`, `max_per_user`, …), which signals the session's streams at once;
//! - **elsewhere** (another instance on Redis, another process on the SQLite file, the
//!   `portcullis sessions revoke` command): `Sessions::watch_streams` looks every
//!   [`WATCH_EVERY`] at the sessions that have streams here. The look is the store's
//!   ordinary read, answered from its in-process cache until the store's own
//!   invalidation (Redis pub/sub, the SQLite change log) evicts the key, so a session
//!   ended elsewhere is seen within that invalidation's delay plus [`WATCH_EVERY`],
//!   and a live one costs a cache hit;
//! - **timeouts**: the same look ends a session past its idle or absolute deadline
//!   (an open stream is not activity: the SPA's calls keep a session alive).
//!
//! The proxy's ordinary path never comes here: only answers that stream register.
//! With no stream open, the watcher does nothing but read one counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;

use super::{EndReason, StoreKey};

/// How often the sessions with open streams are looked at (see the module docs).
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Why a session's streams were ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The session ended in this process, for this reason.
    Here(EndReason),
    /// The session is gone from the store: ended by another instance or process.
    Elsewhere,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Here(reason) => reason.as_str(),
            Self::Elsewhere => "ended_elsewhere",
        }
    }
}

/// The registry (one per `Sessions`).
pub struct Streams {
    open: AtomicUsize,
    by_session: DashMap<StoreKey, Entry>,
    /// Set when the process shuts down: relayed WebSockets close (1001).
    closing: watch::Sender<bool>,
    /// Relayed sockets open now, with or without a session ([`Streams::relay`]).
    relays: Arc<AtomicUsize>,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            open: AtomicUsize::new(0),
            by_session: DashMap::new(),
            closing: watch::channel(false).0,
            relays: Arc::default(),
        }
    }
}

/// One relayed socket, counted until it drops; [`Relaying::closing`] resolves at shutdown.
pub struct Relaying {
    closing: watch::Receiver<bool>,
    relays: Arc<AtomicUsize>,
}

impl Relaying {
    /// Resolves when the process begins to shut down.
    pub async fn closing(&mut self) {
        let _ = self.closing.wait_for(|c| *c).await;
    }
}

impl Drop for Relaying {
    fn drop(&mut self) {
        self.relays.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Entry {
    ended: watch::Sender<Option<Ended>>,
    /// Set by [`Streams::ending`] while this process ends the session: what the
    /// streams are told if the watcher finds the session gone before the end is
    /// through (it is this process's logout, not one from elsewhere).
    ending: Option<EndReason>,
    /// Open streams of this session, by route label.
    per_route: Vec<(&'static str, u32)>,
}

/// A route's cap on open streams per session was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyStreams;

impl Streams {
    /// Registers a stream of `key` on `route`, unless the session already has `cap`
    /// open there. The stream stays registered until the guard drops.
    pub fn open(
        self: &Arc<Self>,
        key: StoreKey,
        route: &'static str,
        cap: Option<u32>,
    ) -> Result<StreamGuard, TooManyStreams> {
        let mut entry = self.by_session.entry(key).or_insert_with(|| Entry {
            ended: watch::channel(None).0,
            ending: None,
            per_route: Vec::new(),
        });
        let slot = match entry.per_route.iter().position(|(r, _)| *r == route) {
            Some(i) => i,
            None => {
                entry.per_route.push((route, 0));
                entry.per_route.len() - 1
            }
        };
        if cap.is_some_and(|cap| entry.per_route[slot].1 >= cap) {
            return Err(TooManyStreams);
        }
        entry.per_route[slot].1 += 1;
        let ended = entry.ended.subscribe();
        drop(entry);
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(StreamGuard {
            streams: self.clone(),
            key,
            route,
            ended,
        })
    }

    /// Ends every stream of `key` (a no-op when it has none).
    pub fn end(&self, key: &StoreKey, why: Ended) {
        if self.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(entry) = self.by_session.get(key) {
            let why = match (why, entry.ending) {
                (Ended::Elsewhere, Some(reason)) => Ended::Here(reason),
                _ => why,
            };
            entry.ended.send_replace(Some(why));
        }
    }

    /// This process is ending `key`'s session for `reason` (before the store removes
    /// it): until [`Streams::end`] or [`Streams::not_ending`], a watcher that finds the
    /// session gone reports `reason`, not [`Ended::Elsewhere`].
    pub fn ending(&self, key: &StoreKey, reason: EndReason) {
        if self.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(mut entry) = self.by_session.get_mut(key) {
            entry.ending = Some(reason);
        }
    }

    /// The end [`Streams::ending`] announced did not happen (the store failed).
    pub fn not_ending(&self, key: &StoreKey) {
        if let Some(mut entry) = self.by_session.get_mut(key) {
            entry.ending = None;
        }
    }

    /// Counts a relayed socket (any route) for [`Streams::close_sockets`].
    pub fn relay(&self) -> Relaying {
        self.relays.fetch_add(1, Ordering::Relaxed);
        Relaying {
            closing: self.closing.subscribe(),
            relays: self.relays.clone(),
        }
    }

    /// Shutdown: tells every relayed socket to close, and waits up to `grace` for them.
    pub async fn close_sockets(&self, grace: Duration) {
        self.closing.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.relays.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Streams open now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The sessions with open streams, not yet told to end.
    pub fn sessions(&self) -> Vec<StoreKey> {
        if self.count() == 0 {
            return Vec::new();
        }
        self.by_session
            .iter()
            .filter(|e| e.ended.borrow().is_none())
            .map(|e| *e.key())
            .collect()
    }
}

/// One open stream's place in the registry (see [`Streams::open`]).
pub struct StreamGuard {
    streams: Arc<Streams>,
    key: StoreKey,
    route: &'static str,
    ended: watch::Receiver<Option<Ended>>,
}

impl StreamGuard {
    /// Resolves when the stream's session ends.
    pub async fn ended(&mut self) -> Ended {
        loop {
            if let Some(why) = *self.ended.borrow_and_update() {
                return why;
            }
            if self.ended.changed().await.is_err() {
                // The entry lives as long as this guard: unreachable, but never spin.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The session's key as logs show it.
    pub fn session_label(&self) -> String {
        self.key.log_label()
    }

    /// Whether the session has already ended.
    pub fn has_ended(&self) -> Option<Ended> {
        *self.ended.borrow()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.streams.open.fetch_sub(1, Ordering::Relaxed);
        let route = self.route;
        self.streams
            .by_session
            .remove_if_mut(&self.key, |_, entry| {
                if let Some(slot) = entry.per_route.iter_mut().find(|(r, _)| *r == route) {
                    slot.1 = slot.1.saturating_sub(1);
                }
                entry.per_route.retain(|(_, n)| *n > 0);
                entry.per_route.is_empty()
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> StoreKey {
        StoreKey::from_bytes([b; 32])
    }

    #[tokio::test]
    async fn a_session_end_reaches_its_streams_only() {
        let streams = Arc::new(Streams::default());
        let mut a = streams.open(key(1), "/ws", None).unwrap();
        let b = streams.open(key(2), "/ws", None).unwrap();
        streams.end(&key(1), Ended::Here(EndReason::Logout));
        assert_eq!(a.ended().await, Ended::Here(EndReason::Logout));
        assert_eq!(b.has_ended(), None);
        assert!(streams.sessions() == vec![key(2)]);
        drop((a, b));
        assert_eq!(streams.count(), 0);
        assert!(streams.by_session.is_empty());
    }

    /// The watcher finding a session gone while this process is ending it (between
    /// the store's removal and the streams being told) reports this process's reason;
    /// an end announced and then not done (the store failed) leaves it "elsewhere".
    #[tokio::test]
    async fn an_end_in_progress_here_is_not_reported_as_one_from_elsewhere() {
        let streams = Arc::new(Streams::default());
        let mut a = streams.open(key(1), "/ws", None).unwrap();
        let mut b = streams.open(key(2), "/ws", None).unwrap();
        streams.ending(&key(1), EndReason::Logout);
        streams.end(&key(1), Ended::Elsewhere);
        assert_eq!(a.ended().await, Ended::Here(EndReason::Logout));
        streams.ending(&key(2), EndReason::Logout);
        streams.not_ending(&key(2));
        streams.end(&key(2), Ended::Elsewhere);
        assert_eq!(b.ended().await, Ended::Elsewhere);
    }

    #[test]
    fn the_cap_counts_a_sessions_streams_per_route() {
        let streams = Arc::new(Streams::default());
        let one = streams.open(key(1), "/ws", Some(2)).unwrap();
        let _two = streams.open(key(1), "/ws", Some(2)).unwrap();
        assert_eq!(
            streams.open(key(1), "/ws", Some(2)).err(),
            Some(TooManyStreams)
        );
        let _other_route = streams.open(key(1), "/live", Some(2)).unwrap();
        let _other_session = streams.open(key(2), "/ws", Some(2)).unwrap();
        drop(one);
        let _again = streams.open(key(1), "/ws", Some(2)).unwrap();
        assert_eq!(streams.count(), 4);
    }
}
