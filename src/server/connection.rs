//! What one browser-facing connection may cost, and for how long.
//!
//! A connection holds a file descriptor (and, while it is served, maybe an open
//! file and an upstream connection), so a client that holds many without using them
//! can exhaust the process. Every connection on `server.listen`, plaintext or TLS,
//! HTTP/1.1 or HTTP/2, is therefore bounded:
//!
//! - **first request**: from accept (the TLS handshake included) to the first
//!   request's complete headers, at most `server.first_request_timeout`;
//! - **idle**: with no request in progress (HTTP/1.1 keep-alive, HTTP/2 with no open
//!   stream) at most `server.idle_timeout`. HTTP/2 PINGs or SETTINGS from the client
//!   do not count as activity;
//! - **headers**: once the first byte of a request head has arrived, the head must be
//!   complete within `security.header_read_timeout` (slowloris);
//! - **writes**: an answer the client stops reading (TCP zero window; on HTTP/2, no
//!   stream taking data because the client sends no WINDOW_UPDATE) may wait at most
//!   `server.write_timeout` without progress;
//! - **per client**: at most `server.max_connections_per_client` open connections
//!   per client address (IPv6: per /64); more are closed at accept. Peers in
//!   `server.trusted_proxies` are exempt (every client of a load balancer shares its
//!   address).
//!
//! A timeout closes the connection (an I/O error `TimedOut` from [`Guarded`], which
//! ends hyper's connection): its socket, the file it was sending and its upstream
//! connection are freed. The timers live in [`Guarded`], the connection's I/O:
//! two `Sleep`s allocated once per connection, re-armed in place, nothing per write.
//!
//! **Framing** (HTTP/1.1): [`Guarded`] also reads every request head as it passes
//! (the same parser as hyper, `httparse`), because hyper resolves a request with
//! both `Content-Length` and `Transfer-Encoding` itself (it drops the length) and
//! the handlers can no longer see that the framing was ambiguous (a head none of
//! whose lines starts with either name is only measured, to its first empty line, not
//! parsed: see [`unframed_head_len`]). Such a request is
//! marked ([`AmbiguousFraming`](crate::security::guard::AmbiguousFraming)) and refused by the guard, and the
//! connection is closed. The inspector follows `Content-Length` bodies; after a
//! chunked request it stops, and that request's answer closes the connection, so
//! no later head on it goes unread.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use http_body::{Body, Frame, SizeHint};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::Config;

/// The connection timeouts (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub first_request: Duration,
    pub idle: Duration,
    pub header_read: Duration,
    pub write: Duration,
}

impl Timeouts {
    pub fn new(config: &Config) -> Self {
        Self {
            first_request: config.server.first_request_timeout,
            idle: config.server.idle_timeout,
            header_read: config.security.header_read_timeout,
            write: config.server.write_timeout,
        }
    }

    /// How often a busy connection's state is looked at again.
    fn recheck(&self) -> Duration {
        self.idle.min(self.write)
    }
}

/// What a connection's I/O and its requests share.
pub struct Shared {
    /// The accept; the `*_ms` fields count from it.
    epoch: Instant,
    /// Requests whose head was complete (their service was called).
    started: AtomicU64,
    /// Requests being served (until their answer's body is done or dropped).
    in_flight: AtomicU32,
    /// Requests finished; a change tells the I/O a new idle period began.
    finished: AtomicU64,
    idle_since_ms: AtomicU64,
    /// HTTP/2: answers that produced a frame hyper has not taken yet (no window).
    stalled: AtomicU32,
    /// The last time an answer's body was polled or produced a frame.
    progress_ms: AtomicU64,
    /// 1-based number of the first request head with ambiguous framing, or 0.
    ambiguous: AtomicU64,
    /// From this request on (1-based), answers close the connection.
    close_from: AtomicU64,
}

