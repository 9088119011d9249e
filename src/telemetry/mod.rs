//! Logs and audit events.
//!
//! Logs go through `tracing` to stderr: JSON when stderr is not a terminal,
//! human-readable otherwise, level from `RUST_LOG` (default `info`). Audit events carry the `sub`
//! and a short hash of the session key — never a session id, cookie or token.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::session::{EndReason, SessionRecord};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
}

/// One audit event per ended session.
pub fn audit_session_ended(reason: EndReason, record: &SessionRecord) {
    tracing::info!(
        target: "portcullis::audit",
        event = "session_ended",
        reason = reason.as_str(),
        sub = %record.sub,
        session = %record.key.log_label(),
    );
}

/// A successful login created a session.
pub fn audit_login(record: &SessionRecord) {
    tracing::info!(
        target: "portcullis::audit",
        event = "login",
        sub = %record.sub,
        session = %record.key.log_label(),
    );
}
