//! DPoP (RFC 9449): sender-constrained user tokens.
//!
//! With `oidc.dpop = true` every login gets its own P-256 key ([`DpopKey`]), made at
//! the callback just before the code exchange and kept only inside the session's
//! sealed tokens (AES-256-GCM, like the tokens themselves): whatever store holds the
//! session holds the key, encrypted, and it dies with the session. The provider binds
//! the access token to the key's thumbprint (`cnf.jkt`), so a token that leaks from an
//! upstream or a log is useless without a fresh proof signed by a key that never
//! leaves Portcullis.
//!
//! A proof ([`DpopKey::proof`]) is a JWT with `typ: dpop+jwt`, `alg: ES256` and the
//! public `jwk` in its header, and `jti` (random, single use), `htm`, `htu` (the
//! target URI without query and fragment, normalised: [`htu`]), `iat`, the server's
//! `nonce` when it gave one, and for resource requests `ath` (the access token's
//! SHA-256, base64url). One is made per request and never reused.
//!
//! Nonces (§8, §9): a server may answer `use_dpop_nonce` with a `DPoP-Nonce` header;
//! the latest nonce of each server is kept in a [`NonceSlot`] (one for the provider,
//! one per upstream origin), sent in the next proofs, and the refused call is retried
//! once ([`with_nonce_retry`], for the token endpoint, userinfo and DPoP routes alike).
//! This module never logs a key, a proof or a token.

use std::sync::RwLock;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The `DPoP` request header (proofs) and the `DPoP-Nonce` response header.
pub const DPOP_HEADER: &str = "dpop";
pub const DPOP_NONCE_HEADER: &str = "dpop-nonce";

/// The longest nonce kept; a server's nonce is short opaque text (NQCHAR, §8.1).
const MAX_NONCE_LEN: usize = 512;

/// A session's DPoP key: ES256 (P-256). `Debug` prints only the thumbprint.
pub struct DpopKey {
    key: EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopKey")
            .field("jkt", &self.thumbprint())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct ProofClaims<'a> {
    jti: String,
    htm: &'a str,
    htu: &'a str,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<String>,
}

impl DpopKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, String> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| "DPoP key generation failed".to_owned())?;
        let der = pair
            .to_pkcs8v1()
            .map_err(|_| "DPoP key serialization failed".to_owned())?;
        Self::from_pkcs8(der.as_ref())
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        // Checks the key is a P-256 key pair before anything is signed with it.
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
        let key = EncodingKey::from_ec_der(der);
        let jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).map_err(|e| e.to_string())?;
        Ok(Self { key, jwk })
    }

    /// The key as kept in the session's sealed tokens (base64url PKCS#8).
    pub fn to_stored(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.as_bytes())
    }

    /// The key back from [`DpopKey::to_stored`].
    pub fn from_stored(stored: &str) -> Result<Self, String> {
        let der = URL_SAFE_NO_PAD
            .decode(stored)
            .map_err(|_| "stored DPoP key is not base64url".to_owned())?;
        Self::from_pkcs8(&der)
    }

    /// The public key as a JWK (what proofs carry).
    pub fn public_jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// RFC 7638 SHA-256 thumbprint of the public key: the `jkt` tokens are bound to.
    pub fn thumbprint(&self) -> String {
        self.jwk
            .thumbprint(ThumbprintHash::SHA256)
            .unwrap_or_default()
    }

    /// A fresh proof for one request: `htm` the method, `htu` the target URI as made
    /// by [`htu`], the server's `nonce` if it gave one, and the access token for
    /// resource requests (its hash becomes `ath`).
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        nonce: Option<&str>,
        access_token: Option<&str>,
    ) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("dpop+jwt".to_owned());
        header.jwk = Some(self.jwk.clone());
        let claims = ProofClaims {
            jti: crate::primitives::random_token(),
            htm,
            htu,
            iat: crate::primitives::now_secs(),
            nonce,
            ath: access_token.map(ath),
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())
    }
}

/// `ath`: base64url SHA-256 of the access token's ASCII text (§4.2).
pub fn ath(access_token: &str) -> String {
    crate::primitives::sha256_b64url(access_token.as_bytes())
}

