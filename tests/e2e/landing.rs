//! Errors a person can act on: a failed login that arrives as a browser navigation
//! lands on a page of the SPA with `?bff_error=CODE` (XHR callers still get JSON); a
//! navigation on another loopback host name is sent to the public origin before a
//! login starts; `/bff/user?slide=false` doesn't keep a session alive.

use std::time::Duration;

use crate::harness::*;

/// Asserts a failed login navigation: a 302 to `to`, no session, not cached.
fn assert_lands(r: &Answer, to: &str) {
    assert_eq!(r.status, 302, "body: {}", r.text());
    assert_eq!(r.location(), to);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(
        !r.sets_cookie(COOKIE),
        "a failed login set a session cookie"
    );
}

#[tokio::test]
async fn a_failed_login_navigation_lands_on_the_spa_with_a_code() {
    let env = Env::builder().start().await;
    let browser = env.browser();

    // An unknown state (a bookmarked or reloaded callback): the login is not known,
    // so the frontend's root.
    let forged = env.url("/bff/callback?state=forged&code=x");
    assert_lands(
        &browser.get_with(&forged, NAVIGATE).await,
        "/?bff_error=login_expired",
    );
    // Without the headers of a navigation (fetch, XHR, curl): the JSON error as before.
    browser
        .get(&forged)
        .await
        .assert_error(400, "invalid_request");
    browser
        .get_with(
            &forged,
            &[("sec-fetch-mode", "cors"), ("accept", "text/html")],
        )
        .await
        .assert_error(400, "invalid_request");
    // An old browser without Sec-Fetch-Mode that asks for HTML navigates.
    assert_lands(
        &browser.get_with(&forged, &[("accept", "text/html")]).await,
        "/?bff_error=login_expired",
    );

    // A used login is no longer known either.
    let authorize = browser.start_login(&env, "/app").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    let r = browser.get_with(&callback, NAVIGATE).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.location(), "/app");
    assert!(r.sets_cookie(COOKIE));
    assert_lands(
        &browser.get_with(&callback, NAVIGATE).await,
        "/?bff_error=login_expired",
    );

    // Another browser (no binding cookie: another browser or another host name):
    // back to the login's own returnUrl, its query kept, the code before the fragment.
    let authorize = browser.start_login(&env, "/app?tab=2#/inbox").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    assert_lands(
        &Browser::new().get_with(&callback, NAVIGATE).await,
        "/app?tab=2&bff_error=login_other_browser#/inbox",
    );

    // The provider refused (the user cancelled): its code is passed on.
    let authorize = browser.start_login(&env, "/app").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    let refused = with_param(
        &with_param(&callback, "code", None),
        "error",
        Some("access_denied"),
    );
    assert_lands(
        &browser.get_with(&refused, NAVIGATE).await,
        "/app?bff_error=login_refused&provider_error=access_denied",
    );

    // A code the provider refuses at the exchange.
    let authorize = browser.start_login(&env, "/app").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    let bad_code = with_param(&callback, "code", Some("not-a-code"));
    assert_lands(
        &browser.get_with(&bad_code, NAVIGATE).await,
        "/app?bff_error=login_failed",
    );
    // None of these made a session besides the one good login.
    let user = browser.user(&env).await;
    assert_eq!(user.status, 200, "{}", user.text());
}

#[tokio::test]
async fn login_error_path_names_the_page() {
    let env = Env::builder()
        .oidc("login_error_path = \"/signin-problem?from=bff\"\n")
        .start()
        .await;
    let browser = env.browser();
    let authorize = browser.start_login(&env, "/app").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    assert_lands(
        &Browser::new().get_with(&callback, NAVIGATE).await,
        "/signin-problem?from=bff&bff_error=login_other_browser",
    );
    assert_lands(
        &browser
            .get_with(&env.url("/bff/callback?state=x"), NAVIGATE)
            .await,
        "/signin-problem?from=bff&bff_error=login_expired",
    );
}

#[tokio::test]
async fn an_expired_login_lands_on_the_spa() {
    let env = Env::builder()
        .oidc("pending_login_ttl = \"1s\"\n")
        .start()
        .await;
    let browser = env.browser();
    let authorize = browser.start_login(&env, "/after").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_lands(
        &browser.get_with(&callback, NAVIGATE).await,
        "/?bff_error=login_expired",
    );
}

