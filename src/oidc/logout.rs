//! Logout tokens (OpenID Connect Back-Channel Logout 1.0, §2.4 and §2.6).
//!
//! Validated like an ID token, plus what the specification adds: explicit typing
//! (see [`check_typ`]), the `events` member with the back-channel logout event as an object, `sub` or
//! `sid`, no `nonce` (so an ID token can't be replayed as a logout token), and a
//! `jti` the caller checks for replay.

use jsonwebtoken::{Validation, decode_header};
use serde_json::{Map, Value};

use super::{Oidc, OidcError};
use crate::primitives::now_secs;

pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Logout tokens issued longer ago than this (plus skew) are refused.
const MAX_AGE_SECS: i64 = 600;

/// What a valid logout token asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    /// Until when the `jti` must be remembered to refuse replays.
    pub remember_until: i64,
}

impl Oidc {
    /// Validates a logout token; the error says which check failed (for the log).
    pub async fn validate_logout_token(&self, token: &str) -> Result<LogoutRequest, OidcError> {
        let invalid = |why: &str| OidcError::InvalidToken(format!("logout token: {why}"));
        if token.len() > 16 * 1024 || token.split('.').count() != 3 {
            return Err(invalid("not a signed JWT"));
        }
        // An unknown `alg` (including "none") fails here: jsonwebtoken has no such variant.
        let header = decode_header(token).map_err(|e| invalid(&format!("header: {e}")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(invalid(&format!(
                "algorithm {:?} is not allowed",
                header.alg
            )));
        }
        check_typ(header.typ.as_deref(), self.require_logout_token_typ).map_err(invalid)?;
        let meta = self.metadata().await?;
        let keys = self
            .jwks
            .keys_for(&meta.jwks_uri, header.kid.as_deref(), header.alg)
            .await?;

        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.client_id]);
        validation.set_required_spec_claims(&["iss", "aud", "iat"]);
        validation.leeway = self.skew.as_secs();
        validation.validate_exp = true;
        let claims = super::decode_with_any(token, &keys, &validation).map_err(|e| invalid(&e))?;
        check_logout_claims(&claims, now_secs(), self.skew.as_secs() as i64)
            .map_err(|why| invalid(&why))
    }
}

/// The JOSE `typ` rule (Back-Channel Logout 1.0 §2.4, RFC 7515 §4.1.9).
///
/// `logout+jwt` is always accepted. With `require` (`oidc.require_logout_token_typ`)
/// nothing else is. Without it, a missing `typ` and the generic `JWT` of RFC 7519
/// §5.1 (which many JWT libraries write, e.g. Glewlwyd's) are accepted alike: they
/// say nothing about what the token is, and the `events` member and the absence
/// of `nonce` already keep an ID token from passing as a logout token. Any other
/// explicit type (`at+jwt`, `id_token+jwt`, `secevent+jwt`, …) names a different
/// kind of token and is always refused. Media types compare case-insensitively,
/// with or without the `application/` prefix.
pub(super) fn check_typ(typ: Option<&str>, require: bool) -> Result<(), &'static str> {
    let Some(typ) = typ else {
        return if require {
            Err("typ is required (oidc.require_logout_token_typ)")
        } else {
            Ok(())
        };
    };
    let media = media_subtype(typ);
    if media.eq_ignore_ascii_case("logout+jwt") {
        Ok(())
    } else if media.eq_ignore_ascii_case("jwt") {
        if require {
            Err("typ is JWT, not logout+jwt (oidc.require_logout_token_typ)")
        } else {
            Ok(())
        }
    } else {
        Err("typ names another kind of token (not logout+jwt)")
    }
}

/// `typ` without the optional `application/` prefix (RFC 7515 §4.1.9).
fn media_subtype(typ: &str) -> &str {
    match typ.split_at_checked("application/".len()) {
        Some((prefix, rest)) if prefix.eq_ignore_ascii_case("application/") => rest,
        _ => typ,
    }
}