/// `htu` of a request URI (§4.2, §4.3): scheme and host lower case, the default port
/// left out, the path as sent (`/` when empty), no query, no fragment.
pub fn htu(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        _ => 80,
    };
    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    let mut out = String::with_capacity(scheme.len() + host.len() + path.len() + 10);
    out.push_str(&scheme);
    out.push_str("://");
    out.push_str(&host);
    if let Some(port) = uri.port_u16().filter(|p| *p != default_port) {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(path);
    out
}

/// `htu` of a provider endpoint given as a URL string (`url` normalises it).
pub fn htu_of_url(endpoint: &str) -> Result<String, String> {
    let mut url = url::Url::parse(endpoint).map_err(|e| format!("{endpoint:?}: {e}"))?;
    url.set_query(None);
    url.set_fragment(None);
    Ok(url.into())
}

/// The latest `DPoP-Nonce` of one server. Reads and writes are short and never
/// held across an await.
#[derive(Debug, Default)]
pub struct NonceSlot(RwLock<Option<String>>);

impl NonceSlot {
    pub fn get(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Keeps the `DPoP-Nonce` of an answer, if it has a valid one. Returns whether it did.
    pub fn update_from(&self, headers: &http::HeaderMap) -> bool {
        let Some(nonce) = nonce_of(headers) else {
            return false;
        };
        let mut slot = self.0.write().unwrap_or_else(|p| p.into_inner());
        if slot.as_deref() != Some(nonce) {
            *slot = Some(nonce.to_owned());
        }
        true
    }

    /// Keeps the nonce of a resource server's answer (see [`NonceSlot::update_from`]),
    /// and says whether the answer is a 401 asking for a nonce with one (§9).
    pub fn asked_by(&self, status: http::StatusCode, headers: &http::HeaderMap) -> bool {
        self.update_from(headers)
            && status == http::StatusCode::UNAUTHORIZED
            && asks_for_nonce(headers)
    }
}

/// A response's `DPoP-Nonce`, when it is one (non-empty NQCHAR text, §8.1).
pub fn nonce_of(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(DPOP_NONCE_HEADER)?.to_str().ok()?;
    let nqchar = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
    (!value.is_empty() && value.len() <= MAX_NONCE_LEN && value.bytes().all(nqchar))
        .then_some(value)
}

/// Whether a resource server's 401 asks for a nonce: `WWW-Authenticate: DPoP
/// error="use_dpop_nonce"` (§9).
pub fn asks_for_nonce(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.trim_start()
                .get(..4)
                .is_some_and(|s| s.eq_ignore_ascii_case("dpop"))
                && v.contains("use_dpop_nonce")
        })
}

/// What one send of a request with a DPoP proof got.
pub enum Sent<T> {
    /// The answer, final.
    Answer(T),
    /// The server asked for a nonce and sent a new one (§8, §9): a second send, with
    /// a new proof carrying it, may succeed. `T` is the answer if none is made.
    NonceAsked(T),
}

impl<T> Sent<T> {
    /// `answer`, which `asked` says asks for a nonce.
    pub fn of(answer: T, asked: bool) -> Self {
        if asked {
            Self::NonceAsked(answer)
        } else {
            Self::Answer(answer)
        }
    }
}

