//! Every way a callback can be wrong is refused with a 400 and makes no session.

use crate::harness::*;

/// Asserts a refused callback: 400 `invalid_request`, no session cookie, still logged out.
async fn assert_refused(env: &Env, browser: &Browser, url: &str) {
    let r = browser.get(url).await;
    r.assert_error(400, "invalid_request");
    assert!(
        !r.sets_cookie(COOKIE),
        "a refused callback set a session cookie"
    );
    assert_eq!(r.headers["cache-control"], "no-store");
    browser.user(env).await.assert_error(401, "unauthenticated");
}

#[tokio::test]
async fn state_must_be_known_unused_and_from_this_browser() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    let authorize = browser.start_login(&env, "/").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;

    assert_refused(&env, &browser, &with_param(&callback, "state", None)).await;
    assert_refused(
        &env,
        &browser,
        &with_param(&callback, "state", Some("forged-state")),
    )
    .await;

    // Another browser (no binding cookie) can't use this browser's callback.
    let thief = Browser::new();
    assert_refused(&env, &thief, &callback).await;
    // The pending login is single-use: after any attempt it is gone.
    assert_refused(&env, &browser, &callback).await;

    // A fresh login in the right browser works, once.
    let authorize = browser.start_login(&env, "/").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    assert_eq!(browser.get(&callback).await.status, 302);
    let again = browser.get(&callback).await;
    again.assert_error(400, "invalid_request");
}

#[tokio::test]
async fn iss_must_be_the_issuer() {
    let env = Env::builder().start().await;
    let browser = env.browser();

    let authorize = browser.start_login(&env, "/").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    assert_refused(
        &env,
        &browser,
        &with_param(&callback, "iss", Some("https://evil.example")),
    )
    .await;

    // The provider advertises RFC 9207, so a response without iss is refused too.
    let authorize = browser.start_login(&env, "/").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    assert_refused(&env, &browser, &with_param(&callback, "iss", None)).await;
}

#[tokio::test]
async fn pkce_verifier_must_match_the_code() {
    let env = Env::builder().plain_authorize().start().await;
    let browser = env.browser();
    // Two pending logins in one browser; the code of the first is delivered with the
    // state of the second, so Portcullis sends the second verifier: the provider refuses.
    let first = browser.start_login(&env, "/").await;
    let second = browser.start_login(&env, "/").await;
    let callback = browser.provider_login(&first, "alice", "alice").await;
    let swapped = with_param(&callback, "state", Some(&query(&second)["state"]));
    assert_refused(&env, &browser, &swapped).await;
}

#[tokio::test]
async fn nonce_must_match_the_login() {
    let env = Env::builder().plain_authorize().start().await;
    let browser = env.browser();
    // An attacker obtains a code for the same PKCE challenge but with a nonce of their
    // own, and injects it with the victim's state: PKCE passes, the nonce check must not.
    let authorize = browser.start_login(&env, "/").await;
    let state = query(&authorize)["state"].clone();
    let forged = with_param(
        &with_param(&authorize, "nonce", Some("attacker-nonce")),
        "state",
        Some("attacker-state"),
    );
    let attacker_callback = browser.provider_login(&forged, "alice", "alice").await;
    assert_eq!(query(&attacker_callback)["state"], "attacker-state");
    let injected = with_param(&attacker_callback, "state", Some(&state));
    assert_refused(&env, &browser, &injected).await;
}

#[tokio::test]
async fn provider_errors_and_missing_code_are_refused() {
    let env = Env::builder().plain_authorize().start().await;
    let browser = env.browser();
    let authorize = browser.start_login(&env, "/").await;
    let state = query(&authorize)["state"].clone();
    let issuer = env.provider.issuer.clone();
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("state", &state)
        .append_pair("iss", &issuer)
        .append_pair("error", "access_denied")
        .append_pair("error_description", "the user said no")
        .finish();
    assert_refused(&env, &browser, &env.url(&format!("/bff/callback?{q}"))).await;

    let authorize = browser.start_login(&env, "/").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    assert_refused(&env, &browser, &with_param(&callback, "code", None)).await;

    let authorize = browser.start_login(&env, "/").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    assert_refused(
        &env,
        &browser,
        &with_param(&callback, "code", Some("forged-code")),
    )
    .await;
}

#[tokio::test]
async fn return_url_must_be_a_local_path() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    let attacks = [
        "https://evil.example/",
        "http://evil.example",
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "data:text/html,hi",
        "evil.example",
        "/\t/evil.example",
        "/\r\n/evil.example",
        "/%2F%2Fevil.example",
        " /",
        "",
    ];
    for attack in attacks {
        let q = form_urlencoded::Serializer::new(String::new())
            .append_pair("returnUrl", attack)
            .finish();
        let r = browser.get(&env.url(&format!("/bff/login?{q}"))).await;
        assert_eq!(r.status, 400, "returnUrl {attack:?} accepted: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_request");
        assert!(r.headers.get("location").is_none());
    }
    // A local path is fine, and so is no returnUrl at all.
    assert_eq!(
        browser
            .get(&env.url("/bff/login?returnUrl=%2Fok%3Fa%3D1"))
            .await
            .status,
        302
    );
    assert_eq!(browser.get(&env.url("/bff/login")).await.status, 302);
}