/// The claim checks that follow the signature, `iss`, `aud` and `exp`.
pub fn check_logout_claims(
    claims: &Map<String, Value>,
    now: i64,
    skew: i64,
) -> Result<LogoutRequest, String> {
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or("iat is missing or not a number")?;
    if iat > now + skew {
        return Err("iat is in the future".into());
    }
    if iat < now - MAX_AGE_SECS - skew {
        return Err("iat is too old".into());
    }
    match claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT))
    {
        Some(Value::Object(_)) => {}
        Some(_) => return Err("the back-channel logout event is not an object".into()),
        None => return Err("events lacks the back-channel logout event".into()),
    }
    if claims.contains_key("nonce") {
        return Err("nonce is present".into());
    }
    let text = |name: &str| -> Result<Option<String>, String> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(format!("{name} is not a non-empty string")),
        }
    };
    let sub = text("sub")?;
    let sid = text("sid")?;
    if sub.is_none() && sid.is_none() {
        return Err("neither sub nor sid".into());
    }
    let jti = text("jti")?.ok_or("jti is missing")?;
    let exp = claims.get("exp").and_then(Value::as_i64);
    // Saturating: `exp` is the provider's and may be as large as i64::MAX.
    let remember_until = exp
        .unwrap_or(iat + MAX_AGE_SECS)
        .max(iat + MAX_AGE_SECS)
        .saturating_add(skew);
    Ok(LogoutRequest {
        sub,
        sid,
        jti,
        remember_until,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn good(now: i64) -> Value {
        json!({"iat": now, "jti": "j1", "sid": "s1", "sub": "alice",
               "events": {BACKCHANNEL_LOGOUT_EVENT: {}}})
    }

    #[test]
    fn a_good_token() {
        let r = check_logout_claims(&claims(good(1000)), 1000, 60).unwrap();
        assert_eq!(r.sid.as_deref(), Some("s1"));
        assert_eq!(r.sub.as_deref(), Some("alice"));
        assert_eq!(r.jti, "j1");
        assert!(r.remember_until >= 1000 + MAX_AGE_SECS);
    }

    #[test]
    fn each_broken_claim_is_refused() {
        let now = 1_000_000;
        let mut cases: Vec<(Value, &str)> = Vec::new();
        let with = |f: &dyn Fn(&mut Map<String, Value>)| {
            let mut c = claims(good(now));
            f(&mut c);
            Value::Object(c)
        };
        cases.push((
            with(&|c| {
                c.insert("nonce".into(), json!("n"));
            }),
            "nonce is present",
        ));
        cases.push((
            with(&|c| {
                c.remove("events");
            }),
            "events lacks the back-channel logout event",
        ));
        cases.push((
            with(&|c| {
                c.insert("events".into(), json!({"other": {}}));
            }),
            "events lacks the back-channel logout event",
        ));
        cases.push((
            with(&|c| {
                c.insert("events".into(), json!({BACKCHANNEL_LOGOUT_EVENT: "x"}));
            }),
            "the back-channel logout event is not an object",
        ));
        cases.push((
            with(&|c| {
                c.remove("sub");
                c.remove("sid");
            }),
            "neither sub nor sid",
        ));
        cases.push((
            with(&|c| {
                c.remove("jti");
            }),
            "jti is missing",
        ));
        cases.push((
            with(&|c| {
                c.insert("iat".into(), json!(now + 3600));
            }),
            "iat is in the future",
        ));
        cases.push((
            with(&|c| {
                c.insert("iat".into(), json!(now - 86400));
            }),
            "iat is too old",
        ));
        cases.push((
            with(&|c| {
                c.insert("sid".into(), json!(5));
            }),
            "sid is not a non-empty string",
        ));
        for (c, want) in cases {
            assert_eq!(
                check_logout_claims(&claims(c.clone()), now, 60),
                Err(want.to_string()),
                "{c}"
            );
        }
    }

    #[test]
    fn a_huge_exp_does_not_overflow() {
        // Found by fuzz/fuzz_targets/logout_token.rs.
        let mut c = claims(good(1000));
        c.insert("exp".into(), json!(i64::MAX));
        let r = check_logout_claims(&c, 1000, 60).unwrap();
        assert_eq!(r.remember_until, i64::MAX);
    }

    #[test]
    fn typ_values() {
        let always = [
            "logout+jwt",
            "LOGOUT+JWT",
            "Logout+JWT",
            "application/logout+jwt",
            "Application/Logout+Jwt",
            "APPLICATION/LOGOUT+JWT",
        ];
        let generic = ["JWT", "jwt", "Jwt", "application/jwt", "APPLICATION/JWT"];
        let never = [
            "at+jwt",
            "application/at+jwt",
            "id_token+jwt",
            "secevent+jwt",
            "application/secevent+jwt",
            "JOSE",
            "JWS",
            "logout+jwt ",
            " JWT",
            "logout+jwt;charset=utf-8",
            "application/",
            "application/application/logout+jwt",
            "x-logout+jwt",
            "",
        ];
        for require in [false, true] {
            for t in always {
                assert_eq!(
                    check_typ(Some(t), require),
                    Ok(()),
                    "{t:?} require={require}"
                );
            }
            for t in never {
                assert!(
                    check_typ(Some(t), require).is_err(),
                    "{t:?} require={require}"
                );
            }
            for t in generic {
                assert_eq!(
                    check_typ(Some(t), require).is_ok(),
                    !require,
                    "{t:?} require={require}"
                );
            }
        }
        assert_eq!(check_typ(None, false), Ok(()));
        assert!(check_typ(None, true).is_err());
    }
}