/// Sends a request with a DPoP proof, and once more when the server asks for a nonce
/// it has just sent (§8, §9) — never a third time, so a server that keeps asking
/// gets its refusal back to the caller. `send` makes a new proof with the server's
/// latest nonce each time it is called; `server` names it in the log.
///
/// (`send` is a closure returning a future, not an async closure: the futures of
/// async closures are not `Send` for every lifetime yet, and these run in spawned
/// tasks.)
pub async fn with_nonce_retry<T, E, F>(server: &str, mut send: impl FnMut() -> F) -> Result<T, E>
where
    F: Future<Output = Result<Sent<T>, E>>,
{
    match send().await? {
        Sent::Answer(answer) => Ok(answer),
        Sent::NonceAsked(_) => {
            tracing::debug!(server, "the server asked for a DPoP nonce; retrying");
            match send().await? {
                Sent::Answer(answer) | Sent::NonceAsked(answer) => Ok(answer),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn verify(proof: &str) -> (Header, serde_json::Value) {
        let header = jsonwebtoken::decode_header(proof).unwrap();
        let key = DecodingKey::from_jwk(header.jwk.as_ref().unwrap()).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(proof, &key, &v).unwrap();
        (header, data.claims)
    }

    #[test]
    fn a_proof_carries_the_rfc_9449_claims() {
        let key = DpopKey::generate().unwrap();
        let proof = key
            .proof("GET", "https://api.example/r", Some("n-1"), Some("AT"))
            .unwrap();
        let (header, claims) = verify(&proof);
        assert_eq!(header.typ.as_deref(), Some("dpop+jwt"));
        assert_eq!(header.alg, Algorithm::ES256);
        let jwk = header.jwk.unwrap();
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::SHA256).unwrap(),
            key.thumbprint()
        );
        let jwk_json = serde_json::to_value(&jwk).unwrap();
        assert!(jwk_json.get("d").is_none(), "never the private part");
        assert_eq!(claims["htm"], "GET");
        assert_eq!(claims["htu"], "https://api.example/r");
        assert_eq!(claims["nonce"], "n-1");
        // RFC 9449 §4.2 example: ath of "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU".
        assert_eq!(
            ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
        assert_eq!(claims["ath"], ath("AT"));
        let iat = claims["iat"].as_i64().unwrap();
        assert!((iat - crate::primitives::now_secs()).abs() <= 1);
        assert!(claims["jti"].as_str().unwrap().len() >= 32);
        // Token endpoint proofs: no nonce unless given, no ath.
        let (_, plain) = verify(&key.proof("POST", "https://op/token", None, None).unwrap());
        assert!(plain.get("nonce").is_none() && plain.get("ath").is_none());
        assert_ne!(plain["jti"], claims["jti"], "jti is unique");
    }

    #[test]
    fn keys_round_trip_through_the_session() {
        let key = DpopKey::generate().unwrap();
        let again = DpopKey::from_stored(&key.to_stored()).unwrap();
        assert_eq!(again.thumbprint(), key.thumbprint());
        assert_ne!(DpopKey::generate().unwrap().thumbprint(), key.thumbprint());
        assert!(DpopKey::from_stored("bm90IGEga2V5").is_err());
        assert!(!format!("{key:?}").contains(&key.to_stored()));
    }

    #[test]
    fn htu_is_normalised_without_query_or_fragment() {
        let cases = [
            ("http://API.Example:80/a/b?x=1", "http://api.example/a/b"),
            ("https://api.example:443/", "https://api.example/"),
            (
                "https://api.example:8443/p%20q?",
                "https://api.example:8443/p%20q",
            ),
            ("http://127.0.0.1:9100", "http://127.0.0.1:9100/"),
        ];
        for (uri, want) in cases {
            assert_eq!(htu(&uri.parse().unwrap()), want, "{uri}");
        }
        assert_eq!(
            htu_of_url("https://OP.example:443/token?a=b#f").unwrap(),
            "https://op.example/token"
        );
    }

    #[test]
    fn nonces_and_challenges_are_read_from_headers() {
        let mut h = http::HeaderMap::new();
        let slot = NonceSlot::default();
        assert!(!slot.update_from(&h));
        h.insert(
            DPOP_NONCE_HEADER,
            "eyJ7S_zG.eyJH0-Z.HX4w-7v".parse().unwrap(),
        );
        assert!(slot.update_from(&h));
        assert_eq!(slot.get().as_deref(), Some("eyJ7S_zG.eyJH0-Z.HX4w-7v"));
        h.insert(DPOP_NONCE_HEADER, "has space".parse().unwrap());
        assert!(nonce_of(&h).is_none());
        assert!(!asks_for_nonce(&h));
        h.insert(
            http::header::WWW_AUTHENTICATE,
            r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce""#
                .parse()
                .unwrap(),
        );
        assert!(asks_for_nonce(&h));
        h.insert(
            http::header::WWW_AUTHENTICATE,
            r#"Bearer error="use_dpop_nonce""#.parse().unwrap(),
        );
        assert!(!asks_for_nonce(&h));
    }
}
