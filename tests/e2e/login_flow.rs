//! The story of a user: login, claims, an API call, logout.

use crate::harness::*;

#[tokio::test]
async fn login_user_api_call_logout() {
    let env = Env::builder().plain_authorize().start().await;
    let browser = env.browser();

    // Not logged in yet.
    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");

    // Login: /bff/login → provider (PKCE S256, state, nonce) → callback → back to returnUrl.
    let authorize = browser.start_login(&env, "/dashboard?tab=1").await;
    let params = query(&authorize);
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], CLIENT_ID);
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["code_challenge"].len(), 43);
    assert!(params["state"].len() >= 43 && params["nonce"].len() >= 43);
    assert_eq!(params["redirect_uri"], env.url("/bff/callback"));
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    assert_eq!(query(&callback)["iss"], env.provider.issuer);
    let done = browser.get(&callback).await;
    assert_eq!(done.status, 302, "{}", done.text());
    assert_eq!(done.location(), "/dashboard?tab=1");
    let set = done
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with(COOKIE))
        .expect("session cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    assert!(!set.to_ascii_lowercase().contains("domain="), "{set}");
    let id = browser.session_cookie(&env).unwrap();
    assert_eq!(id.len(), 43);

    // /bff/user: claims from the ID token and userinfo, never a token.
    let user = browser.user(&env).await;
    assert_eq!(user.status, 200, "{}", user.text());
    assert_eq!(user.headers["cache-control"], "no-store");
    let claims = user.json();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["name"], "Alice Liddell");
    assert_eq!(claims["email"], "alice@example.com");
    assert!(claims["sid"].is_string());
    let expires_in = claims["bff:session_expires_in"].as_i64().unwrap();
    assert!(expires_in > 0 && expires_in <= 30 * 60, "{expires_in}");
    let logout_url = claims["bff:logout_url"].as_str().unwrap().to_owned();
    assert!(logout_url.starts_with("/bff/logout?sid="), "{logout_url}");
    let issued = env.provider.issued_values("alice").await;
    assert!(!issued.is_empty());
    for token in &issued {
        assert!(
            !user.text().contains(token.as_str()),
            "/bff/user leaks a token"
        );
        assert!(!done.text().contains(token.as_str()));
    }
    assert!(!user.text().contains("eyJ"), "no JWT in /bff/user");

    // An API call: the upstream gets a bearer token the provider says is active.
    let api = browser
        .get_with(&env.url("/api/items?x=1"), &[("x-csrf", "1")])
        .await;
    assert_eq!(api.status, 200, "{}", api.text());
    let seen = env.upstream.last();
    assert_eq!(seen.path_and_query, "/api/items?x=1");
    let bearer = seen.headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    let introspection = env.provider.introspect(&bearer).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["sub"], "alice");
    assert_eq!(introspection["client_id"], CLIENT_ID);

    // Logout: ends the session and goes to the provider's end-session endpoint.
    let out = browser.get(&env.url(&logout_url)).await;
    assert_eq!(out.status, 302, "{}", out.text());
    let end_session = out.location();
    let discovery = env.provider.discovery().await;
    assert!(
        end_session.starts_with(discovery["end_session_endpoint"].as_str().unwrap()),
        "{end_session}"
    );
    let p = query(&end_session);
    assert_eq!(p["client_id"], CLIENT_ID);
    assert_eq!(p["post_logout_redirect_uri"], env.url("/"));
    assert!(p["id_token_hint"].starts_with("eyJ"));
    assert!(
        out.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{COOKIE}=;")) && c.contains("Max-Age=0"))
    );

    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");
    // The old cookie is dead, even when replayed.
    let replay = Browser::new();
    replay.set_cookie(&env.gateway.origin, COOKIE, &id);
    replay.user(&env).await.assert_error(401, "unauthenticated");
    let before = env.upstream.requests().len();
    replay
        .get_with(&env.url("/api/items"), &[("x-csrf", "1")])
        .await
        .assert_error(401, "unauthenticated");
    assert_eq!(
        env.upstream.requests().len(),
        before,
        "nothing reached the upstream"
    );

    // Revocation at logout (asynchronous): the refresh token stops working.
    let refresh_tokens: Vec<String> = {
        let v: serde_json::Value = reqwest::get(env.provider.url("/test/issued?sub=alice"))
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
    };
    assert_eq!(
        refresh_tokens.len(),
        1,
        "offline_access gave a refresh token"
    );
    let mut revoked = false;
    for _ in 0..50 {
        if env.provider.introspect(&refresh_tokens[0]).await["active"] == false {
            revoked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(revoked, "the refresh token was revoked at logout");
}

#[tokio::test]
async fn logout_needs_the_right_sid() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;

    browser
        .get(&env.url("/bff/logout"))
        .await
        .assert_error(400, "invalid_request");
    browser
        .get(&env.url("/bff/logout?sid=wrong"))
        .await
        .assert_error(400, "invalid_request");
    // A wrong sid ends nothing.
    assert_eq!(browser.user(&env).await.status, 200);

    // Without a session: sid is still required; with one, straight to the post-logout page.
    let anonymous = Browser::new();
    anonymous
        .get(&env.url("/bff/logout"))
        .await
        .assert_error(400, "invalid_request");
    let r = anonymous.get(&env.url("/bff/logout?sid=whatever")).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.location(), env.url("/"));
}

