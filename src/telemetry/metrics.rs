//! The process's metrics, in one global registry (`metrics()`), so any module can
//! count without plumbing. Exposed in OpenMetrics text on the admin listener's
//! `/metrics` (see `server::admin`).
//!
//! Labels are small, closed sets (`&'static str`): route prefixes come from the
//! config and are interned once ([`route_label`]), status codes are folded into
//! classes, error codes are the contract's. Nothing user-controlled becomes a label,
//! so a client can't grow the registry.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// One label.
pub type L1 = [(&'static str, &'static str); 1];
/// Two labels.
pub type L2 = [(&'static str, &'static str); 2];
/// Three labels.
pub type L3 = [(&'static str, &'static str); 3];

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric Portcullis exports. Names are given without the `portcullis_` prefix.
pub struct Metrics {
    registry: Registry,
    /// `http_requests_total{route, status}`: answers by route (`bff`, `health`,
    /// `static`, `other` or the API prefix) and status class (`2xx`…`5xx`).
    pub requests: Family<L2, Counter>,
    /// `http_request_duration_seconds{route}`: until the response headers.
    pub request_duration: Histograms<L1>,
    /// `upstream_request_duration_seconds{route, outcome}`: upstream time to
    /// response headers; `outcome` is `ok`, `timeout` or `error`.
    pub upstream_duration: Histograms<L2>,
    /// `logins_total{outcome}`: callbacks, `success` or the error code.
    pub logins: Family<L1, Counter>,
    /// `logouts_total{kind, outcome}`: `kind` is `rp` (`/bff/logout`) or `backchannel`.
    pub logouts: Family<L2, Counter>,
    /// `refreshes_total{outcome}`: `success`, `invalid_grant`, `provider_unavailable`.
    pub refreshes: Family<L1, Counter>,
    /// `revocations_total{outcome}`: `revoked`, `unsupported`, `failed`.
    pub revocations: Family<L1, Counter>,
    /// `sessions_created_total`.
    pub sessions_created: Counter,
    /// `sessions_ended_total{reason}`.
    pub sessions_ended: Family<L1, Counter>,
    /// `sessions_active`: live sessions in the store, counted at each scrape. With a
    /// shared store (Redis) every instance reports the same number: use `max`.
    pub sessions_active: Gauge,
    /// `csrf_rejected_total`: requests refused by a CSRF defence.
    pub csrf_rejected: Counter,
    /// `rate_limited_total`: requests refused by a rate limit.
    pub rate_limited: Counter,
    /// `errors_total{code}`: every contract error answered, by code.
    pub errors: Family<L1, Counter>,
    /// `store_operation_duration_seconds{backend, op}`.
    pub store_duration: Histograms<L2>,
    /// `store_errors_total{backend, op}`.
    pub store_errors: Family<L2, Counter>,
    /// `provider_request_duration_seconds{endpoint}`: calls to the identity provider.
    pub provider_duration: Histograms<L1>,
    /// `provider_errors_total{endpoint, kind}`: `kind` is `unavailable` (network,
    /// timeout, 5xx) or `refused` (4xx).
    pub provider_errors: Family<L2, Counter>,
    /// `tls_reloads_total{outcome}`: certificate reloads on SIGHUP.
    pub tls_reloads: Family<L1, Counter>,
    /// `connections_open`: browser-facing connections open now (all workers).
    pub connections_open: Gauge,
    /// `connections_refused_total{reason}`: connections closed at accept;
    /// `per_client_limit` (`server.max_connections_per_client`).
    pub connections_refused: Family<L1, Counter>,
    /// `connection_timeouts_total{kind}`: connections closed by a timeout:
    /// `first_request`, `idle`, `header_read` or `write`.
    pub connection_timeouts: Family<L1, Counter>,
    /// `accept_errors_total`: failed accepts (out of file descriptors and the like).
    pub accept_errors: Counter,
    /// `streams_open{route, kind}`: WebSockets (`websocket`) and streamed answers of a
    /// session (`stream`: server-sent events, long downloads) open now.
    pub streams_open: Family<L2, Gauge>,
    /// `streams_closed_total{route, kind, reason}`: why they ended (`client_closed`,
    /// `upstream_closed`, `idle_timeout`, `error`, `shutdown`, or the session's end:
    /// `logout`, `backchannel_logout`, `ended_elsewhere`, …).
    pub streams_closed: Family<L3, Counter>,
    /// `stream_duration_seconds{route, kind}`: how long they were open.
    pub stream_duration: Histograms<L2>,
}

