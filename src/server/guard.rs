//! The request guard: the `Origin` and `Sec-Fetch-Site` layers of the CSRF defence,
//! CORS, HSTS and the `/bff/*` body limit, in front of every handler.
//!
//! Which requests are protected: `/bff/user`, `POST /bff/logout`, and every
//! proxied request of a route with `csrf = true` (the default). Not protected, on
//! purpose: `/bff/login` (a top-level navigation, possibly from a link elsewhere;
//! login CSRF is stopped by the state binding), `/bff/callback` (the provider's
//! cross-site redirect), `GET /bff/logout` (guarded by its `sid`), the back-channel
//! logout endpoint (server-to-server, authenticated by its signed token), health
//! checks and the SPA's files.
//!
//! The layers, each enough on its own against a cross-site page:
//! 1. `SameSite=Strict` on the session cookie (session::cookie).
//! 2. `X-CSRF: 1` on every call that uses the session (forces a CORS preflight,
//!    which fails for foreign origins) — checked where the session is used.
//! 3. `Sec-Fetch-Site`, when the browser sends it, must be `same-origin` or `none`
//!    (or the request comes from an allowed origin).
//! 4. `Origin`, when present, must be the public origin or an allowed origin.
//!
//! CORS is off unless `security.allowed_origins` names origins: then their
//! preflights are answered and their responses carry `Access-Control-Allow-Origin`
//! with that exact origin and credentials. Never `*`, never a reflected arbitrary
//! origin.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::frontend::Frontend;
use crate::server::AppState;

/// What the guard needs, prepared once from the config.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    public_origin: String,
    allowed_origins: Vec<String>,
    hsts: bool,
    max_bff_body: u64,
    max_head: usize,
    /// `host:port` of the public origin when navigations on another loopback host
    /// name are sent there (see [`other_host_redirect`]).
    canonical_host: Option<String>,
}

impl GuardConfig {
    pub fn new(config: &crate::config::Config) -> Self {
        Self {
            public_origin: config.server.public_origin.origin().ascii_serialization(),
            allowed_origins: config
                .security
                .allowed_origins
                .iter()
                .map(|o| o.origin().ascii_serialization())
                .collect(),
            hsts: config.server.public_origin.scheme() == "https",
            max_bff_body: config.security.max_bff_body_bytes,
            max_head: config.security.max_header_bytes,
            canonical_host: canonical_host(config),
        }
    }

    /// The `Origin` value if it is one of the allowed *other* origins.
    fn allowed_cross_origin<'a>(&self, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        let o = origin?;
        let text = o.to_str().ok()?;
        self.allowed_origins.iter().any(|a| a == text).then_some(o)
    }
}

