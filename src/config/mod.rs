//! The configuration: one serde tree, loaded from TOML with an environment overlay,
//! then checked by [`Config::validate`].
//!
//! Every key can be overridden by `PORTCULLIS_<SECTION>__<KEY>` (for example
//! `PORTCULLIS_OIDC__CLIENT_SECRET`). This module is the only place that turns
//! environment variables into settings, and it takes them as an argument so tests
//! never touch the process environment. Secrets are wrapped in [`Secret`], whose
//! `Debug` never prints the value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;
use ipnet::IpNet;
use serde::Deserialize;
use url::Url;

mod access;
mod frontends;
mod secret;
pub mod values;
pub use access::{ClaimPath, ClaimRule, MAX_ACR_VALUES_LEN, MAX_MAX_AGE_SECS, is_acr_value};
pub use frontends::FrontendConfig;
pub use secret::Secret;

/// A configuration that can't be used, naming the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    #[error("{0}")]
    Parse(String),
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    /// `[oidc]` as written: the single frontend's client, or with `[[frontends]]` the
    /// defaults each frontend's `oidc` table starts from (credentials are never
    /// inherited). Moved into `frontends` when loaded: `None` afterwards.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    #[serde(default)]
    pub session: SessionConfig,
    #[serde(default)]
    pub tokens: TokensConfig,
    #[serde(default)]
    pub security: SecurityConfig,
    /// `[[routes]]` as written: API routes proxied to upstreams, matched by the
    /// longest prefix. Moved into `frontends[0]` when loaded: empty afterwards.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// `[static]` as written: the SPA's files, served at `/` (optional). Moved into
    /// `frontends[0]` when loaded: `None` afterwards.
    #[serde(default, rename = "static")]
    pub static_files: Option<StaticConfig>,
    /// The SPAs served, each with its own OIDC client, cookie, routes and files. A
    /// config without `[[frontends]]` has one, built from `[oidc]`, `[[routes]]` and
    /// `[static]`: after loading this list is never empty.
    #[serde(default)]
    pub frontends: Vec<FrontendConfig>,
}

/// `[server]`: listeners and how the gateway is seen from outside.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Browser-facing address. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The origin the browser sees (scheme, host, port; no path). Must be https unless
    /// the host is loopback. The redirect URI is `{public_origin}/bff/callback`.
    pub public_origin: Url,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`). Optional.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// CIDRs whose `X-Forwarded-*` headers are believed. Default none.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// Worker threads, each a current-thread runtime with its own listener. Default: one per core.
    #[serde(default)]
    pub workers: Option<usize>,
    /// How long in-flight requests may take to finish at shutdown. Default `30s`.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a new connection may take, from accept (TLS handshake included), to
    /// deliver its first request's headers before it is closed. Default `10s`.
    #[serde(default = "default_first_request_timeout", with = "humantime_serde")]
    pub first_request_timeout: Duration,
    /// How long a connection with no request in progress stays open: HTTP/1.1
    /// keep-alive between requests, HTTP/2 with no open stream. Default `60s`.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long an answer may wait for a client that stops reading (no byte written,
    /// or on HTTP/2 no stream making progress) before the connection is closed, which
    /// frees its socket, open file and upstream connection. Default `30s`.
    #[serde(default = "default_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Open connections one client address may hold on `listen` (IPv6: one /64);
    /// more are closed at once. Peers in `trusted_proxies` are exempt; `0` turns the
    /// cap off. Default `1024` (generous: offices share one address behind NAT).
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: u32,
    /// Log format: `auto` (default: JSON unless stderr is a terminal), `json` or `text`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Log filter when `RUST_LOG` is not set, e.g. `info` or `info,portcullis=debug`. Default `info`.
    #[serde(default)]
    pub log_level: Option<String>,
    /// TLS termination on `listen` (HTTP/2 and HTTP/1.1 via ALPN). Optional; without
    /// it `listen` speaks plain HTTP/1.1 (TLS ends at a load balancer).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// PEM file of CA certificates trusted for `https://` upstreams, in addition to
    /// the system roots. Optional.
    #[serde(default)]
    pub upstream_ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM, leaf first) presented to `https://` upstreams
    /// that ask for one (mutual TLS). Optional; with `upstream_client_key`.
    #[serde(default)]
    pub upstream_client_cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of `upstream_client_cert`.
    #[serde(default)]
    pub upstream_client_key: Option<PathBuf>,
}

/// `[server.tls]`: the certificate the gateway presents. Both files are PEM and are
/// re-read on SIGHUP (a failed reload keeps the previous certificate).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Auto,
    Json,
    Text,
}

