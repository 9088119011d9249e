//! The gateway: what every request handler shares ([`Gateway`], across every
//! runtime; [`AppState`], per runtime) and what a request is for ([`Target`],
//! decided once per request).
//!
//! Runtime model (see `docs/architecture.md` and `docs/performance.md`): one
//! current-thread tokio runtime per core, each serving the same `Router` over one
//! shared [`Gateway`] (`Send + Sync`) with its own upstream connection pool, so a
//! request never hops threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;

use crate::config::Config;
use crate::error::ApiError;
use crate::frontend::{Frontend, Frontends};
use crate::security::{GuardConfig, Limits};
use crate::session::{SessionId, SessionRecord, Sessions, cookie};
use crate::telemetry::Endpoint;
use crate::tokens::{Timings, TokenManager};
use crate::upstream::{ProtocolClients, Route, UpstreamClient};

/// Everything the request handlers share, across every runtime.
pub struct Gateway {
    pub config: Config,
    pub sessions: Arc<Sessions>,
    pub frontends: Frontends,
    pub tokens: Arc<TokenManager>,
    pub guard: GuardConfig,
    pub limits: Limits,
    /// The TLS client configuration of `https://` upstreams (every runtime's client).
    pub upstream_tls: Arc<rustls::ClientConfig>,
    /// Set when shutdown begins; readiness fails from then on.
    draining: AtomicBool,
}

impl Gateway {
    /// Builds the gateway from a validated config: opens the store, prepares the
    /// OIDC client, the routes and the upstream TLS. Does not contact the provider.
    pub async fn new(config: Config) -> Result<Self, String> {
        let upstream_tls = crate::upstream::tls::client_config_for(&config.server)?;
        let sessions = Arc::new(Sessions::open(&config.session).await?);
        let frontends = Frontends::from_config(&config)?;
        let http_timeout = config
            .frontends
            .iter()
            .map(|f| f.oidc.http_timeout)
            .max()
            .unwrap_or_default();
        let tokens = TokenManager::new(
            sessions.clone(),
            Timings::new(
                config.tokens.refresh_before,
                http_timeout,
                config.tokens.refresh_timeout,
            ),
        );
        let guard = GuardConfig::new(&config);
        let limits = Limits::new(&config);
        Ok(Self {
            config,
            sessions,
            frontends,
            tokens,
            guard,
            limits,
            upstream_tls,
            draining: AtomicBool::new(false),
        })
    }

    /// Marks the gateway as draining (readiness fails from now on).
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The session named by the request's cookie for this frontend, if it is live. A
    /// session of another frontend is not accepted, whatever cookie name carries it.
    pub async fn current_session(
        &self,
        frontend: &Frontend,
        headers: &HeaderMap,
    ) -> Result<Option<(SessionId, Arc<SessionRecord>)>, ApiError> {
        self.current_session_with(frontend, headers, true).await
    }

    /// [`Gateway::current_session`], without extending the session's idle timeout
    /// when `slide` is false (see `Sessions::load_with`).
    pub async fn current_session_with(
        &self,
        frontend: &Frontend,
        headers: &HeaderMap,
        slide: bool,
    ) -> Result<Option<(SessionId, Arc<SessionRecord>)>, ApiError> {
        let Some(id) = cookie::find(headers, &frontend.cookie_name).and_then(SessionId::parse)
        else {
            return Ok(None);
        };
        Ok(self
            .sessions
            .load_with(&id, &frontend.name, slide)
            .await?
            .map(|record| (id, record)))
    }

    /// What a request for `uri` with these headers is for (see [`Target`]).
    pub fn target_of(&self, uri: &Uri, headers: &HeaderMap) -> Target {
        let path = uri.path();
        if path == "/healthz" || path == "/readyz" {
            return Target {
                frontend: None,
                kind: TargetKind::Health,
            };
        }
        let Some(frontend) = self.frontends.select(uri, headers) else {
            return Target {
                frontend: None,
                kind: TargetKind::Other,
            };
        };
        let kind = if let Some(bff) = frontend.bff_path(path) {
            TargetKind::Bff(Endpoint::of(bff))
        } else if self.frontends.is_bff_endpoint(path) {
            // Another frontend's `/bff` endpoint (its prefix is a path of this one's):
            // the router's, never this frontend's API route. Its handler answers 404
            // (the request's frontend is this one, whose endpoint it is not).
            TargetKind::Other
        } else if let Some(route) = frontend.routes.position(path) {
            TargetKind::Api(route)
        } else if frontend.static_files().is_some() {
            TargetKind::Static
        } else {
            TargetKind::Other
        };
        Target {
            frontend: Some(frontend.clone()),
            kind,
        }
    }
}

