//! Logs, audit events and metrics.
//!
//! **Logs** go through `tracing` to stderr: JSON when stderr is not a terminal (or
//! `server.log_format = "json"`), human-readable otherwise; the level comes from
//! `RUST_LOG`, else `server.log_level`, else `info`. Every line logged while serving
//! a request carries the request's id, method and path (see [`scope`]).
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
pub mod scope;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Filter, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

pub use metrics::{Metrics, metrics, provider_call};
pub use request::{Endpoint, X_REQUEST_ID};

use crate::config::LogFormat;

/// Installs the global subscriber with the configured format and default level.
pub fn init_logging_with(format: LogFormat, level: Option<&str>) {
    let filter = LogFilter::from_env_or(level);
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    #[cfg(feature = "otel")]
    let Some(filter) = otel::init_subscriber(filter, json) else {
        return;
    };
    let _ = subscriber(filter, json, std::io::stderr).try_init();
}

/// The log lines (see [`log_lines`]) under `filter`, written to `writer`.
fn subscriber<W>(
    filter: LogFilter,
    json: bool,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::registry().with(log_lines(json, writer).with_filter(filter.into_filter()))
}

/// The layer writing log lines to `writer`: JSON (one object per line, the event's
/// fields flattened) or text, each line logged while serving a request carrying it
/// ([`scope`]).
fn log_lines<S, W>(json: bool, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let logs = tracing_subscriber::fmt::layer().with_writer(writer);
    if json {
        logs.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .map_event_format(|f| scope::WithRequest::new(f, true))
            .boxed()
    } else {
        logs.map_event_format(|f| scope::WithRequest::new(f, false))
            .boxed()
    }
}

/// Which log lines are written: `RUST_LOG`, else `server.log_level`, else `info`, in
/// `tracing`'s directive syntax.
///
/// Directives that name only targets and levels (`info`,
/// `warn,portcullis::audit=info`) — all anyone sets in practice — make a static
/// [`Targets`] filter. Only a directive on spans or fields (`[request]`,
/// `[{path}]=debug`) needs [`EnvFilter`], which tracks the spans it matched behind a
/// lock shared by every core, taken when a span is created, entered, left and closed:
/// on every poll of every request (measured: ~0.9 % of the proxy path's instructions,
/// and a cache line the two cores pass back and forth).
// Built once, at start-up: its size doesn't matter.
#[allow(clippy::large_enum_variant)]
pub enum LogFilter {
    Targets(Targets),
    Env(EnvFilter),
}

impl LogFilter {
    /// `RUST_LOG` if set (and valid), else `level`, else `info`. An invalid value is
    /// passed over as if unset (logging is set up before anything could report it).
    pub fn from_env_or(level: Option<&str>) -> Self {
        std::env::var(EnvFilter::DEFAULT_ENV)
            .ok()
            .and_then(|v| Self::parse(&v))
            .or_else(|| level.and_then(Self::parse))
            .unwrap_or_else(|| Self::Targets(Targets::new().with_default(LevelFilter::INFO)))
    }

    /// The filter of `directives`, `None` when they are blank or don't parse.
    pub fn parse(directives: &str) -> Option<Self> {
        if directives.trim().is_empty() {
            None
        } else if directives.contains(['[', '{']) {
            EnvFilter::try_new(directives).ok().map(Self::Env)
        } else {
            directives.parse().ok().map(Self::Targets)
        }
    }

    /// Also turns `target` off.
    #[cfg(feature = "otel")]
    fn without(self, target: &str) -> Self {
        match self {
            Self::Targets(t) => Self::Targets(t.with_target(target, LevelFilter::OFF)),
            Self::Env(e) => match format!("{target}=off").parse() {
                Ok(directive) => Self::Env(e.add_directive(directive)),
                Err(_) => Self::Env(e),
            },
        }
    }

    /// As the log layer's filter.
    fn into_filter<S>(self) -> Box<dyn Filter<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        match self {
            Self::Targets(t) => Box::new(t),
            Self::Env(e) => Box::new(e),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::LogFilter;

    #[test]
    fn target_and_level_directives_need_no_span_tracking() {
        for plain in [
            "info",
            "warn,portcullis::audit=info",
            "portcullis=debug,hyper=off",
            "portcullis",
        ] {
            assert!(
                matches!(LogFilter::parse(plain), Some(LogFilter::Targets(_))),
                "{plain}"
            );
        }
        for spans in ["[request]=debug", "info,portcullis[{path}]=trace"] {
            assert!(
                matches!(LogFilter::parse(spans), Some(LogFilter::Env(_))),
                "{spans}"
            );
        }
        for bad in ["", "  ", "info=nope", "a=b=c", "[unclosed=info"] {
            assert!(LogFilter::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_static_filter_keeps_the_most_specific_directive() {
        use tracing_subscriber::layer::SubscriberExt;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Record(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Record {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let m = event.metadata();
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("{}:{}", m.target(), m.level()));
            }
        }
        use tracing_subscriber::Layer;
        let filter = LogFilter::parse("warn,portcullis::audit=info").unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(Record(seen.clone()).with_filter(filter.into_filter()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "portcullis::audit", "kept");
            tracing::debug!(target: "portcullis::audit", "dropped");
            tracing::info!(target: "portcullis::proxy", "dropped");
            tracing::warn!(target: "portcullis::proxy", "kept");
        });
        assert_eq!(
            *seen.lock().unwrap(),
            ["portcullis::audit:INFO", "portcullis::proxy:WARN"]
        );
    }
}
