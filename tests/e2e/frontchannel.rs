//! OIDC Front-Channel Logout 1.0: `GET /bff/frontchannel-logout?iss=…&sid=…` ends the
//! sessions of that login, is framable only by the provider's origin and never cached.

use crate::harness::*;

fn logout_url(env: &Env, iss: &str, sid: &str) -> String {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("iss", iss)
        .append_pair("sid", sid)
        .finish();
    env.url(&format!("/bff/frontchannel-logout?{q}"))
}

#[tokio::test]
async fn frontchannel_logout_ends_the_sessions_of_its_sid() {
    let env = Env::builder()
        .oidc("frontchannel_logout = true\n")
        .start()
        .await;
    let alice = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    let bob = env.browser();
    bob.login(&env, "bob", "bob", "/").await;
    let sid = alice.user(&env).await.json()["sid"]
        .as_str()
        .expect("the provider's sid")
        .to_owned();
    let issuer = env.provider.issuer.clone();

    // Refused: another issuer, a missing parameter. Nothing ends.
    let other = Browser::new();
    other
        .get(&logout_url(&env, "https://evil.example", &sid))
        .await
        .assert_error(400, "invalid_request");
    other
        .get(&env.url(&format!("/bff/frontchannel-logout?iss={issuer}")))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(alice.user(&env).await.status, 200);

    // The provider's iframe: no cookie (cross-site, SameSite=Strict), the sid decides.
    let r = other.get(&logout_url(&env, &issuer, &sid)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["cache-control"], "no-store");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains(&format!("frame-ancestors {issuer}")),
        "framable by the provider only: {csp}"
    );
    assert!(!csp.contains('*'), "{csp}");
    assert!(
        r.headers.get("x-frame-options").is_none(),
        "X-Frame-Options would forbid the iframe"
    );
    assert!(r.set_cookies().is_empty());
    assert!(r.text().contains("logged-out"));

    alice.user(&env).await.assert_error(401, "unauthenticated");
    assert_eq!(
        bob.user(&env).await.status,
        200,
        "another login's session is untouched"
    );
    // Again (the provider may retry): nothing left to end, still 200.
    assert_eq!(
        other.get(&logout_url(&env, &issuer, &sid)).await.status,
        200
    );

    // Every other /bff answer still refuses framing.
    let r = bob.user(&env).await;
    assert_eq!(r.headers["x-frame-options"], "DENY");
}

#[tokio::test]
async fn frontchannel_logout_is_off_by_default() {
    let env = Env::builder().start().await;
    let alice = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    let sid = alice.user(&env).await.json()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = Browser::new()
        .get(&logout_url(&env, &env.provider.issuer, &sid))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(alice.user(&env).await.status, 200);
}
