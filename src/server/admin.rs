//! The admin listener (`server.admin_listen`): `/metrics` (OpenMetrics text),
//! `/healthz`, `/readyz`. Meant for the monitoring network, not for browsers: it is
//! a separate socket, so it can be bound to a private address while `listen` faces
//! the internet. It runs on the control runtime and stops after the drain.
//!
//! Readiness is the same check on both listeners ([`readiness`]): the store answers
//! and the provider's metadata and keys are loaded. Once shutdown has begun it
//! answers 503 `draining`, so a load balancer polling the admin port stops sending
//! new connections while in-flight requests finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::primitives::now_secs;
use crate::session::SessionStore;

/// How long a scrape waits for the store to count sessions.
const COUNT_TIMEOUT: Duration = Duration::from_secs(2);

/// The admin application.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::from_fn(crate::security::headers::layer))
        .with_state(gw)
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    count_sessions(&gw).await;
    let body = crate::telemetry::metrics().encode();
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// Liveness: the process answers.
pub async fn healthz() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], "ok\n").into_response()
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    readiness(&gw).await
}

/// Ready when not draining, the store answers, and the provider's metadata and keys
/// are loaded (tried now if they aren't yet).
pub async fn readiness(gw: &Gateway) -> Response {
    let draining = gw.is_draining();
    let store = gw.sessions.store().ping().await;
    let mut provider_ok = true;
    for frontend in gw.frontends.iter() {
        let oidc = &frontend.oidc;
        provider_ok &= oidc.is_loaded() || oidc.load().await.is_ok();
    }
    let mut body = serde_json::json!({
        "store": if store.is_ok() { "ok" } else { "unavailable" },
        "provider": if provider_ok { "ok" } else { "unavailable" },
    });
    if draining {
        body["draining"] = true.into();
    }
    let status = if store.is_ok() && provider_ok && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

/// Serves the admin application until `shutdown` turns true.
///
/// Health stays answerable when the process is out of file descriptors: the loop
/// keeps one spare descriptor (`/dev/null`) and gives it up when an accept fails
/// with EMFILE/ENFILE, so the monitoring connection waiting in the backlog gets it;
/// the spare is taken back when that connection ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let app = router(gw);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let ended = Arc::new(tokio::sync::Notify::new());
    let mut spare = spare_descriptor();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = ended.notified(), if spare.is_none() => {
                spare = spare_descriptor();
                continue;
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if super::connection::out_of_descriptors(&e) && spare.is_some() => {
                spare = None;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                if spare.is_none() {
                    spare = spare_descriptor();
                }
                continue;
            }
        };
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                app.clone().oneshot(request.map(axum::body::Body::new))
            });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let ended = ended.clone();
        tokio::spawn(async move {
            let _ = connection.await;
            ended.notify_one();
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

fn spare_descriptor() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Refreshes the `sessions_active` gauge from the store, at scrape time: one
/// count query per scrape (an index range in SQLite, `ZCOUNT` in Redis), exact
/// across instances sharing a store. A slow or failing store leaves the last value.
async fn count_sessions(gw: &Gateway) {
    match tokio::time::timeout(COUNT_TIMEOUT, gw.sessions.store().count(now_secs())).await {
        Ok(Ok(n)) => {
            crate::telemetry::metrics()
                .sessions_active
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "counting sessions failed"),
        Err(_) => tracing::debug!("counting sessions timed out"),
    }
}