/// Per-runtime state handed to handlers: the shared gateway and this runtime's
/// upstream client. Cloned by every layer of every request, so the client is behind
/// an `Arc` (one count, not the client's half-dozen).
#[derive(Clone)]
pub struct AppState {
    pub gw: Arc<Gateway>,
    pub upstream: Arc<UpstreamClient>,
    /// The runtime's clients for `https://` routes with `http2 = false` and for
    /// `h2c://` routes (`proxy::client_for`).
    pub protocol_clients: Arc<ProtocolClients>,
}

impl AppState {
    /// State for the current runtime (the upstream pool belongs to it).
    pub fn new(gw: Arc<Gateway>) -> Self {
        let upstream = Arc::new(crate::upstream::client(&gw.upstream_tls));
        let protocol_clients = Arc::new(ProtocolClients::new(&gw.upstream_tls));
        Self {
            gw,
            upstream,
            protocol_clients,
        }
    }
}

/// What a request is for: its frontend (if any claims it) and which of the
/// frontend's parts serves it. Decided once, by the first layer that asks
/// ([`Target::of`]), and kept in the request's extensions for every layer, extractor
/// and handler after it (an API route's is handed along instead).
#[derive(Clone)]
pub struct Target {
    pub frontend: Option<Arc<Frontend>>,
    pub kind: TargetKind,
}

/// Which part of the gateway serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// `/healthz`, `/readyz`.
    Health,
    /// A `{prefix}/bff/*` endpoint.
    Bff(Endpoint),
    /// An API route: its index in the frontend's route table.
    Api(usize),
    /// The frontend's static files.
    Static,
    /// Nothing serves it (404).
    Other,
}

impl Target {
    /// The request's target: the one decided earlier in this request, or decided now
    /// and kept.
    pub fn of(gw: &Gateway, request: &mut Request) -> Self {
        if let Some(t) = request.extensions().get::<Target>() {
            return t.clone();
        }
        let t = gw.target_of(request.uri(), request.headers());
        // An API route's request goes from the first layer straight to its handler
        // (`server::handle`), which is given the target: no one reads it back.
        if !matches!(t.kind, TargetKind::Api(_)) {
            request.extensions_mut().insert(t.clone());
        }
        t
    }

    /// The API route, when the target is one.
    pub fn route(&self) -> Option<&Route> {
        match (self.kind, &self.frontend) {
            (TargetKind::Api(i), Some(f)) => f.routes.get(i),
            _ => None,
        }
    }

    /// The `route` label of the request metrics: `bff`, `health`, an API prefix,
    /// `static` or `other`.
    pub fn label(&self) -> &'static str {
        match self.kind {
            TargetKind::Health => "health",
            TargetKind::Bff(_) => "bff",
            TargetKind::Api(_) => self.route().map_or("other", |r| r.label),
            TargetKind::Static => "static",
            TargetKind::Other => "other",
        }
    }

    /// The `/bff` endpoint whose outcome is a metric of its own.
    pub fn endpoint(&self) -> Endpoint {
        match self.kind {
            TargetKind::Bff(e) => e,
            _ => Endpoint::Other,
        }
    }
}

/// Extractor for `/bff/*` handlers: the frontend whose `{prefix}/bff` the request
/// is under. A request no frontend claims (another host) gets 404.
pub struct Current(pub Arc<Frontend>);

impl FromRequestParts<AppState> for Current {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let target = match parts.extensions.get::<Target>() {
            Some(t) => t.clone(),
            None => state.gw.target_of(&parts.uri, &parts.headers),
        };
        match (target.kind, target.frontend) {
            (TargetKind::Bff(_), Some(f)) => Ok(Self(f)),
            _ => Err(crate::error::not_found()),
        }
    }
}
