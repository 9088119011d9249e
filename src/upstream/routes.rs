use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::http::uri::{Authority, Scheme};

use crate::config::{RouteConfig, TokenKind};
use crate::oidc::dpop::NonceSlot;
use crate::tokens::{Audience, ClientSlot};

/// One API route, prepared for the hot path.
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    /// The prefix as a metrics label (interned once: see `telemetry::metrics::route_label`).
    pub label: &'static str,
    pub token: TokenKind,
    pub strip_prefix: bool,
    /// Whether the `Origin` / `Sec-Fetch-Site` checks apply (server::guard).
    pub csrf: bool,
    pub timeout: Duration,
    pub scheme: Scheme,
    /// `'static`: a request's URI clones it without a reference count.
    pub authority: Authority,
    /// The upstream's `Host` for `http://` (`authority` without `:80`), `'static` too.
    pub host: HeaderValue,
    /// The upstream URL's path without a trailing slash ("" for the root).
    pub base_path: String,
    /// The client-credentials token cache of `client` / `user_or_client` routes.
    pub client_token: Option<Arc<ClientSlot>>,
    /// The route's own user token (per-route `resource`/`scopes`, token exchange);
    /// `None`: the login's access token. Shared by the routes asking for the same.
    pub user_token: Option<Arc<Audience>>,
    /// DPoP routes: the upstream origin's latest `DPoP-Nonce` (shared by the routes
    /// of one origin). `None`: the user token goes as `Bearer`.
    pub dpop: Option<Arc<NonceSlot>>,
    /// Sandbox the upstream's documents (`routes[].html_sandbox`, see `proxy::answer`).
    pub html_sandbox: bool,
    /// WebSocket upgrades, when the route accepts them (`routes[].websocket`).
    pub websocket: Option<WebSocketPolicy>,
    /// A same-origin `EventSource` needs no `X-CSRF` (`security::event_source`).
    pub event_source: bool,
    /// How the upstream is spoken to (which of the runtime's clients carries it).
    pub protocol: UpstreamProtocol,
    /// The route's access rules (methods, claims, step-up); `None`: it has none.
    pub access: Option<Arc<super::access::Access>>,
}

/// How a route's WebSockets are kept (see `proxy::websocket`).
#[derive(Debug, Clone, Copy)]
pub struct WebSocketPolicy {
    /// No message either way for this long closes the socket.
    pub idle_timeout: Duration,
    /// Open sockets one session may hold on the route.
    pub max_per_session: u32,
}

/// The HTTP version(s) spoken to a route's upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// `http://`: HTTP/1.1.
    Http1,
    /// `https://`: `h2` and `http/1.1` offered by ALPN; the upstream picks.
    Negotiated,
    /// `https://` with `http2 = false`: only `http/1.1` offered.
    Https1,
    /// `h2c://`: cleartext HTTP/2 with prior knowledge (RFC 9113 §3.3).
    H2c,
}

impl UpstreamProtocol {
    /// For `portcullis check` and the docs.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Http1 => "HTTP/1.1",
            Self::Negotiated => "TLS, HTTP/2 or HTTP/1.1 by ALPN",
            Self::Https1 => "TLS, HTTP/1.1 only: http2 = false",
            Self::H2c => "cleartext HTTP/2, prior knowledge",
        }
    }
}

impl std::fmt::Debug for ClientSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSlot")
    }
}

