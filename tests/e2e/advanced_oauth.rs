//! Pushed authorization requests (RFC 9126) and login parameters.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn par_is_used_when_the_provider_offers_it() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    let authorize = browser.start_login(&env, "/").await;
    let params = query(&authorize);
    // Only client_id and request_uri travel through the browser.
    let mut names: Vec<&str> = params.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["client_id", "request_uri"], "{authorize}");
    assert!(params["request_uri"].starts_with("urn:ietf:params:oauth:request_uri:"));
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    assert_eq!(browser.get(&callback).await.status, 302);
    assert_eq!(browser.user(&env).await.json()["sub"], "alice");
}

#[tokio::test]
async fn a_provider_requiring_par_refuses_a_plain_authorize() {
    // par = "never": a plain authorization request, which this provider refuses.
    let env = Env::builder()
        .provider_option("requirePAR", json!(true))
        .oidc("par = \"never\"\n")
        .start()
        .await;
    let browser = env.browser();
    let authorize = browser.start_login(&env, "/").await;
    assert!(
        query(&authorize).contains_key("code_challenge"),
        "plain request: {authorize}"
    );
    let r = browser.get(&authorize).await;
    let refused = r.status == 400
        || (r.status.is_redirection() && r.location().contains("error=invalid_request"));
    assert!(
        refused,
        "the provider accepted a plain authorize: {} {}",
        r.status,
        r.text()
    );
    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");

    // par = "always": works.
    let env = Env::builder()
        .provider_option("requirePAR", json!(true))
        .oidc("par = \"always\"\n")
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    assert_eq!(browser.user(&env).await.status, 200);
}

#[tokio::test]
async fn login_parameters_are_checked_and_passed_on() {
    let env = Env::builder().oidc("par = \"never\"\n").start().await;
    let browser = env.browser();
    let r = browser
        .get(&env.url(
            "/bff/login?returnUrl=%2F&login_hint=alice%40example.com&ui_locales=en&max_age=60",
        ))
        .await;
    assert_eq!(r.status, 302);
    let p = query(&r.location());
    assert_eq!(p["login_hint"], "alice@example.com");
    assert_eq!(p["ui_locales"], "en");
    assert_eq!(p["max_age"], "60");
    for bad in [
        "prompt=bogus",
        "prompt=none%20login",
        "max_age=soon",
        "login_hint=",
        "prompt=%0a",
    ] {
        browser
            .get(&env.url(&format!("/bff/login?{bad}")))
            .await
            .assert_error(400, "invalid_request");
    }
    // A parameter the config doesn't allow.
    let strict = Env::builder()
        .oidc("login_params = [\"prompt\"]\n")
        .start()
        .await;
    Browser::new()
        .get(&strict.url("/bff/login?login_hint=x"))
        .await
        .assert_error(400, "invalid_request");
}

#[tokio::test]
async fn prompt_login_forces_the_login_form() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    // The provider has a session now; prompt=login still shows the form.
    let r = browser.get(&env.url("/bff/login?prompt=login")).await;
    let first = browser.get(&r.location()).await;
    let form = browser
        .get(&resolve(&r.location(), &first.location()))
        .await;
    assert_eq!(form.status, 200);
    assert!(form.text().contains("login-form"));
}

#[tokio::test]
async fn a_silent_login_without_a_provider_session_is_a_clean_not_logged_in() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    let r = browser
        .get(&env.url("/bff/login?prompt=none&returnUrl=%2Fhome"))
        .await;
    assert_eq!(r.status, 302);
    // Follow the provider until it comes back to the callback.
    let url = browser.follow_to_callback(&r.location()).await;
    assert_eq!(query(&url)["error"], "login_required");
    let back = browser.get(&url).await;
    assert_eq!(back.status, 302, "{}", back.text());
    assert_eq!(back.location(), "/home");
    assert!(!back.sets_cookie(COOKIE));
    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");

    // With a provider session, the silent login logs in.
    browser.login(&env, "alice", "alice", "/").await;
    let fresh = Browser::new();
    let _ = fresh; // (a different browser has no provider session)
    let r = browser.get(&env.url("/bff/login?prompt=none")).await;
    let url = browser.follow_to_callback(&r.location()).await;
    assert!(query(&url).contains_key("code"), "{url}");
    assert_eq!(browser.get(&url).await.status, 302);
    assert_eq!(browser.user(&env).await.status, 200);
}

#[tokio::test]
async fn private_key_jwt_logs_in_without_a_client_secret() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestSigner::new("client-key-1");
    let env = Env::builder()
        .private_key_jwt(&key, dir.path())
        .access_token_ttl(4)
        .userinfo(false)
        .start()
        .await;
    let browser = env.browser();
    // PAR, the code exchange, refresh and revocation all authenticate with assertions.
    browser.login(&env, "alice", "alice", "/").await;
    assert_eq!(
        browser
            .get_with(&env.url("/api/a"), &[("x-csrf", "1")])
            .await
            .status,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    assert_eq!(
        browser
            .get_with(&env.url("/api/b"), &[("x-csrf", "1")])
            .await
            .status,
        200
    );
    assert_eq!(env.provider.grant_count("refresh_token").await, (1, 0));
    assert_eq!(env.provider.grant_count("authorization_code").await, (1, 0));
    // `check` prints the public key to register.
    let config = env.gateway.config_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(["check", "--config"])
            .arg(config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("client public key") && text.contains("client-key-1"),
        "{text}"
    );
    assert!(!text.contains("\"d\""), "never the private part: {text}");
}
