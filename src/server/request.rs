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

use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;

use crate::gateway::{AppState, Target};
use crate::telemetry::X_REQUEST_ID;
use crate::telemetry::request::{acceptable_id, generate_id, record};
use crate::telemetry::scope::{InRequest, RequestFields};

/// Whether the request comes from a trusted proxy (whose request id and trace
/// context are believed).
pub(super) fn from_trusted_proxy(state: &AppState, request: &Request) -> bool {
    crate::security::is_trusted_proxy(
        &state.gw.config.server.trusted_proxies,
        crate::security::peer_ip(request.extensions()),
    )
}

/// The request id, span and metrics phase, outermost (see [`super::App`]): `inner`
/// serves the request, with its [`Target`], inside the request's span.
pub async fn around<F, Fut>(state: &AppState, mut request: Request, inner: F) -> Response
where
    F: FnOnce(Request, Target) -> Fut,
    Fut: Future<Output = Response>,
{
    let started = Instant::now();
    let trusted = from_trusted_proxy(state, &request);
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| trusted && acceptable_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(generate_id);
    request
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), id.clone());
    let target = Target::of(&state.gw, &mut request);
    let (label, endpoint) = (target.label(), target.endpoint());

    // Every line logged while serving it names the request (never its query).
    let fields = RequestFields::new(id.clone(), request.method().clone(), request.uri());
    let mut response = InRequest::new(Some(fields), inner(request, target)).await;
    record(label, endpoint, &response, started.elapsed());
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
}