impl Route {
    pub fn from_config(c: &RouteConfig) -> Result<Self, String> {
        let protocol = match (c.upstream.scheme(), c.http2) {
            ("h2c", _) => UpstreamProtocol::H2c,
            ("https", true) => UpstreamProtocol::Negotiated,
            ("https", false) => UpstreamProtocol::Https1,
            _ => UpstreamProtocol::Http1,
        };
        // h2c is plain `http` on the wire (`:scheme` of every request).
        let scheme = match protocol {
            UpstreamProtocol::H2c => Scheme::HTTP,
            _ => Scheme::try_from(c.upstream.scheme()).map_err(|e| e.to_string())?,
        };
        let host = c.upstream.host_str().ok_or("upstream has no host")?;
        let authority = match c.upstream.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        // Checked, then `'static` (cloned per request without a shared count).
        Authority::try_from(authority.as_str()).map_err(|e| e.to_string())?;
        let authority = Authority::from_static(crate::primitives::intern(&authority));
        // Sent only to `http://` HTTP/1.1 upstreams (`rewrite::rewrite_request`).
        let host = HeaderValue::from_static(crate::primitives::intern(super::client::host_header(
            &authority,
        )));
        Ok(Self {
            prefix: c.prefix.clone(),
            label: crate::telemetry::metrics::route_label(&c.prefix),
            token: c.token,
            strip_prefix: c.strip_prefix,
            csrf: c.csrf,
            timeout: c.timeout,
            scheme,
            authority,
            host,
            base_path: c.upstream.path().trim_end_matches('/').to_owned(),
            client_token: None,
            user_token: None,
            dpop: None,
            html_sandbox: c.html_sandbox,
            websocket: c.websocket.then_some(WebSocketPolicy {
                idle_timeout: c.websocket_idle_timeout,
                max_per_session: c.max_websockets_per_session,
            }),
            event_source: c.event_source,
            protocol,
            access: super::access::Access::from_config(c)?,
        })
    }

    /// Does this route serve `path`? Prefixes match on segment boundaries.
    pub fn serves(&self, path: &str) -> bool {
        path.strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// For logs: the upstream's address, nothing more.
    pub fn upstream_label(&self) -> String {
        let scheme = match self.protocol {
            UpstreamProtocol::H2c => "h2c",
            _ => self.scheme.as_str(),
        };
        format!("{scheme}://{}", self.authority)
    }
}

/// Routes, longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn from_config(routes: &[RouteConfig]) -> Result<Self, String> {
        let mut slots: Vec<Arc<ClientSlot>> = Vec::new();
        let mut nonces: Vec<(String, Arc<NonceSlot>)> = Vec::new();
        let mut audiences: Vec<Arc<Audience>> = Vec::new();
        let mut built = Vec::with_capacity(routes.len());
        for c in routes {
            let mut route = Route::from_config(c)?;
            if matches!(c.token, TokenKind::Client | TokenKind::UserOrClient) {
                // Routes asking for the same scopes and resource share one cached token.
                let scope = c.scopes.as_ref().map(|s| s.join(" "));
                let resource = c.resource.as_ref().map(|r| r.to_string());
                let slot = match slots.iter().find(|s| s.matches(&scope, &resource)) {
                    Some(slot) => slot.clone(),
                    None => {
                        let slot = Arc::new(ClientSlot::new(scope, resource));
                        slots.push(slot.clone());
                        slot
                    }
                };
                route.client_token = Some(slot);
            }
            if let Some(audience) = Audience::of_route(c) {
                let shared = match audiences.iter().find(|a| a.key == audience.key) {
                    Some(a) => a.clone(),
                    None => {
                        let a = Arc::new(audience);
                        audiences.push(a.clone());
                        a
                    }
                };
                route.user_token = Some(shared);
            }
            // `dpop` is resolved by `Config::load`; unresolved (a hand-made config) is off.
            if c.dpop == Some(true) {
                let origin = route.upstream_label();
                let slot = match nonces.iter().find(|(o, _)| *o == origin) {
                    Some((_, slot)) => slot.clone(),
                    None => {
                        let slot = Arc::new(NonceSlot::default());
                        nonces.push((origin, slot.clone()));
                        slot
                    }
                };
                route.dpop = Some(slot);
            }
            built.push(route);
        }
        let mut routes = built;
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Self { routes })
    }

    /// Phase: the route serving `path`, if any.
    pub fn matching(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.serves(path))
    }

    /// The index of the route serving `path`, for [`RouteTable::get`].
    pub fn position(&self, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.serves(path))
    }

    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }
}

