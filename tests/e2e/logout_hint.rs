//! `oidc.logout_hint = "client_id"`: the logout request names the client instead of
//! carrying the ID token through the browser, and the real provider still ends its
//! session and sends the browser back to the post-logout URI with our `state`.

use crate::harness::*;

#[tokio::test]
async fn client_id_mode_logs_out_without_the_id_token() {
    let env = Env::builder()
        .oidc("logout_hint = \"client_id\"\n")
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let user = browser.user(&env).await;
    let logout_url = user.json()["bff:logout_url"].as_str().unwrap().to_owned();
    let out = browser.get(&env.url(&logout_url)).await;
    assert_eq!(out.status, 302, "{}", out.text());
    let end_session = out.location();
    let end_session_endpoint = env.provider.discovery().await["end_session_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        end_session.starts_with(&end_session_endpoint),
        "{end_session}"
    );
    let q = query(&end_session);
    assert!(!q.contains_key("id_token_hint"), "{end_session}");
    assert!(
        !end_session.contains("eyJ"),
        "a JWT in the logout URL: {end_session}"
    );
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["post_logout_redirect_uri"], env.url("/"));
    // The session here is already gone.
    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");

    // The provider takes the request: its confirmation page, then back to us with
    // the state we sent.
    let done = browser
        .confirm_provider_logout(&env.provider, &end_session)
        .await;
    let back = done.location();
    assert!(back.starts_with(&env.url("/")), "{back}");
    assert_eq!(query(&back)["state"], q["state"], "{back}");

    // The provider session is gone too: a silent login now comes back `login_required`.
    let r = browser.get(&env.url("/bff/login?prompt=none")).await;
    assert_eq!(r.status, 302);
    let url = browser.follow_to_callback(&r.location()).await;
    assert_eq!(query(&url)["error"], "login_required", "{url}");
}
