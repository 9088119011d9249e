//! Shapes of providers nobody here wrote, played by the real provider configured to
//! behave like them: Glewlwyd's logout tokens (`typ: JWT`, no `exp`),
//! django-oauth-toolkit's revocation endpoint that only RFC 8414 metadata lists, a
//! provider that needs `state` to send the browser back after logout, and a provider
//! whose refreshed ID token is about someone else.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

/// A logout token's claims in Glewlwyd's shape: no `exp`.
fn without_exp(mut claims: Value) -> Value {
    claims.as_object_mut().unwrap().remove("exp");
    claims
}

/// Logs out through Portcullis (`GET /bff/logout?sid=…`); returns where it sends
/// the browser (the provider's end-session request).
async fn logout(env: &Env, browser: &Browser) -> String {
    let user = browser.user(env).await;
    assert_eq!(user.status, 200, "{}", user.text());
    let url = user.json()["bff:logout_url"].as_str().unwrap().to_owned();
    let out = browser.get(&env.url(&url)).await;
    assert_eq!(out.status, 302, "{}", out.text());
    out.location()
}

/// The refresh tokens the provider issued to `sub`.
async fn refresh_tokens(env: &Env, sub: &str) -> Vec<String> {
    let v: Value = reqwest::get(env.provider.url(&format!("/test/issued?sub={sub}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["refresh_token"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

/// Waits (up to 5 s) for introspection to call `token` inactive; whether it did.
async fn becomes_inactive(env: &Env, token: &str) -> bool {
    for _ in 0..50 {
        if env.provider.introspect(token).await["active"] == false {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_logout_token_typed_jwt_by_the_provider_ends_the_session() {
    let env = Env::builder().start().await;
    // Glewlwyd's shape: the generic `typ: JWT` of RFC 7519, no `exp`; signed with the
    // provider's own key. And the explicit type in each spelling RFC 7515 allows.
    for typ in [
        "JWT",
        "jwt",
        "application/jwt",
        "logout+jwt",
        "application/logout+jwt",
        "Logout+JWT",
    ] {
        let browser = env.browser();
        browser.login(&env, "alice", "alice", "/").await;
        let sid = browser.user(&env).await.json()["sid"]
            .as_str()
            .unwrap()
            .to_owned();
        let bystander = env.browser();
        bystander.login(&env, "bob", "bob", "/").await;
        let token = env
            .provider
            .sign(
                &without_exp(logout_claims(
                    &env.provider.issuer,
                    Some("alice"),
                    Some(&sid),
                )),
                Some(typ),
            )
            .await;
        let r = env.backchannel_logout(&token).await;
        assert_eq!(r.status, 200, "typ {typ}: {}", r.text());
        browser
            .user(&env)
            .await
            .assert_error(401, "unauthenticated");
        assert_eq!(bystander.user(&env).await.status, 200, "typ {typ}");
    }

    // Other explicit types name other kinds of token: refused, even signed by the provider.
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let sid = browser.user(&env).await.json()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    for typ in [
        "at+jwt",
        "application/at+jwt",
        "id_token+jwt",
        "secevent+jwt",
        "JOSE",
    ] {
        let token = env
            .provider
            .sign(
                &without_exp(logout_claims(&env.provider.issuer, None, Some(&sid))),
                Some(typ),
            )
            .await;
        env.backchannel_logout(&token)
            .await
            .assert_error(400, "invalid_request");
        assert_eq!(
            browser.user(&env).await.status,
            200,
            "typ {typ} was accepted"
        );
    }
}

#[tokio::test]
async fn require_logout_token_typ_refuses_the_generic_jwt_typ() {
    let env = Env::builder()
        .oidc("require_logout_token_typ = true\n")
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let claims = || without_exp(logout_claims(&env.provider.issuer, Some("alice"), None));
    for typ in [None, Some("JWT"), Some("application/jwt")] {
        let token = env.provider.sign(&claims(), typ).await;
        env.backchannel_logout(&token)
            .await
            .assert_error(400, "invalid_request");
        assert_eq!(browser.user(&env).await.status, 200, "{typ:?} accepted");
    }
    let token = env
        .provider
        .sign(&claims(), Some("APPLICATION/LOGOUT+JWT"))
        .await;
    assert_eq!(env.backchannel_logout(&token).await.status, 200);
    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");
}

#[tokio::test]
async fn each_end_session_request_carries_its_own_state_and_the_provider_returns_it() {
    let env = Env::builder().start().await;
    let mut states = Vec::new();
    for _ in 0..3 {
        let browser = env.browser();
        browser.login(&env, "alice", "alice", "/").await;
        let end_session = logout(&env, &browser).await;
        let state = query(&end_session)["state"].clone();
        assert_eq!(state.len(), 43, "{end_session}");
        assert!(
            state
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{state}"
        );
        assert!(
            end_session.contains(&format!("&state={state}")),
            "{end_session}"
        );
        // The provider takes the request, and after the user confirms, sends the
        // browser back to the post-logout URI with the same state.
        let done = browser
            .confirm_provider_logout(&env.provider, &end_session)
            .await;
        let back = done.location();
        assert!(back.starts_with(&env.url("/")), "{back}");
        assert_eq!(query(&back)["state"], state, "{back}");
        states.push(state);
    }
    states.sort();
    states.dedup();
    assert_eq!(states.len(), 3, "a state was reused");
}

/// django-oauth-toolkit's shape: discovery has no `revocation_endpoint`, its RFC 8414
/// metadata has.
#[tokio::test]
async fn the_revocation_endpoint_of_rfc8414_metadata_is_used_at_logout() {
    let env = Env::builder()
        .provider_option("omitFromDiscovery", json!(["revocation_endpoint"]))
        .start()
        .await;
    assert!(
        env.provider
            .discovery()
            .await
            .get("revocation_endpoint")
            .is_none()
    );
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let tokens = refresh_tokens(&env, "alice").await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(env.provider.introspect(&tokens[0]).await["active"], true);
    logout(&env, &browser).await;
    assert!(
        becomes_inactive(&env, &tokens[0]).await,
        "the refresh token was revoked at logout"
    );
}

#[tokio::test]
async fn oidc_revocation_endpoint_is_used_when_the_provider_lists_none() {
    let env = Env::builder()
        .provider_option("omitFromDiscovery", json!(["revocation_endpoint"]))
        .provider_option("omitFromRfc8414", json!(["revocation_endpoint"]))
        .start()
        .await;
    let rfc8414: Value = reqwest::get(env.provider.url("/.well-known/oauth-authorization-server"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(rfc8414.get("revocation_endpoint").is_none(), "{rfc8414}");
    // Without the key, the refresh token stays live after logout.
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let kept = refresh_tokens(&env, "alice").await;
    logout(&env, &browser).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.provider.introspect(&kept[0]).await["active"], true);

    // With it (the gateway restarted on the edited config), it is.
    let mut env = env;
    let config = std::fs::read_to_string(&env.gateway.config_path).unwrap();
    let endpoint = env.provider.url("/token/revocation");
    std::fs::write(
        &env.gateway.config_path,
        config.replacen(
            "[oidc]\n",
            &format!("[oidc]\nrevocation_endpoint = \"{endpoint}\"\n"),
            1,
        ),
    )
    .unwrap();
    env.gateway.restart();
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let tokens: Vec<String> = refresh_tokens(&env, "alice")
        .await
        .into_iter()
        .filter(|t| !kept.contains(t))
        .collect();
    assert_eq!(tokens.len(), 1);
    logout(&env, &browser).await;
    assert!(
        becomes_inactive(&env, &tokens[0]).await,
        "the refresh token was revoked at oidc.revocation_endpoint"
    );
}

async fn api(env: &Env, browser: &Browser) -> Answer {
    browser
        .get_with(&env.url("/api/x"), &[("x-csrf", "1")])
        .await
}

#[tokio::test]
async fn a_refreshed_id_token_about_another_login_is_refused_and_ends_the_session() {
    // 4 s access tokens: refreshed 2 s before expiry.
    let env = Env::builder()
        .access_token_ttl(4)
        .userinfo(false)
        .start()
        .await;
    // An honest refresh first: its ID token (same sub, the original nonce) is taken.
    let honest = env.browser();
    honest.login(&env, "alice", "alice", "/").await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(api(&env, &honest).await.status, 200);
    assert_eq!(env.provider.grant_count("refresh_token").await, (1, 0));
    assert_eq!(honest.user(&env).await.json()["sub"], "alice");

    let cases = [
        json!({"sub": "bob"}),
        json!({"nonce": "another-login"}),
        json!({"aud": "another-client"}),
        json!({"iss": "http://evil.example"}),
        json!({"exp": 1}),
    ];
    let mut refreshes = 1;
    for tamper in cases {
        env.provider.tamper_refreshed_id_tokens(json!({})).await;
        let browser = env.browser();
        browser.login(&env, "alice", "alice", "/").await;
        let before = refresh_tokens(&env, "alice").await;
        env.provider
            .tamper_refreshed_id_tokens(tamper.clone())
            .await;
        tokio::time::sleep(Duration::from_millis(2300)).await;
        // The refresh happens (the provider answers it) and its answer is refused.
        api(&env, &browser)
            .await
            .assert_error(401, "session_expired");
        refreshes += 1;
        assert_eq!(
            env.provider.grant_count("refresh_token").await,
            (refreshes, 0),
            "{tamper}"
        );
        browser
            .user(&env)
            .await
            .assert_error(401, "unauthenticated");
        // The refresh token that answer carried is revoked at the provider.
        let issued: Vec<String> = refresh_tokens(&env, "alice")
            .await
            .into_iter()
            .filter(|t| !before.contains(t))
            .collect();
        assert_eq!(issued.len(), 1, "{tamper}");
        assert!(becomes_inactive(&env, &issued[0]).await, "{tamper}");
    }
    // The other session is untouched by all this.
    env.provider.tamper_refreshed_id_tokens(json!({})).await;
    assert_eq!(honest.user(&env).await.status, 200);
}
