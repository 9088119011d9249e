use serde_json::json;

use super::tokens::{check_claims, check_refreshed_claims};
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
    assert!(
        parsed
            .query_pairs()
            .any(|(k, v)| k == "state" && v.len() == 43)
    );
    assert!(!parsed.query_pairs().any(|(k, _)| k == "id_token_hint"));
}

#[test]
fn refreshed_id_token_checks() {
    let now = 1_000_000;
    let original = claims(json!({
        "iss": "https://idp.example.com", "sub": "alice", "aud": "bff", "iat": now - 3000,
        "exp": now - 2000, "nonce": "n1", "auth_time": now - 3000, "sid": "s1",
    }));
    let fresh = json!({
        "iss": "https://idp.example.com", "sub": "alice", "aud": ["bff"], "iat": now,
        "exp": now + 600, "nonce": "n1", "auth_time": now - 3000, "sid": "s1",
    });
    let check = |c: &serde_json::Value| {
        check_refreshed_claims(&claims(c.clone()), Some(&original), "bff", "alice", now, 60)
    };
    let with = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut c = claims(fresh.clone());
        f(&mut c);
        serde_json::Value::Object(c)
    };
    assert_eq!(check(&fresh), Ok(()));
    // nonce and auth_time may be left out.
    assert_eq!(
        check(&with(&|c| {
            c.remove("nonce");
            c.remove("auth_time");
        })),
        Ok(())
    );
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            with(&|c| {
                c.insert("sub".into(), json!("mallory"));
            }),
            "sub is not the session's user",
        ),
        (
            with(&|c| {
                c.insert("sub".into(), json!(""));
            }),
            "sub is not the session's user",
        ),
        (
            with(&|c| {
                c.remove("sub");
            }),
            "sub is missing",
        ),
        (
            with(&|c| {
                c.insert("nonce".into(), json!("n2"));
            }),
            "nonce differs from the original ID token",
        ),
        (
            with(&|c| {
                c.insert("nonce".into(), json!(""));
            }),
            "nonce differs from the original ID token",
        ),
        (
            with(&|c| {
                c.insert("nonce".into(), json!(5));
            }),
            "nonce differs from the original ID token",
        ),
        (
            with(&|c| {
                c.insert("iss".into(), json!("https://other.example.com"));
            }),
            "iss differs from the original ID token",
        ),
        (
            with(&|c| {
                c.insert("aud".into(), json!(["bff", "x"]));
                c.insert("azp".into(), json!("bff"));
            }),
            "aud differs from the original ID token",
        ),
        (
            with(&|c| {
                c.insert("aud".into(), json!(["bff", "x"]));
            }),
            "azp is required with several audiences",
        ),
        (
            with(&|c| {
                c.insert("azp".into(), json!("bff"));
            }),
            "azp is present, the original ID token had none",
        ),
        (
            with(&|c| {
                c.insert("azp".into(), json!("evil"));
            }),
            "azp is not this client",
        ),
        (
            with(&|c| {
                c.insert("auth_time".into(), json!(now));
            }),
            "auth_time is not the original authentication's",
        ),
        (
            with(&|c| {
                c.insert("auth_time".into(), json!("yesterday"));
            }),
            "auth_time is not a number",
        ),
        (
            with(&|c| {
                c.insert("iat".into(), json!(now + 3600));
            }),
            "iat is in the future",
        ),
        (
            with(&|c| {
                c.insert("iat".into(), json!(now - 86400));
            }),
            "iat is too old",
        ),
        (
            with(&|c| {
                c.remove("iat");
            }),
            "iat is missing or not a number",
        ),
    ];
    for (c, want) in cases {
        assert_eq!(check(&c), Err(want.to_string()), "{c}");
    }
    // The session's user wins even over a stored token that says otherwise.
    assert_eq!(
        check_refreshed_claims(
            &claims(fresh.clone()),
            Some(&original),
            "bff",
            "bob",
            now,
            60
        ),
        Err("sub is not the session's user".into())
    );
    // azp kept as it was is fine.
    let mut with_azp = original.clone();
    with_azp.insert("azp".into(), json!("bff"));
    let mut fresh_azp = claims(fresh.clone());
    fresh_azp.insert("azp".into(), json!("bff"));
    assert_eq!(
        check_refreshed_claims(&fresh_azp, Some(&with_azp), "bff", "alice", now, 60),
        Ok(())
    );
    // An original with no nonce: a nonce now is refused; none is fine.
    let mut no_nonce = original.clone();
    no_nonce.remove("nonce");
    assert!(
        check_refreshed_claims(
            &claims(fresh.clone()),
            Some(&no_nonce),
            "bff",
            "alice",
            now,
            60
        )
        .is_err()
    );
    // No stored ID token at all: the session's sub, and no nonce.
    assert!(check_refreshed_claims(&claims(fresh.clone()), None, "bff", "alice", now, 60).is_err());
    let mut bare = claims(fresh);
    bare.remove("nonce");
    assert_eq!(
        check_refreshed_claims(&bare, None, "bff", "alice", now, 60),
        Ok(())
    );
    assert!(check_refreshed_claims(&bare, None, "bff", "bob", now, 60).is_err());
}

