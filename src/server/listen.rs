//! Listeners, worker runtimes and graceful shutdown.
//!
//! **Shutdown** (SIGTERM or SIGINT): readiness turns 503 (`draining`), every
//! worker closes its listening socket at once (new connections are refused), open
//! connections finish the request they are serving — streamed bodies included —
//! and are then closed; whatever is still running after `server.drain_timeout` is
//! cut. Then the admin listener stops and the session store is closed (its last
//! reference is dropped: SQLite checkpoints its WAL, Redis connections close).
//!
//! **SIGHUP** re-reads the TLS certificate and key (see `tls`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;

use axum::http::HeaderValue;
use axum::http::header::CONNECTION;

use super::app;
use super::connection::{AcceptBackoff, ClientLimits, Guarded, Shared, Timeouts, Tracked};
use super::tls::TlsTerminator;
use crate::config::Config;
use crate::gateway::{AppState, Gateway};
use crate::security::guard::AmbiguousFraming;

/// How often expired sessions and pending logins are swept from the store.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A running gateway: worker threads plus the control runtime.
pub struct Server {
    pub addr: SocketAddr,
    /// The admin listener's address, when `server.admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    control: tokio::runtime::Runtime,
    tls: Option<Arc<TlsTerminator>>,
    drain: Duration,
    gw: Arc<Gateway>,
}

impl Server {
    /// Builds the gateway and starts serving. Returns once the listeners are bound.
    pub fn start(config: Config) -> Result<Self, String> {
        let control = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-control")
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let workers = config
            .server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let listen = config.server.listen;
        let admin_listen = config.server.admin_listen;
        let drain = config.server.drain_timeout;
        let tls = config
            .server
            .tls
            .as_ref()
            .map(TlsTerminator::load)
            .transpose()?;
        let gw = Arc::new(control.block_on(Gateway::new(config))?);

        // Provider metadata and keys are loaded now if possible; if the provider is
        // down, Portcullis still starts (sessions keep working) and retries on use.
        for frontend in gw.frontends.iter() {
            let fe = frontend.name.as_str();
            match control.block_on(frontend.oidc.load()) {
                Ok(meta) => {
                    frontend.oidc.check_requirements(&meta)?;
                    tracing::info!(issuer = %meta.issuer, frontend = fe, "provider metadata and keys loaded")
                }
                Err(e) if frontend.oidc.requires_provider_at_start() => {
                    return Err(format!(
                        "oidc.par = \"always\" needs the provider's metadata at start: {e}"
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, frontend = fe, "provider not reachable yet; retrying on first use")
                }
            }
        }

        let first = bind_unserved(listen, "server.listen")?;
        let addr = first.local_addr().map_err(|e| e.to_string())?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(bind(addr, "server.listen")?);
        }
        let (shutdown, rx) = watch::channel(false);

        let admin_addr = match admin_listen {
            Some(admin) => {
                let listener = bind_unserved(admin, "server.admin_listen")?;
                let admin_addr = listener.local_addr().map_err(|e| e.to_string())?;
                let listener = {
                    let _guard = control.enter();
                    tokio::net::TcpListener::from_std(listener)
                        .map_err(|e| format!("server.admin_listen {admin}: {e}"))?
                };
                control.spawn(super::admin::serve(listener, gw.clone(), rx.clone()));
                tracing::info!(addr = %admin_addr, "admin listener (/metrics, /healthz, /readyz)");
                Some(admin_addr)
            }
            None => None,
        };

        let descriptors = super::connection::raise_descriptor_limit();
        let clients = ClientLimits::new(&gw.config);
        let mut handles = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let gw = gw.clone();
            let rx = rx.clone();
            let tls = tls.clone();
            let clients = clients.clone();
            let handle = std::thread::Builder::new()
                .name(format!("portcullis-worker-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("worker runtime");
                    rt.block_on(worker(listener, AppState::new(gw), rx, drain, tls, clients));
                })
                .map_err(|e| format!("worker thread: {e}"))?;
            handles.push(handle);
        }
        let watched = gw.clone();
        control.spawn(async move { watched.sessions.watch_streams().await });
        control.spawn(sweeper(gw.clone()));
        tracing::info!(%addr, workers, tls = tls.is_some(), descriptor_limit = descriptors, "listening");
        Ok(Self {
            addr,
            admin_addr,
            shutdown,
            workers: handles,
            control,
            tls,
            drain,
            gw,
        })
    }

    /// Waits for SIGTERM or SIGINT (reloading TLS on SIGHUP meanwhile), then drains
    /// and stops.
    pub fn run_until_signal(self) {
        self.control.block_on(wait_for_shutdown(self.tls.clone()));
        self.stop();
    }

    /// Re-reads the TLS certificate and key now (what SIGHUP does).
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Err("server.tls is not configured".into()),
        }
    }

    /// Stops accepting, drains in-flight requests (at most `server.drain_timeout`),
    /// then stops the admin listener and closes the store.
    pub fn stop(self) {
        let started = Instant::now();
        tracing::info!(
            drain_timeout_ms = self.drain.as_millis() as u64,
            "shutting down: no new connections, draining in-flight requests"
        );
        self.gw.begin_draining();
        let _ = self.shutdown.send(true);
        for w in self.workers {
            let _ = w.join();
        }
        tracing::info!(
            drained_ms = started.elapsed().as_millis() as u64,
            "in-flight requests drained"
        );
        // Dropping the control runtime ends the admin listener and the sweeper, and
        // with them the last references to the gateway: the store closes here.
        self.control.shutdown_timeout(Duration::from_secs(5));
        tracing::info!(
            total_ms = started.elapsed().as_millis() as u64,
            "stopped; session store closed"
        );
    }
}