impl Shared {
    /// State for a connection accepted now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            started: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            finished: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            stalled: AtomicU32::new(0),
            progress_ms: AtomicU64::new(0),
            ambiguous: AtomicU64::new(0),
            close_from: AtomicU64::new(u64::MAX),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: &AtomicU64) -> Instant {
        self.epoch + Duration::from_millis(ms.load(Relaxed))
    }

    /// A request's head is complete: it is in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        let number = self.started.fetch_add(1, Relaxed) + 1;
        self.in_flight.fetch_add(1, Relaxed);
        InFlight {
            shared: self.clone(),
            number,
        }
    }
}

/// One request being served (see [`Shared::begin`]).
pub struct InFlight {
    shared: Arc<Shared>,
    number: u64,
}

impl InFlight {
    /// Its head had both `Content-Length` and `Transfer-Encoding` (HTTP/1.1).
    pub fn ambiguous(&self) -> bool {
        self.shared.ambiguous.load(Relaxed) == self.number
    }

    /// One more hold on the connection as busy (an upgraded connection, for as long
    /// as it is relayed): the connection's HTTP timeouts wait for both to drop.
    pub fn hold(&self) -> InFlight {
        self.shared.in_flight.fetch_add(1, Relaxed);
        InFlight {
            shared: self.shared.clone(),
            number: self.number,
        }
    }

    /// Its answer must close the connection.
    pub fn closes(&self) -> bool {
        self.shared.close_from.load(Relaxed) <= self.number
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.shared;
        s.idle_since_ms.store(s.now_ms(), Relaxed);
        s.finished.fetch_add(1, Relaxed);
        s.in_flight.fetch_sub(1, Relaxed);
    }
}

/// An answer's body that keeps its request in flight until it is done, and on
/// HTTP/2 tells the connection when it waits for the client to take data.
pub struct Tracked<B> {
    body: B,
    flight: InFlight,
    watch_stall: bool,
    stalled: bool,
}

impl<B> Tracked<B> {
    /// `http2`: watch for answers the client takes no data of (flow control).
    pub fn new(body: B, flight: InFlight, http2: bool) -> Self {
        Self {
            body,
            flight,
            watch_stall: http2,
            stalled: false,
        }
    }