#[test]
fn logout_hint_modes() {
    use base64::Engine;
    let jwt = |claims: serde_json::Value| {
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!("{}.{}.sig", b64(&json!({"alg": "RS256"})), b64(&claims))
    };
    let pairs = |oidc: &Oidc, token: Option<&str>| -> Vec<(String, String)> {
        let url = oidc
            .end_session_url_at("https://idp.example.com/logout", token)
            .unwrap();
        url::Url::parse(&url)
            .unwrap()
            .query_pairs()
            .into_owned()
            .filter(|(k, _)| k != "state")
            .collect()
    };
    let plain = jwt(json!({"sub": "alice"}));
    let with_hint = jwt(json!({"sub": "alice", "login_hint": "O.aaa-bbb"}));

    // The default: the ID token goes as id_token_hint.
    let default = test_client(json!({}));
    assert_eq!(
        pairs(&default, Some(&plain)),
        [
            ("id_token_hint".to_owned(), plain.clone()),
            ("client_id".to_owned(), "bff client&1".to_owned())
        ]
    );
    let explicit = test_client(json!({"logout_hint": "id_token_hint"}));
    assert_eq!(
        pairs(&explicit, Some(&plain)),
        pairs(&default, Some(&plain))
    );

    // client_id: no token in the URL; logout_hint only from a login_hint claim.
    let client_id = test_client(json!({"logout_hint": "client_id"}));
    assert_eq!(
        pairs(&client_id, Some(&plain)),
        [("client_id".to_owned(), "bff client&1".to_owned())]
    );
    assert_eq!(
        pairs(&client_id, Some(&with_hint)),
        [
            ("logout_hint".to_owned(), "O.aaa-bbb".to_owned()),
            ("client_id".to_owned(), "bff client&1".to_owned())
        ]
    );
    assert_eq!(
        pairs(&client_id, None),
        [("client_id".to_owned(), "bff client&1".to_owned())]
    );
    // A stored token that isn't a JWT at all: still just client_id, nothing leaks.
    assert_eq!(
        pairs(&client_id, Some("opaque")),
        [("client_id".to_owned(), "bff client&1".to_owned())]
    );
    let config: Result<OidcConfig, _> = serde_json::from_value(json!({
        "issuer": "https://idp.example.com", "client_id": "c", "logout_hint": "sub",
    }));
    assert!(config.is_err(), "an unknown logout_hint is refused");
}

#[test]
fn a_multi_tenant_issuer_is_checked_against_each_tokens_tid() {
    use super::discovery::is_tenant_template_of;
    use super::tokens::check_tenant;
    let template = "https://login.microsoftonline.com/{tenantid}/v2.0";
    for configured in [
        "organizations",
        "common",
        "9188040d-6c67-4c5b-b112-36a304b66dad",
    ] {
        assert!(is_tenant_template_of(
            template,
            &format!("https://login.microsoftonline.com/{configured}/v2.0")
        ));
    }
    for other in [
        "https://login.microsoftonline.com/v2.0",
        "https://login.microsoftonline.com/a/b/v2.0",
        "https://evil.example/organizations/v2.0",
        "https://login.microsoftonline.com/organizations/v2.0/x",
    ] {
        assert!(!is_tenant_template_of(template, other), "{other}");
    }
    assert!(!is_tenant_template_of(
        "https://idp.example",
        "https://idp.example"
    ));

    let claims = |iss: &str, tid: Option<&str>| {
        let mut c = serde_json::Map::new();
        c.insert("iss".into(), json!(iss));
        if let Some(t) = tid {
            c.insert("tid".into(), json!(t));
        }
        c
    };
    let allowed = vec!["t1".to_owned(), "t2".to_owned()];
    let t1 = "https://login.microsoftonline.com/t1/v2.0";
    assert!(check_tenant(&claims(t1, Some("t1")), template, &allowed).is_ok());
    // Another tenant's iss with this tid, or the reverse: refused.
    let e = check_tenant(&claims(t1, Some("t2")), template, &allowed).unwrap_err();
    assert!(e.contains("is not the issuer of its tenant"), "{e}");
    // A tenant not on the list, a token without tid, no list at all.
    let t3 = "https://login.microsoftonline.com/t3/v2.0";
    let e = check_tenant(&claims(t3, Some("t3")), template, &allowed).unwrap_err();
    assert!(e.contains("not in oidc.allowed_tenants"), "{e}");
    assert!(check_tenant(&claims(t1, None), template, &allowed).is_err());
    let e = check_tenant(&claims(t1, Some("t1")), template, &[]).unwrap_err();
    assert!(e.contains("set oidc.allowed_tenants"), "{e}");
}
