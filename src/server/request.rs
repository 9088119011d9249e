//! The outermost layers: the request id, the request's log fields and metrics
//! (`telemetry::request`), and with the `otel` feature its OpenTelemetry server span
//! (`telemetry::otel`). Both read the request's [`Target`], decided once.
//!
//! **Request id.** `X-Request-Id` is believed only from a peer in
//! `server.trusted_proxies` (and only when it is a short token of safe characters),
//! so a browser can't plant ids in the logs; otherwise a random UUID-shaped id is
//! generated. The id is set on the request (so proxied upstreams receive it), on
//! every log line of the request (with its method and path, never its query:
//! `telemetry::scope`), and on the response.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::Response;

use crate::gateway::{AppState, Target};
use crate::telemetry::X_REQUEST_ID;
use crate::telemetry::request::{acceptable_id, generate_id, record};
use crate::telemetry::scope::RequestFields;

/// Whether the request comes from a trusted proxy (whose request id and trace
/// context are believed).
pub(super) fn from_trusted_proxy(state: &AppState, peer: Option<SocketAddr>) -> bool {
    crate::security::is_trusted_proxy(
        &state.gw.config.server.trusted_proxies,
        peer.map(|p| p.ip()),
    )
}

/// What [`begin`] measured and decided, for [`end`].
pub struct Begun {
    started: Instant,
    id: HeaderValue,
}

/// The request id, log fields and metrics phase, outermost (see [`super::App`]), on
/// the way in: the clock started, the request id set on the request, its [`Target`]
/// decided, and the fields every line logged while serving it carries (never its
/// query). Plain functions around the one future that serves the request (not a
/// future wrapping another): a request's future is moved by `memcpy` on its way into
/// hyper's connection task, and each async layer that takes the request by value
/// keeps a copy of it in its state.
pub fn begin(
    state: &AppState,
    request: &mut Request,
    peer: Option<SocketAddr>,
) -> (Begun, Target, RequestFields) {
    let started = Instant::now();
    let trusted = from_trusted_proxy(state, peer);
    // Only a trusted proxy's id is looked at (no lookup for anyone else's).
    let id = trusted
        .then(|| request.headers().get(&X_REQUEST_ID))
        .flatten()
        .filter(|v| acceptable_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(generate_id);
    request
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), id.clone());
    let target = Target::of(&state.gw, request);
    let fields = RequestFields::new(id.clone(), request.method().clone(), request.uri());
    (Begun { started, id }, target, fields)
}

/// The same phase on the way out, for the request's `target`: the metrics recorded,
/// the request id on the answer.
pub fn end(begun: Begun, target: &Target, response: &mut Response) {
    let took = begun.started.elapsed();
    record(target.label(), target.endpoint(), response, took);
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), begun.id);
}
