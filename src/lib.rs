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
//! 1. `error`, `config`, `primitives` — the contract's JSON errors; the configuration tree;
//!    random tokens, hashing, constant-time compare, the clock
//! 2. `telemetry` — logs, metrics, audit events
//! 3. `session`, `oidc`, `security` — sessions and their stores; the OpenID Connect client; the request rules
//! 4. `tokens` — the token manager
//! 5. `frontend` — the SPAs one gateway serves
//! 6. `bff`, `proxy` — the handlers: the `/bff/*` endpoints; the API reverse proxy
//! 7. `server` — `app(state) -> Router`, listeners, graceful shutdown
//! 8. `cli` — the command line
//!
//! The modules, in that order:

/// The contract's JSON errors.
pub mod error;

/// Configuration: the serde tree, the environment overlay, `validate()`.
pub mod config;

/// Random tokens, SHA-256, constant-time comparison, the clock.
pub mod primitives;

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

/// Frontends: the SPAs one gateway serves, and the choice of one per request.
pub mod frontend;

/// The `/bff/*` endpoints.
pub mod bff;

/// The API reverse proxy.
pub mod proxy;

/// The server: `app(state) -> Router`, listeners, graceful shutdown.
pub mod server;

/// The command line.
pub mod cli;

pub use server::app;
