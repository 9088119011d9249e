//! The request a log line is about: its id, method and path on every line logged while
//! serving it — in JSON `"span": {"name": "request", "request_id": "…", "method": "GET",
//! "path": "/api/x"}`, in text `request{request_id="…" method="GET" path="/api/x"}: `
//! before the target (the lines a `tracing` span named `request` would give).
//!
//! Not a `tracing` span: a span goes through the subscriber's registry when it is
//! created, entered and left on every poll, and closed, and the log layer formats its
//! fields up front — ~3,600 instructions per request (callgrind, about 5 % of the
//! proxy path), paid although most requests log nothing. Instead the request's fields
//! are moved into a thread-local while its future is polled ([`InRequest`]; a runtime
//! polls one future at a time on its thread) and back out after, and the log formatter
//! ([`WithRequest`]) writes them into a line only when one is logged. A task spawned on
//! behalf of the request takes a copy along ([`spawn`]).
//!
//! The fields never hold the query: `/bff/callback`'s holds the authorization code.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::uri::PathAndQuery;
use axum::http::{HeaderValue, Method};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// What every log line of a request carries.
#[derive(Debug, Clone)]
pub struct RequestFields {
    id: HeaderValue,
    method: Method,
    /// The path as received (`path()` of it: never the query).
    path: Option<PathAndQuery>,
}

impl RequestFields {
    pub fn new(id: HeaderValue, method: Method, uri: &axum::http::Uri) -> Self {
        Self {
            id,
            method,
            path: uri.path_and_query().cloned(),
        }
    }

    fn id(&self) -> &str {
        self.id.to_str().unwrap_or_default()
    }

    fn path(&self) -> &str {
        self.path.as_ref().map_or("/", PathAndQuery::path)
    }
}

thread_local! {
    /// The fields of the request being polled on this thread, if one is.
    static CURRENT: RefCell<Option<RequestFields>> = const { RefCell::new(None) };
}

/// A copy of the fields of the request being served on this thread, for a task
/// spawned on its behalf (see [`InRequest::new`]).
pub fn current() -> Option<RequestFields> {
    CURRENT.with_borrow(Clone::clone)
}

/// Spawns `task` on behalf of the request being served (if any): its lines log as
/// the request's, and its `tracing` spans (OpenTelemetry's) are children of the
/// current one.
pub fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::spawn(InRequest::new(
        current(),
        tracing::Instrument::instrument(task, span),
    ))
}

pin_project_lite::pin_project! {
    /// `inner`, its log lines carrying the request's fields (see the module docs).
    pub struct InRequest<F> {
        fields: Option<RequestFields>,
        #[pin]
        inner: F,
    }
}

impl<F> InRequest<F> {
    /// `fields: None` logs as outside any request.
    pub fn new(fields: Option<RequestFields>, inner: F) -> Self {
        Self { fields, inner }
    }
}

impl<F: Future> Future for InRequest<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let outer = CURRENT.replace(this.fields.take());
        // Moved back even if `inner` panics (a panic is caught by the server and the
        // thread serves other requests).
        let _back = MoveBack {
            fields: this.fields,
            outer,
        };
        this.inner.poll(cx)
    }
}

/// Moves the request's fields out of the thread-local, the outer ones back in.
struct MoveBack<'a> {
    fields: &'a mut Option<RequestFields>,
    outer: Option<RequestFields>,
}

impl Drop for MoveBack<'_> {
    fn drop(&mut self) {
        *self.fields = CURRENT.replace(self.outer.take());
    }
}

/// The event formatter `inner` (tracing-subscriber's JSON or text one) with the
/// fields of the request being served added to the line (see the module docs).
pub struct WithRequest<E> {
    inner: E,
    json: bool,
}

impl<E> WithRequest<E> {
    pub fn new(inner: E, json: bool) -> Self {
        Self { inner, json }
    }
}

