use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The opaque session id the browser holds: 256 random bits, base64url in the cookie.
/// Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId([u8; 32]);

impl SessionId {
    pub fn generate() -> Self {
        Self(crate::primitives::random_bytes())
    }

    /// Parses a cookie value; anything but 43 base64url characters of 32 bytes is refused.
    pub fn parse(value: &str) -> Option<Self> {
        if value.len() != 43 {
            return None;
        }
        let mut id = [0u8; 32];
        let n = URL_SAFE_NO_PAD.decode_slice(value, &mut id).ok()?;
        (n == 32).then_some(Self(id))
    }

    pub fn to_cookie_value(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The key under which stores keep this session: SHA-256 of the id.
    pub fn key(&self) -> StoreKey {
        StoreKey::hash(&self.0)
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(***)")
    }
}

/// What a store files a record under: SHA-256 of a secret id — a session id, a
/// pending login's `state`, a logout token's `jti` in the replay cache — so a store's
/// contents never hold the id a browser presents. (Named `SessionKey` before: it keys
/// more than sessions.)
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    pub fn hash(secret: &[u8]) -> Self {
        let mut key = [0u8; 32];
        key.copy_from_slice(digest::digest(&digest::SHA256, secret).as_ref());
        Self(key)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short, non-reversible label for logs: the first 8 bytes of SHA-256 of the
    /// key, hex. Never the id, never the key itself.
    pub fn log_label(&self) -> String {
        let d = digest::digest(&digest::SHA256, &self.0);
        d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A `Hasher` for maps keyed by [`StoreKey`]. Session keys are SHA-256 outputs
/// already: their first bytes are a fine hash (and a
/// client can't choose keys: they are hashes of ids, and only Portcullis inserts).
#[derive(Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 = (self.0 ^ u64::from_le_bytes(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, _: usize) {
        // The length prefix of the 32-byte key: always the same.
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreKey({})", self.log_label())
    }
}

/// A session as stores keep it. Tokens are sealed; claims are plain JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub key: StoreKey,
    /// The user's subject identifier at the provider.
    pub sub: String,
    /// The provider's session id (`sid` claim), for back-channel logout.
    pub sid: Option<String>,
    /// The frontend (`[[frontends]]` name) the session belongs to; "" for the single
    /// frontend. A session is only ever accepted by its own frontend.
    pub frontend: String,
    /// The user's claims (ID token + userinfo) as a JSON object, without tokens.
    pub claims: String,
    /// The [`Tokens`], sealed by the token cipher with `key` as associated data.
    pub sealed_tokens: Vec<u8>,
    pub created_at: i64,
    pub last_seen: i64,
    /// Absolute end: login time + absolute timeout, capped by the refresh token's lifetime.
    pub expires_at: i64,
    /// Bumped on every token update.
    pub version: u64,
}

impl SessionRecord {
    /// Runs `f` with this session as the subject of an audit event.
    pub fn audited<R>(&self, f: impl FnOnce(crate::telemetry::AuditSubject<'_>) -> R) -> R {
        let label = self.key.log_label();
        f(crate::telemetry::AuditSubject {
            sub: &self.sub,
            session: &label,
        })
    }
}

/// The user's tokens; only ever stored sealed. `Debug` prints no token.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default)]
    pub token_type: String,
    /// When the access token expires (Unix seconds), if the provider said.
    #[serde(default)]
    pub access_expires_at: Option<i64>,
    /// When the access token was obtained (Unix seconds): with the expiry, its lifetime.
    #[serde(default)]
    pub access_issued_at: Option<i64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    /// The session's DPoP private key (base64url PKCS#8, see `oidc::dpop`) when
    /// `oidc.dpop` is on: sealed with the tokens, so every store keeps it encrypted.
    /// Records from before DPoP have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_key: Option<String>,
    /// Routes' own access tokens (per-route `resource`/`scopes`, token exchange), one
    /// per audience key (see `tokens::Audience`). Sealed with the rest, so the one
    /// refresh token and every audience's token change together, atomically.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_tokens: Vec<RouteToken>,
}