/// Runs the gateway until a signal.
pub fn serve(config: Config) -> Result<(), String> {
    Server::start(config)?.run_until_signal();
    Ok(())
}

/// Binds the first socket of an address, refusing one another process already
/// serves: `SO_REUSEPORT` would let a second `portcullis serve` start silently and
/// take half the traffic. A plain socket (no `SO_REUSEPORT`) bound first fails with
/// `EADDRINUSE` while anyone listens there; `SO_REUSEADDR` on it lets it pass over
/// connections left in `TIME_WAIT` by a process that has stopped. It is closed at
/// once; a process that starts in the moment between the two binds is not detected.
fn bind_unserved(addr: SocketAddr, key: &str) -> Result<std::net::TcpListener, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| format!("{key} {addr}: {e}"))?;
        probe.set_reuse_address(true).map_err(|e| e.to_string())?;
        match probe.bind(&addr.into()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(format!(
                    "{key} {addr}: address already in use (another process serves it): \
                     stop that process (`ss -ltnp 'sport = :{port}'` names it) or set another {key}",
                    port = addr.port()
                ));
            }
            Err(e) => return Err(format!("{key} {addr}: {e}")),
            Ok(()) => drop(probe),
        }
    }
    bind(addr, key)
}

fn bind(addr: SocketAddr, key: &str) -> Result<std::net::TcpListener, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("{key} {addr}: {e}"))?;
    socket.set_reuse_address(true).map_err(|e| e.to_string())?;
    socket.set_reuse_port(true).map_err(|e| e.to_string())?;
    socket.set_tcp_nodelay(true).map_err(|e| e.to_string())?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    socket
        .bind(&addr.into())
        .map_err(|e| format!("{key} {addr}: {e}"))?;
    socket
        .listen(4096)
        .map_err(|e| format!("{key} {addr}: {e}"))?;
    Ok(socket.into())
}

