use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;
use tower::ServiceExt;

use super::{AppState, Gateway, app};
use crate::config::Config;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How often expired sessions and pending logins are swept from the store.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A running gateway: worker threads plus the control runtime.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    control: tokio::runtime::Runtime,
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
        let drain = config.server.drain_timeout;
        let gw = Arc::new(control.block_on(Gateway::new(config))?);

        // Provider metadata and keys are loaded now if possible; if the provider is
        // down, Portcullis still starts (sessions keep working) and retries on use.
        match control.block_on(gw.oidc.load()) {
            Ok(meta) => tracing::info!(issuer = %meta.issuer, "provider metadata and keys loaded"),
            Err(e) => {
                tracing::warn!(error = %e, "provider not reachable yet; retrying on first use")
            }
        }

        let first = bind(listen)?;
        let addr = first.local_addr().map_err(|e| e.to_string())?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(bind(addr)?);
        }
        let (shutdown, rx) = watch::channel(false);
        let mut handles = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let gw = gw.clone();
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("portcullis-worker-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("worker runtime");
                    rt.block_on(worker(listener, AppState::new(gw), rx, drain));
                })
                .map_err(|e| format!("worker thread: {e}"))?;
            handles.push(handle);
        }
        control.spawn(sweeper(gw));
        tracing::info!(%addr, workers, "listening");
        Ok(Self {
            addr,
            shutdown,
            workers: handles,
            control,
        })
    }

    /// Waits for SIGTERM or SIGINT, then drains and stops.
    pub fn run_until_signal(self) {
        self.control.block_on(shutdown_signal());
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        self.stop();
    }

    pub fn stop(self) {
        let _ = self.shutdown.send(true);
        for w in self.workers {
            let _ = w.join();
        }
        tracing::info!("stopped");
    }
}

/// Runs the gateway until a signal.
pub fn serve(config: Config) -> Result<(), String> {
    Server::start(config)?.run_until_signal();
    Ok(())
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("server.listen {addr}: {e}"))?;
    socket.set_reuse_address(true).map_err(|e| e.to_string())?;
    socket.set_reuse_port(true).map_err(|e| e.to_string())?;
    socket.set_tcp_nodelay(true).map_err(|e| e.to_string())?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    socket
        .bind(&addr.into())
        .map_err(|e| format!("server.listen {addr}: {e}"))?;
    socket
        .listen(4096)
        .map_err(|e| format!("server.listen {addr}: {e}"))?;
    Ok(socket.into())
}

async fn worker(
    listener: std::net::TcpListener,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let router = app(state);
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().oneshot(request.map(Body::new))
                });
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => tracing::warn!("drain timeout: closing remaining connections"),
    }
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

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
