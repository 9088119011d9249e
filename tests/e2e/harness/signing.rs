//! Tokens the test signs itself: an ES256 key it holds, unsigned and HMAC JWTs.

use serde_json::{Value, json};

use super::CLIENT_ID;

/// The event a back-channel logout token carries (OpenID Connect Back-Channel Logout §2.4).
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Everything a valid logout token from `issuer` to the test client has: `iss`,
/// `aud`, `iat`, `exp` (in 2 minutes), a fresh `jti`, the logout event; `sub` and
/// `sid` when given.
pub fn logout_claims(issuer: &str, sub: Option<&str>, sid: Option<&str>) -> Value {
    let now = portcullis::primitives::now_secs();
    let mut c = json!({
        "iss": issuer,
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 120,
        "jti": portcullis::session::cipher::generate_key(),
        "events": { LOGOUT_EVENT: {} },
    });
    if let Some(sub) = sub {
        c["sub"] = json!(sub);
    }
    if let Some(sid) = sid {
        c["sid"] = json!(sid);
    }
    c
}

/// An ES256 key the test holds. Its public half can be published in the provider's
/// JWKS, so tokens the test signs verify as the provider's.
pub struct TestSigner {
    pub kid: String,
    pkcs8: Vec<u8>,
    public_jwk: Value,
}

impl TestSigner {
    pub fn new(kid: &str) -> Self {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        use base64::Engine;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref(); // 0x04 || x || y
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let public_jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        Self {
            kid: kid.to_owned(),
            pkcs8: pkcs8.as_ref().to_vec(),
            public_jwk,
        }
    }

    pub fn public_jwk(&self) -> Value {
        self.public_jwk.clone()
    }

    /// The private key as PKCS#8 PEM (for `oidc.private_key_file`).
    pub fn private_pem(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    /// Signs `claims` with this key; `typ` goes in the header when given.
    pub fn sign(&self, claims: &Value, typ: Option<&str>) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        )
        .unwrap()
    }
}

/// An unsigned JWT (`alg: none`).
pub fn unsigned_jwt(claims: &Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "logout+jwt"})),
        b64(claims)
    )
}

/// An HS256 JWT keyed with `secret` (the "public key as HMAC secret" attack).
pub fn hmac_jwt(claims: &Value, secret: &[u8], kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    header.typ = Some("logout+jwt".into());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}