#[tokio::test]
async fn a_navigation_on_another_loopback_name_goes_to_the_public_origin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        "<!doctype html><title>spa</title>",
    )
    .unwrap();
    let env = Env::builder().static_dir(dir.path()).start().await;
    let browser = env.browser();
    let port = env.gateway.port;
    let origin = env.gateway.origin.clone();
    let localhost = format!("localhost:{port}");
    let on = |host: &str| {
        let mut h = NAVIGATE.to_vec();
        h.push(("host", Box::leak(host.to_owned().into_boxed_str())));
        h
    };

    // The login start and the SPA's pages, path and query kept.
    for path in ["/bff/login?returnUrl=%2Fapp", "/", "/deep/link?x=1"] {
        let r = browser.get_with(&env.url(path), &on(&localhost)).await;
        assert_eq!(r.status, 307, "{path}: {}", r.text());
        assert_eq!(r.location(), format!("{origin}{path}"));
        assert_eq!(r.headers["cache-control"], "no-store");
        assert!(
            r.set_cookies().is_empty(),
            "{path}: no cookie on the wrong host"
        );
    }
    // *.localhost and IPv6 loopback are other names of this machine too.
    for host in [format!("app.localhost:{port}"), format!("[::1]:{port}")] {
        let r = browser.get_with(&env.url("/"), &on(&host)).await;
        assert_eq!(r.status, 307, "{host}");
        assert_eq!(r.location(), format!("{origin}/"));
    }

    // Not redirected: the public origin itself, API routes, other /bff endpoints,
    // calls that are not navigations, non-loopback names (never an open redirect),
    // another port (a proxy in front).
    let r = browser
        .get_with(&env.url("/"), &on(&format!("127.0.0.1:{port}")))
        .await;
    assert_eq!(r.status, 200);
    let r = browser
        .get_with(&env.url("/public/x"), &on(&localhost))
        .await;
    assert_eq!(r.status, 200, "API routes are never redirected");
    let r = browser
        .get_with(&env.url("/bff/user"), &on(&localhost))
        .await;
    assert_ne!(r.status, 307);
    let r = browser
        .get_with(&env.url("/bff/login"), &[("host", localhost.as_str())])
        .await;
    assert_eq!(
        r.status, 302,
        "an XHR-style request starts the login as before"
    );
    assert!(r.location().starts_with(&env.provider.issuer));
    for host in [format!("evil.example:{port}"), "localhost:1".to_owned()] {
        let r = browser.get_with(&env.url("/"), &on(&host)).await;
        assert_ne!(r.status, 307, "{host}");
        assert!(r.headers.get("location").is_none(), "{host}");
    }

    // After the redirect the login works end to end on the public origin.
    let r = browser
        .get_with(&env.url("/bff/login?returnUrl=%2Fapp"), &on(&localhost))
        .await;
    let authorize = browser.get_with(&r.location(), NAVIGATE).await;
    assert_eq!(authorize.status, 302);
    let callback = browser
        .provider_login(&authorize.location(), "alice", "alice")
        .await;
    let done = browser.get_with(&callback, NAVIGATE).await;
    assert_eq!(done.status, 302);
    assert_eq!(done.location(), "/app");
    assert_eq!(browser.user(&env).await.status, 200);
}

#[tokio::test]
async fn user_with_slide_false_does_not_extend_the_session() {
    let env = Env::builder()
        .session("idle_timeout = \"3s\"\n")
        .start()
        .await;
    let polling = env.browser();
    polling.login(&env, "alice", "alice", "/").await;
    let active = env.browser();
    active.login(&env, "alice", "alice", "/").await;
    let quiet = |b: &Browser| {
        let b = b.clone();
        let url = env.url("/bff/user?slide=false");
        async move { b.get_with(&url, &[("x-csrf", "1")]).await }
    };

    let first = quiet(&polling).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let left = first.json()["bff:session_expires_in"].as_i64().unwrap();
    assert!((1..=3).contains(&left), "{left}");
    // Polled without sliding every 0.5 s, the session still ends after 3 s idle; the
    // session used normally (the default, slide=true) lives on.
    let mut ended_after = None;
    for i in 1..=14 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            active.user(&env).await.status,
            200,
            "the used session ended"
        );
        let r = quiet(&polling).await;
        if r.status == 401 {
            r.assert_error(401, "unauthenticated");
            ended_after = Some(i * 500);
            break;
        }
        let left = r.json()["bff:session_expires_in"].as_i64().unwrap();
        assert!(left <= 3, "{left}");
    }
    let ended_after = ended_after.expect("the polled session did not end within 7 s");
    println!(
        "a session polled with slide=false ended {ended_after} ms after the first poll (idle_timeout 3s)"
    );
    assert_eq!(active.user(&env).await.status, 200);

    quiet(&active)
        .await
        .json()
        .get("sub")
        .expect("slide=false still answers the claims");
    let bad = active
        .get_with(&env.url("/bff/user?slide=maybe"), &[("x-csrf", "1")])
        .await;
    bad.assert_error(400, "invalid_request");
}
