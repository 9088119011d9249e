//! The server: the shared [`Gateway`], `fn app(state) -> Router`, the listeners and
//! graceful shutdown.
//!
//! Runtime model (see PERFORMANCE.md): one current-thread tokio runtime per core,
//! each with its own `SO_REUSEPORT` listener on the same address and its own
//! upstream connection pool, all serving the same `Router` over a shared
//! [`Gateway`] (`Send + Sync`). The kernel spreads connections over the threads; a
//! request never hops threads. A separate control runtime runs background work.

pub mod admin;
mod listen;
pub mod tls;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

pub use listen::{Server, serve};

use crate::config::Config;
use crate::oidc::Oidc;
use crate::proxy::rewrite::RewriteConfig;
use crate::proxy::{RouteTable, UpstreamClient};
use crate::session::Sessions;
use crate::tokens::TokenManager;

/// Everything the request handlers share, across every runtime.
pub struct Gateway {
    pub config: Config,
    pub sessions: Sessions,
    pub oidc: Oidc,
    pub tokens: TokenManager,
    pub routes: RouteTable,
    pub rewrite: RewriteConfig,
    pub guard: crate::security::GuardConfig,
    pub limits: crate::security::Limits,
}

impl Gateway {
    /// Builds the gateway from a validated config: opens the store, prepares the
    /// OIDC client and the routes. Does not contact the provider.
    pub async fn new(config: Config) -> Result<Self, String> {
        let sessions = Sessions::open(&config.session).await?;
        let oidc = Oidc::new(&config.oidc, config.redirect_uri())?;
        let routes = RouteTable::from_config(&config.routes)?;
        let origin = &config.server.public_origin;
        let host = match origin.port() {
            Some(p) => format!("{}:{p}", origin.host_str().unwrap_or_default()),
            None => origin.host_str().unwrap_or_default().to_owned(),
        };
        let rewrite = RewriteConfig {
            trusted_proxies: config.server.trusted_proxies.clone(),
            session_cookie: config.session.cookie_name.clone(),
            public_proto: HeaderValue::from_str(origin.scheme()).map_err(|e| e.to_string())?,
            public_host: HeaderValue::from_str(&host).map_err(|e| e.to_string())?,
        };
        let tokens = TokenManager::new(
            config.tokens.refresh_before,
            config.oidc.http_timeout,
            config.tokens.refresh_timeout,
        );
        let guard = crate::security::GuardConfig::new(&config);
        let limits = crate::security::Limits::new(&config);
        Ok(Self {
            config,
            sessions,
            oidc,
            tokens,
            routes,
            rewrite,
            guard,
            limits,
        })
    }
}

/// Per-runtime state handed to handlers: the shared gateway and this runtime's
/// upstream client. Cloned by every layer of every request, so the client is behind
/// an `Arc` (one count, not the client's half-dozen).
#[derive(Clone)]
pub struct AppState {
    pub gw: Arc<Gateway>,
    pub upstream: Arc<UpstreamClient>,
}

impl AppState {
    /// State for the current runtime (the upstream pool belongs to it).
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self {
            gw,
            upstream: Arc::new(crate::proxy::upstream_client()),
        }
    }
}

/// The whole browser-facing application. Tests drive it with `oneshot`, no socket.
pub fn app(state: AppState) -> Router {
    let bff = crate::bff::router(state.clone())
        .layer(axum::middleware::from_fn(crate::security::bff_headers));
    Router::new()
        .merge(bff)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::security::guard,
        ))
        // Outermost: request id, span and metrics see every answer, refusals included.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::telemetry::request::layer,
        ))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], "ok\n")
}

/// Ready when the store answers and the provider's metadata and keys are loaded
/// (the same check as the admin listener's, see [`admin::readiness`]).
async fn readyz(State(state): State<AppState>) -> Response {
    admin::readiness(&state.gw).await
}

/// Everything outside `/bff`: an API route, else the SPA's files.
async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    if let Some(route) = state.gw.routes.matching(request.uri().path()) {
        return match crate::proxy::proxy(&state, route, request).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        };
    }
    if request.uri().path() == "/bff" || request.uri().path().starts_with("/bff/") {
        return not_found();
    }
    match &state.gw.config.static_files {
        Some(s) => serve_static(s, request).await,
        None => not_found(),
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, "no-store")],
        "not found\n",
    )
        .into_response()
}

/// The SPA's files; an unknown GET navigation gets `index.html` when `spa_fallback`.
async fn serve_static(config: &crate::config::StaticConfig, request: Request) -> Response {
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