/// `[oidc]`: the provider and this client's registration at it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer identifier; discovery is fetched from
    /// `{issuer}/.well-known/openid-configuration` and must name this exact issuer
    /// (compared as a string, so write it exactly as the provider does).
    pub issuer: String,
    pub client_id: String,
    /// The client secret. Prefer `client_secret_file` or `PORTCULLIS_OIDC__CLIENT_SECRET`.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// A file holding the client secret (surrounding whitespace is trimmed).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The client's private key (PKCS#8 PEM) for `auth_method = "private_key_jwt"`.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// The key's algorithm: `RS256`, `PS256`, `ES256` or `EdDSA`. Default `ES256`.
    #[serde(default = "default_private_key_alg")]
    pub private_key_alg: String,
    /// The `kid` under which the public key is registered at the provider (optional).
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// How the client authenticates at the token endpoint. Default `client_secret_basic`.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// Scopes requested at login. Must contain `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Where the provider sends the browser after logout; absolute, registered at the provider.
    #[serde(default)]
    pub post_logout_redirect_uri: Option<Url>,
    /// The provider's token revocation endpoint (RFC 7009), used at logout to revoke
    /// the session's refresh token. Default: the `revocation_endpoint` of OIDC
    /// discovery, else of the RFC 8414 metadata
    /// (`/.well-known/oauth-authorization-server`). https unless loopback.
    #[serde(default)]
    pub revocation_endpoint: Option<Url>,
    /// Merge the userinfo endpoint's claims into `/bff/user`. Default `false`.
    #[serde(default)]
    pub userinfo: bool,
    /// Pushed authorization requests (RFC 9126): `auto` (default) uses them when the
    /// provider advertises the endpoint, `always` refuses to start without it, `never`.
    #[serde(default)]
    pub par: ParMode,
    /// Parameters `/bff/login` passes on to the provider. Default: all of `prompt`,
    /// `max_age`, `acr_values`, `login_hint`, `ui_locales`.
    #[serde(default = "default_login_params")]
    pub login_params: Vec<String>,
    /// Sent as `audience` in every authorization request (Auth0: the API the login's
    /// access token is for). Default: none.
    #[serde(default)]
    pub audience: Option<String>,
    /// Send every `resource` of this frontend's user-token routes in the authorization
    /// request (RFC 8707 §2.1), for providers that issue a resource's token on refresh
    /// only when it was granted at login (oidc-provider, Okta). Default `false`.
    #[serde(default)]
    pub resource_at_login: bool,
    /// DPoP (RFC 9449) for user tokens: each session gets its own key, and the
    /// provider binds the user's tokens to it. Routes with user tokens then send
    /// `Authorization: DPoP` with a proof (see `routes.dpop`). Default `false`.
    #[serde(default)]
    pub dpop: bool,
    /// Refuse back-channel logout tokens without `typ: logout+jwt`. Default `false`:
    /// a missing `typ` or the generic `typ: JWT` (which some providers write) is then
    /// accepted too. Any other explicit `typ` (`at+jwt`, …) is always refused.
    #[serde(default)]
    pub require_logout_token_typ: bool,
    /// How the logout request (RP-Initiated Logout) names the user to the provider:
    /// `id_token_hint` (default) puts the ID token in the URL the browser follows;
    /// `client_id` sends only `client_id`, plus `logout_hint` from the ID token's
    /// `login_hint` claim when the provider put one there, and no token at all.
    #[serde(default)]
    pub logout_hint: LogoutHint,
    /// Signature algorithms accepted on ID tokens. Asymmetric only; never `none`.
    #[serde(default = "default_algorithms")]
    pub id_token_algorithms: Vec<String>,
    /// Allowed clock difference with the provider. Default `60s`.
    #[serde(default = "default_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Timeout of each call to the provider. Default `10s`.
    #[serde(default = "default_http_timeout", with = "humantime_serde")]
    pub http_timeout: Duration,
    /// How long a started login may take before its callback. Default `10m`.
    #[serde(default = "default_pending_ttl", with = "humantime_serde")]
    pub pending_login_ttl: Duration,
    /// Most pending logins kept at once (protects memory). Default `10000`. Not a
    /// refusal: when full, the oldest login of the network holding the most is dropped
    /// to make room (see `session::PendingCaps`).
    #[serde(default = "default_max_pending")]
    pub max_pending_logins: usize,
    /// The SPA page a failed login lands on when its callback is a browser
    /// navigation: a local path of the frontend (under its `path_prefix`), to which
    /// `?bff_error=CODE` is added (see `bff::login_error`). Default: the login's
    /// `returnUrl`, or the frontend's root when the login is not known. XHR callers
    /// always get the JSON error.
    #[serde(default)]
    pub login_error_path: Option<String>,
    /// OIDC Front-Channel Logout 1.0: serve `{prefix}/bff/frontchannel-logout`, which
    /// the provider loads in an iframe with `iss` and `sid` to end that login's
    /// sessions (register it with `frontchannel_logout_session_required`). Default
    /// `false`: the endpoint answers 404.
    #[serde(default)]
    pub frontchannel_logout: bool,
    /// Entra ID multi-tenant apps: the tenant ids (`tid`) whose users may log in. Needed
    /// when the provider's discovery names a template issuer
    /// (`https://login.microsoftonline.com/{tenantid}/v2.0`, fetched from `issuer =
    /// ".../organizations/v2.0"` or `.../common/v2.0`): each ID token's `iss` must then
    /// be the template filled with the token's own `tid`, and that `tid` one of these.
    /// Default: none (a template issuer is refused).
    #[serde(default)]
    pub allowed_tenants: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ParMode {
    #[default]
    Auto,
    Always,
    Never,
}

/// What the end-session request carries to name the session (`oidc.logout_hint`).
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogoutHint {
    /// `id_token_hint` (RECOMMENDED by RP-Initiated Logout 1.0) and `client_id`.
    #[default]
    IdTokenHint,
    /// `client_id` (and `logout_hint` when the ID token has `login_hint`): the ID token
    /// never passes through the browser. The provider may then ask the user to confirm.
    ClientId,
}

/// The login parameters `/bff/login` can pass on.
pub const LOGIN_PARAMS: &[&str] = &[
    "prompt",
    "max_age",
    "acr_values",
    "login_hint",
    "ui_locales",
];

fn default_login_params() -> Vec<String> {
    LOGIN_PARAMS.iter().map(|p| (*p).to_owned()).collect()
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

/// `[session]`: where sessions live and how the cookie looks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// `memory`, `sqlite` (default) or `redis`.
    #[serde(default)]
    pub store: StoreKind,
    /// SQLite database file. Default `portcullis.db`.
    #[serde(default = "default_sqlite_path")]
    pub sqlite_path: PathBuf,
    /// Most session records the SQLite store keeps in process (the request path reads
    /// them there, not from the file); 0 turns that cache off, at most 10000000. A
    /// cached session costs about 3.2 KB of memory, as in the memory store. Default 100000.
    #[serde(default = "default_sqlite_cache_size")]
    pub sqlite_cache_size: usize,
    /// Redis URL, for `store = "redis"`: `redis://[user:pass@]host:port[/db]`,
    /// `rediss://…` (TLS), `redis+cluster://host:port,host:port` (seed nodes of a
    /// Redis Cluster), `redis+sentinel://host:port,host:port/master_name[/db]`.
    #[serde(default)]
    pub redis_url: Option<Secret>,
    /// Session cookie name. Default `__Host-portcullis`.
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// `strict` (default) or `lax`.
    #[serde(default)]
    pub same_site: SameSite,
    /// A session unused this long ends. Default `30m`.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session ends this long after login, used or not. Default `12h`.
    #[serde(default = "default_absolute", with = "humantime_serde")]
    pub absolute_timeout: Duration,
    /// Token encryption keys (base64url, 32 bytes each): the first encrypts, all decrypt.
    #[serde(default)]
    pub keys: Vec<Secret>,
    /// Most sessions one user (`sub`) may have; a login beyond it ends the user's
    /// oldest session. Default: no limit.
    #[serde(default)]
    pub max_per_user: Option<usize>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::default(),
            sqlite_path: default_sqlite_path(),
            sqlite_cache_size: default_sqlite_cache_size(),
            redis_url: None,
            cookie_name: default_cookie_name(),
            same_site: SameSite::default(),
            idle_timeout: default_idle(),
            absolute_timeout: default_absolute(),
            keys: Vec::new(),
            max_per_user: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Memory,
    #[default]
    Sqlite,
    Redis,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    #[default]
    Strict,
    Lax,
}

/// `[tokens]`: the token lifecycle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    /// Refresh an access token this long before it expires (at most half its lifetime). Default `60s`.
    #[serde(default = "default_refresh_before", with = "humantime_serde")]
    pub refresh_before: Duration,
    /// How long a refresh waits for the provider's answer once sent (requests stop
    /// waiting after `oidc.http_timeout`; the refresh itself goes on, so a rotated
    /// refresh token is not lost). The refresh lock's lease is this plus 5 s: a
    /// crashed instance blocks a session's refresh at most that long. Default `60s`.
    #[serde(default = "default_refresh_timeout", with = "humantime_serde")]
    pub refresh_timeout: Duration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            refresh_before: default_refresh_before(),
            refresh_timeout: default_refresh_timeout(),
        }
    }
}

