//! Entra ID multi-tenant issuers, against the real oidc-provider shaped like Entra:
//! discovery names `…/{tenantid}/v2.0`, each ID token carries its `tid` and that
//! tenant's `iss`; only `oidc.allowed_tenants` log in, and a token's `iss` must be
//! its own tenant's.

use serde_json::json;

use crate::harness::*;

async fn entra(allowed: &str) -> Env {
    Env::builder()
        .provider_option("issuerPath", json!("/organizations/v2.0"))
        .provider_option(
            "entraTenants",
            // alice: tenant t1; bob: tid t1 but the iss of tenant t2 (a forgery).
            json!({ "alice": "t1", "bob": { "tid": "t1", "iss": "t2" } }),
        )
        .oidc(&format!(
            "allowed_tenants = {allowed}\nfrontchannel_logout = true\n"
        ))
        .start()
        .await
}

async fn callback(env: &Env, browser: &Browser, user: &str) -> Answer {
    let authorize = browser.start_login(env, "/").await;
    let callback = browser.provider_login(&authorize, user, user).await;
    browser.get(&callback).await
}

#[tokio::test]
async fn only_allowed_tenants_log_in_and_iss_must_match_tid() {
    let env = entra("[\"t1\"]").await;
    assert!(
        env.provider.issuer.ends_with("/organizations/v2.0"),
        "{}",
        env.provider.issuer
    );
    let discovery = env.provider.discovery().await;
    assert!(
        discovery["issuer"]
            .as_str()
            .unwrap()
            .ends_with("/{tenantid}/v2.0"),
        "{discovery}"
    );

    let alice = env.browser();
    let r = callback(&env, &alice, "alice").await;
    assert_eq!(r.status, 302, "{}", r.text());
    let user = alice.user(&env).await;
    assert_eq!(user.status, 200);
    assert_eq!(user.json()["tid"], "t1");
    assert_eq!(
        user.json()["iss"],
        env.provider.issuer.replace("organizations", "t1")
    );

    // bob's ID token says tid t1 but carries tenant t2's iss: refused.
    let bob = env.browser();
    callback(&env, &bob, "bob")
        .await
        .assert_error(400, "invalid_request");
    bob.user(&env).await.assert_error(401, "unauthenticated");
    assert!(
        env.gateway
            .logs()
            .contains("is not the issuer of its tenant"),
        "the log says why"
    );
}

#[tokio::test]
async fn a_tenant_not_on_the_list_is_refused() {
    let env = entra("[\"t9\"]").await;
    let alice = env.browser();
    callback(&env, &alice, "alice")
        .await
        .assert_error(400, "invalid_request");
    assert!(
        env.gateway
            .logs()
            .contains("tenant \\\"t1\\\" is not in oidc.allowed_tenants")
            || env
                .gateway
                .logs()
                .contains("tenant \"t1\" is not in oidc.allowed_tenants")
    );
}
