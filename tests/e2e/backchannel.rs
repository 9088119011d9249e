//! OpenID Connect Back-Channel Logout: real logouts at the provider, and every way
//! a logout token can be forged or broken.

use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test]
async fn logging_out_at_the_provider_ends_that_login_only() {
    let env = Env::builder().start().await;
    // Alice has two logins (two browsers, two provider sessions, two sids); Bob one.
    let laptop = env.browser();
    let phone = env.browser();
    let bob = env.browser();
    laptop.login(&env, "alice", "alice", "/").await;
    phone.login(&env, "alice", "alice", "/").await;
    bob.login(&env, "bob", "bob", "/").await;
    let laptop_sid = laptop.user(&env).await.json()["sid"].clone();
    assert_ne!(laptop_sid, phone.user(&env).await.json()["sid"]);

    // The provider awaits its back-channel call before it redirects.
    laptop.logout_at_provider(&env).await;

    laptop.user(&env).await.assert_error(401, "unauthenticated");
    assert_eq!(
        phone.user(&env).await.status,
        200,
        "the other login of the same user stays"
    );
    assert_eq!(bob.user(&env).await.status, 200);
}

#[tokio::test]
async fn a_sub_only_token_ends_every_session_of_that_user() {
    let signer = TestSigner::new("test-logout-key");
    let env = Env::builder().publish_key(&signer).start().await;
    let a1 = env.browser();
    let a2 = env.browser();
    let bob = env.browser();
    a1.login(&env, "alice", "alice", "/").await;
    a2.login(&env, "alice", "alice", "/").await;
    bob.login(&env, "bob", "bob", "/").await;

    let r = env
        .backchannel_logout(&signer.sign(
            &logout_claims(&env.provider.issuer, Some("alice"), None),
            Some("logout+jwt"),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["cache-control"], "no-store");
    a1.user(&env).await.assert_error(401, "unauthenticated");
    a2.user(&env).await.assert_error(401, "unauthenticated");
    assert_eq!(bob.user(&env).await.status, 200);
}

#[tokio::test]
async fn a_sid_token_signed_by_a_published_key_ends_that_session() {
    let signer = TestSigner::new("test-logout-key");
    let env = Env::builder().publish_key(&signer).start().await;
    let a1 = env.browser();
    let a2 = env.browser();
    a1.login(&env, "alice", "alice", "/").await;
    a2.login(&env, "alice", "alice", "/").await;
    let sid = a1.user(&env).await.json()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    // No typ at all is accepted by default (some providers omit it).
    let r = env
        .backchannel_logout(&signer.sign(
            &logout_claims(&env.provider.issuer, Some("alice"), Some(&sid)),
            None,
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    a1.user(&env).await.assert_error(401, "unauthenticated");
    assert_eq!(a2.user(&env).await.status, 200);
}

#[tokio::test]
async fn forged_and_broken_logout_tokens_are_refused() {
    let signer = TestSigner::new("test-logout-key");
    let stranger = TestSigner::new("not-published");
    let env = Env::builder().publish_key(&signer).start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let sid = browser.user(&env).await.json()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let good = || logout_claims(&env.provider.issuer, Some("alice"), Some(&sid));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good();
        f(&mut c);
        c
    };
    let sign = |c: &Value| signer.sign(c, Some("logout+jwt"));
    let now = portcullis::primitives::now_secs();

    let public_key_as_secret = serde_json::to_vec(&signer.public_jwk()).unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("unsigned (alg none)", unsigned_jwt(&good())),
        (
            "signed by a key not in the JWKS",
            stranger.sign(&good(), Some("logout+jwt")),
        ),
        (
            "HMAC with the public key as secret",
            hmac_jwt(&good(), &public_key_as_secret, &signer.kid),
        ),
        (
            "wrong iss",
            sign(&with(&|c| c["iss"] = json!("https://evil.example"))),
        ),
        (
            "wrong aud",
            sign(&with(&|c| c["aud"] = json!("another-client"))),
        ),
        ("nonce present", sign(&with(&|c| c["nonce"] = json!("n")))),
        (
            "events missing",
            sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("events");
            })),
        ),
        (
            "events without the logout event",
            sign(&with(&|c| {
                c["events"] = json!({"http://example.com/other": {}})
            })),
        ),
        (
            "logout event not an object",
            sign(&with(&|c| c["events"] = json!({LOGOUT_EVENT: "yes"}))),
        ),
        (
            "neither sub nor sid",
            sign(&with(&|c| {
                let o = c.as_object_mut().unwrap();
                o.remove("sub");
                o.remove("sid");
            })),
        ),
        (
            "iat far in the future",
            sign(&with(&|c| c["iat"] = json!(now + 3600))),
        ),
        (
            "expired",
            sign(&with(&|c| {
                c["iat"] = json!(now - 400);
                c["exp"] = json!(now - 300);
            })),
        ),
        (
            "jti missing",
            sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            })),
        ),
        (
            "an access token's typ",
            signer.sign(&good(), Some("at+jwt")),
        ),
        (
            "a security event token's typ",
            signer.sign(&good(), Some("application/secevent+jwt")),
        ),
        (
            "an ID token's typ",
            signer.sign(&good(), Some("id_token+jwt")),
        ),
        ("not a JWT at all", "hello".to_owned()),
        (
            "a JWT with a garbage signature",
            format!("{}AAAA", sign(&good())),
        ),
        ("empty", String::new()),
    ];
    for (case, token) in &cases {
        let r = env.backchannel_logout(token).await;
        assert_eq!(r.status, 400, "{case}: accepted ({})", r.text());
        assert_eq!(r.json()["error"], "invalid_request", "{case}");
        assert_eq!(r.headers["cache-control"], "no-store", "{case}");
        assert_eq!(
            browser.user(&env).await.status,
            200,
            "{case}: the session must survive"
        );
    }

    // A huge body.
    let huge = format!("logout_token={}", "A".repeat(1024 * 1024));
    let r = Browser::new()
        .send(
            axum::http::Method::POST,
            &env.url("/bff/backchannel-logout"),
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(axum::body::Body::from(huge)),
        )
        .await;
    r.assert_error(400, "invalid_request");
    // Not a form.
    let r = Browser::new()
        .send(
            axum::http::Method::POST,
            &env.url("/bff/backchannel-logout"),
            &[("content-type", "application/json")],
            Some(axum::body::Body::from(format!(
                "{{\"logout_token\":\"{}\"}}",
                sign(&good())
            ))),
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert_eq!(browser.user(&env).await.status, 200);

    // A replayed jti: the first delivery (for a sid that matches nothing) is accepted,
    // the replay — now aimed at the live session — is refused.
    let mut first = good();
    first["sid"] = json!("some-other-sid");
    let token = sign(&first);
    assert_eq!(env.backchannel_logout(&token).await.status, 200);
    let mut replay = good();
    replay["jti"] = first["jti"].clone();
    let r = env.backchannel_logout(&sign(&replay)).await;
    r.assert_error(400, "invalid_request");
    assert_eq!(
        browser.user(&env).await.status,
        200,
        "a replayed jti ends nothing"
    );

    // And the genuine article still works.
    assert_eq!(env.backchannel_logout(&sign(&good())).await.status, 200);
    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");
}

