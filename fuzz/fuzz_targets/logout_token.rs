//! Logout-token parsing: `jsonwebtoken::decode_header` (the first thing Portcullis does
//! with a back-channel logout token) and `oidc::check_logout_claims` (the claim checks
//! after the signature).
//!
//! Input: arbitrary bytes, used three ways: as the token text; base64url-encoded as a
//! JOSE header of a three-part token (to reach the header's JSON parser); and as a
//! JSON claims object (non-objects are skipped), checked at several `now`/`skew`, and
//! with `exp` set to extreme values when it is otherwise accepted.
//! Properties: never panics; an accepted claims set has `sub` or `sid`, a `jti`, no
//! `nonce`, an `events` object holding the back-channel logout event as an object, an
//! `iat` within the window, and the `jti` is remembered at least until the token
//! expires and for the whole acceptance window.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use portcullis::oidc::{BACKCHANNEL_LOGOUT_EVENT, check_logout_claims};
use serde_json::{Map, Value};

/// `check_logout_claims`'s acceptance window for `iat` (seconds before `now`).
const MAX_AGE_SECS: i64 = 600;

fn non_empty_string(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn check_claims(claims: &Map<String, Value>, now: i64, skew: i64) {
    let Ok(r) = check_logout_claims(claims, now, skew) else {
        return;
    };
    let sub = non_empty_string(claims, "sub");
    let sid = non_empty_string(claims, "sid");
    assert!(
        sub.is_some() || sid.is_some(),
        "accepted without sub or sid"
    );
    assert_eq!(r.sub, sub);
    assert_eq!(r.sid, sid);
    assert_eq!(Some(r.jti.clone()), non_empty_string(claims, "jti"));
    assert!(!claims.contains_key("nonce"), "accepted with a nonce");
    let events = claims
        .get("events")
        .and_then(Value::as_object)
        .expect("accepted without an events object");
    assert!(
        events
            .get(BACKCHANNEL_LOGOUT_EVENT)
            .is_some_and(Value::is_object),
        "accepted without the back-channel logout event object"
    );
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .expect("accepted without iat");
    assert!(
        iat <= now.saturating_add(skew),
        "accepted an iat in the future"
    );
    assert!(
        iat >= now.saturating_sub(MAX_AGE_SECS).saturating_sub(skew),
        "accepted a stale iat"
    );
    // Replay protection: the jti must be remembered for as long as the token could be
    // accepted again (its exp, and the iat window), plus skew.
    let mut must_remember = iat.saturating_add(MAX_AGE_SECS);
    if let Some(exp) = claims.get("exp").and_then(Value::as_i64) {
        must_remember = must_remember.max(exp);
    }
    assert!(
        r.remember_until >= must_remember,
        "jti remembered until {} only, token acceptable until {must_remember}",
        r.remember_until
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = jsonwebtoken::decode_header(text.as_bytes());
    let _ = jsonwebtoken::decode_header(&format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(data)));

    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    const NOW: i64 = 1_700_000_000;
    for (now, skew) in [(NOW, 0), (NOW, 60), (NOW, 300), (0, 60)] {
        check_claims(&claims, now, skew);
    }
    // Also at the token's own iat, so that the time checks pass and the rest is reached
    // (when it is a plausible clock reading: `now` comes from the system clock).
    if let Some(iat) = claims
        .get("iat")
        .and_then(Value::as_i64)
        .filter(|iat| (0..1 << 40).contains(iat))
    {
        for skew in [0, 60] {
            check_claims(&claims, iat, skew);
        }
        // `exp` is only checked against the clock by jsonwebtoken (any future value
        // passes), so a signed token may carry any number: try the extremes.
        if check_logout_claims(&claims, iat, 60).is_ok() {
            for exp in [i64::MAX, i64::MAX - 60, i64::MIN, -1, 0, iat + 1] {
                let mut variant = claims.clone();
                variant.insert("exp".into(), exp.into());
                check_claims(&variant, iat, 60);
            }
        }
    }
});