/// [`Tokens`] opened from a session's sealed blob, shared by the requests that use
/// them (`Sessions::open_tokens_cached`, a refresh's answer), with the
/// `Authorization: Bearer` value of the access token built on first use and shared
/// after it: a request clones it (a reference count) instead of copying ~1 KiB of
/// token into a new header value. Derefs to the [`Tokens`]; `Debug` prints none.
pub struct OpenedTokens {
    tokens: Tokens,
    bearer: Bearer,
    /// One per [`Tokens::route_tokens`], in their order.
    route_bearers: Box<[Bearer]>,
}

type Bearer = std::sync::OnceLock<Option<http::HeaderValue>>;

impl OpenedTokens {
    pub fn new(tokens: Tokens) -> Self {
        Self {
            route_bearers: tokens.route_tokens.iter().map(|_| Bearer::new()).collect(),
            tokens,
            bearer: Bearer::new(),
        }
    }

    /// `Bearer <access token>`, marked sensitive (never logged by hyper); `None` when
    /// the token can't be a header value.
    pub fn bearer(&self) -> Option<http::HeaderValue> {
        bearer_of(&self.bearer, &self.tokens.access_token)
    }

    /// [`Self::bearer`] of the route token for the audience `key`
    /// ([`Tokens::route_token`]); `None` when there is none, or it can't be a header
    /// value.
    pub fn route_bearer(&self, key: &str) -> Option<http::HeaderValue> {
        let i = self.tokens.route_tokens.iter().position(|t| t.key == key)?;
        bearer_of(
            &self.route_bearers[i],
            &self.tokens.route_tokens[i].access_token,
        )
    }
}

fn bearer_of(slot: &Bearer, token: &str) -> Option<http::HeaderValue> {
    slot.get_or_init(|| authorization("Bearer", token)).clone()
}

/// `Authorization: <scheme> <token>`, marked sensitive (never logged by hyper); `None`
/// when the token can't be a header value. Every such value is built here: the
/// cached Bearer values above, a DPoP-bound token's, a route token's.
pub fn authorization(scheme: &str, token: &str) -> Option<http::HeaderValue> {
    // Exactly the length: a `String` with room to spare would cost `Bytes` a second
    // allocation.
    let mut value = String::with_capacity(scheme.len() + 1 + token.len());
    value.push_str(scheme);
    value.push(' ');
    value.push_str(token);
    let mut value = http::HeaderValue::try_from(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

impl std::ops::Deref for OpenedTokens {
    type Target = Tokens;
    fn deref(&self) -> &Tokens {
        &self.tokens
    }
}

impl std::fmt::Debug for OpenedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.tokens.fmt(f)
    }
}

impl From<Tokens> for OpenedTokens {
    fn from(tokens: Tokens) -> Self {
        Self::new(tokens)
    }
}

/// An access token for one audience (one route kind of token), kept in [`Tokens`].
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteToken {
    /// What it was obtained for (`tokens::Audience::key`).
    pub key: String,
    pub access_token: String,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub issued_at: Option<i64>,
}

/// The parts of a token endpoint's answer (RFC 6749 §5.1) a session keeps, as the
/// provider sent them. Built from the OIDC client's answer by the token manager
/// (`tokens`), which sees both layers.
pub struct Issued {
    pub access_token: String,
    pub token_type: String,
    /// The access token's lifetime in seconds, if the provider said.
    pub expires_in: Option<i64>,
    pub refresh_token: Option<String>,
    /// The refresh token's lifetime in seconds (Keycloak says it), if the provider said.
    pub refresh_expires_in: Option<i64>,
    pub id_token: Option<String>,
    pub scope: Option<String>,
}