/// A route for unit tests: `prefix` to `upstream`, every other key at its default
/// (serde's), so a new route key needs no edit here.
#[cfg(test)]
pub(crate) fn test_route(prefix: &str, upstream: &str, strip: bool, token: TokenKind) -> Route {
    let token = match token {
        TokenKind::User => "user",
        TokenKind::None => "none",
        other => panic!("test_route: token {other:?} not needed yet"),
    };
    let c: RouteConfig = serde_json::from_value(serde_json::json!({
        "prefix": prefix,
        "upstream": upstream,
        "token": token,
        "strip_prefix": strip,
        "timeout": "1s",
    }))
    .expect("a test route");
    Route::from_config(&c).expect("a test route")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each upstream scheme is spoken with its own protocol (and pool).
    #[test]
    fn each_scheme_is_spoken_in_its_protocol() {
        let toml = format!(
            r#"
[server]
public_origin = "https://app.example.com"
[oidc]
issuer = "https://idp.example.com"
client_id = "c"
client_secret = "s"
[session]
keys = ["{}"]
[[routes]]
prefix = "/grpc"
upstream = "h2c://127.0.0.1:50051"
token = "none"
[[routes]]
prefix = "/a"
upstream = "https://up.example"
http2 = false
[[routes]]
prefix = "/b"
upstream = "https://up.example"
[[routes]]
prefix = "/c"
upstream = "http://up.example"
"#,
            crate::session::cipher::generate_key()
        );
        let config = crate::config::Config::from_toml(&toml, []).unwrap();
        let routes: Vec<Route> = config.frontends[0]
            .routes
            .iter()
            .map(|r| Route::from_config(r).unwrap())
            .collect();
        assert_eq!(routes[0].protocol, UpstreamProtocol::H2c);
        assert_eq!(routes[0].scheme, Scheme::HTTP);
        assert_eq!(routes[0].upstream_label(), "h2c://127.0.0.1:50051");
        use UpstreamProtocol::*;
        let protocols: Vec<_> = routes[1..].iter().map(|r| r.protocol).collect();
        assert_eq!(protocols, [Https1, Negotiated, Http1]);
    }

    fn table() -> RouteTable {
        let toml = r#"
            [server]
            public_origin = "http://127.0.0.1:8080"
            [oidc]
            issuer = "http://127.0.0.1:9090"
            client_id = "c"
            client_secret = "s"
            [session]
            keys = ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]
            [[routes]]
            prefix = "/api"
            upstream = "http://127.0.0.1:9100"
            [[routes]]
            prefix = "/api/admin"
            upstream = "http://127.0.0.1:9200/base/"
            token = "none"
        "#;
        let config = crate::config::Config::from_toml(toml, []).unwrap();
        RouteTable::from_config(&config.frontend().routes).unwrap()
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = table();
        assert_eq!(t.matching("/api").unwrap().prefix, "/api");
        assert_eq!(t.matching("/api/x").unwrap().prefix, "/api");
        assert_eq!(t.matching("/api/admin/users").unwrap().prefix, "/api/admin");
        assert_eq!(t.matching("/api/adminx").unwrap().prefix, "/api");
        assert!(t.matching("/apix").is_none());
        assert!(t.matching("/").is_none());
        assert!(t.matching("/ap").is_none());
        assert_eq!(t.matching("/api/admin").unwrap().base_path, "/base");
    }

    #[test]
    fn a_prefix_matches_only_the_literal_segments() {
        // Matched on the raw path: what follows the prefix must start a new segment, so
        // the prefix the upstream sees is the configured one, byte for byte. (Spellings
        // an upstream decodes, like `/api/%61dmin`, match the shorter prefix and stay
        // under its base: see `crate::path`.)
        let t = table();
        for other in [
            "/apifoo",
            "/api.",
            "/api;x/admin",
            "/api%2fadmin",
            "/api%2Fadmin",
            "/api\\admin",
            "/api%5cadmin",
            "/API/x",
            "/%61pi/x",
            "//api/x",
        ] {
            assert!(t.matching(other).is_none(), "{other} matched");
        }
        for (path, prefix) in [
            ("/api/admin;x/users", "/api"),
            ("/api/admin%2fusers", "/api"),
            ("/api/%61dmin/users", "/api"),
            ("/api/admin/", "/api/admin"),
            ("/api//admin", "/api"),
        ] {
            assert_eq!(t.matching(path).unwrap().prefix, prefix, "{path}");
        }
    }
}
