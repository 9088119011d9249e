//! The token lifecycle against the real provider: short-lived access tokens,
//! refresh tokens rotating on every use (a reused one revokes the whole grant).

use std::time::{Duration, Instant};

use crate::harness::*;

/// The bearer token the upstream saw last.
fn last_bearer(env: &Env) -> String {
    env.upstream.last().headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned()
}

async fn api(browser: &Browser, env: &Env, path: &str) -> Answer {
    browser.get_with(&env.url(path), &[("x-csrf", "1")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_parallel_requests_refreshes_exactly_once_per_expiry() {
    // 4 s tokens: refreshed 2 s before expiry, so about every 2 s.
    let env = Env::builder()
        .access_token_ttl(4)
        .userinfo(false)
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    assert_eq!(env.provider.grant_count("refresh_token").await, (0, 0));

    let workers = 200;
    let run_for = Duration::from_secs(9);
    let Storm {
        ok,
        failed,
        slowest,
        ..
    } = storm(&browser, &[env.url("/api/storm")], workers, run_for).await;
    let distinct = env.upstream.distinct_authorizations().len();
    let (refreshed, refresh_errors) = env.provider.grant_count("refresh_token").await;
    println!(
        "STORM: {workers} concurrent workers for {:?}: {ok} ok, {failed} failed; access tokens used: {distinct}; \
         refresh grants at the provider: {refreshed} ok, {refresh_errors} failed; slowest request {} ms",
        run_for,
        slowest.as_millis()
    );
    assert_eq!(failed, 0, "no request failed");
    // A storm, not a trickle: every worker came back several times. (A count, not a
    // rate: on a loaded 2-core machine 200 workers manage ~800 requests in 9 s, on a
    // quiet one several thousand.)
    assert!(
        ok >= 2 * workers as u64,
        "the storm was a storm ({ok} requests)"
    );
    assert_eq!(
        refresh_errors, 0,
        "no refresh was refused (a reused refresh token would be)"
    );
    assert!(
        refreshed >= 3,
        "several expiries were crossed ({refreshed} refreshes)"
    );
    // Exactly one refresh per expiry: every refresh produced the token used next, and
    // the tokens never went back to an older one.
    assert_eq!(
        distinct as u64,
        refreshed + 1,
        "one refresh grant per access token"
    );
    // The session is still good.
    assert_eq!(browser.user(&env).await.status, 200);
}

#[tokio::test]
async fn a_client_hanging_up_during_a_refresh_loses_nothing() {
    let env = Env::builder()
        .access_token_ttl(4)
        .userinfo(false)
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    assert_eq!(api(&browser, &env, "/api/a").await.status, 200);
    let first = last_bearer(&env);

    // Into the refresh window, then make the refresh slow by freezing the provider
    // and hang up while it is in flight.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    env.provider.pause();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let cookie = format!("{COOKIE}={}", browser.session_cookie(&env).unwrap());
    let hung_up = impatient
        .get(env.url("/api/b"))
        .header("cookie", cookie)
        .header("x-csrf", "1")
        .send()
        .await;
    assert!(hung_up.is_err(), "the client gave up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.provider.resume();

    // The refresh finished in its own task: the next request uses its result, and the
    // provider saw exactly one refresh, never a reused refresh token.
    let mut status = 0;
    for _ in 0..20 {
        status = api(&browser, &env, "/api/c").await.status.as_u16();
        if env.provider.grant_count("refresh_token").await.0 == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(env.provider.grant_count("refresh_token").await, (1, 0));
    assert_ne!(last_bearer(&env), first, "the new token is in use");
    // And the rotated refresh token keeps working on the next expiry.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(api(&browser, &env, "/api/d").await.status, 200);
    assert_eq!(env.provider.grant_count("refresh_token").await, (2, 0));
}

#[tokio::test]
async fn a_provider_outage_keeps_the_session() {
    let env = Env::builder()
        .access_token_ttl(6)
        .userinfo(false)
        .oidc("http_timeout = \"1s\"\n")
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let login_token = {
        assert_eq!(api(&browser, &env, "/api/a").await.status, 200);
        last_bearer(&env)
    };

    env.provider.pause();
    // Inside the refresh window (3 s before expiry) but still valid: served with the current token.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    for _ in 0..3 {
        let r = api(&browser, &env, "/api/still-valid").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(last_bearer(&env), login_token);
    }
    // Expired: 503, and the session is still there.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    api(&browser, &env, "/api/expired")
        .await
        .assert_error(503, "idp_unavailable");
    assert_eq!(
        browser.user(&env).await.status,
        200,
        "the session survived the outage"
    );

    // The provider is back: the same session works again, no new login. (A request
    // racing the provider's wake-up may still get 503; the next one tries again.)
    env.provider.resume();
    let mut r = api(&browser, &env, "/api/back").await;
    for _ in 0..10 {
        if r.status == 200 {
            break;
        }
        r.assert_error(503, "idp_unavailable");
        tokio::time::sleep(Duration::from_millis(300)).await;
        r = api(&browser, &env, "/api/back").await;
    }
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(last_bearer(&env), login_token);
    assert_eq!(
        env.provider.introspect(&last_bearer(&env)).await["active"],
        true
    );
    assert_eq!(env.provider.grant_count("refresh_token").await.1, 0);
}

#[tokio::test]
async fn a_revoked_grant_ends_the_session() {
    let env = Env::builder()
        .access_token_ttl(4)
        .userinfo(false)
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let other = env.browser();
    other.login(&env, "bob", "bob", "/").await;
    assert_eq!(api(&browser, &env, "/api/a").await.status, 200);

    env.provider.revoke_grants("alice").await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    api(&browser, &env, "/api/b")
        .await
        .assert_error(401, "session_expired");
    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");
    let (_, errors) = env.provider.grant_count("refresh_token").await;
    assert_eq!(errors, 1, "one refused refresh, no retries");
    // Other users are untouched.
    assert_eq!(api(&other, &env, "/api/c").await.status, 200);
}

#[tokio::test]
async fn client_and_mixed_routes_send_the_right_token() {
    let env = Env::builder()
        .access_token_ttl(4)
        .routes(
            "[[routes]]\nprefix = \"/svc\"\nupstream = \"{upstream}\"\ntoken = \"client\"\n\
             [[routes]]\nprefix = \"/either\"\nupstream = \"{upstream}\"\ntoken = \"user_or_client\"\n",
        )
        .start()
        .await;

    // `client`: the gateway's own token, no session needed, cached.
    let anonymous = Browser::new();
    assert_eq!(anonymous.get(&env.url("/svc/a")).await.status, 200);
    let client_token = last_bearer(&env);
    let info = env.provider.introspect(&client_token).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["client_id"], CLIENT_ID);
    assert!(
        info.get("sub").is_none_or(|s| s.is_null()),
        "a client token has no user: {info}"
    );
    assert_eq!(anonymous.get(&env.url("/svc/b")).await.status, 200);
    assert_eq!(last_bearer(&env), client_token, "reused while fresh");
    assert_eq!(env.provider.grant_count("client_credentials").await, (1, 0));
    // …until near its expiry (4 s lifetime: refreshed 2 s ahead).
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(anonymous.get(&env.url("/svc/c")).await.status, 200);
    assert_ne!(last_bearer(&env), client_token);
    assert_eq!(env.provider.grant_count("client_credentials").await, (2, 0));

    // `user_or_client`: the user's token with a session, the client's without.
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    assert_eq!(api(&browser, &env, "/either/x").await.status, 200);
    assert_eq!(
        env.provider.introspect(&last_bearer(&env)).await["sub"],
        "alice"
    );
    assert_eq!(anonymous.get(&env.url("/either/x")).await.status, 200);
    let info = env.provider.introspect(&last_bearer(&env)).await;
    assert!(info.get("sub").is_none_or(|s| s.is_null()), "{info}");
    // A session still needs the CSRF header.
    browser
        .get(&env.url("/either/x"))
        .await
        .assert_error(403, "csrf");
}

/// Measures (and prints, for the record) what a request pays when it has to wait
/// for a refresh. Timings are reported, not asserted: they depend on the machine.
#[tokio::test]
async fn refresh_wait_latency_is_reported() {
    let env = Env::builder()
        .access_token_ttl(4)
        .userinfo(false)
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let mut plain = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        assert_eq!(api(&browser, &env, "/api/p").await.status, 200);
        plain.push(t.elapsed());
    }
    plain.sort();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let t = Instant::now();
    assert_eq!(api(&browser, &env, "/api/r").await.status, 200);
    let with_refresh = t.elapsed();
    assert_eq!(env.provider.grant_count("refresh_token").await, (1, 0));
    println!(
        "REFRESH LATENCY: median request {:.2} ms, request that waited for the refresh {:.2} ms (added {:.2} ms)",
        plain[15].as_secs_f64() * 1e3,
        with_refresh.as_secs_f64() * 1e3,
        (with_refresh.saturating_sub(plain[15])).as_secs_f64() * 1e3
    );
}
