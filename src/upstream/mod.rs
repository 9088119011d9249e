//! The upstream layer: what the proxy needs to reach an API and nothing of the
//! request handling — the route table ([`RouteTable`]), the header and path rewrite
//! ([`rewrite`]), the pooled client ([`client`]) and its TLS ([`tls`]).
//!
//! The client is per runtime (thread-per-core), so its connection pool never crosses
//! threads; the TLS configuration it uses is the gateway's, made once at startup.

pub mod access;
pub mod rewrite;
mod routes;
pub mod tls;

#[cfg(test)]
mod path_tests;

use std::sync::Arc;

use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use routes::{Route, RouteTable, UpstreamProtocol, WebSocketPolicy};

/// The pooled client to upstreams of one runtime: `http://` in HTTP/1.1 and,
/// verified by the configuration of [`tls`], `https://` in HTTP/2 when the upstream
/// picks `h2` by ALPN, else HTTP/1.1 (see [`client`]).
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Idle connections kept per upstream: at least the expected concurrency, or
/// connections churn under load. (An HTTP/2 upstream gets one connection per
/// runtime, which multiplexes every request of that runtime.)
const POOL_IDLE_PER_HOST: usize = 1024;

/// The client of `http://` and `https://` upstreams (`h2` and `http/1.1` offered by
/// ALPN) of one runtime, verifying `https://` upstreams with `tls`.
pub fn client(tls: &Arc<rustls::ClientConfig>) -> UpstreamClient {
    build_client(tls, ClientKind::Negotiated)
}

/// The other clients of a runtime, one per [`UpstreamProtocol`] that needs its own
/// pool: a pool is keyed by scheme and authority only, so an `https://` route with
/// `http2 = false` and an `h2c://` route can't share the default client's.
pub struct ProtocolClients {
    /// `https://` routes with `http2 = false`: only `http/1.1` offered by ALPN.
    pub https1: UpstreamClient,
    /// `h2c://` routes: HTTP/2 with prior knowledge on plain TCP.
    pub h2c: UpstreamClient,
}

impl ProtocolClients {
    pub fn new(tls: &Arc<rustls::ClientConfig>) -> Self {
        Self {
            https1: build_client(tls, ClientKind::Https1),
            h2c: build_client(tls, ClientKind::H2c),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    Negotiated,
    Https1,
    H2c,
}

fn build_client(tls: &Arc<rustls::ClientConfig>, kind: ClientKind) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
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
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        // HTTP/2: PINGs find a dead upstream connection under long streams (gRPC, SSE);
        // flow-control windows follow the measured bandwidth-delay product.
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .http2_keep_alive_timeout(std::time::Duration::from_secs(20))
        .http2_adaptive_window(true);
    if kind == ClientKind::H2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}