fn stream_histogram() -> Histogram {
    // 10 ms … ~1.9 days.
    Histogram::new(exponential_buckets(0.01, 4.0, 14))
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        fn hist<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
            Histograms::new_with_constructor(latency_histogram as fn() -> Histogram)
        }
        let m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            request_duration: hist(),
            upstream_duration: hist(),
            logins: Family::default(),
            logouts: Family::default(),
            refreshes: Family::default(),
            revocations: Family::default(),
            sessions_created: Counter::default(),
            sessions_ended: Family::default(),
            sessions_active: Gauge::default(),
            csrf_rejected: Counter::default(),
            rate_limited: Counter::default(),
            errors: Family::default(),
            store_duration: hist(),
            store_errors: Family::default(),
            provider_duration: hist(),
            provider_errors: Family::default(),
            tls_reloads: Family::default(),
            connections_open: Gauge::default(),
            connections_refused: Family::default(),
            connection_timeouts: Family::default(),
            accept_errors: Counter::default(),
            streams_open: Family::default(),
            streams_closed: Family::default(),
            stream_duration: Histograms::new_with_constructor(
                stream_histogram as fn() -> Histogram,
            ),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "Answers by route and status class",
            m.requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time to the response headers, by route",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register_with_unit(
            "upstream_request_duration",
            "Upstream time to response headers, by route and outcome",
            Unit::Seconds,
            m.upstream_duration.clone(),
        );
        r.register("logins", "Login callbacks by outcome", m.logins.clone());
        r.register(
            "logouts",
            "Logouts by kind (rp, backchannel) and outcome",
            m.logouts.clone(),
        );
        r.register(
            "refreshes",
            "Access token refreshes by outcome",
            m.refreshes.clone(),
        );
        r.register(
            "revocations",
            "Refresh token revocations at logout, by outcome",
            m.revocations.clone(),
        );
        r.register(
            "sessions_created",
            "Sessions created by a login",
            m.sessions_created.clone(),
        );
        r.register(
            "sessions_ended",
            "Sessions ended, by reason",
            m.sessions_ended.clone(),
        );
        r.register(
            "sessions_active",
            "Live sessions in the store (counted at scrape; instances sharing a store report the same value)",
            m.sessions_active.clone(),
        );
        r.register(
            "csrf_rejected",
            "Requests refused by a CSRF defence",
            m.csrf_rejected.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused by a rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "errors",
            "Contract errors answered, by code",
            m.errors.clone(),
        );
        r.register_with_unit(
            "store_operation_duration",
            "Session store operations, by backend and operation",
            Unit::Seconds,
            m.store_duration.clone(),
        );
        r.register(
            "store_errors",
            "Failed session store operations, by backend and operation",
            m.store_errors.clone(),
        );
        r.register_with_unit(
            "provider_request_duration",
            "Calls to the identity provider, by endpoint",
            Unit::Seconds,
            m.provider_duration.clone(),
        );
        r.register(
            "provider_errors",
            "Failed calls to the identity provider, by endpoint and kind",
            m.provider_errors.clone(),
        );
        r.register(
            "tls_reloads",
            "TLS certificate reloads, by outcome",
            m.tls_reloads.clone(),
        );
        r.register(
            "connections_open",
            "Browser-facing connections open now",
            m.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed at accept, by reason",
            m.connections_refused.clone(),
        );
        r.register(
            "connection_timeouts",
            "Connections closed by a timeout, by kind",
            m.connection_timeouts.clone(),
        );
        r.register(
            "accept_errors",
            "Failed accepts on the browser-facing listener (e.g. out of file descriptors)",
            m.accept_errors.clone(),
        );
        r.register(
            "streams_open",
            "WebSockets and streamed answers of sessions open now, by route and kind",
            m.streams_open.clone(),
        );
        r.register(
            "streams_closed",
            "WebSockets and streamed answers closed, by route, kind and reason",
            m.streams_closed.clone(),
        );
        r.register_with_unit(
            "stream_duration",
            "How long WebSockets and streamed answers were open, by route and kind",
            Unit::Seconds,
            m.stream_duration.clone(),
        );
        let build = Family::<L1, Gauge>::default();
        build
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        r.register("build_info", "The running version", build);
        Self { registry, ..m }
    }

    /// The whole registry in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        encode(&mut out, &self.registry).expect("writing to a String can't fail");
        out
    }

    /// Records a store operation (see `session::Store`).
    pub fn store_op(&self, backend: &'static str, op: &'static str, took: Duration, ok: bool) {
        let labels = [("backend", backend), ("op", op)];
        // The hot path's series is looked up once per thread, not hashed per call.
        thread_local! {
            static SERIES: std::cell::RefCell<Vec<(L2, Histogram)>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SERIES.with_borrow_mut(|series| {
            let found = series
                .iter()
                .find(|(l, _)| same(l[0].1, backend) && same(l[1].1, op));
            match found {
                Some((_, h)) => h.observe(took.as_secs_f64()),
                None => {
                    let h = self.store_duration.get_or_create_owned(&labels);
                    h.observe(took.as_secs_f64());
                    series.push((labels, h));
                }
            }
        });
        if !ok {
            self.store_errors.get_or_create(&labels).inc();
        }
    }

    /// Records one upstream exchange of the route with this label ([`route_label`]).
    pub fn upstream_call<T, E>(
        &self,
        route: &'static str,
        took: Duration,
        result: &Result<Result<T, E>, tokio::time::error::Elapsed>,
    ) {
        let outcome = match result {
            Ok(Ok(_)) => 0,
            Ok(Err(_)) => 1,
            Err(_) => 2,
        };
        route_series(route).upstream[outcome]
            .get_or_init(|| {
                self.upstream_duration.get_or_create_owned(&[
                    ("route", route),
                    ("outcome", ["ok", "error", "timeout"][outcome]),
                ])
            })
            .observe(took.as_secs_f64());
    }

    /// Records one answer of the request layer (`http_requests_total` and
    /// `http_request_duration_seconds`) for the route with this label.
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        let series = route_series(route);
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        series.requests[class]
            .get_or_init(|| {
                self.requests
                    .get_or_create_owned(&[("route", route), ("status", status_class(status))])
            })
            .inc();
        series
            .duration
            .get_or_init(|| {
                self.request_duration
                    .get_or_create_owned(&[("route", route)])
            })
            .observe(took.as_secs_f64());
    }

    /// Records one call to the provider; `error` is `None`, `Some("unavailable")`
    /// or `Some("refused")`.
    pub fn provider_call(
        &self,
        endpoint: &'static str,
        took: Duration,
        error: Option<&'static str>,
    ) {
        self.provider_duration
            .get_or_create(&[("endpoint", endpoint)])
            .observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.provider_errors
                .get_or_create(&[("endpoint", endpoint), ("kind", kind)])
                .inc();
        }
    }
}

