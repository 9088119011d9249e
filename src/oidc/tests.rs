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

fn test_client(extra: serde_json::Value) -> Oidc {
    let mut config = json!({
        "issuer": "https://idp.example.com",
        "client_id": "bff client&1",
        "client_secret": "s",
    });
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let config: OidcConfig = serde_json::from_value(config).unwrap();
    Oidc::new(&config, "https://app.example.com/bff/callback".into()).unwrap()
}

#[test]
fn every_end_session_request_has_its_own_state() {
    let oidc = test_client(json!({
        "post_logout_redirect_uri": "https://app.example.com/bye?from=logout&x=a%20b",
    }));
    let endpoint = "https://idp.example.com/logout?tenant=t%2F1";
    let mut states = std::collections::HashSet::new();
    for _ in 0..50 {
        let url = oidc.end_session_url_at(endpoint, Some("h.i.nt")).unwrap();
        let parsed = url::Url::parse(&url).unwrap();
        assert_eq!(
            parsed.as_str().split('?').next(),
            Some("https://idp.example.com/logout")
        );
        let q: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        let get = |k: &str| {
            let v: Vec<&str> = q
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(v.len(), 1, "{k} once in {url}");
            v[0].to_owned()
        };
        // The endpoint's own query stays; ours is encoded and decodes back exactly.
        assert_eq!(get("tenant"), "t/1");
        assert_eq!(get("id_token_hint"), "h.i.nt");
        assert_eq!(get("client_id"), "bff client&1");
        assert_eq!(
            get("post_logout_redirect_uri"),
            "https://app.example.com/bye?from=logout&x=a%20b"
        );
        let state = get("state");
        // 256 random bits, base64url: nothing in it needs escaping.
        assert_eq!(state.len(), 43, "{state}");
        assert!(
            state
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert!(url.contains(&format!("state={state}")), "{url}");
        assert!(states.insert(state), "a state was repeated");
    }
    // Without a hint or post-logout URI: still a state.
    let bare = test_client(json!({}));
    let url = bare
        .end_session_url_at("https://idp.example.com/logout", None)
        .unwrap();
    let parsed = url::Url::parse(&url).unwrap();
    assert!(parsed.query_pairs().any(|(k, v)| k == "state" && v.len() == 43));
    assert!(!parsed.query_pairs().any(|(k, _)| k == "id_token_hint"));
}
