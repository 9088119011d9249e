//! Portcullis: a Backend-for-Frontend authentication gateway.
//!
//! A browser SPA talks only to Portcullis, over an HttpOnly session cookie.
//! Portcullis is the OpenID Connect confidential client, keeps every token
//! server-side, and reverse-proxies API calls to upstreams with the user's access
//! token attached. Tokens never reach the browser.
//!
//! # Layers
//!
//! The modules stand in layers, ground first. A module names only modules of the
//! layers below its own; the modules of one layer are siblings and never name each
//! other. `tests/layers.rs` reads this list and fails on an import that breaks it.
//!
//! 1. `error`, `primitives`, `path` — the contract's JSON errors; random tokens,
//!    hashing, constant-time compare, the clock; the path rule of API routes
//! 2. `config` — the configuration tree and its validation
//! 3. `telemetry` — logs, metrics, audit events
//! 4. `session`, `oidc`, `security` — sessions and their stores; the OpenID Connect client; the request rules
//! 5. `tokens` — the token manager
//! 6. `upstream` — the route table, the header and path rewrite, the upstream client and its TLS
//! 7. `frontend` — the SPAs one gateway serves
//! 8. `gateway` — the shared state, and what a request is for (decided once)
//! 9. `bff`, `proxy` — the handlers: the `/bff/*` endpoints; the API reverse proxy
//! 10. `server` — `app(state) -> App` (its phases, then the router), listeners, TLS termination, graceful shutdown
//! 11. `cli` — the command line
//!
//! The modules, in that order:

// (The request future borrows the router across its phases' awaits, `server::App`;
// proving that future `Send` walks axum's router types deeper than the default 128.)
#![recursion_limit = "256"]

/// The contract's JSON errors.
pub mod error;

/// Random tokens, SHA-256, constant-time comparison, the clock.
pub mod primitives;

/// The path rule of API routes: the upstream path can't leave the route's base.
pub mod path;

/// Configuration: the serde tree, the environment overlay, `validate()`.
pub mod config;

/// Logs, metrics and audit events.
pub mod telemetry;

/// Sessions, their stores, cookies and encryption at rest.
pub mod session;

/// The OpenID Connect client.
pub mod oidc;

/// CSRF, security headers, return-URL validation.
pub mod security;

/// The token manager.
pub mod tokens;

/// Upstreams: the route table, the request rewrite, the pooled client and its TLS.
pub mod upstream;

/// Frontends: the SPAs one gateway serves, and the choice of one per request.
pub mod frontend;

/// The shared state ([`gateway::Gateway`], [`gateway::AppState`]) and the request's
/// [`gateway::Target`].
pub mod gateway;

/// The `/bff/*` endpoints.
pub mod bff;

/// The API reverse proxy.
pub mod proxy;

/// The server: `app(state) -> App`, listeners, graceful shutdown.
pub mod server;

/// The command line.
pub mod cli;

pub use server::app;
