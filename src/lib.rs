//! Portcullis: a Backend-for-Frontend authentication gateway.
//!
//! A browser SPA talks only to Portcullis, over an HttpOnly session cookie.
//! Portcullis is the OpenID Connect confidential client, keeps every token
//! server-side, and reverse-proxies API calls to upstreams with the user's access
//! token attached. Tokens never reach the browser.
//!
//! The modules, in the order a request meets them:

/// The `/bff/*` endpoints.
pub mod bff;
/// The command line.
pub mod cli;
/// Configuration: the serde tree, the environment overlay, `validate()`.
pub mod config;
/// The contract's JSON errors.
pub mod error;
/// Frontends: the SPAs one gateway serves, and the choice of one per request.
pub mod frontend;
/// The OpenID Connect client.
pub mod oidc;
/// The API reverse proxy.
pub mod proxy;
/// CSRF, security headers, return-URL validation.
pub mod security;
/// The server: `app(state) -> Router`, listeners, graceful shutdown.
pub mod server;
/// Sessions, their stores, cookies and encryption at rest.
pub mod session;
/// Logs and audit events.
pub mod telemetry;
/// The token manager.
pub mod tokens;

pub use server::app;