#[tokio::test]
async fn two_tabs_log_in_at_the_same_time() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    // Both tabs start before either finishes: two pending logins, one browser.
    let tab1 = browser.start_login(&env, "/one").await;
    let tab2 = browser.start_login(&env, "/two").await;
    let cb1 = browser.provider_login(&tab1, "alice", "alice").await;
    let cb2 = browser.provider_login(&tab2, "alice", "alice").await;
    // Finish in the opposite order.
    let r2 = browser.get(&cb2).await;
    assert_eq!(r2.status, 302, "{}", r2.text());
    assert_eq!(r2.location(), "/two");
    let r1 = browser.get(&cb1).await;
    assert_eq!(r1.status, 302, "{}", r1.text());
    assert_eq!(r1.location(), "/one");
    assert!(r1.sets_cookie(COOKIE) && r2.sets_cookie(COOKIE));
    assert_eq!(browser.user(&env).await.status, 200);
}

#[tokio::test]
async fn a_new_login_gets_a_new_session_id_and_ends_the_old_one() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let first = browser.session_cookie(&env).unwrap();
    browser.login(&env, "alice", "alice", "/").await;
    let second = browser.session_cookie(&env).unwrap();
    assert_ne!(first, second);
    let old = Browser::new();
    old.set_cookie(&env.gateway.origin, COOKIE, &first);
    old.user(&env).await.assert_error(401, "unauthenticated");
    assert_eq!(browser.user(&env).await.status, 200);
}

#[tokio::test]
async fn users_are_isolated_and_client_secret_post_works() {
    let env = Env::builder()
        .auth_method("client_secret_post")
        .userinfo(false)
        .start()
        .await;
    let alice = env.browser();
    let bob = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    bob.login(&env, "bob", "bob", "/").await;
    assert_eq!(alice.user(&env).await.json()["sub"], "alice");
    let bob_claims = bob.user(&env).await.json();
    assert_eq!(bob_claims["sub"], "bob");
    // userinfo = false: only ID token claims.
    assert!(bob_claims.get("email").is_none(), "{bob_claims}");
    bob.get_with(&env.url("/api/who"), &[("x-csrf", "1")]).await;
    let token = env.upstream.last().headers["authorization"]
        .to_str()
        .unwrap()[7..]
        .to_owned();
    assert_eq!(env.provider.introspect(&token).await["sub"], "bob");
}
