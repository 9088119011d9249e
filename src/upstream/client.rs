//! The client to upstreams of one runtime.
//!
//! `http://` upstreams (the hot path) go over a lean HTTP/1.1 client of our own:
//! `hyper::client::conn::http1` connections, kept idle in this thread's
//! [`pool`](super::pool) and driven by a task of this runtime — no lock, no
//! hand-off to another task per request, no cross-thread wake-up. A connection goes
//! back to the pool when its answer's body ends ([`UpstreamBody`]). A request sent on
//! a pooled connection the upstream had closed before any byte of it was written is
//! retried once on a fresh connection (no spurious 502 when an upstream's keep-alive
//! timeout closes idle connections). WebSocket upgrades work on it too (the
//! connection is then the relay's, never pooled).
//!
//! `https://` (HTTP/2 or HTTP/1.1 by ALPN) and `h2c://` upstreams stay on
//! hyper-util's pooled client.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body::Body as _;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::pool::{self, Key, Settings};

/// hyper-util's client (TLS by `hyper-rustls`, or h2c).
type LegacyClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Idle connections kept per upstream: at least the expected concurrency, or
/// connections churn under load. (An HTTP/2 upstream gets one connection per
/// runtime, which multiplexes every request of that runtime.)
const POOL_IDLE_PER_HOST: usize = 1024;

/// An idle upstream connection is closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Connecting to an upstream (resolution and TCP) gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pooled client to upstreams of one runtime: `http://` in HTTP/1.1 on the lean
/// client and, verified by the configuration of [`tls`](super::tls), `https://` in
/// HTTP/2 when the upstream picks `h2` by ALPN, else HTTP/1.1 (see [`client`]).
pub struct UpstreamClient {
    legacy: LegacyClient,
    /// `http://` requests go over the lean client (not for h2c, plain TCP too).
    lean: Option<Settings>,
}

/// The client of `http://` and `https://` upstreams (`h2` and `http/1.1` offered by
/// ALPN) of one runtime, verifying `https://` upstreams with `tls`.
pub fn client(tls: &Arc<rustls::ClientConfig>) -> UpstreamClient {
    UpstreamClient {
        legacy: build_client(tls, ClientKind::Negotiated),
        lean: Some(Settings {
            max_idle: POOL_IDLE_PER_HOST,
            idle_timeout: POOL_IDLE_TIMEOUT,
        }),
    }
}

/// The other clients of a runtime, one per [`UpstreamProtocol`](super::UpstreamProtocol)
/// that needs its own pool: a pool is keyed by scheme and authority only, so an
/// `https://` route with `http2 = false` and an `h2c://` route can't share the
/// default client's.
pub struct ProtocolClients {
    /// `https://` routes with `http2 = false`: only `http/1.1` offered by ALPN.
    pub https1: UpstreamClient,
    /// `h2c://` routes: HTTP/2 with prior knowledge on plain TCP.
    pub h2c: UpstreamClient,
}

impl ProtocolClients {
    pub fn new(tls: &Arc<rustls::ClientConfig>) -> Self {
        Self {
            https1: UpstreamClient {
                legacy: build_client(tls, ClientKind::Https1),
                lean: None,
            },
            h2c: UpstreamClient {
                legacy: build_client(tls, ClientKind::H2c),
                lean: None,
            },
        }
    }
}

