//! OpenTelemetry traces (cargo feature `otel`): a server span per request, a client
//! span per provider call, `traceparent` to upstreams, OTLP/HTTP export.
//!
//! **Switched on by the standard environment**, no config key: export runs when
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set, or
//! `OTEL_TRACES_EXPORTER=otlp` (then the spec's default `http://localhost:4318`).
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` switch it off. The
//! exporter and the SDK read the rest themselves: `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`http/protobuf`, default, or `http/json`), `…_HEADERS`, `…_TIMEOUT`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`,
//! `OTEL_BSP_*`. Switched off, the build behaves as one without the feature: no
//! span, and an inbound `traceparent` reaches upstreams untouched.
//!
//! **Whose trace is continued.** An inbound W3C `traceparent`/`tracestate` is
//! continued only from a peer in `server.trusted_proxies`, like `X-Request-Id`: a
//! browser can neither plant its requests in someone else's trace nor force
//! sampling on (the default sampler follows the parent's sampled flag). From
//! anyone else the request starts a new trace, and a valid inbound `traceparent` is
//! kept as a span *link*, so a browser-side trace can still be followed to ours.
//!
//! **Upstreams** receive a `traceparent` naming the request's server span (and the
//! trusted `tracestate`); whatever the browser sent is replaced. The provider gets
//! no trace headers: it is a third party; its calls are client spans of ours.
//!
//! Spans are `tracing` spans with target `portcullis::otel`, bridged by
//! `tracing-opentelemetry`; they are kept out of the logs, and the logs out of them.

use std::future::Future;
use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The target of every span meant for export (and only for export).
const TARGET: &str = "portcullis::otel";

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The server span's context, on the request, for [`inject`].
#[derive(Clone)]
pub struct TraceContext(opentelemetry::Context);

/// Whether spans are exported (`init` found an exporter configured).
#[inline]
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Whether the environment asks for export (see the module docs).
fn wanted(var: impl Fn(&str) -> Option<String>) -> Result<bool, String> {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        Some("none") => Ok(false),
        Some("otlp") => Ok(true),
        Some(other) if !other.is_empty() => Err(format!(
            "OTEL_TRACES_EXPORTER={other:?}: this build exports with \"otlp\" (or \"none\")"
        )),
        _ => Ok([
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|k| var(k).is_some_and(|v| !v.trim().is_empty()))),
    }
}

/// Builds the exporter and the tracer provider from the environment, once, before
/// logging starts and outside any runtime. `Ok(false)`: export is off.
pub fn init() -> Result<bool, String> {
    if !wanted(|k| std::env::var(k).ok())? {
        return Ok(false);
    }
    if PROVIDER.get().is_some() {
        return Ok(true);
    }
    use opentelemetry_otlp::WithExportConfig as _;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    // The exporter reads OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL itself (a protocol set
    // here would win over it), but takes an unknown value for JSON: refuse it here,
    // and default to the spec's `http/protobuf`.
    let protocol = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|k| Some((*k, std::env::var(k).ok()?)));
    match protocol {
        None => builder = builder.with_protocol(opentelemetry_otlp::Protocol::HttpBinary),
        Some((_, p)) if matches!(p.trim(), "http/protobuf" | "http/json") => {}
        Some((k, p)) => {
            return Err(format!(
                "{k}={p:?}: this build exports with \"http/protobuf\" or \"http/json\""
            ));
        }
    }
    let exporter = builder
        .build()
        .map_err(|e| format!("OpenTelemetry exporter (OTEL_EXPORTER_OTLP_*): {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let _ = PROVIDER.set(provider);
    Ok(true)
}

/// Flushes and stops the exporter (after the listeners have drained).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "OpenTelemetry: the last spans could not be exported");
    }
}

/// Installs the global subscriber with the span exporter beside the log output.
/// When export is off, gives the filter back: the caller installs the plain subscriber.
pub fn init_subscriber(filter: super::LogFilter, json: bool) -> Option<super::LogFilter> {
    let Some(provider) = PROVIDER.get() else {
        return Some(filter);
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("portcullis"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_level(false)
        .with_target(false)
        .with_filter(filter_fn(|meta| meta.target() == TARGET));
    // Our spans stay out of the logs: a line logged while serving a request carries
    // the request's fields (`scope`), not a span.
    let filter = filter.without(TARGET);
    let logs = super::log_lines(json, std::io::stderr).with_filter(filter.into_filter());
    let _ = tracing_subscriber::registry()
        .with(spans)
        .with(logs)
        .try_init();
    None
}

/// The server span of a request, around `next` (`server::App` calls it outermost).
/// `route` is the prefix of the API route serving it, else the router's path
/// (`/bff/user`), else empty; `trusted` says whether the peer is a trusted proxy
/// (whose `traceparent` is continued).
pub async fn serve<F, Fut>(mut request: Request, next: F, route: &str, trusted: bool) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if !enabled() {
        return next(request).await;
    }
    let path = request.uri().path();
    let name = if route.is_empty() {
        request.method().as_str().to_owned()
    } else {
        format!("{} {route}", request.method())
    };
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = name,
        otel.kind = "server",
        http.request.method = request.method().as_str(),
        http.route = route,
        url.path = path,
        http.response.status_code = Empty,
        otel.status_code = Empty,
        request_id = Empty,
    );
    let inbound = if request.headers().contains_key(&TRACEPARENT) {
        TraceContextPropagator::new().extract(&Headers(request.headers()))
    } else {
        opentelemetry::Context::new()
    };
    if trusted {
        let _ = span.set_parent(inbound);
    } else {
        let _ = span.set_parent(opentelemetry::Context::new());
        // Not believed, but not lost: a link, not a parent.
        span.add_link(inbound.span().span_context().clone());
    }
    request
        .extensions_mut()
        .insert(TraceContext(span.context()));

    let response = next(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
    if let Some(id) = response
        .headers()
        .get(&super::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
    {
        span.record("request_id", id);
    }
    response
}

/// Sets the upstream request's `traceparent` (and `tracestate`) to the server
/// span's; without a server span (export off) the headers are left as they came.
#[inline]
pub fn inject(extensions: &axum::http::Extensions, headers: &mut HeaderMap) {
    if let Some(TraceContext(cx)) = extensions.get::<TraceContext>() {
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
        TraceContextPropagator::new().inject_context(cx, &mut HeadersMut(headers));
    }
}

/// A client span around a call to the provider (`endpoint`: `token`, `jwks`…).
pub async fn provider_span<F>(endpoint: &'static str, call: F) -> F::Output
where
    F: Future<Output = Result<reqwest::Response, reqwest::Error>>,
{
    if !enabled() {
        return call.await;
    }
    let span = tracing::info_span!(
        target: TARGET,
        "provider",
        otel.name = endpoint,
        otel.kind = "client",
        portcullis.provider_endpoint = endpoint,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    let result = call.instrument(span.clone()).await;
    match &result {
        Ok(response) => {
            let status = response.status().as_u16();
            span.record("http.response.status_code", status);
            if status >= 500 {
                span.record("otel.status_code", "error");
            }
        }
        Err(_) => {
            span.record("otel.status_code", "error");
        }
    }
    result
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return; // an empty `tracestate`
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn export_is_switched_on_by_the_standard_variables() {
        assert!(!wanted(env(&[])).unwrap());
        assert!(wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])).unwrap());
        assert!(wanted(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c")])).unwrap());
        assert!(wanted(env(&[("OTEL_TRACES_EXPORTER", "otlp")])).unwrap());
        assert!(
            !wanted(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ]))
            .unwrap()
        );
        assert!(
            !wanted(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ]))
            .unwrap()
        );
        let refused = wanted(env(&[("OTEL_TRACES_EXPORTER", "zipkin")])).unwrap_err();
        assert!(refused.contains("OTEL_TRACES_EXPORTER"), "{refused}");
    }

    #[test]
    fn inject_replaces_inbound_trace_headers_only_with_a_server_span() {
        let inbound = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static(inbound));
        headers.insert(&TRACESTATE, HeaderValue::from_static("x=1"));
        // No server span (export off): untouched.
        inject(&axum::http::Extensions::new(), &mut headers);
        assert_eq!(headers[&TRACEPARENT], inbound);
        assert_eq!(headers[&TRACESTATE], "x=1");

        // A server span: its context replaces the inbound one.
        let parent = TraceContextPropagator::new().extract(&Headers(&headers));
        let child = opentelemetry::trace::SpanContext::new(
            parent.span().span_context().trace_id(),
            opentelemetry::trace::SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            opentelemetry::trace::TraceFlags::SAMPLED,
            false,
            Default::default(),
        );
        let mut extensions = axum::http::Extensions::new();
        extensions.insert(TraceContext(
            opentelemetry::Context::new().with_remote_span_context(child),
        ));
        inject(&extensions, &mut headers);
        assert_eq!(
            headers[&TRACEPARENT],
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        );
        assert!(!headers.contains_key(&TRACESTATE));
    }
}