async fn worker(
    listener: std::net::TcpListener,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    tls: Option<Arc<TlsTerminator>>,
    clients: Arc<ClientLimits>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let limits = state.gw.config.security.clone();
    let timeouts = Timeouts::new(&state.gw.config);
    let gw = state.gw.clone();
    let app = app(state);
    let graceful = GracefulShutdown::new();
    // Request limits: an oversized head is refused (431) before any handler runs.
    // The header, first-request, idle and write timeouts are the connection's
    // (`connection::Guarded`), so hyper's own header timer is off.
    // With TLS, ALPN picks HTTP/2 or HTTP/1.1; the same limits apply to both.
    let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    // PINGs find dead peers under open streams; an idle HTTP/2 connection (no
    // stream) is closed by `server.idle_timeout` whatever it pings.
    auto.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(timeouts.idle))
        .keep_alive_timeout(timeouts.write)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    // Plaintext is HTTP/1.1 only (no preface sniffing), with upgrades (WebSockets).
    let http = auto.clone().http1_only();
    let mut backoff = AcceptBackoff::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => {
                        backoff.succeeded();
                        a
                    }
                    Err(e) => {
                        backoff.failed(&e, &clients).await;
                        continue;
                    }
                };
                let Some(slot) = clients.admit(peer.ip()) else {
                    tracing::debug!(%peer, "connection refused: per-client connection limit");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = Shared::new();
                let max_head = limits.max_header_bytes;
                if let Some(tls) = &tls {
                    let acceptor = tls.acceptor();
                    let watcher = graceful.watcher();
                    let auto = auto.clone();
                    let app = app.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        let stream = match tokio::time::timeout(timeouts.first_request, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        let service = service(app, peer, shared.clone(), http2);
                        let io = Guarded::new(stream, shared, timeouts, !http2, max_head);
                        let connection = watcher.watch(auto.serve_connection_with_upgrades(TokioIo::new(io), service));
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                    });
                    continue;
                }
                let service = service(app.clone(), peer, shared.clone(), false);
                let io = Guarded::new(stream, shared, timeouts, true, max_head);
                let watcher = graceful.watcher();
                let http = http.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let connection = watcher.watch(http.serve_connection_with_upgrades(TokioIo::new(io), service));
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    // New connections are refused from here on.
    drop(listener);
    // Relayed WebSockets get a close frame (1001) while this runtime still runs them.
    gw.sessions
        .streams()
        .close_sockets(Duration::from_secs(2))
        .await;
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => tracing::warn!("drain timeout: closing remaining connections"),
    }
}

/// The service of one connection: each request is counted in flight until its
/// answer is done (the connection's idle timer), and is served as from `peer`.
fn service(
    app: super::App,
    peer: SocketAddr,
    shared: Arc<Shared>,
    http2: bool,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<Tracked<Body>>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<
        Output = Result<hyper::Response<Tracked<Body>>, std::convert::Infallible>,
    > + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let flight = shared.begin();
        if flight.ambiguous() {
            request.extensions_mut().insert(AmbiguousFraming);
        }
        // The peer is given, not put in the request's extensions: the first extension
        // costs a map of them (three allocations) per request. The request's future
        // (~5 KB, the proxy's included) is built in its box: hyper moves the future it
        // is given into its connection's state, and a box moves as a pointer.
        let answer = crate::primitives::pin_in_place(|| {
            app.clone().serve(request.map(Body::new), Some(peer))
        });
        async move {
            let mut response = answer.await;
            if response.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS
                && let Some(life) = response
                    .extensions_mut()
                    .remove::<crate::proxy::websocket::RelayLife>()
            {
                // The relayed socket keeps the connection busy until it is over.
                let held = flight.hold();
                tokio::spawn(async move {
                    life.ended().await;
                    drop(held);
                });
            }
            if flight.closes() {
                // After a chunked request the framing inspector no longer follows
                // this connection: nothing more is read from it.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| Tracked::new(body, flight, http2)))
        }
    })
}

async fn sweeper(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        match gw.sessions.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired sessions swept"),
            Err(e) => tracing::warn!(error = %e, "session sweep failed"),
        }
    }
}

/// Returns on SIGTERM or SIGINT; reloads the TLS certificate on SIGHUP.
async fn wait_for_shutdown(tls: Option<Arc<TlsTerminator>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hup.recv() => match &tls {
                Some(tls) => match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the previous certificate"),
                },
                None => tracing::info!("SIGHUP ignored: no TLS configured"),
            },
        }
    }
}