/// Why an upstream call failed (the log detail of a 502: see `proxy::upstream_failure`).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream could not be reached.
    #[error("client error (Connect)")]
    Connect(#[source] std::io::Error),
    /// The connection failed while sending the request or reading the answer's head.
    #[error("client error (SendRequest)")]
    Send(#[source] hyper::Error),
    /// The request has no `http://` authority.
    #[error("client error (no upstream authority in the request's URI)")]
    NoAuthority,
    #[error(transparent)]
    Legacy(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamClient {
    /// Sends `request` (absolute URI) upstream; the answer's body streams.
    pub async fn request(
        &self,
        request: Request<Body>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match self.lean {
            Some(settings) if request.uri().scheme() == Some(&http::uri::Scheme::HTTP) => {
                send(request, settings).await
            }
            _ => Ok(self
                .legacy
                .request(request)
                .await?
                .map(|inner| UpstreamBody { inner, idle: None })),
        }
    }

    /// A lean client with its own limits (tests).
    #[cfg(test)]
    fn lean(settings: Settings) -> Self {
        let tls = rustls::ClientConfig::builder_with_provider(super::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let tls = Arc::new(tls);
        Self {
            legacy: build_client(&tls, ClientKind::Negotiated),
            lean: Some(settings),
        }
    }
}

/// The lean path: a pooled connection (or a fresh one), the request in origin form
/// with its `Host`, the connection handed to the answer's body.
async fn send(
    mut request: Request<Body>,
    settings: Settings,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let authority = request
        .uri()
        .authority()
        .cloned()
        .ok_or(UpstreamError::NoAuthority)?;
    if !request.headers().contains_key(header::HOST) {
        let host = HeaderValue::from_str(host_header(&authority))
            .map_err(|_| UpstreamError::NoAuthority)?;
        request.headers_mut().insert(header::HOST, host);
    }
    origin_form(request.uri_mut());
    let key = Key::new(false, authority);
    if let Some(mut sender) = pool::checkout(&key, settings) {
        match sender.try_send_request(request).await {
            Ok(response) => return Ok(answer(response, sender, key, settings)),
            // Not one byte went out (the upstream had closed the idle connection):
            // once more on a fresh connection.
            Err(mut e) => match e.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(UpstreamError::Send(e.into_error())),
            },
        }
    }
    // Boxed: connecting (resolution, TCP, handshake) is rare next to a pooled
    // connection, and its future would make every request's larger (see `proxy::proxy`).
    let mut sender = crate::primitives::pin_in_place(|| connect(key.authority())).await?;
    match sender.try_send_request(request).await {
        Ok(response) => Ok(answer(response, sender, key, settings)),
        Err(e) => Err(UpstreamError::Send(e.into_error())),
    }
}

/// `Host` of an `http://` authority: the port only when it isn't 80.
pub(super) fn host_header(authority: &http::uri::Authority) -> &str {
    match authority.port_u16() {
        Some(80) => authority.host(),
        _ => authority.as_str(),
    }
}

/// An HTTP/1.1 request line carries the path and query only (moved, not copied).
fn origin_form(uri: &mut Uri) {
    let path = std::mem::take(uri).into_parts().path_and_query;
    *uri = match path {
        Some(path) if path.as_str() != "/" => Uri::from(path),
        _ => Uri::from_static("/"),
    };
}

/// A fresh connection to `authority`, `TCP_NODELAY`, driven by a task of this runtime.
async fn connect(authority: &http::uri::Authority) -> Result<SendRequest<Body>, UpstreamError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tcp(authority))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "tcp connect timed out",
            ))
        })
        .map_err(UpstreamError::Connect)?;
    stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
    handshake(TokioIo::new(stream)).await
}

/// HTTP/1.1 over `io`, the connection driven by a task of this runtime (upgrades too).
async fn handshake<T>(io: T) -> Result<SendRequest<Body>, UpstreamError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await
        .map_err(UpstreamError::Send)?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection error");
        }
    });
    Ok(sender)
}

/// TCP to the authority's addresses in turn (an IP literal needs no resolution).
async fn tcp(authority: &http::uri::Authority) -> std::io::Result<TcpStream> {
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = authority.port_u16().unwrap_or(80);
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return TcpStream::connect((ip, port)).await;
    }
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host")
    }))
}

/// The answer, its body holding the connection until it ends. An upgraded
/// connection (101) belongs to the WebSocket relay, never to the pool.
fn answer(
    response: Response<Incoming>,
    sender: SendRequest<Body>,
    key: Key,
    settings: Settings,
) -> Response<UpstreamBody> {
    let idle = (response.status() != StatusCode::SWITCHING_PROTOCOLS).then_some(Checkin {
        sender,
        key,
        settings,
    });
    let (parts, inner) = response.into_parts();
    let mut body = UpstreamBody { inner, idle };
    if body.inner.is_end_stream() {
        body.release();
    }
    Response::from_parts(parts, body)
}

/// A connection waiting for its answer's body to end.
struct Checkin {
    sender: SendRequest<Body>,
    key: Key,
    settings: Settings,
}

/// The body of an upstream's answer. On the lean client it gives its connection back
/// to the pool as soon as it has ended; one that failed (or was dropped before its
/// end) takes its connection down with it.
pub struct UpstreamBody {
    inner: Incoming,
    idle: Option<Checkin>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.idle.is_some())
            .finish()
    }
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(c) = self.idle.take() {
            pool::checkin(c.key, c.sender, c.settings);
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !self.inner.is_end_stream() => {}
            Some(Ok(_)) | None => self.release(),
            Some(Err(_)) => self.idle = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    Negotiated,
    Https1,
    H2c,
}

fn build_client(tls: &Arc<rustls::ClientConfig>, kind: ClientKind) -> LegacyClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.enforce_http(false);
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((**tls).clone())
        .https_or_http();
    let connector = match kind {
        // ALPN offers h2 first; the pool reads what was negotiated per connection.
        ClientKind::Negotiated => tls.enable_http1().enable_http2().wrap_connector(connector),
        ClientKind::Https1 | ClientKind::H2c => tls.enable_http1().wrap_connector(connector),
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // HTTP/2: PINGs find a dead upstream connection under long streams (gRPC, SSE);
        // flow-control windows follow the measured bandwidth-delay product.
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(20))
        .http2_adaptive_window(true);
    if kind == ClientKind::H2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