/// `[security]`: browser-facing defences and request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Other origins allowed to call the API with credentials (CORS and the `Origin`
    /// check). Default none: the SPA is same-origin and CORS stays off.
    #[serde(default)]
    pub allowed_origins: Vec<Url>,
    /// `/bff/login` and `/bff/callback` requests per client network (an IPv4 address,
    /// an IPv6 /64) per minute. Default `60`.
    #[serde(default = "default_login_rate")]
    pub login_rate_per_minute: u32,
    /// Logins one browser may start within `oidc.pending_login_ttl`. Default `10`.
    #[serde(default = "default_pending_per_browser")]
    pub pending_logins_per_browser: u32,
    /// Most pending logins one client network (an IPv4 address, an IPv6 /64) may hold
    /// at once; beyond, its new logins get 429. Default `100`.
    #[serde(default = "default_pending_per_network")]
    pub pending_logins_per_network: usize,
    /// Largest request head (request line + headers) accepted, in bytes (→ 431). Default `32768`.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Once the first byte of a request head has arrived, the whole head must arrive
    /// within this time (slowloris). Default `10s`.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request body accepted on `/bff/*`, in bytes. Default `65536`.
    #[serde(default = "default_max_bff_body")]
    pub max_bff_body_bytes: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            login_rate_per_minute: default_login_rate(),
            pending_logins_per_browser: default_pending_per_browser(),
            pending_logins_per_network: default_pending_per_network(),
            max_header_bytes: default_max_header_bytes(),
            header_read_timeout: default_header_read_timeout(),
            max_bff_body_bytes: default_max_bff_body(),
        }
    }
}

fn default_login_rate() -> u32 {
    60
}
fn default_pending_per_browser() -> u32 {
    10
}
fn default_pending_per_network() -> usize {
    100
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_bff_body() -> u64 {
    64 * 1024
}

/// `[[routes]]`: one API prefix proxied to one upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, matched on segment boundaries (`/api` matches `/api/x`, not `/apix`).
    pub prefix: String,
    /// Upstream base URL, optionally with a base path: `http://` (HTTP/1.1),
    /// `https://` (HTTP/2 when the upstream offers `h2` by ALPN, else HTTP/1.1; see
    /// `http2`), or `h2c://host:port` (cleartext HTTP/2 with prior knowledge, e.g. a
    /// gRPC server).
    pub upstream: Url,
    /// Which token goes upstream. Default `user`.
    #[serde(default)]
    pub token: TokenKind,
    /// Remove the prefix from the path before forwarding. Default `false`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Apply the `Origin` / `Sec-Fetch-Site` checks. Default `true`; `false` is allowed
    /// only on routes that take no session (`token = "none"` or `"client"`), e.g. webhooks.
    #[serde(default = "yes")]
    pub csrf: bool,
    /// Scopes of the route's token. Client tokens (`client`, `user_or_client`): the
    /// client-credentials request's. User tokens (`user`, `user_or_none`,
    /// `user_or_client`): the route gets a token of its own, from a refresh-token grant
    /// with these scopes (Entra: `api://…/.default`). `exchange`: the exchanged token's.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Resource indicator (RFC 8707) of the route's token, as for `scopes`: the
    /// client-credentials request's, the user token's refresh-token grant's, or the
    /// token exchange's `resource`.
    #[serde(default)]
    pub resource: Option<Url>,
    /// `token = "exchange"`: the target `audience` of the token exchange (RFC 8693).
    #[serde(default)]
    pub audience: Option<String>,
    /// Time for the upstream to answer with its headers, connecting included
    /// (→ 504 `upstream_timeout`). Default `30s`.
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Send the user's DPoP-bound token as `Authorization: DPoP` with a fresh proof.
    /// Needs `oidc.dpop = true` and a user token kind. Default: `true` on routes with
    /// user tokens when `oidc.dpop` is on (set by [`Config::load`]); `false` sends the
    /// bound token as `Bearer`, only for upstreams that don't check the binding.
    #[serde(default)]
    pub dpop: Option<bool>,
    /// Add a sandboxing `Content-Security-Policy` (no script, an opaque origin) to the
    /// upstream's HTML and other script-capable documents (`proxy::answer`). Default
    /// `true`; `false` only for upstreams whose pages must run script on this origin.
    #[serde(default = "yes")]
    pub html_sandbox: bool,
    /// Accept WebSocket upgrades on this route (`proxy::websocket`). Default `false`:
    /// an upgrade request to the route is refused (400) and never reaches the upstream.
    #[serde(default)]
    pub websocket: bool,
    /// A WebSocket with no message either way for this long is closed (1001). Default `5m`.
    #[serde(default = "default_websocket_idle", with = "humantime_serde")]
    pub websocket_idle_timeout: Duration,
    /// Open WebSockets one session may hold on this route; one more is refused with
    /// 429 `rate_limited`. Default `16`, at least 1.
    #[serde(default = "default_websockets_per_session")]
    pub max_websockets_per_session: u32,
    /// Accept a browser `EventSource` (a GET with `Accept: text/event-stream`) without
    /// `X-CSRF` when its Fetch Metadata prove it same-origin (`security::event_source`).
    /// Default `false`.
    #[serde(default)]
    pub event_source: bool,
    /// `https://` upstreams: offer `h2` by ALPN (HTTP/2 when the upstream picks it).
    /// `false` speaks HTTP/1.1 only. Default `true`; must not be `false` for `h2c://`.
    #[serde(default = "yes")]
    pub http2: bool,
    /// The methods this route serves (capitals, e.g. `["GET", "POST"]`; `GET` brings
    /// `HEAD`). Others are answered 405 `method_not_allowed` with `Allow`, before the
    /// upstream is called. Default: every method.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Requirements on the session's claims, all of which must hold, else 403
    /// `forbidden` before the upstream is called (see [`ClaimRule`]). `token = "user"` and
    /// `"exchange"` routes only. Default none.
    #[serde(default)]
    pub require: Option<Vec<ClaimRule>>,
    /// Step-up: the session's `acr` must be one of these, else 401
    /// `step_up_required` with a login URL asking for them. `token = "user"` and
    /// `"exchange"` routes only. Default none.
    #[serde(default)]
    pub acr_values: Option<Vec<String>>,
    /// Step-up: the user must have authenticated at the provider (`auth_time`) at
    /// most this long ago, else 401 `step_up_required` (at least `60s`). `token =
    /// "user"`/`"exchange"` routes only. Default none.
    #[serde(default, with = "humantime_serde::option")]
    pub max_age: Option<Duration>,
}