/// The public origin's `host:port`, when the wrong-host redirect applies: the public
/// origin is a loopback one and on the port `server.listen` binds, so the browser
/// talks to this process directly. Behind a proxy (another port, another host) the
/// `Host` a request carries may be the proxy's idea, and redirecting would loop.
fn canonical_host(config: &crate::config::Config) -> Option<String> {
    let origin = &config.server.public_origin;
    let port = origin.port_or_known_default()?;
    let host = origin.host_str()?;
    (is_loopback_name(host) && port == config.server.listen.port())
        .then(|| format!("{host}:{port}"))
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A browser navigation that reached this gateway under another loopback name
/// (`localhost` for a public origin of `127.0.0.1`, or `[::1]`) is sent to the
/// public origin, same path and query, before a login starts: cookies are per host,
/// so a login started on one name can't finish on the other (its callback comes back
/// to the public origin, without the login's binding cookie).
///
/// Which requests: `GET`/`HEAD` navigations to `/bff/login` and to the SPA's pages,
/// of a frontend without its own `host`. Never API routes (they are never redirected)
/// nor other `/bff` endpoints. Which hosts: only loopback names on the public origin's
/// port, and only when the public origin itself is such a loopback origin on the
/// listening port (see [`canonical_host`]); anything else is left alone. The target
/// is the configured origin and the request's own path: never an open redirect.
fn other_host_redirect(
    config: &GuardConfig,
    frontend: &Frontend,
    request: &Request,
) -> Option<Response> {
    let canonical = config.canonical_host.as_deref()?;
    if frontend.host.is_some()
        || !matches!(*request.method(), Method::GET | Method::HEAD)
        || !crate::security::is_navigation(request.headers())
    {
        return None;
    }
    let path = request.uri().path();
    match frontend.bff_path(path) {
        Some("/login") => {}
        Some(_) => return None,
        None if frontend.routes.matching(path).is_some() => return None,
        None => {}
    }
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(header::HOST)?.to_str().ok())?;
    let authority: axum::http::uri::Authority = host.parse().ok()?;
    let port = authority
        .port_u16()
        .unwrap_or(match frontend.origin.scheme() {
            "https" => 443,
            _ => 80,
        });
    let same = authority
        .host()
        .eq_ignore_ascii_case(frontend.origin.host_str()?)
        || format!("{}:{port}", authority.host()).eq_ignore_ascii_case(canonical);
    if same
        || !is_loopback_name(authority.host())
        || Some(port) != frontend.origin.port_or_known_default()
    {
        return None;
    }
    let target = format!(
        "{}{}",
        frontend.origin_text,
        request.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    tracing::info!(
        host = authority.host(),
        "a navigation on another host name than the public origin's: redirected there"
    );
    let location = HeaderValue::try_from(target).ok()?;
    Some(
        (
            StatusCode::TEMPORARY_REDIRECT,
            [
                (header::LOCATION, location),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
    )
}

/// Is this request one the CSRF layers protect?
fn protected(frontend: Option<&Frontend>, method: &Method, path: &str) -> bool {
    let Some(frontend) = frontend else {
        return false;
    };
    match frontend.bff_path(path) {
        Some("/user") => true,
        Some("/logout") => method == Method::POST,
        Some(_) => false,
        None => frontend.routes.matching(path).is_some_and(|r| r.csrf),
    }
}

/// Layers 3 and 4: `Sec-Fetch-Site` and `Origin`.
pub fn check_request_origin(
    public_origin: &str,
    headers: &HeaderMap,
    cross_allowed: bool,
) -> Result<(), ApiError> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let ok = matches!(site.as_bytes(), b"same-origin" | b"none") || cross_allowed;
        if !ok {
            return Err(ApiError::Csrf(
                "cross-site request refused (Sec-Fetch-Site)",
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin.as_bytes() == public_origin.as_bytes() || cross_allowed;
        if !ok {
            return Err(ApiError::Csrf(
                "request from a foreign origin refused (Origin)",
            ));
        }
    }
    Ok(())
}

/// The guard middleware (see the module docs).
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let gw = &state.gw;
    let config = &gw.guard;
    let framing = match request.extensions().get::<AmbiguousFraming>() {
        Some(_) => Err(ApiError::invalid(
            "Content-Length together with Transfer-Encoding",
        )),
        None => check_framing(request.headers()),
    };
    if let Err(e) = framing {
        return framing_refused(e, request.version());
    }
    // hyper's read buffer limit only bounds a head that arrives in pieces; this is exact.
    if head_size(&request) > config.max_head {
        return ApiError::HeadTooLarge.into_response();
    }
    let path = request.uri().path();
    let frontend = gw.frontends.select(request.uri(), request.headers());
    let is_protected = protected(frontend.map(|f| &**f), request.method(), path);
    let cross = config
        .allowed_cross_origin(request.headers().get(header::ORIGIN))
        .cloned();

    // CORS preflight.
    if request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return match &cross {
            Some(origin)
                if is_protected || frontend.is_some_and(|f| f.routes.matching(path).is_some()) =>
            {
                preflight(origin, request.headers())
            }
            _ => {
                crate::security::audit_csrf_rejected("preflight from a foreign origin");
                ApiError::Csrf("cross-origin requests are not allowed").into_response()
            }
        };
    }
    let own_origin = frontend.map_or(config.public_origin.as_str(), |f| &f.origin_text);
    if is_protected
        && let Err(e) = check_request_origin(own_origin, request.headers(), cross.is_some())
    {
        crate::security::audit_csrf_rejected(e.to_string().as_str());
        return with_cors(e.into_response(), cross.as_ref(), config.hsts);
    }
    if frontend.is_some_and(|f| f.bff_path(path).is_some())
        && content_length(request.headers()).is_some_and(|n| n > config.max_bff_body)
    {
        return ApiError::invalid("the request body is too large").into_response();
    }
    if let Some(f) = frontend
        && let Some(redirect) = other_host_redirect(config, f, &request)
    {
        return with_cors(redirect, cross.as_ref(), config.hsts);
    }
    let response = next.run(request).await;
    with_cors(response, cross.as_ref(), config.hsts)
}

/// Marks a request whose head carried both `Content-Length` and
/// `Transfer-Encoding` (found by the listener's framing inspector, because hyper drops
/// the `Content-Length` of such a request before any handler sees it).
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

/// A framing refusal closes the connection (HTTP/1.1): once the framing is in doubt,
/// so is where the next request starts, and the bytes after this one must never be
/// served as a request.
fn framing_refused(e: ApiError, version: axum::http::Version) -> Response {
    tracing::info!(error = %e, "request with ambiguous framing refused; closing the connection");
    let mut response = e.into_response();
    if version < axum::http::Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Ambiguous message framing is refused before anything reaches an upstream
/// (RFC 9112 §6.3; request smuggling): `Content-Length` together with
/// `Transfer-Encoding`, several `Content-Length`s, or a transfer coding other than
/// a lone `chunked`. The connection is closed after the refusal.
pub fn check_framing(headers: &HeaderMap) -> Result<(), ApiError> {
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if lengths > 1 {
        return Err(ApiError::invalid("several Content-Length headers"));
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        if lengths > 0 {
            return Err(ApiError::invalid(
                "Content-Length together with Transfer-Encoding",
            ));
        }
        if codings.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(ApiError::invalid("unsupported Transfer-Encoding"));
        }
    }
    Ok(())
}

/// The size of the request head as sent: request line and header lines.
fn head_size(request: &Request) -> usize {
    let line = request.method().as_str().len()
        + request
            .uri()
            .path_and_query()
            .map_or(1, |p| p.as_str().len())
        + 12;
    request
        .headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn with_cors(mut response: Response, origin: Option<&HeaderValue>, hsts: bool) -> Response {
    let h = response.headers_mut();
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    response
}

fn preflight(origin: &HeaderValue, headers: &HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE"),
    );
    let requested = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        requested.unwrap_or(HeaderValue::from_static("x-csrf, content-type")),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}