    fn unstall(&mut self) {
        if self.stalled {
            self.stalled = false;
            let s = &self.flight.shared;
            s.progress_ms.store(s.now_ms(), Relaxed);
            s.stalled.fetch_sub(1, Relaxed);
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        this.unstall();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if this.watch_stall && matches!(frame, Poll::Ready(Some(Ok(_)))) {
            // hyper polls again once the client's window has room for more.
            this.stalled = true;
            let s = &this.flight.shared;
            if s.stalled.fetch_add(1, Relaxed) == 0 {
                s.progress_ms.store(s.now_ms(), Relaxed);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.unstall();
    }
}

/// A connection's I/O with its timeouts and the HTTP/1.1 framing inspector.
pub struct Guarded<S> {
    io: S,
    shared: Arc<Shared>,
    timeouts: Timeouts,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    write_armed: bool,
    /// HTTP/1.1: when the current request head began to arrive.
    head_started: Option<Instant>,
    seen_finished: u64,
    http1: bool,
    inspector: Option<Inspector>,
}

impl<S> Guarded<S> {
    /// `http1`: the connection speaks HTTP/1.1 (heads are timed and inspected);
    /// `max_head`: `security.max_header_bytes`.
    pub fn new(
        io: S,
        shared: Arc<Shared>,
        timeouts: Timeouts,
        http1: bool,
        max_head: usize,
    ) -> Self {
        let first = shared.epoch + timeouts.first_request;
        Self {
            io,
            shared,
            timeouts,
            read_timer: crate::primitives::pin_in_place(|| tokio::time::sleep_until(first)),
            write_timer: crate::primitives::pin_in_place(|| tokio::time::sleep_until(first)),
            write_armed: false,
            head_started: None,
            seen_finished: 0,
            http1,
            inspector: http1.then(|| Inspector::new(max_head)),
        }
    }

    fn new_idle_period(&mut self) {
        let finished = self.shared.finished.load(Relaxed);
        if finished != self.seen_finished {
            self.seen_finished = finished;
            self.head_started = None;
        }
    }

    /// When the connection must have made progress, and which timeout that is.
    fn read_deadline(&mut self) -> Option<(Instant, &'static str)> {
        self.new_idle_period();
        let s = &*self.shared;
        let t = &self.timeouts;
        if s.in_flight.load(Relaxed) > 0 {
            return (s.stalled.load(Relaxed) > 0)
                .then(|| (s.at(&s.progress_ms) + t.write, "write"));
        }
        let (base, kind) = if s.started.load(Relaxed) == 0 {
            (s.epoch + t.first_request, "first_request")
        } else {
            (s.at(&s.idle_since_ms) + t.idle, "idle")
        };
        Some(match self.head_started {
            Some(began) if kind == "idle" || began + t.header_read < base => {
                (began + t.header_read, "header_read")
            }
            _ => (base, kind),
        })
    }

    fn on_read(&mut self, data: &[u8]) {
        if self.http1 {
            self.new_idle_period();
            if self.head_started.is_none() && self.shared.in_flight.load(Relaxed) == 0 {
                let now = Instant::now();
                self.head_started = Some(now);
                let limit = now + self.timeouts.header_read;
                if limit < self.read_timer.deadline() {
                    self.read_timer.as_mut().reset(limit);
                }
            }
        }
        if let Some(inspector) = &mut self.inspector {
            inspector.feed(data, &self.shared);
        }
    }

    /// The read side is waiting for the client: has it waited too long?
    fn poll_read_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.read_timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            match self.read_deadline() {
                Some((at, kind)) if at <= now => return Poll::Ready(Err(timed_out(kind))),
                Some((at, _)) => self.read_timer.as_mut().reset(at),
                None => self
                    .read_timer
                    .as_mut()
                    .reset(now + self.timeouts.recheck()),
            }
        }
    }

    /// A write could not proceed: start (or check) the write-progress timer.
    fn poll_write_timer<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.write_armed {
            self.write_armed = true;
            let limit = Instant::now() + self.timeouts.write;
            self.write_timer.as_mut().reset(limit);
        }
        match self.write_timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(timed_out("write"))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.poll_write_timer(cx),
            ready => {
                self.write_armed = false;
                ready
            }
        }
    }
}

fn timed_out(kind: &'static str) -> io::Error {
    crate::telemetry::metrics()
        .connection_timeouts
        .get_or_create(&[("kind", kind)])
        .inc();
    io::Error::new(io::ErrorKind::TimedOut, format!("{kind} timeout"))
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => this.poll_read_timer(cx),
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    this.on_read(new);
                }
                Poll::Ready(Ok(()))
            }
            error => error,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.wrote(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_shutdown(cx);
        this.wrote(result, cx)
    }
}

/// Where the inspector is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// At (or inside) a request head.
    Head,
    /// Inside a `Content-Length` body: bytes left.
    Body(u64),
    /// Not following any more (a chunked body, or a head hyper refuses).
    Off,
}

/// Reads HTTP/1.1 request heads as they pass, to find ambiguous framing that hyper
/// resolves silently (see the module docs).
struct Inspector {
    position: Position,
    /// A head that arrived in pieces; reused.
    partial: Vec<u8>,
    max_head: usize,
    heads: u64,
}

/// More than hyper accepts (100): a head with more is refused by hyper anyway.
const MAX_HEADERS: usize = 128;

enum Head {
    Complete(usize),
    Partial,
    Refused,
}

impl Inspector {
    fn new(max_head: usize) -> Self {
        Self {
            position: Position::Head,
            partial: Vec::new(),
            max_head,
            heads: 0,
        }
    }