impl<S, N, E> FormatEvent<S, N> for WithRequest<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Inside a real span (none of ours is logged), that span is the line's.
        if ctx.lookup_current().is_some() {
            return self.inner.format_event(ctx, writer, event);
        }
        CURRENT.with_borrow(|fields| {
            let Some(fields) = fields else {
                return self.inner.format_event(ctx, writer.by_ref(), event);
            };
            let mut line = String::with_capacity(256);
            self.inner
                .format_event(ctx, Writer::new(&mut line), event)?;
            let at = if self.json {
                line.rfind('}')
            } else {
                line.find(event.metadata().target())
            };
            let Some(at) = at else {
                return writer.write_str(&line);
            };
            writer.write_str(&line[..at])?;
            if self.json {
                // `{…}` → `{…,"span":{…}}`.
                let comma = if line[..at].trim_end().ends_with('{') {
                    ""
                } else {
                    ","
                };
                write!(
                    writer,
                    "{comma}\"span\":{{\"name\":\"request\",\"request_id\":\""
                )?;
                Escape(&mut writer).write_str(fields.id())?;
                writer.write_str("\",\"method\":\"")?;
                Escape(&mut writer).write_str(fields.method.as_str())?;
                writer.write_str("\",\"path\":\"")?;
                Escape(&mut writer).write_str(fields.path())?;
                writer.write_str("\"}")?;
            } else {
                write!(
                    writer,
                    "request{{request_id={:?} method={:?} path={:?}}}: ",
                    fields.id(),
                    fields.method.as_str(),
                    fields.path()
                )?;
            }
            writer.write_str(&line[at..])
        })
    }
}

/// Writes text as the inside of a JSON string.
struct Escape<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escape<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // The usual text (ids, methods, paths) needs no escape: one write.
        if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
            return self.0.write_str(s);
        }
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let escaped = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            if escaped.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escaped)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn escapes_like_json() {
        let mut out = String::new();
        Escape(&mut out).write_str("a\"b\\c\nd\u{1}e/ü").unwrap();
        let parsed: String = serde_json::from_str(&format!("\"{out}\"")).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}e/ü");
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    /// Logs one line outside any request, two inside one (one of them from a task
    /// spawned on its behalf), one after it, with the subscriber `init_logging_with`
    /// installs in `json` or text.
    fn log_around_a_request(json: bool) -> Vec<String> {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = super::super::subscriber(
            super::super::LogFilter::parse("info").unwrap(),
            json,
            move || writer.clone(),
        );
        tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            tracing::info!(event = "before", "outside");
            let fields = RequestFields::new(
                HeaderValue::from_static("abc-1"),
                Method::POST,
                &"/a\"b/c?code=secret".parse().unwrap(),
            );
            rt.block_on(InRequest::new(Some(fields), async {
                tokio::task::yield_now().await;
                tracing::warn!(n = 7u64, "inside");
                spawn(async {
                    tracing::info!("spawned");
                })
                .await
                .unwrap();
            }));
            tracing::info!("after");
        });
        buf.lines()
    }

    #[test]
    fn json_lines_inside_a_request_carry_its_fields_and_no_others_do() {
        let lines: Vec<serde_json::Value> = log_around_a_request(true)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].get("span").is_none(), "{}", lines[0]);
        assert_eq!(lines[0]["event"], "before");
        for line in &lines[1..3] {
            let span = &line["span"];
            assert_eq!(span["name"], "request", "{line}");
            assert_eq!(span["request_id"], "abc-1");
            assert_eq!(span["method"], "POST");
            assert_eq!(span["path"], "/a\"b/c", "never the query");
        }
        assert_eq!(lines[1]["n"], 7);
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[2]["message"], "spawned");
        assert!(lines[3].get("span").is_none(), "{}", lines[3]);
        assert!(!lines.iter().any(|l| l.to_string().contains("secret")));
    }

    #[test]
    fn text_lines_inside_a_request_name_it_before_the_target() {
        let lines = log_around_a_request(false);
        assert_eq!(lines.len(), 4, "{lines:?}");
        let target = module_path!();
        let request = r#"request{request_id="abc-1" method="POST" path="/a\"b/c"}: "#;
        assert!(!lines[0].contains("request{"), "{}", lines[0]);
        for line in &lines[1..3] {
            assert!(line.contains(&format!("{request}{target}: ")), "{line}");
        }
        assert!(lines[1].contains("inside") && lines[1].contains("n=7"));
        assert!(!lines[3].contains("request{"), "{}", lines[3]);
    }
}
