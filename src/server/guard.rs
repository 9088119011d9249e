//! The request guard middleware: the rules of `security::guard` (the `Origin` and
//! `Sec-Fetch-Site` layers of the CSRF defence, CORS, HSTS, the `/bff/*` body limit,
//! framing) applied in front of every handler, to the request's [`Target`].

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::frontend::Frontend;
use crate::gateway::{AppState, Target, TargetKind};
use crate::security::guard::{
    AmbiguousFraming, GuardConfig, HeadFacts, check_framing, check_request_origin, content_length,
    head_size, is_loopback_name, preflight, with_cors,
};
use crate::telemetry::Endpoint;

/// What the guard decided on the way in.
pub enum Admission {
    /// The request goes on to its handler; its answer goes through [`answer`].
    Admitted(Admitted),
    /// This is the request's answer (a refusal, a preflight's answer, a redirect).
    Answered(Response),
}

/// A request the guard let through: what its answer gets on the way out ([`answer`]).
pub struct Admitted {
    /// The allowed cross origin the request came from, if any (CORS headers).
    cross: Option<HeaderValue>,
}

/// The guard (see the module docs) on the way in, for the request's `target`: a plain
/// function, not a future around the handler's (see `server::request::begin`).
pub fn admit(state: &AppState, request: &Request, target: &Target) -> Admission {
    let gw = &state.gw;
    let config = &gw.guard;
    let head = HeadFacts::of(request.headers());
    let framing = match request.extensions().get::<AmbiguousFraming>() {
        Some(_) => Err(ApiError::invalid(
            "Content-Length together with Transfer-Encoding",
        )),
        None => check_framing(&head),
    };
    if let Err(e) = framing {
        return Admission::Answered(framing_refused(e, request.version()));
    }
    // hyper's read buffer limit only bounds a head that arrives in pieces; this is exact.
    if head_size(request, &head) > config.max_head {
        return Admission::Answered(ApiError::HeadTooLarge.into_response());
    }
    let is_protected = protected(target, request.method());
    let cross = config.allowed_cross_origin(head.origin).cloned();

    // CORS preflight.
    if request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return Admission::Answered(match &cross {
            Some(origin) if is_protected || matches!(target.kind, TargetKind::Api(_)) => {
                preflight(origin, request.headers())
            }
            _ => {
                crate::security::audit_csrf_rejected("preflight from a foreign origin");
                ApiError::Csrf("cross-origin requests are not allowed").into_response()
            }
        });
    }
    let own_origin = target
        .frontend
        .as_ref()
        .map_or(config.public_origin.as_str(), |f| &f.origin_text);
    if is_protected && let Err(e) = check_request_origin(own_origin, &head, cross.is_some()) {
        crate::security::audit_csrf_rejected(e.to_string().as_str());
        return Admission::Answered(with_cors(e.into_response(), cross.as_ref(), config.hsts));
    }
    if matches!(target.kind, TargetKind::Bff(_))
        && content_length(request.headers()).is_some_and(|n| n > config.max_bff_body)
    {
        return Admission::Answered(
            ApiError::invalid("the request body is too large").into_response(),
        );
    }
    if let Some(f) = &target.frontend
        && let Some(redirect) = other_host_redirect(config, f, target.kind, request)
    {
        return Admission::Answered(with_cors(redirect, cross.as_ref(), config.hsts));
    }
    Admission::Admitted(Admitted { cross })
}

/// The guard on the way out: the CORS headers of an admitted cross-origin request,
/// and HSTS.
pub fn answer(state: &AppState, response: Response, admitted: Admitted) -> Response {
    with_cors(response, admitted.cross.as_ref(), state.gw.guard.hsts)
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
/// listening port (see `security::guard::canonical_host`); anything else is left alone.
/// The target is the configured origin and the request's own path: never an open
/// redirect.
fn other_host_redirect(
    config: &GuardConfig,
    frontend: &Frontend,
    kind: TargetKind,
    request: &Request,
) -> Option<Response> {
    let canonical = config.canonical_host.as_deref()?;
    // The target first: an API route's request (the proxy path) asks nothing more.
    match kind {
        TargetKind::Bff(Endpoint::Login) | TargetKind::Static | TargetKind::Other => {}
        TargetKind::Bff(_) | TargetKind::Api(_) | TargetKind::Health => return None,
    }
    if frontend.host.is_some()
        || !matches!(*request.method(), Method::GET | Method::HEAD)
        || !crate::security::is_navigation(request.headers())
    {
        return None;
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
fn protected(target: &Target, method: &Method) -> bool {
    match target.kind {
        TargetKind::Bff(Endpoint::User) => true,
        TargetKind::Bff(Endpoint::Logout) => method == Method::POST,
        TargetKind::Api(_) => target.route().is_some_and(|r| r.csrf),
        _ => false,
    }
}

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