fn default_websocket_idle() -> Duration {
    Duration::from_secs(300)
}
fn default_websockets_per_session() -> u32 {
    16
}

impl RouteConfig {
    /// Whether this route sends DPoP proofs, its default resolved against `oidc.dpop`.
    pub fn uses_dpop(&self, oidc_dpop: bool) -> bool {
        self.dpop.unwrap_or(
            oidc_dpop
                && !self.has_own_user_token()
                && matches!(
                    self.token,
                    TokenKind::User | TokenKind::UserOrNone | TokenKind::UserOrClient
                ),
        )
    }

    /// Whether the route's user token is one of its own (per-route `resource` /
    /// `scopes`, or token exchange) rather than the login's access token.
    pub fn has_own_user_token(&self) -> bool {
        match self.token {
            TokenKind::Exchange => true,
            TokenKind::User | TokenKind::UserOrNone | TokenKind::UserOrClient => {
                self.scopes.is_some() || self.resource.is_some()
            }
            TokenKind::Client | TokenKind::None => false,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    #[default]
    User,
    UserOrNone,
    Client,
    UserOrClient,
    None,
    /// The session's access token exchanged for one for the route's `audience` /
    /// `resource` / `scopes` (RFC 8693); requires a session, like `user`.
    Exchange,
}

/// `[static]`: the SPA's built files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    pub dir: PathBuf,
    /// Unknown GET navigations get `index.html`. Default `true`.
    #[serde(default = "yes")]
    pub spa_fallback: bool,
    /// `Content-Security-Policy` of the SPA's files. Default: same-origin scripts,
    /// styles and connections, no plugins, no framing.
    #[serde(default = "default_csp")]
    pub csp: String,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}
fn default_first_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connections_per_client() -> u32 {
    1024
}
fn default_private_key_alg() -> String {
    "ES256".into()
}
fn default_scopes() -> Vec<String> {
    vec!["openid".into()]
}
fn default_algorithms() -> Vec<String> {
    [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ]
    .map(String::from)
    .to_vec()
}
fn default_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_pending_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_max_pending() -> usize {
    10_000
}
/// Largest `session.sqlite_cache_size`: ten million sessions are tens of GiB.
const MAX_SQLITE_CACHE_SIZE: usize = 10_000_000;
fn default_sqlite_cache_size() -> usize {
    values::DEFAULT_SQLITE_CACHE_SIZE
}
fn default_sqlite_path() -> PathBuf {
    PathBuf::from("portcullis.db")
}
pub(crate) fn default_cookie_name() -> String {
    "__Host-portcullis".into()
}
fn default_idle() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_absolute() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_refresh_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_refresh_before() -> Duration {
    Duration::from_secs(60)
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_csp() -> String {
    "default-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'".into()
}
fn yes() -> bool {
    true
}

/// The environment variable prefix of overrides.
pub const ENV_PREFIX: &str = "PORTCULLIS_";

/// The sections an environment override may name.
const SECTIONS: &[&str] = &["server", "oidc", "session", "tokens", "security", "static"];

/// Keys whose override is always taken as a string, even when it looks like a number.
const STRING_KEYS: &[&str] = &[
    "client_id",
    "client_secret",
    "redis_url",
    "issuer",
    "cookie_name",
];

/// An environment override's value, parsed by figment (arrays, numbers, booleans, or
/// else the text itself).
///
/// figment 0.10's value parser takes the character index of the first `\` in a quoted
/// string for a byte index: after a non-ASCII character it panics (`["é\n"]`) or drops
/// characters (`["éé\n"]`). Found by fuzz/fuzz_targets/config_toml.rs. Such a value
/// (quotes, a backslash and non-ASCII) is kept as text instead: a string key gets it
/// as is, any other key reports a type error.
fn parse_env_value(raw: &str) -> Value {
    if raw.contains('"') && raw.contains('\\') && !raw.is_ascii() {
        return Value::from(raw.to_owned());
    }
    raw.parse().unwrap_or_else(|never| match never {})
}

impl Config {
    /// Loads `path`, applies the `PORTCULLIS_*` overrides found in `env`, reads secret
    /// files and validates. `env` is normally `std::env::vars()`.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(invalid(
                "--config",
                format!("file {} not found", path.display()),
            ));
        }
        Self::from_figment(Figment::from(Toml::file_exact(path)), env, Some(path))
    }

    /// Parses a TOML text (tests and examples), with overrides from `env`.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(text)), env, None)
    }

    /// Loads and validates; every error names its key as `routes[0].prefix` and says
    /// where the value came from (the file, or which environment variable).
    fn from_figment(
        figment: Figment,
        env: impl IntoIterator<Item = (String, String)>,
        file: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let mut sources = Sources {
            file: file.map(Path::to_owned),
            env: Vec::new(),
        };
        Self::load_tree(figment, env, &mut sources).map_err(|e| sources.annotate(e))
    }

    fn load_tree(
        mut figment: Figment,
        env: impl IntoIterator<Item = (String, String)>,
        sources: &mut Sources,
    ) -> Result<Self, ConfigError> {
        let mut frontend_env = Vec::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // Only `PORTCULLIS_<SECTION>__<KEY>`: other PORTCULLIS_* variables (such as
            // PORTCULLIS_CONFIG, the config file's path) are not config keys.
            let Some((section, _)) = rest.split_once("__") else {
                continue;
            };
            if section.eq_ignore_ascii_case("frontends") {
                frontend_env.push((rest.to_ascii_lowercase(), raw, name));
                continue;
            }
            if !SECTIONS.contains(&section.to_ascii_lowercase().as_str()) {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            figment = figment.merge(Serialized::default(&key, env_value(&key, &raw)));
            sources.env.push((key, name));
        }
        let tree: Value = figment.extract().map_err(|e| sources.parse_error(e))?;
        sources.add_frontend_env(&tree, &frontend_env);
        let written = tree.clone();
        let frontend_env: Vec<(String, String)> =
            frontend_env.into_iter().map(|(k, v, _)| (k, v)).collect();
        let tree = frontends::resolve(tree, &frontend_env)?;
        let mut config: Config = Figment::from(Serialized::defaults(tree))
            .extract()
            .map_err(|e| sources.parse_error(e))?;
        config.settle_frontends()?;
        if let Some(dir) = sources.file.as_deref().and_then(Path::parent) {
            config.resolve_paths(dir, |key| {
                find(&written, key).is_some() && sources.env_var(key).is_none()
            });
        }
        for frontend in &mut config.frontends {
            let prefix = frontend.key_prefix();
            read_secret_file(&mut frontend.oidc, &prefix)?;
        }
        config.validate()?;
        // After validation (which checks what was written): every route says whether
        // it uses DPoP.
        for frontend in &mut config.frontends {
            let oidc_dpop = frontend.oidc.dpop;
            for route in &mut frontend.routes {
                route.dpop = Some(route.uses_dpop(oidc_dpop));
            }
        }
        Ok(config)
    }

    /// Turns the single-frontend form (`[oidc]`, `[[routes]]`, `[static]`) into
    /// `frontends[0]`, or checks that the multi-frontend form doesn't mix the two.
    fn settle_frontends(&mut self) -> Result<(), ConfigError> {
        if self.frontends.is_empty() {
            let Some(oidc) = self.oidc.take() else {
                return Err(invalid(
                    "oidc",
                    "missing: configure [oidc] (or [[frontends]], each with its own oidc table)",
                ));
            };
            // Moved, not copied: `frontends` is the one place the loaded config is read.
            self.frontends.push(FrontendConfig::single(
                oidc,
                std::mem::take(&mut self.routes),
                self.static_files.take(),
                &self.session.cookie_name,
            ));
            return Ok(());
        }
        if !self.routes.is_empty() {
            return Err(invalid(
                "routes",
                "with [[frontends]], routes belong to a frontend ([[frontends.routes]])",
            ));
        }
        if self.static_files.is_some() {
            return Err(invalid(
                "static",
                "with [[frontends]], static files belong to a frontend ([frontends.static])",
            ));
        }
        if self.session.cookie_name != default_cookie_name() {
            return Err(invalid(
                "session.cookie_name",
                "with [[frontends]], each frontend's cookie is __Host-portcullis-<name>",
            ));
        }
        self.oidc = None;
        for (i, frontend) in self.frontends.iter_mut().enumerate() {
            frontend.cookie_name = format!("{}-{}", default_cookie_name(), frontend.name);
            frontend.index = Some(i);
        }
        Ok(())
    }

    /// Makes the relative paths written in the config file relative to its folder
    /// (`written(key)`: the key is set in the file, not by default or the environment,
    /// whose relative paths stay relative to the working directory).
    fn resolve_paths(&mut self, dir: &Path, written: impl Fn(&str) -> bool) {
        let fix = |path: &mut PathBuf, key: &str| {
            if path.is_relative() && !path.as_os_str().is_empty() && written(key) {
                *path = dir.join(&*path);
            }
        };
        let server = &mut self.server;
        if let Some(tls) = &mut server.tls {
            fix(&mut tls.cert, "server.tls.cert");
            fix(&mut tls.key, "server.tls.key");
        }
        for (path, key) in [
            (&mut server.upstream_ca_file, "server.upstream_ca_file"),
            (
                &mut server.upstream_client_cert,
                "server.upstream_client_cert",
            ),
            (
                &mut server.upstream_client_key,
                "server.upstream_client_key",
            ),
        ] {
            if let Some(p) = path {
                fix(p, key);
            }
        }
        fix(&mut self.session.sqlite_path, "session.sqlite_path");
        for f in &mut self.frontends {
            let prefix = match f.index {
                None => String::new(),
                Some(i) => format!("frontends.{i}."),
            };
            for (path, key) in [
                (&mut f.oidc.client_secret_file, "oidc.client_secret_file"),
                (&mut f.oidc.private_key_file, "oidc.private_key_file"),
            ] {
                if let Some(p) = path {
                    fix(p, &format!("{prefix}{key}"));
                }
            }
            if let Some(s) = &mut f.static_files {
                fix(&mut s.dir, &format!("{prefix}static.dir"));
            }
        }
    }

    /// The first frontend (the only one of a single-frontend config).
    pub fn frontend(&self) -> &FrontendConfig {
        &self.frontends[0]
    }

    /// The first frontend's redirect URI (the only one of a single-frontend config):
    /// `{public_origin}/bff/callback`.
    pub fn redirect_uri(&self) -> String {
        self.frontend().redirect_uri(self)
    }

    /// Checks what types can't: relations between keys, URL shapes, key material.
    ///
    /// The phases run in this order and stop at the first problem, so a config with
    /// several gets the same error every time: the server (its origin, the files it
    /// reads, its other keys), the session, the security limits, the server's timeouts,
    /// then each frontend with its OIDC client and its routes (`frontends::validate`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_public_origin()?;
        self.validate_server_files()?;
        self.validate_server_settings()?;
        self.validate_session()?;
        self.validate_security()?;
        self.validate_timeouts()?;
        frontends::validate(self)?;
        Ok(())
    }

    /// `server.public_origin`: an http(s) origin with a host and no path, https unless
    /// loopback (the session cookie is Secure).
    fn validate_public_origin(&self) -> Result<(), ConfigError> {
        let origin = &self.server.public_origin;
        if !matches!(origin.scheme(), "http" | "https") {
            return Err(invalid("server.public_origin", "must be an http(s) origin"));
        }
        if origin.path() != "/" || origin.query().is_some() || origin.fragment().is_some() {
            return Err(invalid(
                "server.public_origin",
                "must be an origin only, without a path",
            ));
        }
        if origin.scheme() == "http" && !is_loopback_host(origin) {
            return Err(invalid(
                "server.public_origin",
                "must be https unless the host is loopback (the session cookie is Secure)",
            ));
        }
        if origin.host_str().is_none() {
            return Err(invalid("server.public_origin", "has no host"));
        }
        Ok(())
    }

    /// The files the server reads (TLS certificate and key, the upstream CA and client
    /// certificate) exist, and serving TLS goes with an https origin.
    fn validate_server_files(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        if let Some(tls) = &server.tls {
            for (key, path) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
                if !path.is_file() {
                    return Err(invalid(key, format!("{} is not a file", path.display())));
                }
            }
            if server.public_origin.scheme() != "https" {
                return Err(invalid(
                    "server.public_origin",
                    "must be https when server.tls is set",
                ));
            }
        }
        if let Some(path) = &server.upstream_ca_file
            && !path.is_file()
        {
            return Err(invalid(
                "server.upstream_ca_file",
                format!("{} is not a file", path.display()),
            ));
        }
        match (&server.upstream_client_cert, &server.upstream_client_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "server.upstream_client_key",
                    "is required with server.upstream_client_cert",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "server.upstream_client_cert",
                    "is required with server.upstream_client_key",
                ));
            }
            (Some(cert), Some(key)) => {
                for (name, path) in [
                    ("server.upstream_client_cert", cert),
                    ("server.upstream_client_key", key),
                ] {
                    if !path.is_file() {
                        return Err(invalid(name, format!("{} is not a file", path.display())));
                    }
                }
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// `server.log_level` is a log filter; `server.admin_listen` is not the main listener.
    fn validate_server_settings(&self) -> Result<(), ConfigError> {
        if let Some(level) = &self.server.log_level
            && tracing_subscriber::EnvFilter::try_new(level).is_err()
        {
            return Err(invalid(
                "server.log_level",
                format!(
                    "{level:?} is not a log filter (e.g. \"info\" or \"info,portcullis=debug\")"
                ),
            ));
        }
        if self
            .server
            .admin_listen
            .is_some_and(|a| a == self.server.listen)
        {
            return Err(invalid(
                "server.admin_listen",
                "must differ from server.listen",
            ));
        }
        Ok(())
    }

    /// The `session` table: its keys decode, the cookie name, the limits and timeouts,
    /// and what the chosen store needs.
    fn validate_session(&self) -> Result<(), ConfigError> {
        let session = &self.session;
        if session.keys.is_empty() {
            return Err(invalid(
                "session.keys",
                "at least one key is required (generate one with `portcullis keygen`)",
            ));
        }
        for (i, key) in session.keys.iter().enumerate() {
            values::decode_key(key.expose())
                .map_err(|why| invalid(&format!("session.keys[{i}]"), why))?;
        }
        validate_cookie_name(&session.cookie_name)?;
        if session.max_per_user == Some(0) {
            return Err(invalid("session.max_per_user", "must be at least 1"));
        }
        if session.idle_timeout.is_zero() {
            return Err(invalid("session.idle_timeout", "must be positive"));
        }
        if session.absolute_timeout < session.idle_timeout {
            return Err(invalid(
                "session.absolute_timeout",
                "must not be shorter than idle_timeout",
            ));
        }
        validate_store(session)
    }

    /// The `security` table: allowed origins are origins, the rate and pending-login
    /// limits allow something, the header limit leaves room for a normal request.
    fn validate_security(&self) -> Result<(), ConfigError> {
        let security = &self.security;
        for (i, origin) in security.allowed_origins.iter().enumerate() {
            if !matches!(origin.scheme(), "http" | "https")
                || origin.path() != "/"
                || origin.query().is_some()
            {
                return Err(invalid(
                    &format!("security.allowed_origins[{i}]"),
                    "must be an http(s) origin without a path",
                ));
            }
        }
        for (key, is_zero) in [
            (
                "security.login_rate_per_minute",
                security.login_rate_per_minute == 0,
            ),
            (
                "security.pending_logins_per_browser",
                security.pending_logins_per_browser == 0,
            ),
            (
                "security.pending_logins_per_network",
                security.pending_logins_per_network == 0,
            ),
        ] {
            if is_zero {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if security.max_header_bytes < 8192 {
            return Err(invalid(
                "security.max_header_bytes",
                "must be at least 8192",
            ));
        }
        Ok(())
    }

    /// The connection timeouts (`server.*_timeout`, `security.header_read_timeout`)
    /// are positive.
    fn validate_timeouts(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            (
                "server.first_request_timeout",
                self.server.first_request_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.write_timeout", self.server.write_timeout),
            (
                "security.header_read_timeout",
                self.security.header_read_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be positive"));
            }
        }
        Ok(())
    }

    /// The public origin without a trailing slash.
    pub fn public_origin(&self) -> &str {
        self.server.public_origin.as_str().trim_end_matches('/')
    }
}

/// `session.cookie_name`: a `__Host-` cookie (pinned to this origin) with a plain name.
fn validate_cookie_name(name: &str) -> Result<(), ConfigError> {
    if !name.starts_with("__Host-") {
        return Err(invalid(
            "session.cookie_name",
            "must start with \"__Host-\" (the browser then pins it to this origin)",
        ));
    }
    if name.len() <= "__Host-".len()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(
            "session.cookie_name",
            "must be a plain token (letters, digits, -_.)",
        ));
    }
    Ok(())
}