impl Issued {
    /// When the refresh token expires (Unix seconds), if the provider said (a
    /// lifetime of zero or less says nothing).
    pub fn refresh_expires_at(&self, now: i64) -> Option<i64> {
        self.refresh_expires_in.filter(|s| *s > 0).map(|s| now + s)
    }
}

impl Tokens {
    /// A login's tokens, `issued` at `now`; `dpop_key`: the session's DPoP key
    /// (stored form) when they are bound to one.
    pub fn issued(issued: Issued, now: i64, dpop_key: Option<String>) -> Self {
        Self {
            access_token: issued.access_token,
            token_type: issued.token_type,
            access_expires_at: issued.expires_in.map(|s| now + s),
            access_issued_at: Some(now),
            refresh_token: issued.refresh_token,
            id_token: issued.id_token,
            scope: issued.scope,
            dpop_key,
            route_tokens: Vec::new(),
        }
    }

    /// These tokens after a refresh answered with `issued` at `now`: a new access
    /// token, and what the answer omits kept from before — a provider that doesn't
    /// rotate keeps the old refresh token valid, and a refresh needn't repeat the ID
    /// token or the scope (RFC 6749 §6, OIDC Core §12.2).
    ///
    /// `keep_id_token`: the stored ID token stays even when the answer has one (it
    /// could not be validated). `dpop_bound`: the refresh was signed with the
    /// session's DPoP key, so the new token is bound to it and the key stays;
    /// otherwise (DPoP turned off since) the key goes with the old token. The routes'
    /// own tokens stay: they are for other audiences.
    pub fn refreshed(
        self,
        issued: Issued,
        now: i64,
        keep_id_token: bool,
        dpop_bound: bool,
    ) -> Self {
        let mut fresh = Self::issued(issued, now, self.dpop_key.filter(|_| dpop_bound));
        fresh.refresh_token = fresh.refresh_token.or(self.refresh_token);
        if keep_id_token || fresh.id_token.is_none() {
            fresh.id_token = self.id_token;
        }
        fresh.scope = fresh.scope.or(self.scope);
        fresh.route_tokens = self.route_tokens;
        fresh
    }

    /// The token kept for audience `key`, if any.
    pub fn route_token(&self, key: &str) -> Option<&RouteToken> {
        self.route_tokens.iter().find(|t| t.key == key)
    }

    /// Keeps `token` for its audience, replacing the previous one.
    pub fn set_route_token(&mut self, token: RouteToken) {
        self.route_tokens.retain(|t| t.key != token.key);
        self.route_tokens.push(token);
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("token_type", &self.token_type)
            .field("access_expires_at", &self.access_expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("scope", &self.scope)
            .field("has_dpop_key", &self.dpop_key.is_some())
            .field("route_tokens", &self.route_tokens.len())
            .finish_non_exhaustive()
    }
}

/// A login in progress, from `/bff/login` to `/bff/callback`, keyed by the hash of its `state`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingLogin {
    /// SHA-256 of the browser-binding cookie's value (base64url).
    pub binding: String,
    pub pkce_verifier: String,
    pub nonce: String,
    pub return_url: String,
    pub expires_at: i64,
    /// The login was silent (`prompt=none`): a "login required" answer is a clean
    /// not-logged-in result, not an error.
    #[serde(default)]
    pub silent: bool,
    /// The frontend that started the login; only its callback may finish it.
    #[serde(default)]
    pub frontend: String,
    /// The client network that started it (`security::limits::client_network`, e.g.
    /// `203.0.113.7/32`, `2001:db8:1:2::/64`; "" when unknown): the per-network cap
    /// counts by it, and a full store evicts from the heaviest network first.
    #[serde(default)]
    pub network: String,
    /// Step-up: the `acr_values` the login asked the provider for (space-separated):
    /// the ID token's `acr` must be one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr_values: Option<String>,
    /// Step-up: the `max_age` (seconds) the login asked for: the ID token's
    /// `auth_time` must be at most that old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("return_url", &self.return_url)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_the_cookie_value() {
        let id = SessionId::generate();
        let value = id.to_cookie_value();
        assert_eq!(value.len(), 43);
        assert!(
            value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(SessionId::parse(&value), Some(id.clone()));
        assert_eq!(SessionId::parse(&value).unwrap().key(), id.key());
        assert_ne!(SessionId::generate(), id);
    }

