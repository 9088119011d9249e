//! `private_key_jwt` client authentication (RFC 7523 §2.2, OIDC Core §9): the
//! client proves itself with a short-lived JWT signed by its own private key, so no
//! shared secret exists to leak. Assertions carry `iss` = `sub` = the client id,
//! `aud` = the provider's issuer, a unique `jti` and an expiry a minute out.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// The client's signing key.
pub struct ClientKey {
    key: EncodingKey,
    alg: Algorithm,
    kid: Option<String>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// Loads a PKCS#8 PEM private key (RSA for RS256/PS256, P-256 for ES256, Ed25519 for EdDSA).
    pub fn from_pem(pem: &[u8], alg: &str, kid: Option<String>) -> Result<Self, String> {
        let alg: Algorithm = alg
            .parse()
            .map_err(|_| format!("unknown algorithm {alg:?}"))?;
        let key = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            _ => return Err(format!("{alg:?} is not an asymmetric signing algorithm")),
        }
        .map_err(|e| format!("not a {alg:?} private key in PEM: {e}"))?;
        Ok(Self { key, alg, kid })
    }

    /// The public half as a JWK, to register at the provider.
    pub fn public_jwk(&self) -> Result<serde_json::Value, String> {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).map_err(|e| e.to_string())?;
        jwk.common.key_id = self.kid.clone();
        serde_json::to_value(jwk).map_err(|e| e.to_string())
    }

    /// A fresh client assertion for `audience`.
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<String, String> {
        let now = crate::primitives::now_secs();
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": crate::primitives::random_token(),
            "iat": now,
            "exp": now + 60,
        });
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())
    }
}
