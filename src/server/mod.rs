//! The server: `fn app(state) -> App` (the phases, the `/bff` router, dispatch to
//! an API route or the SPA's files), the listeners, TLS termination, the admin
//! listener and graceful shutdown. The shared state is `crate::gateway`'s.

pub mod admin;
mod connection;
pub mod guard;
mod listen;
pub mod request;
pub mod tls;

use axum::Router;
use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

pub use listen::{Server, serve};

use crate::error::not_found;
use crate::gateway::{AppState, Target, TargetKind};
use crate::telemetry::scope::InRequest;

/// The whole browser-facing application: the phases every request goes through, in
/// order, then the `/bff` router, the health checks, an API route or the SPA's files.
///
/// The phases are plain function calls before and after one future, the handler's:
/// not `from_fn` layers (which box a future and clone the state and the inner service
/// per layer per request), nor futures around futures (each of which keeps its own
/// copy of the request, and the whole is copied into hyper's task per request):
/// 1. (feature `otel`) the OpenTelemetry server span (`request::otel`);
/// 2. the request id, the request's log fields (`telemetry::scope`) and the metrics
///    (`request::begin` and `request::end`) — they see every answer, refusals included;
/// 3. methods and `Host` refused before anything else, nosniff on every answer
///    (`security::headers::check_request` and `nosniff`);
/// 4. the guard (`guard::admit` and `guard::answer`);
/// 5. the handler: an API route's request goes straight to [`dispatch_to`] (its
///    [`Target`] is already decided); everything else goes through the router.
///
/// Tests drive it with `oneshot` (it is a `tower::Service`), no socket.
///
/// Cloned per request: one count on an `Arc` of this worker's own (each worker
/// runtime builds its `App`), never the gateway's shared counts, which every core
/// would write on every request.
#[derive(Clone)]
pub struct App {
    inner: std::sync::Arc<AppInner>,
}

struct AppInner {
    state: AppState,
    router: Router,
    /// The router's paths (what axum's `MatchedPath` would say), the server span's
    /// `http.route`.
    #[cfg(feature = "otel")]
    paths: std::collections::HashSet<String>,
}

/// The browser-facing application (see [`App`]).
pub fn app(state: AppState) -> App {
    let prefixes = state.gw.frontends.prefixes();
    let bff = crate::bff::router(state.clone(), &prefixes)
        .layer(axum::middleware::from_fn(crate::security::bff_headers));
    let router = Router::new()
        .merge(bff)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(dispatch)
        .with_state(state.clone());
    App {
        inner: std::sync::Arc::new(AppInner {
            #[cfg(feature = "otel")]
            paths: crate::bff::paths(&prefixes)
                .chain(["/healthz".to_owned(), "/readyz".to_owned()])
                .collect(),
            state,
            router,
        }),
    }
}

impl App {
    /// Serves one request through every phase (see [`App`]).
    #[cfg(feature = "otel")]
    pub async fn serve(self, request: Request, peer: Option<SocketAddr>) -> Response {
        if crate::telemetry::otel::enabled() {
            return self.serve_traced(request, peer).await;
        }
        self.serve_logged(request, peer).await
    }

    /// Serves one request through every phase (see [`App`]). Not a future around
    /// [`Self::serve_logged`]'s, which would keep another copy of the request.
    #[cfg(not(feature = "otel"))]
    pub fn serve(
        self,
        request: Request,
        peer: Option<SocketAddr>,
    ) -> impl Future<Output = Response> + Send {
        self.serve_logged(request, peer)
    }

    /// Phase 1: the OpenTelemetry server span around the other phases.
    #[cfg(feature = "otel")]
    async fn serve_traced(self, mut request: Request, peer: Option<SocketAddr>) -> Response {
        let trusted = request::from_trusted_proxy(&self.inner.state, peer);
        let target = Target::of(&self.inner.state.gw, &mut request);
        // Low cardinality: an API route's prefix, else the router's path (`/bff/user`),
        // else nothing (static files, unknown paths).
        let route = match target.route() {
            Some(r) => r.prefix.clone(),
            None => self
                .inner
                .paths
                .get(request.uri().path())
                .cloned()
                .unwrap_or_default(),
        };
        crate::telemetry::otel::serve(request, |r| self.serve_logged(r, peer), &route, trusted)
            .await
    }

    /// Phases 2 to 5: each phase's way in and way out are plain calls around one
    /// future (see `request::begin`), the handler's.
    async fn serve_logged(self, mut request: Request, peer: Option<SocketAddr>) -> Response {
        let AppInner { state, router, .. } = &*self.inner;
        let (begun, target, fields) = request::begin(state, &mut request, peer);
        let mut response =
            InRequest::new(Some(fields), phases(state, router, &target, request, peer)).await;
        request::end(begun, &target, &mut response);
        response
    }
}

/// Phases 3 to 5, inside the request's log fields.
async fn phases(
    state: &AppState,
    router: &Router,
    target: &Target,
    request: Request,
    peer: Option<SocketAddr>,
) -> Response {
    let mut response = match crate::security::headers::check_request(&request) {
        Err(e) => e.into_response(),
        Ok(()) => match guard::admit(state, &request, target) {
            guard::Admission::Answered(answer) => answer,
            guard::Admission::Admitted(admitted) => {
                let response = handle(state, router, target, request, peer).await;
                guard::answer(state, response, admitted)
            }
        },
    };
    crate::security::headers::nosniff(&mut response);
    response
}

impl tower::Service<Request> for App {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    /// The peer is the request's [`ConnectInfo`], when it has one.
    fn call(&mut self, request: Request) -> Self::Future {
        let app = self.clone();
        let peer = crate::security::peer_addr(request.extensions());
        crate::primitives::pin_in_place(|| async move { Ok(app.serve(request, peer).await) })
    }
}