    fn feed(&mut self, mut data: &[u8], shared: &Shared) {
        while !data.is_empty() {
            match self.position {
                Position::Off => return,
                Position::Body(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    data = &data[take..];
                    let left = left - take as u64;
                    self.position = if left == 0 {
                        Position::Head
                    } else {
                        Position::Body(left)
                    };
                }
                Position::Head if self.partial.is_empty() => match self.head(data, shared) {
                    Head::Complete(n) => data = &data[n..],
                    Head::Partial => {
                        self.partial.extend_from_slice(data);
                        return;
                    }
                    Head::Refused => self.position = Position::Off,
                },
                Position::Head => {
                    let before = self.partial.len();
                    self.partial.extend_from_slice(data);
                    let partial = std::mem::take(&mut self.partial);
                    match self.head(&partial, shared) {
                        Head::Complete(n) => {
                            data = &data[n - before..];
                            self.partial = partial;
                            self.partial.clear();
                        }
                        Head::Partial if partial.len() <= self.max_head => {
                            self.partial = partial;
                            return;
                        }
                        // Too large: hyper answers 431 and closes.
                        Head::Partial | Head::Refused => {
                            self.partial = partial;
                            self.partial.clear();
                            self.position = Position::Off;
                        }
                    }
                }
            }
        }
    }

    /// Parses a request head at the start of `bytes`; on success sets what follows it.
    fn head(&mut self, bytes: &[u8], shared: &Shared) -> Head {
        // The usual head names neither framing header: it has no body, and the next
        // head follows it. Found without a parse (~1,000 instructions).
        if let Some(n) = unframed_head_len(bytes) {
            self.heads += 1;
            self.position = Position::Head;
            return Head::Complete(n);
        }
        // Uninitialised: no 4 KiB to clear for every head.
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let n = match request.parse_with_uninit_headers(bytes, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Head::Partial,
            Err(_) => return Head::Refused,
        };
        self.heads += 1;
        let mut length: Option<Option<u64>> = None;
        let mut chunked = false;
        for h in request.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let value = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
                length = Some(match length {
                    None => value,
                    Some(prev) if prev == value => value,
                    Some(_) => None,
                });
            }
        }
        match (chunked, length) {
            (true, Some(_)) => {
                let _ = shared
                    .ambiguous
                    .compare_exchange(0, self.heads, Relaxed, Relaxed);
                self.position = Position::Off;
            }
            (true, None) => {
                shared.close_from.fetch_min(self.heads, Relaxed);
                self.position = Position::Off;
            }
            (false, Some(Some(0)) | None) => self.position = Position::Head,
            (false, Some(Some(len))) => self.position = Position::Body(len),
            // Unparsable or conflicting lengths: hyper refuses the request.
            (false, Some(None)) => self.position = Position::Off,
        }
        Head::Complete(n)
    }
}

/// The length of the complete request head at the start of `bytes` if no line of it
/// starts with `Content-Length` or `Transfer-Encoding` (any casing); `None` if one may
/// (or the head is not complete yet), for [`Inspector::head`] to parse.
///
/// A head ends at its first empty line (`\r\n` or a bare `\n`, as httparse reads
/// them), after the empty lines httparse skips before the request line. A header's
/// name starts its line, so a head with either header has a line that starts with its
/// name. A head httparse would refuse (hyper answers 400 and closes the connection) may
/// be called complete here: nothing after it on the connection is served.
fn unframed_head_len(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    loop {
        match bytes.get(start..) {
            Some([b'\n', ..]) => start += 1,
            Some([b'\r', b'\n', ..]) => start += 2,
            _ => break,
        }
    }
    let starts = |line: &[u8], name: &[u8]| {
        line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
    };
    let first = start;
    for end in memchr::memchr_iter(b'\n', &bytes[first..]) {
        let end = first + end;
        let line = &bytes[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Some(end + 1);
        }
        if starts(line, b"content-length") || starts(line, b"transfer-encoding") {
            return None;
        }
        start = end + 1;
    }
    None
}

/// The per-client connection cap (`server.max_connections_per_client`).
pub struct ClientLimits {
    max: u32,
    trusted: Vec<IpNet>,
    open: DashMap<ClientKey, u32>,
    /// Woken whenever a connection ends: an accept loop out of descriptors waits for
    /// it instead of retrying on a timer (see [`AcceptBackoff::failed`]).
    ended: tokio::sync::Notify,
}

