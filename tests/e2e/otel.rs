//! OpenTelemetry (built only with `--features otel`): the real binary exports its spans
//! over OTLP/HTTP to a receiver in the test, and upstreams receive a `traceparent`
//! naming Portcullis's span.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// An OTLP/HTTP receiver (JSON encoding): keeps every span it is sent, flattened
/// with its resource's attributes.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let keep = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let keep = keep.clone();
                    async move {
                        assert_eq!(headers["content-type"], "application/json");
                        let request: Value = serde_json::from_slice(&body).unwrap();
                        for rs in request["resourceSpans"].as_array().unwrap() {
                            for ss in rs["scopeSpans"].as_array().unwrap() {
                                for span in ss["spans"].as_array().unwrap() {
                                    let mut span = span.clone();
                                    span["resource"] = rs["resource"].clone();
                                    keep.lock().unwrap().push(span);
                                }
                            }
                        }
                        "{}"
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, spans, task }
    }

    /// Waits (up to 15 s) for a span matching `pred`.
    async fn span(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.spans.lock().unwrap().iter().find(|s| pred(s)) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no span {what} exported; got: {:#?}",
                self.spans.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An OTLP attribute's value as a string (ints are strings in OTLP/JSON).
fn attr(owner: &Value, key: &str) -> Option<String> {
    let value = &owner["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"];
    match (&value["stringValue"], &value["intValue"]) {
        (Value::String(s), _) => Some(s.clone()),
        (_, Value::String(i)) => Some(i.clone()),
        (_, Value::Number(i)) => Some(i.to_string()),
        _ => None,
    }
}

/// `(trace id, parent id)` of a `traceparent` header value.
fn parts_of(traceparent: &str) -> (String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    assert_eq!(p[0], "00");
    (p[1].to_owned(), p[2].to_owned())
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_spans_are_exported_and_traceparent_names_our_span_upstream() {
    let receiver = Receiver::start().await;
    let upstream = Upstream::start().await;
    let port = free_port();
    // Peers on 127.0.0.1 are trusted proxies; 127.0.0.2 (also loopback) is a browser.
    let config = standalone_config(
        port,
        &format!("http://127.0.0.1:{port}"),
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!(
            "[[routes]]\nprefix = \"/traced\"\nupstream = \"{}\"\ntoken = \"none\"",
            upstream.url()
        ),
    );
    let endpoint = format!("http://{}", receiver.addr);
    let mut gateway = Gateway::start_with_env(
        port,
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "portcullis-e2e"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );

    // 1. From a trusted proxy: the trace is continued, upstream gets our span as parent.
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let inbound = format!("00-{trace}-{parent}-01");
    let r = Browser::new()
        .get_with(
            &gateway.url("/traced/items?secret=no"),
            &[("traceparent", &inbound), ("tracestate", "vendor=kept")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream.last();
    let sent = seen.headers["traceparent"].to_str().unwrap().to_owned();
    let (sent_trace, ours) = parts_of(&sent);
    assert_eq!(sent_trace, trace, "same trace upstream");
    assert_ne!(ours, parent, "the parent upstream is Portcullis's span");
    assert_ne!(ours, "0000000000000000");
    assert!(sent.ends_with("-01"), "sampled, as the inbound was: {sent}");
    assert_eq!(seen.headers["tracestate"], "vendor=kept");

    let span = receiver
        .span("with the inbound trace id", |s| s["traceId"] == trace)
        .await;
    assert_eq!(span["spanId"], ours.as_str(), "{span:#}");
    assert_eq!(span["parentSpanId"], parent, "{span:#}");
    assert_eq!(span["kind"], SERVER, "{span:#}");
    assert_eq!(span["name"], "GET /traced", "{span:#}");
    assert_eq!(attr(&span, "http.route").as_deref(), Some("/traced"));
    assert_eq!(attr(&span, "url.path").as_deref(), Some("/traced/items"));
    assert_eq!(
        attr(&span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(&span, "request_id"),
        r.headers
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
    );
    assert_eq!(
        attr(&span["resource"], "service.name").as_deref(),
        Some("portcullis-e2e")
    );
    assert!(
        !span.to_string().contains("secret=no"),
        "no query in spans: {span:#}"
    );

    // 2. From a browser: not continued (a new trace), the inbound kept as a link,
    //    and upstream gets the new trace, not the browser's.
    let (b_trace, b_parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let browser = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = browser
        .get(gateway.url("/traced/from-browser"))
        .header("traceparent", format!("00-{b_trace}-{b_parent}-01"))
        .header("tracestate", "planted=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.path_and_query, "/traced/from-browser");
    let (new_trace, new_span) = parts_of(seen.headers["traceparent"].to_str().unwrap());
    assert_ne!(new_trace, b_trace, "a browser's trace is not continued");
    assert!(!seen.headers.contains_key("tracestate"));
    let span = receiver
        .span("for the browser's request", |s| s["traceId"] == new_trace)
        .await;
    assert_eq!(span["spanId"], new_span.as_str(), "{span:#}");
    assert!(
        span["parentSpanId"].as_str().unwrap_or_default().is_empty(),
        "a root span: {span:#}"
    );
    let links = span["links"]
        .as_array()
        .expect("a link to the browser's trace");
    assert!(
        links
            .iter()
            .any(|l| l["traceId"] == b_trace && l["spanId"] == b_parent),
        "{span:#}"
    );

    // 3. BFF endpoints get server spans too, named by endpoint.
    Browser::new()
        .get_with(&gateway.url("/bff/user"), &[("x-csrf", "1")])
        .await
        .assert_error(401, "unauthenticated");
    let span = receiver
        .span("for /bff/user", |s| s["name"] == "GET /bff/user")
        .await;
    assert_eq!(span["kind"], SERVER);
    assert_eq!(
        attr(&span, "http.response.status_code").as_deref(),
        Some("401")
    );

    // 4. Provider calls are client spans: discovery failed at startup (no provider).
    let span = receiver
        .span("for the provider's discovery", |s| s["name"] == "discovery")
        .await;
    assert_eq!(span["kind"], CLIENT, "{span:#}");
    assert_eq!(span["status"]["code"], 2, "an error status: {span:#}");

    gateway.stop();
}