/// The global metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Two labels are the same: usually the same `'static` text, so the pointer decides.
fn same(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// The series of one `route` label, resolved from their families on first use (so a
/// series appears in `/metrics` once it has been counted, as with `get_or_create`)
/// and kept: the per-request path neither hashes labels nor takes a family's lock.
#[derive(Default)]
struct RouteSeries {
    /// `http_requests_total` by status class (1xx … 5xx).
    requests: [OnceLock<Counter>; 5],
    duration: OnceLock<Histogram>,
    /// `upstream_request_duration_seconds` by outcome (ok, error, timeout).
    upstream: [OnceLock<Histogram>; 3],
}

/// The series of a route label. Leaked once per distinct label (a closed set: the
/// configured prefixes and a few fixed labels) and cached per thread.
fn route_series(route: &'static str) -> &'static RouteSeries {
    thread_local! {
        static CACHE: std::cell::RefCell<Vec<(&'static str, &'static RouteSeries)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    if let Some(s) = CACHE.with_borrow(|c| c.iter().find(|(l, _)| same(l, route)).map(|(_, s)| *s))
    {
        return s;
    }
    static ALL: OnceLock<Mutex<HashMap<&'static str, &'static RouteSeries>>> = OnceLock::new();
    let series = *ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(route)
        .or_insert_with(|| Box::leak(Box::default()));
    CACHE.with_borrow_mut(|c| c.push((route, series)));
    series
}

/// A configured route prefix as a `'static` label. Interned once per distinct
/// prefix; the set is bounded by the config.
pub fn route_label(prefix: &str) -> &'static str {
    thread_local! {
        // Per worker thread, so the hot path takes no shared lock.
        static CACHE: std::cell::RefCell<HashMap<String, &'static str>> = Default::default();
    }
    if let Some(l) = CACHE.with(|c| c.borrow().get(prefix).copied()) {
        return l;
    }
    let l = crate::primitives::intern(prefix);
    CACHE.with(|c| c.borrow_mut().insert(prefix.to_owned(), l));
    l
}

/// `2xx`, `4xx`, … for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Times a call to the provider and records it: network failures and 5xx count as
/// `unavailable`, other 4xx as `refused`.
pub async fn provider_call(
    endpoint: &'static str,
    call: impl Future<Output = Result<reqwest::Response, reqwest::Error>>,
) -> Result<reqwest::Response, reqwest::Error> {
    #[cfg(feature = "otel")]
    let call = super::otel::provider_span(endpoint, call);
    let started = std::time::Instant::now();
    let result = call.await;
    let error = match &result {
        Err(_) => Some("unavailable"),
        Ok(r) if r.status().is_server_error() => Some("unavailable"),
        Ok(r) if r.status().is_client_error() => Some("refused"),
        Ok(_) => None,
    };
    metrics().provider_call(endpoint, started.elapsed(), error);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_encodes_as_openmetrics() {
        let m = metrics();
        m.requests
            .get_or_create(&[("route", route_label("/api")), ("status", "2xx")])
            .inc();
        m.store_op("memory", "get", Duration::from_micros(150), false);
        let text = m.encode();
        assert!(text.contains("portcullis_http_requests_total{route=\"/api\",status=\"2xx\"}"));
        assert!(text.contains("portcullis_store_errors_total{backend=\"memory\",op=\"get\"} 1"));
        assert!(text.contains("# TYPE portcullis_store_operation_duration_seconds histogram"));
        assert!(text.contains("portcullis_build_info{version="));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn route_labels_are_interned() {
        let a = route_label("/interned");
        let b = route_label(&String::from("/interned"));
        assert!(std::ptr::eq(a, b));
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(503), "5xx");
    }
}
