use jsonwebtoken::{Validation, decode_header};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Oidc, OidcError};
use crate::session::now_secs;

/// A token endpoint answer. `Debug` prints no token.
#[derive(Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    #[serde(default)]
    pub expires_in: Option<i64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Some providers (Keycloak) say how long the refresh token lives.
    #[serde(default)]
    pub refresh_expires_in: Option<i64>,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("has_id_token", &self.id_token.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenResponse {
    /// Portcullis sends tokens as `Authorization: Bearer`: any other type is refused
    /// (DPoP-bound tokens come with their own support).
    pub(super) fn check_bearer(&self) -> Result<(), OidcError> {
        if !self.token_type.eq_ignore_ascii_case("bearer") {
            return Err(OidcError::InvalidResponse(format!(
                "token_type {:?} is not Bearer",
                self.token_type
            )));
        }
        if self.access_token.is_empty() {
            return Err(OidcError::InvalidResponse("empty access_token".into()));
        }
        Ok(())
    }
}

/// The claims of a validated ID token.
#[derive(Debug, Clone)]
pub struct IdTokenClaims {
    pub sub: String,
    pub sid: Option<String>,
    /// Every claim, for `/bff/user` (protocol claims removed by the caller).
    pub all: Map<String, Value>,
}

/// ID tokens issued longer ago than this (plus skew) are refused: `iat` must be recent.
const MAX_ID_TOKEN_AGE_SECS: i64 = 600;

pub(super) async fn validate_id_token(
    oidc: &Oidc,
    id_token: &str,
    expected_nonce: &str,
) -> Result<IdTokenClaims, OidcError> {
    let invalid = |why: String| OidcError::InvalidToken(format!("ID token: {why}"));
    // An unknown `alg` (including "none") fails here: jsonwebtoken has no such variant.
    let header = decode_header(id_token).map_err(|e| invalid(format!("header: {e}")))?;
    if !oidc.algorithms.contains(&header.alg) {
        return Err(invalid(format!(
            "algorithm {:?} is not allowed",
            header.alg
        )));
    }
    let meta = oidc.metadata().await?;
    let keys = oidc
        .jwks
        .keys_for(&meta.jwks_uri, header.kid.as_deref(), header.alg)
        .await?;

    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[&oidc.issuer]);
    validation.set_audience(&[&oidc.client_id]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    validation.leeway = oidc.skew.as_secs();
    validation.validate_nbf = true;

    let claims = super::decode_with_any(id_token, &keys, &validation).map_err(invalid)?;
    check_claims(
        &claims,
        &oidc.client_id,
        expected_nonce,
        now_secs(),
        oidc.skew.as_secs() as i64,
    )
    .map_err(invalid)?;
    let sub = claims["sub"].as_str().unwrap_or_default().to_owned();
    let sid = claims.get("sid").and_then(Value::as_str).map(str::to_owned);
    Ok(IdTokenClaims {
        sub,
        sid,
        all: claims,
    })
}

/// The checks jsonwebtoken leaves to us: `sub`, `azp`, `iat`, `nonce`.
pub(super) fn check_claims(
    claims: &Map<String, Value>,
    client_id: &str,
    expected_nonce: &str,
    now: i64,
    skew: i64,
) -> Result<(), String> {
    match claims.get("sub").and_then(Value::as_str) {
        Some(sub) if !sub.is_empty() => {}
        _ => return Err("sub is missing".into()),
    }
    // OIDC Core §3.1.3.7 (4, 5): with several audiences, azp must be present; when present it must be us.
    let several_audiences = claims
        .get("aud")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 1);
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == client_id => {}
        Some(_) => return Err("azp is not this client".into()),
        None if several_audiences => return Err("azp is required with several audiences".into()),
        None => {}
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or("iat is missing or not a number")?;
    if iat > now + skew {
        return Err("iat is in the future".into());
    }
    if iat < now - MAX_ID_TOKEN_AGE_SECS - skew {
        return Err("iat is too old".into());
    }
    match claims.get("nonce").and_then(Value::as_str) {
        Some(nonce) if constant_time_eq(nonce.as_bytes(), expected_nonce.as_bytes()) => Ok(()),
        Some(_) => Err("nonce does not match".into()),
        None => Err("nonce is missing".into()),
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}