    #[test]
    fn malformed_cookie_values_are_refused() {
        let good = SessionId::generate().to_cookie_value();
        for bad in [
            "",
            "abc",
            &good[..42],
            &format!("{good}A"),
            &good.replace(|_| true, "!"),
        ] {
            assert!(SessionId::parse(bad).is_none(), "{bad:?}");
        }
        let padded = format!("{}=", &good[..42]);
        assert!(SessionId::parse(&padded).is_none());
    }

    #[test]
    fn debug_never_prints_secrets() {
        let id = SessionId::generate();
        assert!(!format!("{id:?}").contains(&id.to_cookie_value()));
        let t = Tokens {
            access_token: "AT-secret".into(),
            token_type: "Bearer".into(),
            access_expires_at: None,
            access_issued_at: None,
            refresh_token: Some("RT-secret".into()),
            id_token: Some("IDT-secret".into()),
            scope: None,
            dpop_key: Some("KEY-secret".into()),
            route_tokens: Vec::new(),
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}

#[cfg(test)]
mod opened_tests {
    use super::{OpenedTokens, Tokens};

    fn opened(access: &str) -> OpenedTokens {
        OpenedTokens::new(Tokens {
            access_token: access.into(),
            token_type: "Bearer".into(),
            access_expires_at: None,
            access_issued_at: None,
            refresh_token: None,
            id_token: None,
            scope: None,
            dpop_key: None,
            route_tokens: Vec::new(),
        })
    }

    #[test]
    fn bearer_is_built_once_and_marked_sensitive() {
        let tokens = opened("eyJhbGciOi.eyJzdWIi.c2ln");
        let first = tokens.bearer().unwrap();
        assert_eq!(first, "Bearer eyJhbGciOi.eyJzdWIi.c2ln");
        assert!(first.is_sensitive(), "never logged by hyper");
        let again = tokens.bearer().unwrap();
        assert_eq!(again, first);
        assert!(again.is_sensitive());
        // The shared value, not a copy: the same bytes.
        assert_eq!(first.as_bytes().as_ptr(), again.as_bytes().as_ptr());
        assert_eq!(
            tokens.access_token, "eyJhbGciOi.eyJzdWIi.c2ln",
            "derefs to the tokens"
        );
    }

    #[test]
    fn each_route_token_has_its_own_bearer() {
        let mut tokens = opened("AT").tokens;
        for (key, token) in [("orders", "RT-orders"), ("billing", "RT-billing")] {
            tokens.set_route_token(super::RouteToken {
                key: key.into(),
                access_token: token.into(),
                expires_at: None,
                issued_at: None,
            });
        }
        let tokens = OpenedTokens::new(tokens);
        for _ in 0..2 {
            assert_eq!(tokens.route_bearer("orders").unwrap(), "Bearer RT-orders");
            assert_eq!(tokens.route_bearer("billing").unwrap(), "Bearer RT-billing");
            assert!(tokens.route_bearer("billing").unwrap().is_sensitive());
            assert_eq!(tokens.bearer().unwrap(), "Bearer AT");
        }
        assert!(tokens.route_bearer("other").is_none());
    }

    #[test]
    fn a_token_that_is_no_header_value_has_no_bearer() {
        for bad in ["a\r\nX-Injected: 1", "a\nb", "a\0b", "a\x7fb"] {
            assert!(opened(bad).bearer().is_none(), "{bad:?}");
        }
        assert!(!format!("{:?}", opened("secret-token")).contains("secret-token"));
    }
}
