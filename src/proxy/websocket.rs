//! WebSockets through a route that opts in (`routes[].websocket = true`).
//!
//! The handshake is an API call like any other — route, session per the route's
//! token kind, the token as `Authorization` upstream, header hygiene — plus the
//! checks of its own, in this order, all before anything reaches the upstream:
//! 1. a well-formed RFC 6455 handshake over HTTP/1.1 (`GET`, `Upgrade: websocket`,
//!    `Connection: upgrade`, `Sec-WebSocket-Version: 13`, a `Sec-WebSocket-Key` of 16
//!    base64 bytes), else 400 `invalid_request`;
//! 2. CSRF (routes with `csrf = true`, the default): `Origin` is **required** and must
//!    be the public origin or one of `security.allowed_origins`; `Sec-Fetch-Site`,
//!    when sent, must be `same-origin` or `none` (or the origin allowed): else 403
//!    `csrf`. No `X-CSRF` header: a browser can't add one to a WebSocket, and it is
//!    not needed — browsers always send `Origin` on a handshake, a page can't forge
//!    it, and a WebSocket is not subject to CORS, so the server's check of `Origin` is
//!    the whole defence against cross-site WebSocket hijacking (docs/security-model.md);
//! 3. the session (401 without one on `user` routes) and the route's cap on open
//!    sockets per session (429 `rate_limited`).
//!
//! Upstream, the request keeps `Upgrade`, `Connection: upgrade` and the
//! `Sec-WebSocket-Key`/`-Version`/`-Protocol` headers (they pass on this path only;
//! `Sec-WebSocket-Extensions` is dropped: frames are relayed as they are read, without
//! compression). An answer other than 101 passes through as a normal answer; no answer
//! within the route's timeout is 504. After 101 (its `Sec-WebSocket-Accept` checked),
//! messages are relayed both ways, one at a time per direction, so a side that doesn't
//! read holds back the other (memory stays flat whatever a client sends). Pings are
//! answered on each hop. The socket ends when either side closes, after
//! `routes[].websocket_idle_timeout` without a message (1001), or when its session ends
//! anywhere (1008 "session ended" to the browser, 1001 to the upstream).
//!
//! An `Upgrade: websocket` request to a route without `websocket = true` is refused
//! with 400 and never reaches the upstream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message, handshake::derive_accept_key};

use crate::error::ApiError;
use crate::frontend::Frontend;
use crate::gateway::AppState;
use crate::session::streams::{Ended, Relaying, StreamGuard};
use crate::upstream::{Route, WebSocketPolicy};

/// The largest message (and frame) relayed; a bigger one closes the socket (1009).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// How long a closing side is given to take its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
const KIND: &str = "websocket";

/// Does the request ask for a WebSocket (`Upgrade: websocket`)?
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|v| has_token(v, b"websocket"))
}

fn has_token(value: &HeaderValue, token: &[u8]) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Keeps the browser's connection counted as busy while its socket is relayed (the
/// server's connection timeouts are for HTTP, not for an upgraded connection): the
/// server holds the connection's request in flight until [`RelayLife::ended`].
#[derive(Clone)]
pub struct RelayLife(tokio::sync::watch::Receiver<()>);

