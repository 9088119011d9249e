//! Logs, audit events and metrics.
//!
//! **Logs** go through `tracing` to stderr: JSON when stderr is not a terminal (or
//! `server.log_format = "json"`), human-readable otherwise; the level comes from
//! `RUST_LOG`, else `server.log_level`, else `info`. Every line logged while serving
//! a request carries the request's id (the `request` span, see [`request`]).
//!
//! **Audit events** are `info` events with `target: "portcullis::audit"` and an
//! `event` field: `login`, `refresh`, `revocation`, `session_ended` (logout,
//! back-channel logout, revocation, timeouts…), `backchannel_logout`,
//! `csrf_rejected`, `rate_limited`. They carry the `sub` and `session`, a short
//! non-reversible label of the session key (`StoreKey::log_label`) — never a
//! session id, a cookie, a token, a client secret or a key. Select them with
//! `RUST_LOG=portcullis::audit=info`.
//!
//! **Metrics** live in one global registry ([`metrics()`]); see [`metrics`].
//! This module must never log a secret: it is given labels, never tokens.

pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
pub mod request;
mod span_fields;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub use metrics::{Metrics, metrics, provider_call};
pub use request::{Endpoint, RequestId, X_REQUEST_ID};

use crate::config::LogFormat;

/// Installs the global subscriber with the configured format and default level.
pub fn init_logging_with(format: LogFormat, level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| level.and_then(|l| EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    #[cfg(feature = "otel")]
    let Some(filter) = otel::init_subscriber(filter, json) else {
        return;
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(span_fields::JsonSpanFields)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// Who an audit event is about: the session's subject and its log label (a hash of
/// the session key, never the key).
#[derive(Debug, Clone, Copy)]
pub struct AuditSubject<'a> {
    pub sub: &'a str,
    pub session: &'a str,
}

/// One audit event per ended session (`reason`: the session store's end reason).
pub fn audit_session_ended(reason: &'static str, who: AuditSubject<'_>) {
    metrics()
        .sessions_ended
        .get_or_create(&[("reason", reason)])
        .inc();
    tracing::info!(
        target: "portcullis::audit",
        event = "session_ended",
        reason,
        sub = who.sub,
        session = who.session,
    );
}

/// A WebSocket or a session's streamed answer opened on `route` (`kind`:
/// `websocket` or `stream`).
pub fn stream_opened(route: &'static str, kind: &'static str) {
    metrics()
        .streams_open
        .get_or_create(&[("route", route), ("kind", kind)])
        .inc();
}

/// One audit event per closed WebSocket or streamed answer of a session: `reason`
/// is a closed set (see `Metrics::streams_closed`), `session` the key's log label.
pub fn audit_stream_closed(
    route: &'static str,
    kind: &'static str,
    reason: &'static str,
    session: &str,
    open_for: std::time::Duration,
) {
    let m = metrics();
    m.streams_open
        .get_or_create(&[("route", route), ("kind", kind)])
        .dec();
    m.streams_closed
        .get_or_create(&[("route", route), ("kind", kind), ("reason", reason)])
        .inc();
    m.stream_duration
        .get_or_create(&[("route", route), ("kind", kind)])
        .observe(open_for.as_secs_f64());
    tracing::info!(
        target: "portcullis::audit",
        event = "stream_closed",
        route,
        kind,
        reason,
        session,
        seconds = open_for.as_secs_f64(),
    );
}

/// A successful login created a session.
pub fn audit_login(who: AuditSubject<'_>) {
    metrics().sessions_created.inc();
    tracing::info!(
        target: "portcullis::audit",
        event = "login",
        sub = who.sub,
        session = who.session,
    );
}

/// A refresh finished: `outcome` is `success`, `invalid_grant` or `provider_unavailable`.
pub fn audit_refresh(who: AuditSubject<'_>, outcome: &'static str, took: std::time::Duration) {
    metrics()
        .refreshes
        .get_or_create(&[("outcome", outcome)])
        .inc();
    tracing::info!(
        target: "portcullis::audit",
        event = "refresh",
        outcome,
        sub = who.sub,
        session = who.session,
        ms = took.as_millis() as u64,
    );
}

/// The refresh token of an ended session was revoked at the provider (RFC 7009):
/// `outcome` is `revoked`, `unsupported` (no revocation endpoint) or `failed`.
pub fn audit_revocation(sub: &str, session: &str, outcome: &'static str, error: Option<&str>) {
    metrics()
        .revocations
        .get_or_create(&[("outcome", outcome)])
        .inc();
    if let Some(error) = error {
        tracing::warn!(
            target: "portcullis::audit",
            event = "revocation",
            outcome,
            sub,
            session,
            error,
        );
    } else {
        tracing::info!(
            target: "portcullis::audit",
            event = "revocation",
            outcome,
            sub,
            session,
        );
    }
}
