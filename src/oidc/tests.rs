use serde_json::json;

use super::tokens::check_claims;
use super::*;

fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn symmetric_and_none_algorithms_are_refused() {
    assert!(parse_asymmetric_algorithm("RS256").is_ok());
    assert!(parse_asymmetric_algorithm("ES256").is_ok());
    assert!(parse_asymmetric_algorithm("EdDSA").is_ok());
    assert!(parse_asymmetric_algorithm("HS256").is_err());
    assert!(parse_asymmetric_algorithm("none").is_err());
    assert!(parse_asymmetric_algorithm("").is_err());
}

#[test]
fn claim_checks() {
    let now = 1_000_000;
    let good = json!({"sub": "alice", "iat": now, "nonce": "n1", "aud": "bff"});
    assert_eq!(
        check_claims(&claims(good.clone()), "bff", "n1", now, 60),
        Ok(())
    );
    let cases = [
        (
            json!({"sub": "alice", "iat": now, "nonce": "other"}),
            "nonce does not match",
        ),
        (json!({"sub": "alice", "iat": now}), "nonce is missing"),
        (
            json!({"sub": "", "iat": now, "nonce": "n1"}),
            "sub is missing",
        ),
        (
            json!({"sub": "a", "iat": now + 120, "nonce": "n1"}),
            "iat is in the future",
        ),
        (
            json!({"sub": "a", "iat": now - 3600, "nonce": "n1"}),
            "iat is too old",
        ),
        (
            json!({"sub": "a", "nonce": "n1"}),
            "iat is missing or not a number",
        ),
        (
            json!({"sub": "a", "iat": now, "nonce": "n1", "azp": "evil"}),
            "azp is not this client",
        ),
        (
            json!({"sub": "a", "iat": now, "nonce": "n1", "aud": ["bff", "other"]}),
            "azp is required with several audiences",
        ),
    ];
    for (c, want) in cases {
        assert_eq!(
            check_claims(&claims(c.clone()), "bff", "n1", now, 60),
            Err(want.to_string()),
            "{c}"
        );
    }
    let multi_ok =
        json!({"sub": "a", "iat": now, "nonce": "n1", "aud": ["bff", "x"], "azp": "bff"});
    assert_eq!(
        check_claims(&claims(multi_ok), "bff", "n1", now, 60),
        Ok(())
    );
}