impl RelayLife {
    /// Resolves when the relay is over.
    pub async fn ended(mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

/// Proxies a WebSocket handshake over `route` and, once the upstream accepts,
/// relays the socket (see the module docs).
pub async fn proxy(
    state: &AppState,
    frontend: &Frontend,
    route: &Route,
    peer: Option<std::net::IpAddr>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let Some(policy) = route.websocket else {
        return Err(ApiError::invalid(
            "this route does not accept WebSocket upgrades",
        ));
    };
    let key = check_handshake(&request)?;
    if route.csrf {
        check_origin(state, frontend, request.headers())?;
    }
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut parts, _) = request.into_parts();
    // The Origin check above stands in for the `X-CSRF` header a WebSocket can't carry
    // (routes with `csrf = false` take no session, so there is nothing it protects).
    let credential = super::credential(
        &state.gw,
        frontend,
        route,
        super::Csrf::OriginChecked,
        &parts.headers,
    )
    .await?;
    let session = credential.session();
    let guard = match session {
        Some(key) => Some(
            state
                .gw
                .sessions
                .streams()
                .open(key, route.label, Some(policy.max_per_session))
                .map_err(|_| {
                    tracing::info!(
                        route = route.label,
                        "WebSocket refused: the session holds the route's maximum of open sockets"
                    );
                    ApiError::RateLimited {
                        retry_after_secs: 5,
                    }
                })?,
        ),
        None => None,
    };
    let token = credential.into_header()?;
    let protocol = parts.headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
    let version = parts.headers.get(header::SEC_WEBSOCKET_VERSION).cloned();
    super::prepare(&mut parts, frontend, route, token, peer)?;
    let h = &mut parts.headers;
    h.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::SEC_WEBSOCKET_KEY, key.clone());
    if let Some(v) = version {
        h.insert(header::SEC_WEBSOCKET_VERSION, v);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    let mut upstream =
        super::forward(state, route, Request::from_parts(parts, Body::empty())).await?;
    if upstream.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused: the upstream's answer is the browser's, as any other answer.
        return Ok(super::finish(upstream, frontend, route, session.is_some()));
    }
    let expected = derive_accept_key(key.as_bytes());
    let accept = upstream
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .cloned();
    if accept.as_ref().map(HeaderValue::as_bytes) != Some(expected.as_bytes())
        || !upstream
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| has_token(v, b"websocket"))
    {
        return Err(ApiError::UpstreamUnavailable(format!(
            "{}: a 101 answer that does not accept this WebSocket handshake",
            route.upstream_label()
        )));
    }
    let chosen = upstream
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .cloned();
    let upstream_upgrade = hyper::upgrade::on(&mut upstream);

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(accept) = accept {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = chosen {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    let (life_tx, life_rx) = tokio::sync::watch::channel(());
    response.extensions_mut().insert(RelayLife(life_rx));
    let relay = Relay {
        route: route.label,
        policy,
        guard,
        relaying: state.gw.sessions.streams().relay(),
    };
    tokio::spawn(async move {
        let _life = life_tx;
        relay.run(client_upgrade, upstream_upgrade).await;
    });
    Ok(response)
}

/// Step 1 of the module docs; returns the `Sec-WebSocket-Key`.
fn check_handshake(request: &Request) -> Result<HeaderValue, ApiError> {
    use base64::Engine;
    if request.version() != Version::HTTP_11 {
        return Err(ApiError::invalid(
            "WebSockets are served over HTTP/1.1 only",
        ));
    }
    if request.method() != Method::GET {
        return Err(ApiError::invalid("a WebSocket handshake is a GET"));
    }
    let h = request.headers();
    if !h
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v, b"upgrade"))
    {
        return Err(ApiError::invalid(
            "a WebSocket handshake needs Connection: upgrade",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(ApiError::invalid("Sec-WebSocket-Version must be 13"));
    }
    let mut keys = h.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k,
        _ => return Err(ApiError::invalid("one Sec-WebSocket-Key is required")),
    };
    let mut raw = [0u8; 18];
    let decoded = base64::engine::general_purpose::STANDARD.decode_slice(key.as_bytes(), &mut raw);
    if key.len() != 24 || decoded.ok() != Some(16) {
        return Err(ApiError::invalid(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    if request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return Err(ApiError::invalid("this connection can't be upgraded"));
    }
    Ok(key.clone())
}

/// Step 2 of the module docs.
fn check_origin(
    state: &AppState,
    frontend: &Frontend,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let refuse = |why: &'static str| {
        crate::security::audit_csrf_rejected(why);
        Err(ApiError::Csrf(why))
    };
    let Some(origin) = headers.get(header::ORIGIN) else {
        return refuse("a WebSocket handshake without Origin refused");
    };
    let own = origin.as_bytes() == frontend.origin_text.as_bytes();
    let allowed = !own
        && state
            .gw
            .config
            .security
            .allowed_origins
            .iter()
            .any(|a| a.origin().ascii_serialization().as_bytes() == origin.as_bytes());
    if !own && !allowed {
        return refuse("a WebSocket handshake from a foreign origin refused (Origin)");
    }
    if let Some(site) = headers.get(&crate::security::SEC_FETCH_SITE)
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
        && !allowed
    {
        return refuse("a cross-site WebSocket handshake refused (Sec-Fetch-Site)");
    }
    Ok(())
}

/// One relayed socket, after 101.
struct Relay {
    route: &'static str,
    policy: WebSocketPolicy,
    guard: Option<StreamGuard>,
    relaying: Relaying,
}

/// Why a relayed socket ended (the `reason` label).
enum Outcome {
    ClientClosed,
    UpstreamClosed,
    Idle,
    Session(Ended),
    Shutdown,
    Error,
}

impl Relay {
    async fn run(mut self, client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
        let opened = Instant::now();
        let session = self
            .guard
            .as_ref()
            .map_or_else(|| "-".to_owned(), |g| g.session_label());
        crate::telemetry::stream_opened(self.route, KIND);
        let outcome = match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(MAX_MESSAGE_BYTES))
                    .max_frame_size(Some(MAX_MESSAGE_BYTES));
                let client = WebSocketStream::from_raw_socket(
                    TokioIo::new(client),
                    Role::Server,
                    Some(config),
                )
                .await;
                let upstream = WebSocketStream::from_raw_socket(
                    TokioIo::new(upstream),
                    Role::Client,
                    Some(config),
                )
                .await;
                self.relay(client, upstream).await
            }
            Err(e) => {
                tracing::debug!(error = %e, route = self.route, "WebSocket upgrade failed");
                Outcome::Error
            }
        };
        let reason = match outcome {
            Outcome::ClientClosed => "client_closed",
            Outcome::UpstreamClosed => "upstream_closed",
            Outcome::Idle => "idle_timeout",
            Outcome::Session(why) => why.as_str(),
            Outcome::Shutdown => "shutdown",
            Outcome::Error => "error",
        };
        crate::telemetry::audit_stream_closed(self.route, KIND, reason, &session, opened.elapsed());
    }

    async fn relay<C, U>(
        &mut self,
        client: WebSocketStream<C>,
        upstream: WebSocketStream<U>,
    ) -> Outcome
    where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (mut to_client, mut from_client) = client.split();
        let (mut to_upstream, mut from_upstream) = upstream.split();
        let epoch = Instant::now();
        let last = AtomicU64::new(0);
        let idle = self.policy.idle_timeout;
        let outcome = {
            let up = pump(&mut from_client, &mut to_upstream, &last, epoch);
            let down = pump(&mut from_upstream, &mut to_client, &last, epoch);
            tokio::pin!(up, down);
            let session = async {
                match self.guard.as_mut() {
                    Some(g) => g.ended().await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(session);
            let mut check = tokio::time::interval(
                idle.min(Duration::from_secs(1))
                    .max(Duration::from_millis(50)),
            );
            loop {
                tokio::select! {
                    r = &mut up => break if r { Outcome::ClientClosed } else { Outcome::Error },
                    r = &mut down => break if r { Outcome::UpstreamClosed } else { Outcome::Error },
                    why = &mut session => break Outcome::Session(why),
                    _ = self.relaying.closing() => break Outcome::Shutdown,
                    _ = check.tick() => {
                        let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                        if quiet >= idle {
                            break Outcome::Idle;
                        }
                    }
                }
            }
        };
        let (to_browser, to_api) = match &outcome {
            Outcome::Session(_) => (
                Some(close(CloseCode::Policy, "session ended")),
                Some(close(CloseCode::Away, "session ended")),
            ),
            Outcome::Idle => (
                Some(close(CloseCode::Away, "idle timeout")),
                Some(close(CloseCode::Away, "idle timeout")),
            ),
            Outcome::Shutdown => (
                Some(close(CloseCode::Away, "going away")),
                Some(close(CloseCode::Away, "going away")),
            ),
            _ => (None, None),
        };
        let finish_client = async {
            if let Some(m) = to_browser {
                let _ = to_client.send(m).await;
            }
            let _ = to_client.close().await;
        };
        let finish_upstream = async {
            if let Some(m) = to_api {
                let _ = to_upstream.send(m).await;
            }
            let _ = to_upstream.close().await;
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            tokio::join!(finish_client, finish_upstream)
        })
        .await;
        outcome
    }
}

fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Relays one direction until its reader ends: `true` when it ended by a close
/// (frame or end of stream), `false` on an error.
async fn pump<R, W>(from: &mut R, to: &mut W, last: &AtomicU64, epoch: Instant) -> bool
where
    R: futures_util::Stream<Item = Result<Message, Error>> + Unpin,
    W: futures_util::Sink<Message, Error = Error> + Unpin,
{
    while let Some(message) = from.next().await {
        let message = match message {
            Ok(m) => m,
            // A peer gone without a close frame (a closed tab, a killed process): closed.
            Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => return true,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket read failed");
                return false;
            }
        };
        last.store(
            u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match message {
            // Answered on this hop by the library; not relayed.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(frame) => {
                let _ = to.send(Message::Close(frame)).await;
                return true;
            }
            data => {
                if let Err(e) = to.send(data).await {
                    tracing::debug!(error = %e, "WebSocket write failed");
                    return false;
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_tokens() {
        assert!(is_upgrade(&HeaderMap::from_iter([(
            header::UPGRADE,
            HeaderValue::from_static("WebSocket")
        )])));
        assert!(is_upgrade(&HeaderMap::from_iter([(
            header::UPGRADE,
            HeaderValue::from_static("foo, websocket")
        )])));
        assert!(!is_upgrade(&HeaderMap::from_iter([(
            header::UPGRADE,
            HeaderValue::from_static("h2c")
        )])));
        assert!(!is_upgrade(&HeaderMap::new()));
    }
}
