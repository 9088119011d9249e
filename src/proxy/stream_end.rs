//! Streamed answers end with their session: a session's answer that may run long
//! (server-sent events, a body of unknown or large length) is registered with the
//! session's streams (`session::streams`) and cut off when the session ends, here or
//! on another instance. Cut off means the body fails: the connection (HTTP/1.1) or
//! the stream (HTTP/2) is reset, so the browser sees the answer end before its end —
//! an `EventSource` then reconnects and gets 401.
//!
//! Answers with a known, small length are not registered: they are over before a
//! logout could matter, and the proxy's common path stays free of the registry.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use http_body::{Frame, SizeHint};

use crate::session::StoreKey;
use crate::session::streams::{Ended, Streams};

/// Answers longer than this (by `Content-Length`) are registered as streams.
const LONG_BODY_BYTES: u64 = 1 << 20;

/// Does this answer's body possibly run long enough to outlive its session?
pub fn may_run_long(headers: &HeaderMap) -> bool {
    let event_stream = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    event_stream
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_none_or(|n| n > LONG_BODY_BYTES)
}

/// `response` with a body that ends when the session of `key` does. Past the
/// route's cap of streams (none for answers) nothing is refused: answers are not capped.
pub fn bind(
    response: Response,
    streams: &std::sync::Arc<Streams>,
    key: StoreKey,
    route: &'static str,
) -> Response {
    let Ok(mut guard) = streams.open(key, route, None) else {
        return response;
    };
    crate::telemetry::stream_opened(route, KIND);
    let (parts, body) = response.into_parts();
    let bound = SessionBound {
        body,
        ended: crate::primitives::pin_in_place(|| async move { guard.ended().await }),
        route,
        session: key,
        opened: Instant::now(),
        outcome: "client_closed",
    };
    Response::from_parts(parts, Body::new(bound))
}

const KIND: &str = "stream";

struct SessionBound {
    body: Body,
    ended: Pin<Box<dyn Future<Output = Ended> + Send>>,
    route: &'static str,
    session: StoreKey,
    opened: Instant,
    /// What the audit event says when the body is dropped.
    outcome: &'static str,
}

/// The error a cut-off answer fails with (hyper then resets the connection).
#[derive(Debug, thiserror::Error)]
#[error("the session ended ({0})")]
struct SessionEnded(&'static str);

impl http_body::Body for SessionBound {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(why) = this.ended.as_mut().poll(cx) {
            this.outcome = why.as_str();
            return Poll::Ready(Some(Err(SessionEnded(why.as_str()).into())));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.outcome = "upstream_closed";
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.outcome = "error";
                Poll::Ready(Some(Err(e.into())))
            }
            other => other.map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for SessionBound {
    fn drop(&mut self) {
        crate::telemetry::audit_stream_closed(
            self.route,
            KIND,
            self.outcome,
            &self.session.log_label(),
            self.opened.elapsed(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_answers_are_streams() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        assert!(may_run_long(&h(&[("content-type", "text/event-stream")])));
        assert!(may_run_long(&h(&[
            ("content-type", "text/event-stream; charset=utf-8"),
            ("content-length", "10")
        ])));
        assert!(may_run_long(&h(&[("content-type", "application/json")])));
        assert!(may_run_long(&h(&[("content-length", "2000000")])));
        assert!(!may_run_long(&h(&[
            ("content-type", "application/json"),
            ("content-length", "120")
        ])));
    }
}