/// A client address as counted: IPv4 whole, IPv6 by its /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.into()),
                None => Self::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl ClientLimits {
    pub fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            max: config.server.max_connections_per_client,
            trusted: config.server.trusted_proxies.clone(),
            open: DashMap::new(),
            ended: tokio::sync::Notify::new(),
        })
    }

    /// Counts a new connection from `peer`, or `None` when that client holds the
    /// most it may (the caller closes the connection).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let metrics = crate::telemetry::metrics();
        if self.max == 0 || self.trusted.iter().any(|n| n.contains(&peer)) {
            metrics.connections_open.inc();
            return Some(Slot {
                limits: self.clone(),
                counted: None,
            });
        }
        let key = ClientKey::of(peer);
        {
            let mut open = self.open.entry(key).or_insert(0);
            if *open >= self.max {
                drop(open);
                metrics
                    .connections_refused
                    .get_or_create(&[("reason", "per_client_limit")])
                    .inc();
                return None;
            }
            *open += 1;
        }
        metrics.connections_open.inc();
        Some(Slot {
            limits: self.clone(),
            counted: Some(key),
        })
    }
}

/// One open connection, counted until dropped.
pub struct Slot {
    limits: Arc<ClientLimits>,
    /// The client it counts against (`None`: exempt or no cap).
    counted: Option<ClientKey>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::telemetry::metrics().connections_open.dec();
        if let Some(key) = self.counted.take() {
            self.limits.open.remove_if_mut(&key, |_, open| {
                *open -= 1;
                *open == 0
            });
        }
        self.limits.ended.notify_waiters();
    }
}

/// Accept errors (out of file descriptors and the like): back off, 10 ms doubling
/// to 500 ms while they last, and log at most once per 5 s.
pub struct AcceptBackoff {
    delay: Duration,
    logged: Option<Instant>,
    suppressed: u64,
}

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Out of descriptors: the longest wait for a connection to end before trying again.
const OUT_OF_DESCRIPTORS_WAIT: Duration = Duration::from_secs(2);

impl AcceptBackoff {
    pub fn new() -> Self {
        Self {
            delay: BACKOFF_MIN,
            logged: None,
            suppressed: 0,
        }
    }

    pub fn succeeded(&mut self) {
        self.delay = BACKOFF_MIN;
    }

    /// Backs off after a failed accept. Out of descriptors, the loop waits until one
    /// of this process's connections ends (or the longest back-off passes) rather
    /// than retrying on a timer: a retry at a random moment could take the descriptor
    /// the admin listener just freed for a health check (its spare).
    pub async fn failed(&mut self, error: &io::Error, clients: &ClientLimits) {
        crate::telemetry::metrics().accept_errors.inc();
        let now = Instant::now();
        if self.logged.is_none_or(|at| now - at >= LOG_EVERY) {
            tracing::warn!(
                error = %error,
                suppressed = self.suppressed,
                out_of_descriptors = out_of_descriptors(error),
                "accept failed; backing off"
            );
            self.logged = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        if out_of_descriptors(error) {
            let _ = tokio::time::timeout(OUT_OF_DESCRIPTORS_WAIT, clients.ended.notified()).await;
        } else {
            tokio::time::sleep(self.delay).await;
        }
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
    }
}

/// Raises the soft descriptor limit to the hard one, as Go's runtime does: the usual
/// soft default (1024) is far below what a gateway needs, and the hard limit is what
/// the operator allowed (`LimitNOFILE`). Returns the soft limit now in force
/// (`None`: unlimited).
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return Some(maximum),
            Err(e) => tracing::debug!(error = %e, "could not raise the descriptor limit"),
        }
    }
    limit.current
}

