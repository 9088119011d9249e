use jsonwebtoken::{Validation, decode_header};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Oidc, OidcError};
use crate::primitives::{constant_time_eq, now_secs};

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
    /// Token exchange (RFC 8693 §2.2.1): what kind of token `access_token` is.
    #[serde(default)]
    pub issued_token_type: Option<String>,
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

/// The signature and the standard claims of an ID token, as at login and at every
/// refresh: an allowed asymmetric `alg`, a key of the provider's JWKS, `iss`, `aud`,
/// `exp`, `nbf` (with skew), and `iat`/`sub` present. `invalid` names the token.
async fn verified_claims(
    oidc: &Oidc,
    id_token: &str,
    invalid: impl Fn(String) -> OidcError,
) -> Result<Map<String, Value>, OidcError> {
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
    // A multi-tenant template issuer: `iss` is checked against the token's `tid` below.
    let template = meta
        .issuer
        .contains(super::discovery::TENANT_PLACEHOLDER)
        .then_some(meta.issuer.as_str());
    if template.is_none() {
        validation.set_issuer(&[&oidc.issuer]);
    }
    validation.set_audience(&[&oidc.client_id]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    validation.leeway = oidc.skew.as_secs();
    validation.validate_nbf = true;
    let claims = super::decode_with_any(id_token, &keys, &validation).map_err(&invalid)?;
    if let Some(template) = template {
        check_tenant(&claims, template, &oidc.tenants).map_err(invalid)?;
    }
    Ok(claims)
}

/// Entra ID multi-tenant: the token's `tid` is an allowed tenant and its `iss` is the
/// issuer template filled with that `tid` — so a token of one tenant can't pass for
/// another's, and a tenant not on `oidc.allowed_tenants` can't log in.
pub(super) fn check_tenant(
    claims: &Map<String, Value>,
    template: &str,
    allowed: &[String],
) -> Result<(), String> {
    if allowed.is_empty() {
        return Err(format!(
            "the provider's issuer is a multi-tenant template ({template}): \
             set oidc.allowed_tenants to the tenants whose users may log in"
        ));
    }
    let tid = claims
        .get("tid")
        .and_then(Value::as_str)
        .ok_or("no tid claim, needed with a multi-tenant issuer")?;
    if !allowed.iter().any(|t| t == tid) {
        return Err(format!("tenant {tid:?} is not in oidc.allowed_tenants"));
    }
    let expected = template.replace(super::discovery::TENANT_PLACEHOLDER, tid);
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if iss != expected {
        return Err(format!(
            "iss {iss:?} is not the issuer of its tenant {tid:?} ({expected:?})"
        ));
    }
    Ok(())
}

pub(super) async fn validate_id_token(
    oidc: &Oidc,
    id_token: &str,
    expected_nonce: &str,
) -> Result<IdTokenClaims, OidcError> {
    let invalid = |why: String| OidcError::InvalidToken(format!("ID token: {why}"));
    let claims = verified_claims(oidc, id_token, invalid).await?;
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

/// Validates the ID token a refresh returned (OIDC Core §12.2) against the one it
/// would replace (`previous`, validated at login or at an earlier refresh) and the
/// session's `sub`: signature, `iss`, `aud`, `exp` as at login, then
/// [`check_refreshed_claims`].
pub(super) async fn validate_refreshed_id_token(
    oidc: &Oidc,
    id_token: &str,
    previous: Option<&str>,
    session_sub: &str,
) -> Result<IdTokenClaims, OidcError> {
    let invalid = |why: String| OidcError::InvalidToken(format!("refreshed ID token: {why}"));
    let claims = verified_claims(oidc, id_token, invalid).await?;
    let previous = match previous {
        Some(token) => Some(
            unverified_claims(token).map_err(|e| invalid(format!("the stored ID token: {e}")))?,
        ),
        None => None,
    };
    check_refreshed_claims(
        &claims,
        previous.as_ref(),
        &oidc.client_id,
        session_sub,
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

/// The claims of a JWT, without verifying it: only for an ID token Portcullis
/// validated itself and kept sealed in the session.
pub(super) fn unverified_claims(token: &str) -> Result<Map<String, Value>, String> {
    use base64::Engine;
    let payload = token.split('.').nth(1).ok_or("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("payload: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("payload: {e}"))
}

/// OIDC Core §12.2, after the signature, `iss` (the configured issuer), `aud`
/// (contains this client) and `exp`: the new token is about the same login of the
/// same user as `previous` — same `iss`, `sub` (and the session's), `aud`, `azp`
/// (absent if it was), `auth_time` when both have one, `nonce` absent or the
/// same — and was issued now (`iat`). Without `previous` (a session that kept no
/// ID token) only the session's `sub` can be compared, and a `nonce` is refused.
pub(super) fn check_refreshed_claims(
    claims: &Map<String, Value>,
    previous: Option<&Map<String, Value>>,
    client_id: &str,
    session_sub: &str,
    now: i64,
    skew: i64,
) -> Result<(), String> {
    match claims.get("sub").and_then(Value::as_str) {
        Some(sub) if !sub.is_empty() && sub == session_sub => {}
        Some(_) => return Err("sub is not the session's user".into()),
        None => return Err("sub is missing".into()),
    }
    check_azp(claims, client_id)?;
    check_iat(claims, now, skew)?;
    let Some(previous) = previous else {
        return match claims.get("nonce") {
            None => Ok(()),
            Some(_) => Err("nonce is present, and there is no original to compare it with".into()),
        };
    };
    for name in ["iss", "sub"] {
        if claims.get(name) != previous.get(name) {
            return Err(format!("{name} differs from the original ID token"));
        }
    }
    // `aud` may be a string or an array: compare as sets.
    let audiences = |c: &Map<String, Value>| -> Vec<String> {
        let mut v: Vec<String> = match c.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        v.sort();
        v.dedup();
        v
    };
    if audiences(claims) != audiences(previous) {
        return Err("aud differs from the original ID token".into());
    }
    match (previous.get("azp"), claims.get("azp")) {
        (None, Some(_)) => return Err("azp is present, the original ID token had none".into()),
        (Some(was), Some(now)) if was != now => {
            return Err("azp differs from the original ID token".into());
        }
        _ => {}
    }
    match (previous.get("auth_time"), claims.get("auth_time")) {
        (_, Some(t)) if !t.is_i64() && !t.is_u64() => {
            return Err("auth_time is not a number".into());
        }
        (Some(was), Some(now)) if was.as_i64() != now.as_i64() => {
            return Err("auth_time is not the original authentication's".into());
        }
        _ => {}
    }
    match (
        previous.get("nonce").and_then(Value::as_str),
        claims.get("nonce"),
    ) {
        (_, None) => Ok(()),
        (Some(was), Some(Value::String(nonce)))
            if constant_time_eq(was.as_bytes(), nonce.as_bytes()) =>
        {
            Ok(())
        }
        _ => Err("nonce differs from the original ID token".into()),
    }
}

/// OIDC Core §3.1.3.7 (4, 5): with several audiences, azp must be present; when present it must be us.
fn check_azp(claims: &Map<String, Value>, client_id: &str) -> Result<(), String> {
    let several_audiences = claims
        .get("aud")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 1);
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == client_id => Ok(()),
        Some(_) => Err("azp is not this client".into()),
        None if several_audiences => Err("azp is required with several audiences".into()),
        None => Ok(()),
    }
}

/// `iat` is recent: not in the future, not older than `MAX_ID_TOKEN_AGE_SECS`.
fn check_iat(claims: &Map<String, Value>, now: i64, skew: i64) -> Result<(), String> {
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
    Ok(())
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
    check_azp(claims, client_id)?;
    check_iat(claims, now, skew)?;
    match claims.get("nonce").and_then(Value::as_str) {
        Some(nonce) if constant_time_eq(nonce.as_bytes(), expected_nonce.as_bytes()) => Ok(()),
        Some(_) => Err("nonce does not match".into()),
        None => Err("nonce is missing".into()),
    }
}
