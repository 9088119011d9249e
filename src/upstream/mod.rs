//! The upstream layer: what the proxy needs to reach an API and nothing of the
//! request handling — the route table ([`RouteTable`]), the header and path rewrite
//! ([`rewrite`]), the pooled client ([`client`]) and its TLS ([`tls`]).
//!
//! The client is per runtime (thread-per-core), so its connection pool never crosses
//! threads; the TLS configuration it uses is the gateway's, made once at startup.

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

pub use routes::{Route, RouteTable, WebSocketPolicy};

/// The pooled HTTP/1.1 client to upstreams of one runtime (`http://` and, verified
/// by the configuration of [`tls`], `https://`).
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Idle connections kept per upstream: at least the expected concurrency, or
/// connections churn under load.
const POOL_IDLE_PER_HOST: usize = 1024;

/// A client for one runtime, verifying `https://` upstreams with `tls`.
pub fn client(tls: &Arc<rustls::ClientConfig>) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((**tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build(connector)
}