/// The process (EMFILE) or the system (ENFILE) has no file descriptor left.
pub fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect(chunks: &[&[u8]]) -> (u64, u64, u64) {
        let shared = Shared::new();
        let mut inspector = Inspector::new(32 * 1024);
        for chunk in chunks {
            inspector.feed(chunk, &shared);
        }
        (
            inspector.heads,
            shared.ambiguous.load(Relaxed),
            shared.close_from.load(Relaxed),
        )
    }

    #[test]
    fn the_inspector_follows_lengths_and_finds_ambiguous_heads_in_any_split() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n";
        for split in 0..stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(inspect(&[a, b]), (3, 3, u64::MAX), "split at {split}");
        }
        // A body that looks like a head is a body.
        let (heads, ambiguous, _) = inspect(&[
            b"POST /a HTTP/1.1\r\nContent-Length: 60\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]);
        // (The body's last 5 bytes, `d\r\n\r\n`, end like a head: httparse refuses it,
        // so does hyper, which closes; the shortcut may count it, which changes nothing.)
        assert!(heads <= 2);
        assert_eq!(ambiguous, 0);
        // After a chunked request the inspector stops and that answer closes.
        assert_eq!(
            inspect(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]),
            (1, 0, 1)
        );
        // Bare LF line ends, as httparse (and hyper) accept them.
        assert_eq!(
            inspect(&[b"GET / HTTP/1.1\nHost: x\n\nPOST / HTTP/1.1\nContent-Length: 1\nTransfer-Encoding: chunked\n\n"]),
            (2, 2, u64::MAX)
        );
    }

    /// What httparse (hyper's parser) makes of `bytes`.
    #[derive(Debug)]
    enum Parsed {
        /// A complete head of this length; `true` if it has a Content-Length or
        /// Transfer-Encoding header.
        Complete(usize, bool),
        Partial,
        Refused,
    }

    fn parsed(bytes: &[u8]) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => Parsed::Complete(
                n,
                request.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("content-length")
                        || h.name.eq_ignore_ascii_case("transfer-encoding")
                }),
            ),
            Ok(httparse::Status::Partial) => Parsed::Partial,
            Err(_) => Parsed::Refused,
        }
    }

    /// The unparsed shortcut never calls a head plain that httparse reads with a framing
    /// header, nor ends it elsewhere, nor calls complete what httparse waits to read on.
    fn agrees_with_httparse(bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        match (unframed_head_len(bytes), parsed(bytes)) {
            (Some(n), Parsed::Complete(m, framing)) => {
                assert!(!framing, "{text:?}: framing header missed");
                assert_eq!(n, m, "{text:?}");
            }
            (Some(_), Parsed::Partial) => panic!("{text:?}: complete, httparse says partial"),
            // Refused by httparse (and so by hyper, which answers 400 and closes).
            (Some(_), Parsed::Refused) => {}
            // Parsed in full: right whatever it holds (a line only starting like a
            // framing header's name, `Content-Lengthy`, is parsed too).
            (None, _) => {}
        }
    }

    #[test]
    fn the_unparsed_shortcut_agrees_with_httparse_over_spellings_and_splits() {
        let framing_lines: &[&[u8]] = &[
            b"Content-Length: 5",
            b"content-length: 5",
            b"CONTENT-LENGTH:5",
            b"cOnTeNt-LeNgTh: 5",
            b"Content-Length : 5",
            b"Content-Length\t: 5",
            b"Transfer-Encoding: chunked",
            b"transfer-encoding: gzip, chunked",
            b"TRANSFER-ENCODING:chunked",
            b"Transfer-Encoding : chunked",
            b" Transfer-Encoding: chunked",
            b"\tContent-Length: 5",
            b"Content-Lengthy: 5",
            b"Transfer-Encodings: chunked",
            b"X-Content-Length: 5",
            b"X-Transfer-Encoding: chunked",
        ];
        let plain_lines: &[&[u8]] = &[
            b"Host: x",
            b"Cookie: a=b; content-length=5",
            b"X-CSRF: 1",
            b"Connection: keep-alive",
            b"Content-Type: text/plain",
            b"Te: trailers",
            b"X-Note: Transfer-Encoding: chunked",
            b"Folded: a",
            b" continued",
        ];
        let ends: &[&[u8]] = &[b"\r\n", b"\n", b"\r\r\n", b"\r"];
        let starts: &[&[u8]] = &[b"", b"\r\n", b"\n\r\n", b"\r"];
        // A small deterministic generator: heads of 0-4 header lines from both lists,
        // every line end and prefix, the head complete or cut anywhere.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..3_000 {
            let end = ends[next(ends.len())];
            let mut head = starts[next(starts.len())].to_vec();
            head.extend_from_slice(b"GET /a HTTP/1.1");
            head.extend_from_slice(end);
            for _ in 0..next(5) {
                let line = if next(3) == 0 {
                    framing_lines[next(framing_lines.len())]
                } else {
                    plain_lines[next(plain_lines.len())]
                };
                head.extend_from_slice(line);
                head.extend_from_slice(if next(8) == 0 {
                    ends[next(ends.len())]
                } else {
                    end
                });
            }
            head.extend_from_slice(end);
            head.extend_from_slice(b"GET /b HTTP/1.1\r\n\r\n");
            for cut in 0..=head.len() {
                agrees_with_httparse(&head[..cut]);
            }
        }
        // The usual heads take the shortcut.
        for head in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nCookie: s=1\r\nX-CSRF: 1\r\n\r\n"[..],
            b"\r\nGET / HTTP/1.1\nHost: x\n\n",
        ] {
            let Parsed::Complete(n, false) = parsed(head) else {
                panic!("{head:?}")
            };
            assert_eq!(unframed_head_len(head), Some(n));
        }
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            header_read: Duration::from_secs(5),
            write: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeouts_follow_the_requests_of_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let elapsed = |started: Instant| started.elapsed().as_secs();

        // Nothing sent: closed at the first-request timeout.
        let (io, _client) = tokio::io::duplex(1024);
        let mut guarded = Guarded::new(io, Shared::new(), timeouts(), true, 32768);
        let started = Instant::now();
        let e = guarded.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!((e.kind(), elapsed(started)), (io::ErrorKind::TimedOut, 10));

        // A request served, then quiet: closed at the idle timeout after its answer,
        // however long the request took.
        let (io, mut client) = tokio::io::duplex(1024);
        let shared = Shared::new();
        let mut guarded = Guarded::new(io, shared.clone(), timeouts(), true, 32768);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        guarded.read_exact(&mut [0; 18]).await.unwrap();
        let flight = shared.begin();
        tokio::time::sleep(Duration::from_secs(100)).await;
        drop(flight);
        let started = Instant::now();
        let e = guarded.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!((e.kind(), elapsed(started)), (io::ErrorKind::TimedOut, 60));

        // A head begun after the idle period began must be done in `header_read`.
        let (io, mut client) = tokio::io::duplex(1024);
        let shared = Shared::new();
        let mut guarded = Guarded::new(io, shared.clone(), timeouts(), true, 32768);
        drop(shared.begin());
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let started = Instant::now();
        guarded.read_exact(&mut [0; 16]).await.unwrap();
        let e = guarded.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!((e.kind(), elapsed(started)), (io::ErrorKind::TimedOut, 5));

        // A client that stops reading: the write fails after `write` without progress.
        let (io, mut client) = tokio::io::duplex(1024);
        let mut guarded = Guarded::new(io, Shared::new(), timeouts(), true, 32768);
        guarded.write_all(&[0; 1024]).await.unwrap();
        let started = Instant::now();
        let e = guarded.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!((e.kind(), elapsed(started)), (io::ErrorKind::TimedOut, 30));
        // Progress resets it.
        let (io, mut client2) = tokio::io::duplex(16);
        let mut guarded = Guarded::new(io, Shared::new(), timeouts(), true, 32768);
        let reader = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                client2.read_exact(&mut [0; 16]).await.unwrap();
            }
        });
        guarded.write_all(&[0; 64]).await.unwrap();
        reader.await.unwrap();
        client.read_exact(&mut [0; 1024]).await.unwrap();
    }

    #[test]
    fn clients_are_counted_by_address_and_ipv6_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            ClientKey::of(mapped),
            ClientKey::of("192.0.2.1".parse().unwrap())
        );
    }
}