/// What the chosen `session.store` needs: Redis an address, SQLite a path and a
/// bounded cache.
fn validate_store(session: &SessionConfig) -> Result<(), ConfigError> {
    match session.store {
        StoreKind::Redis => match &session.redis_url {
            None => {
                return Err(invalid(
                    "session.redis_url",
                    "is required with store = \"redis\"",
                ));
            }
            Some(url) => {
                values::RedisAddress::parse(url.expose())
                    .map_err(|why| invalid("session.redis_url", why))?;
            }
        },
        StoreKind::Sqlite if session.sqlite_path.as_os_str().is_empty() => {
            return Err(invalid("session.sqlite_path", "must not be empty"));
        }
        StoreKind::Sqlite if session.sqlite_cache_size > MAX_SQLITE_CACHE_SIZE => {
            return Err(invalid(
                "session.sqlite_cache_size",
                format!("must be at most {MAX_SQLITE_CACHE_SIZE} (0 turns the cache off)"),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// The `oidc` table of one frontend; `prefix` is "" or "frontends[i]." for the keys named.
fn validate_oidc(oidc: &OidcConfig, prefix: &str) -> Result<(), ConfigError> {
    let issuer = Url::parse(&oidc.issuer).map_err(|e| {
        invalid(
            &format!("{prefix}oidc.issuer"),
            format!("is not a URL: {e}"),
        )
    })?;
    if !matches!(issuer.scheme(), "http" | "https") || issuer.query().is_some() {
        return Err(invalid(
            &format!("{prefix}oidc.issuer"),
            "must be an http(s) URL without a query",
        ));
    }
    if issuer.scheme() == "http" && !is_loopback_host(&issuer) {
        return Err(invalid(
            &format!("{prefix}oidc.issuer"),
            "must be https unless the host is loopback",
        ));
    }
    if oidc.client_id.is_empty() {
        return Err(invalid(
            &format!("{prefix}oidc.client_id"),
            "must not be empty",
        ));
    }
    match oidc.auth_method {
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => {
            if oidc
                .client_secret
                .as_ref()
                .is_none_or(|s| s.expose().is_empty())
            {
                return Err(invalid(
                    &format!("{prefix}oidc.client_secret"),
                    "is required for auth_method client_secret_basic/client_secret_post \
                         (set client_secret, client_secret_file or PORTCULLIS_OIDC__CLIENT_SECRET)",
                ));
            }
        }
        AuthMethod::PrivateKeyJwt => {
            let Some(path) = &oidc.private_key_file else {
                return Err(invalid(
                    &format!("{prefix}oidc.private_key_file"),
                    "is required for auth_method private_key_jwt",
                ));
            };
            // Read here; parsed as a key when the OIDC client is built (`oidc::Oidc`).
            std::fs::metadata(path).map_err(|e| {
                invalid(
                    &format!("{prefix}oidc.private_key_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
        }
    }
    if !oidc.scopes.iter().any(|s| s == "openid") {
        return Err(invalid(
            &format!("{prefix}oidc.scopes"),
            "must contain \"openid\"",
        ));
    }
    if let Some(uri) = &oidc.post_logout_redirect_uri
        && !matches!(uri.scheme(), "http" | "https")
    {
        return Err(invalid(
            &format!("{prefix}oidc.post_logout_redirect_uri"),
            "must be an absolute http(s) URL",
        ));
    }
    if let Some(uri) = &oidc.revocation_endpoint {
        let key = format!("{prefix}oidc.revocation_endpoint");
        if !matches!(uri.scheme(), "http" | "https") || uri.fragment().is_some() {
            return Err(invalid(
                &key,
                "must be an absolute http(s) URL without a fragment",
            ));
        }
        if uri.scheme() == "http" && !is_loopback_host(uri) {
            return Err(invalid(&key, "must be https unless the host is loopback"));
        }
    }
    if oidc.id_token_algorithms.is_empty() {
        return Err(invalid(
            &format!("{prefix}oidc.id_token_algorithms"),
            "must not be empty",
        ));
    }
    for alg in &oidc.id_token_algorithms {
        values::parse_asymmetric_algorithm(alg).map_err(|why| {
            invalid(
                &format!("{prefix}oidc.id_token_algorithms"),
                format!("{alg:?}: {why}"),
            )
        })?;
    }
    if oidc.clock_skew > Duration::from_secs(3600) {
        return Err(invalid(
            &format!("{prefix}oidc.clock_skew"),
            "must be at most 1h",
        ));
    }
    for p in &oidc.login_params {
        if !LOGIN_PARAMS.contains(&p.as_str()) {
            return Err(invalid(
                &format!("{prefix}oidc.login_params"),
                format!("{p:?} is not one of {}", LOGIN_PARAMS.join(", ")),
            ));
        }
    }
    if oidc
        .audience
        .as_ref()
        .is_some_and(|a| a.is_empty() || a.chars().any(char::is_control))
    {
        return Err(invalid(
            &format!("{prefix}oidc.audience"),
            "must be a non-empty string",
        ));
    }
    if oidc.max_pending_logins == 0 {
        return Err(invalid(
            &format!("{prefix}oidc.max_pending_logins"),
            "must be at least 1",
        ));
    }
    if let Some(t) = oidc.allowed_tenants.iter().find(|t| {
        t.is_empty()
            || t.len() > 64
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    }) {
        return Err(invalid(
            &format!("{prefix}oidc.allowed_tenants"),
            format!("{t:?} is not a tenant id (letters, digits, '-' and '.')"),
        ));
    }
    if let Some(path) = &oidc.login_error_path
        && (!path.starts_with('/')
            || path.starts_with("//")
            || path.len() > 512
            || !path
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'\\' && b != b'#'))
    {
        return Err(invalid(
            &format!("{prefix}oidc.login_error_path"),
            "must be a local path starting with a single '/' (no backslash, fragment or spaces)",
        ));
    }

    Ok(())
}

/// The routes of one frontend; `prefix` as in [`validate_oidc`].
fn validate_routes(
    routes: &[RouteConfig],
    oidc_dpop: bool,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (i, route) in routes.iter().enumerate() {
        let key = |field: &str| format!("{prefix}routes[{i}].{field}");
        if !route.prefix.starts_with('/') || route.prefix.len() < 2 {
            return Err(invalid(
                &key("prefix"),
                "must start with '/' and not be '/' alone",
            ));
        }
        if route.prefix.ends_with('/') {
            return Err(invalid(&key("prefix"), "must not end with '/'"));
        }
        // Matched on the raw path and forwarded as is: it must mean the same to every upstream.
        if let Err(why) = crate::path::check(route.prefix.as_bytes()) {
            return Err(invalid(&key("prefix"), format!("must not contain {why}")));
        }
        if route.prefix == "/bff" || route.prefix.starts_with("/bff/") {
            return Err(invalid(&key("prefix"), "/bff is reserved for Portcullis"));
        }
        if !matches!(route.upstream.scheme(), "http" | "https" | "h2c") {
            return Err(invalid(
                &key("upstream"),
                "must be an http://, https:// or h2c:// URL",
            ));
        }
        if route.upstream.scheme() == "h2c" && !route.http2 {
            return Err(invalid(
                &key("http2"),
                "can't be false for an h2c:// upstream (it speaks only HTTP/2)",
            ));
        }
        if route.upstream.scheme() == "h2c" && route.upstream.port().is_none() {
            return Err(invalid(
                &key("upstream"),
                "an h2c:// URL needs a port (h2c://host:port)",
            ));
        }
        if route.upstream.host_str().is_none() {
            return Err(invalid(&key("upstream"), "has no host"));
        }
        if route.upstream.query().is_some() || route.upstream.fragment().is_some() {
            return Err(invalid(
                &key("upstream"),
                "must not have a query or fragment",
            ));
        }
        if route.scopes.is_some() && route.token == TokenKind::None {
            return Err(invalid(
                &key("scopes"),
                "does not apply to token = \"none\"",
            ));
        }
        if route.scopes.as_ref().is_some_and(|s| {
            s.is_empty()
                || s.iter()
                    .any(|v| v.is_empty() || v.chars().any(|c| c == ' ' || c.is_control()))
        }) {
            return Err(invalid(
                &key("scopes"),
                "must be a non-empty list of scope tokens without spaces",
            ));
        }
        if route.resource.is_some() && route.token == TokenKind::None {
            return Err(invalid(
                &key("resource"),
                "does not apply to token = \"none\"",
            ));
        }
        if route
            .resource
            .as_ref()
            .is_some_and(|r| r.fragment().is_some())
        {
            return Err(invalid(
                &key("resource"),
                "must not have a fragment (RFC 8707 §2)",
            ));
        }
        match (&route.audience, route.token) {
            (Some(_), t) if t != TokenKind::Exchange => {
                return Err(invalid(&key("audience"), "applies to token = \"exchange\""));
            }
            (Some(a), _) if a.is_empty() || a.chars().any(char::is_control) => {
                return Err(invalid(&key("audience"), "must be a non-empty string"));
            }
            (None, TokenKind::Exchange) if route.resource.is_none() => {
                return Err(invalid(
                    &key("audience"),
                    "token = \"exchange\" needs an audience or a resource",
                ));
            }
            _ => {}
        }
        if route.has_own_user_token() && oidc_dpop {
            return Err(invalid(
                &key(if route.token == TokenKind::Exchange {
                    "token"
                } else if route.resource.is_some() {
                    "resource"
                } else {
                    "scopes"
                }),
                "a route's own user token (resource, scopes, exchange) is not DPoP-bound: not with oidc.dpop = true",
            ));
        }
        if route.has_own_user_token() && route.dpop == Some(true) {
            return Err(invalid(
                &key("dpop"),
                "applies to the login's token; a route with its own user token (resource, scopes, exchange) sends it as Bearer",
            ));
        }
        if !route.csrf && !matches!(route.token, TokenKind::None | TokenKind::Client) {
            return Err(invalid(
                &key("csrf"),
                "may be false only on routes that take no session (token = \"none\" or \"client\")",
            ));
        }
        if route.websocket && route.dpop == Some(true) {
            return Err(invalid(
                &key("websocket"),
                "a WebSocket handshake carries no DPoP proof: set dpop = false on this route",
            ));
        }
        if route.max_websockets_per_session == 0 {
            return Err(invalid(
                &key("max_websockets_per_session"),
                "must be at least 1",
            ));
        }
        if route.dpop == Some(true) {
            if !oidc_dpop {
                return Err(invalid(&key("dpop"), "needs oidc.dpop = true"));
            }
            if matches!(route.token, TokenKind::None | TokenKind::Client) {
                return Err(invalid(
                    &key("dpop"),
                    "applies to user tokens (token = \"user\", \"user_or_none\" or \"user_or_client\")",
                ));
            }
        }
        if routes[..i].iter().any(|r| r.prefix == route.prefix) {
            return Err(invalid(&key("prefix"), "is used by another route"));
        }
    }
    Ok(())
}

/// The access rules of one frontend's routes (`methods`, `require`, step-up).
fn validate_route_access(
    routes: &[RouteConfig],
    login_params: &[String],
    prefix: &str,
) -> Result<(), ConfigError> {
    access::validate(routes, login_params, prefix)
}

/// The static files of one frontend; `prefix` as in [`validate_oidc`].
fn validate_static(static_files: Option<&StaticConfig>, prefix: &str) -> Result<(), ConfigError> {
    if let Some(s) = static_files
        && !s.dir.is_dir()
    {
        return Err(invalid(
            &format!("{prefix}static.dir"),
            format!("{} is not a directory", s.dir.display()),
        ));
    }
    Ok(())
}

/// Reads `client_secret_file` into `client_secret`.
fn read_secret_file(oidc: &mut OidcConfig, prefix: &str) -> Result<(), ConfigError> {
    if let Some(file) = &oidc.client_secret_file {
        let key = format!("{prefix}oidc.client_secret_file");
        if oidc.client_secret.is_some() {
            return Err(invalid(
                &key,
                "set either client_secret or client_secret_file, not both",
            ));
        }
        let text = std::fs::read_to_string(file)
            .map_err(|e| invalid(&key, format!("cannot read {}: {e}", file.display())))?;
        oidc.client_secret = Some(Secret::new(text.trim().to_owned()));
    }
    Ok(())
}

/// Where a config's values came from: the file, and which keys environment
/// variables set (dotted, lowercase, array indices as numbers: `frontends.0.oidc.x`).
struct Sources {
    file: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl Sources {
    /// The environment variable that set `key` (dotted) or a table above it.
    fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| {
                key == k
                    || key
                        .strip_prefix(k.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            })
            .map(|(_, var)| var.as_str())
    }

    /// `PORTCULLIS_FRONTENDS__<NAME>__…` overrides, by the index of the frontend named.
    fn add_frontend_env(&mut self, tree: &Value, env: &[(String, String, String)]) {
        let Some(Value::Array(_, frontends)) = find(tree, "frontends") else {
            return;
        };
        for (key, _, var) in env {
            let mut parts = key.split("__").skip(1);
            let Some(name) = parts.next() else { continue };
            let rest: Vec<&str> = parts.collect();
            let index = frontends.iter().position(|f| {
                find(f, "name")
                    .and_then(|n| n.as_str().map(|n| n.replace('-', "_") == name))
                    .unwrap_or(false)
            });
            if let Some(i) = index {
                self.env
                    .push((format!("frontends.{i}.{}", rest.join(".")), var.clone()));
            }
        }
    }

    /// " (from PORTCULLIS_X)" or " (in FILE)" for `key` (as errors name it).
    fn origin_of(&self, key: &str) -> String {
        if let Some(var) = self.env_var(&dotted(key)) {
            return format!(" (from the environment variable {var})");
        }
        match &self.file {
            Some(file) => format!(" (in {})", file.display()),
            None => String::new(),
        }
    }

    fn annotate(&self, e: ConfigError) -> ConfigError {
        match e {
            ConfigError::Invalid { key, problem } if !key.starts_with('-') => {
                let origin = self.origin_of(&key);
                ConfigError::Invalid {
                    problem: format!("{problem}{origin}"),
                    key,
                }
            }
            other => other,
        }
    }

    /// A serde/figment error as `key: problem (origin)`: the key as `routes[0].x`, no
    /// source location of ours, no library type names.
    fn parse_error(&self, e: figment::Error) -> ConfigError {
        use figment::error::Kind;
        let text = e
            .into_iter()
            .map(|e| {
                let mut path = e.path.clone();
                let problem = match &e.kind {
                    Kind::Message(m) => m.clone(),
                    Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                        format!("found {actual}, expected {expected}")
                    }
                    Kind::InvalidLength(n, expected) => {
                        format!("has {n} items, expected {expected}")
                    }
                    Kind::UnknownVariant(v, expected) => {
                        format!("{v:?} is not one of {}", expected.join(", "))
                    }
                    Kind::UnknownField(field, expected) => {
                        if path.last() != Some(field) {
                            path.push(field.clone());
                        }
                        format!("is not a key here (known keys: {})", expected.join(", "))
                    }
                    Kind::MissingField(field) => {
                        if path.last().map(String::as_str) != Some(field.as_ref()) {
                            path.push(field.to_string());
                        }
                        "is required".to_owned()
                    }
                    Kind::DuplicateField(field) => {
                        path.push((*field).to_owned());
                        "is set twice".to_owned()
                    }
                    other => other.to_string(),
                };
                if path.is_empty() {
                    let file = self
                        .file
                        .as_ref()
                        .map(|f| format!("{}: ", f.display()))
                        .unwrap_or_default();
                    return format!("{file}{problem}");
                }
                let key = key_name(&path);
                format!("{key}: {problem}{}", self.origin_of(&key))
            })
            .collect::<Vec<_>>()
            .join("; ");
        ConfigError::Parse(text)
    }
}

/// `["routes", "0", "prefix"]` → `routes[0].prefix`, the one style errors use.
fn key_name(path: &[String]) -> String {
    let mut out = String::new();
    for part in path {
        if part.bytes().all(|b| b.is_ascii_digit()) && !part.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// `routes[0].prefix` → `routes.0.prefix` (how [`Sources`] records keys).
fn dotted(key: &str) -> String {
    key.replace(']', "").replace('[', ".")
}

/// The value at a dotted path of the raw tree (`routes.0.prefix`).
fn find<'a>(tree: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(tree, |v, part| match v {
        Value::Dict(_, d) => d.get(part),
        Value::Array(_, a) => a.get(part.parse::<usize>().ok()?),
        _ => None,
    })
}

/// An environment override's value for `key` (dotted, lowercase).
fn env_value(key: &str, raw: &str) -> Value {
    let leaf = key.rsplit('.').next().unwrap_or_default();
    if STRING_KEYS.contains(&leaf) {
        Value::from(raw.to_owned())
    } else {
        parse_env_value(raw)
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests;
