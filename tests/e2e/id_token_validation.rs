//! OpenID Connect Core §3.1.3.7 at login: the ID token of the code exchange is
//! refused for each broken claim and each bad signature, re-signed by the real
//! provider (`POST /test/code-id-token`), and no session is made. And a userinfo
//! answer about another user (`POST /test/userinfo`) fails the login too, and an
//! encrypted logout token is refused (Portcullis registers no encryption key).

use serde_json::{Value, json};

use crate::harness::*;

/// From now on the ID tokens of logins carry `tamper` (see demo/provider/provider.mjs).
async fn tamper_login_id_tokens(env: &Env, tamper: &Value) {
    let r = reqwest::Client::new()
        .post(env.provider.url("/test/code-id-token"))
        .json(tamper)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

/// One login of alice; the callback's answer.
async fn login(env: &Env, browser: &Browser) -> Answer {
    let authorize = browser.start_login(env, "/").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    browser.get(&callback).await
}

#[tokio::test]
async fn each_broken_login_id_token_is_refused() {
    let env = Env::builder().start().await;
    let now = portcullis::primitives::now_secs();

    // The re-signing itself yields a token Portcullis takes: an extra claim is fine.
    tamper_login_id_tokens(&env, &json!({"x-extra": "fine"})).await;
    let browser = env.browser();
    let ok = login(&env, &browser).await;
    assert_eq!(ok.status, 302, "{}", ok.text());
    let user = browser.user(&env).await;
    assert_eq!(user.status, 200);
    assert_eq!(
        user.json()["x-extra"],
        "fine",
        "the tampered token was the one taken"
    );

    let cases = [
        (
            "iss of another issuer",
            json!({"iss": "http://evil.example"}),
        ),
        ("aud of another client", json!({"aud": "another-client"})),
        (
            "several audiences without azp",
            json!({"aud": [CLIENT_ID, "another-client"]}),
        ),
        (
            "azp of another client",
            json!({"aud": [CLIENT_ID, "another-client"], "azp": "another-client"}),
        ),
        ("expired", json!({"exp": now - 600})),
        ("no exp", json!({"exp": null})),
        ("iat far in the future", json!({"iat": now + 3600})),
        ("iat long ago", json!({"iat": now - 86400})),
        ("no sub", json!({"sub": null})),
        ("no nonce", json!({"nonce": null})),
        ("nonce of another login", json!({"nonce": "another-login"})),
        ("unsigned (alg none)", json!({"$alg": "none"})),
        ("HS256 with the client secret", json!({"$alg": "HS256"})),
        (
            "signed by a key not in the JWKS",
            json!({"$key": "foreign"}),
        ),
        ("encrypted (a JWE)", json!({"$alg": "jwe"})),
    ];
    for (case, tamper) in &cases {
        tamper_login_id_tokens(&env, tamper).await;
        let browser = env.browser();
        let r = login(&env, &browser).await;
        assert_eq!(
            r.status,
            400,
            "{case}: accepted ({} {})",
            r.status,
            r.text()
        );
        assert_eq!(r.json()["error"], "invalid_request", "{case}");
        assert!(!r.sets_cookie(COOKIE), "{case}: a session cookie was set");
        browser
            .user(&env)
            .await
            .assert_error(401, "unauthenticated");
    }

    // Untouched again: a login works, and the first session never noticed.
    tamper_login_id_tokens(&env, &json!({})).await;
    let after = env.browser();
    assert_eq!(login(&env, &after).await.status, 302);
    assert_eq!(browser.user(&env).await.status, 200);
}

/// OIDC Core §5.3.2: the `sub` of the userinfo answer must be the ID token's, or the
/// answer is about someone else and the login fails.
#[tokio::test]
async fn a_userinfo_answer_about_another_user_is_refused() {
    let env = Env::builder().userinfo(true).start().await;
    let set = |claims: Value| {
        let url = env.provider.url("/test/userinfo");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&claims)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    };
    // The tampering works: a changed claim shows in /bff/user.
    set(json!({"name": "Tampered Name"})).await;
    let browser = env.browser();
    assert_eq!(login(&env, &browser).await.status, 302);
    assert_eq!(browser.user(&env).await.json()["name"], "Tampered Name");

    for tamper in [json!({"sub": "mallory"}), json!({"sub": null})] {
        set(tamper.clone()).await;
        let browser = env.browser();
        let r = login(&env, &browser).await;
        assert_eq!(r.status, 400, "{tamper}: accepted ({})", r.text());
        assert_eq!(r.json()["error"], "invalid_request", "{tamper}");
        assert!(!r.sets_cookie(COOKIE), "{tamper}: a session cookie was set");
        browser
            .user(&env)
            .await
            .assert_error(401, "unauthenticated");
    }
}

/// Portcullis registers no encryption key: an encrypted (JWE) logout token is refused
/// like any token it can't verify, and the session stays.
#[tokio::test]
async fn an_encrypted_logout_token_is_refused() {
    use base64::Engine;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let env = Env::builder().start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let header = json!({"alg": "RSA-OAEP-256", "enc": "A256GCM", "cty": "JWT"});
    let jwe = format!(
        "{}.{}.{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(&[1; 256]),
        b64(&[2; 12]),
        b64(b"ciphertext"),
        b64(&[3; 16])
    );
    let r = env.backchannel_logout(&jwe).await;
    r.assert_error(400, "invalid_request");
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(browser.user(&env).await.status, 200, "the session stays");
}
