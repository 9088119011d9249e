//! The upstream layer: what the proxy needs to reach an API and nothing of the
//! request handling — the route table ([`RouteTable`]), the header and path rewrite
//! ([`rewrite`]), the pooled client ([`client`], its idle connections in `pool`) and its TLS ([`tls`]).
//!
//! The client is per runtime (thread-per-core), so its connection pool never crosses
//! threads; the TLS configuration it uses is the gateway's, made once at startup.

pub mod access;
mod client;
mod pool;
pub mod rewrite;
mod routes;
pub mod tls;

#[cfg(test)]
mod path_tests;

pub use client::{ProtocolClients, UpstreamBody, UpstreamClient, UpstreamError, client};
#[cfg(test)]
pub(crate) use routes::test_route;
pub use routes::{Route, RouteTable, UpstreamProtocol, WebSocketPolicy};