/// Phase 5: the handler. An API route's request can't be one of the router's
/// (those are every frontend's `/bff` endpoints and the health checks, whose targets
/// are never an API route's: see `Gateway::target_of`), so the router would only hand
/// it to its fallback: it goes there directly, given the `peer`. The router's
/// handlers find the peer where axum's extractors look, the request's [`ConnectInfo`]
/// — put there only for them: it costs an extension map (three allocations) per
/// request.
async fn handle(
    state: &AppState,
    router: &Router,
    target: &Target,
    mut request: Request,
    peer: Option<SocketAddr>,
) -> Response {
    if matches!(target.kind, TargetKind::Api(_)) {
        return dispatch_to(state, target, request, peer).await;
    }
    if let Some(peer) = peer {
        request.extensions_mut().insert(ConnectInfo(peer));
    }
    match router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

async fn healthz() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], "ok\n")
}

/// Ready when the store answers and the provider's metadata and keys are loaded
/// (the same check as the admin listener's, see [`admin::readiness`]).
async fn readyz(State(state): State<AppState>) -> Response {
    admin::readiness(&state.gw).await
}

/// Everything outside `/bff`: an API route, else the SPA's files (the router's
/// fallback).
async fn dispatch(State(state): State<AppState>, mut request: Request) -> Response {
    let target = Target::of(&state.gw, &mut request);
    let peer = crate::security::peer_addr(request.extensions());
    dispatch_to(&state, &target, request, peer).await
}

/// [`dispatch`], for the request's `target`, from `peer`.
async fn dispatch_to(
    state: &AppState,
    target: &Target,
    request: Request,
    peer: Option<SocketAddr>,
) -> Response {
    let Some(frontend) = &target.frontend else {
        return not_found();
    };
    match target.kind {
        TargetKind::Api(_) => {
            let route = target.route().expect("an API target has its route");
            // Inline, not boxed: the whole request's future is built in its box (see
            // `listen`), the proxy's large one (every phase's state) with it; a box of
            // its own would be a second allocation per request.
            match crate::proxy::proxy(state, frontend, route, peer.map(|p| p.ip()), request).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            }
        }
        TargetKind::Static => match frontend.static_files() {
            Some(s) => crate::primitives::pin_in_place(|| serve_static(s, frontend, request)).await,
            None => not_found(),
        },
        TargetKind::Health | TargetKind::Bff(_) | TargetKind::Other => not_found(),
    }
}

/// The SPA's files; an unknown GET navigation gets `index.html` when `spa_fallback`.
/// A frontend under a path prefix serves its files under it: `{prefix}/app.js` is
/// `{dir}/app.js`.
///
/// A directory without its trailing slash is redirected to it, and that `Location` is
/// built here, never from the request as sent: ServeDir would answer `//assets` with
/// `Location: //assets/` (a protocol-relative URL a browser follows off-site) and an
/// absolute-form request with its own authority. Ours is `{prefix}/{dir}/` with the
/// leading slashes and backslashes collapsed, and must pass the `returnUrl` rules, or
/// the answer is 404.
async fn serve_static(
    config: &crate::config::StaticConfig,
    frontend: &crate::frontend::Frontend,
    mut request: Request,
) -> Response {
    let prefix = frontend.prefix.as_str();
    // Path and query only, under the prefix: ServeDir never sees an authority.
    if !prefix.is_empty() || request.uri().authority().is_some() {
        let path = request.uri().path();
        let rest = path.strip_prefix(prefix).unwrap_or(path);
        let rest = if rest.is_empty() { "/" } else { rest };
        let uri = match request.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        match uri.parse() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => return not_found(),
        }
    }
    let local = request.uri().clone(); // shares its bytes: no copy
    let (dir, spa_fallback) = (&config.dir, config.spa_fallback);
    let navigation = spa_fallback
        && matches!(*request.method(), Method::GET | Method::HEAD)
        && (request
            .headers()
            .get("sec-fetch-mode")
            .is_some_and(|v| v == "navigate")
            || request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html")));
    let method = request.method().clone();
    let response = match ServeDir::new(dir)
        .append_index_html_on_directories(true)
        .oneshot(request)
        .await
    {
        Ok(r) => r.map(Body::new),
        Err(never) => match never {},
    };
    // ServeDir's only redirect is the directory one (a 304 is a redirection class too).
    let response = if response.headers().contains_key(header::LOCATION) {
        match directory_redirect(frontend, local.path(), local.query()) {
            Some(r) => r,
            None => return not_found(),
        }
    } else {
        response
    };
    let mut response = if response.status() == StatusCode::NOT_FOUND && navigation {
        let index = Request::builder()
            .method(method)
            .uri("/index.html")
            .body(Body::empty())
            .expect("static request");
        match ServeFile::new(dir.join("index.html")).oneshot(index).await {
            Ok(r) => r.map(Body::new),
            Err(never) => match never {},
        }
    } else {
        response
    };
    if let Ok(csp) = HeaderValue::from_str(&config.csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    crate::security::frame_and_sniff(response.headers_mut());
    response
}

/// `307 Location: {prefix}/{dir}/` for a directory asked for without its slash; `None`
/// when that would not be a plain path on the frontend's origin.
fn directory_redirect(
    frontend: &crate::frontend::Frontend,
    path: &str,
    query: Option<&str>,
) -> Option<Response> {
    let dir = path.trim_start_matches(['/', '\\']);
    let mut location = format!("{}/{dir}/", frontend.prefix);
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let location = crate::security::validate_return_url(&location, &frontend.origin).ok()?;
    let value = HeaderValue::try_from(location).ok()?;
    Some((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, value)]).into_response())
}