#[tokio::test]
async fn typ_can_be_required() {
    let signer = TestSigner::new("test-logout-key");
    let env = Env::builder()
        .publish_key(&signer)
        .oidc("require_logout_token_typ = true\n")
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let c = logout_claims(&env.provider.issuer, Some("alice"), None);
    env.backchannel_logout(&signer.sign(&c, None))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(browser.user(&env).await.status, 200);
    assert_eq!(
        env.backchannel_logout(&signer.sign(
            &logout_claims(&env.provider.issuer, Some("alice"), None),
            Some("logout+jwt")
        ))
        .await
        .status,
        200
    );
    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");
}

#[tokio::test]
async fn post_logout_answers_the_logout_url() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let url = env.url("/bff/logout");
    // Needs the CSRF header.
    browser
        .send(axum::http::Method::POST, &url, &[], None)
        .await
        .assert_error(403, "csrf");
    assert_eq!(browser.user(&env).await.status, 200);
    let r = browser
        .send(axum::http::Method::POST, &url, &[("x-csrf", "1")], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let logout_url = r.json()["logout_url"].as_str().unwrap().to_owned();
    let end_session = env.provider.discovery().await["end_session_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(logout_url.starts_with(&end_session), "{logout_url}");
    assert_eq!(query(&logout_url)["client_id"], CLIENT_ID);
    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");
}
