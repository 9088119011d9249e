//! Attacks on the login and logout endpoints themselves: a flood of cookie-less
//! logins must not lock real users out, a planted login-binding cookie must not bind
//! a login, and a cross-site logout must not touch cookies.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::harness::*;

const LOGIN_COOKIE: &str = "__Host-portcullis-login";

/// What the attackers got: logins started (302) and refused (429).
#[derive(Default)]
struct FloodCount {
    started: AtomicU64,
    refused: AtomicU64,
    unavailable: AtomicU64,
}

/// Cookie-less `/bff/login` in a loop from each of `sources` until `stop`.
fn flood(
    env: &Env,
    sources: impl Iterator<Item = IpAddr>,
    stop: Arc<AtomicBool>,
    count: Arc<FloodCount>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let url = env.url("/bff/login");
    sources
        .map(|source| {
            let client = reqwest::Client::builder()
                .local_address(source)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let (url, stop, count) = (url.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(r) = client.get(&url).send().await else {
                        continue;
                    };
                    match r.status().as_u16() {
                        302 => count.started.fetch_add(1, Ordering::Relaxed),
                        429 => {
                            count.refused.fetch_add(1, Ordering::Relaxed);
                            // Rate-limited: try again soon (keeps the CPU for the user).
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            0
                        }
                        // Each login pushes its request to the provider (PAR): on a loaded
                        // machine the flood can overwhelm the test provider, and an
                        // attacker's login then gets 503 idp_unavailable. Only the real
                        // user's logins are the point.
                        503 => {
                            count.unavailable.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            0
                        }
                        other => panic!("a flood login got {other}"),
                    };
                }
            })
        })
        .collect()
}

/// 39 attacking addresses (127.0.0.2 … 127.0.0.40, all loopback) fire cookie-less
/// logins while a real user on 127.0.0.1 logs in again and again: every one of the
/// user's logins succeeds. Before, the attackers filled `max_pending_logins` within
/// a second and every new login got 429 until their pending logins expired.
async fn real_users_keep_logging_in_during_a_flood(store: &'static str) {
    let env = Env::builder()
        .store(store)
        .oidc("max_pending_logins = 100\n")
        .start()
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(FloodCount::default());
    let attackers = (2..=40u8).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)));
    let tasks = flood(&env, attackers, stop.clone(), count.clone());
    // The store is full (`max_pending_logins`) before the user starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count.started.load(Ordering::Relaxed) < 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let user = env.browser();
    for i in 0..5 {
        let r = user.login(&env, "alice", "alice", "/").await;
        assert_eq!(r.location(), "/", "login {i}");
        let me = user.user(&env).await;
        assert_eq!(me.status, 200, "login {i}: {}", me.text());
        assert_eq!(me.json()["sub"], "alice");
    }

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let started = count.started.load(Ordering::Relaxed);
    let refused = count.refused.load(Ordering::Relaxed);
    let unavailable = count.unavailable.load(Ordering::Relaxed);
    eprintln!(
        "flood ({store}): {started} logins started, {refused} refused, {unavailable} provider unavailable"
    );
    // The attackers kept the store over its cap the whole time.
    assert!(started > 200, "{started}");
    assert!(
        env.gateway.logs().contains("pending_login_evicted"),
        "the store was never full"
    );
}

#[tokio::test]
async fn real_users_keep_logging_in_during_a_login_flood_sqlite() {
    real_users_keep_logging_in_during_a_flood("sqlite").await;
}

#[tokio::test]
async fn real_users_keep_logging_in_during_a_login_flood_redis() {
    real_users_keep_logging_in_during_a_flood("redis").await;
}

/// One network holds at most `security.pending_logins_per_network` pending logins,
/// cookie or not; other networks are not affected, and a finished login frees a place.
#[tokio::test]
async fn one_network_holds_only_so_many_pending_logins() {
    let env = Env::builder()
        .start_with_security("pending_logins_per_network = 3\n")
        .await;
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    let url = env.url("/bff/login");
    let attacker = from(77);
    for _ in 0..3 {
        assert_eq!(attacker.get(&url).send().await.unwrap().status(), 302);
    }
    let r = attacker.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    // Another address, and the user's own, still start logins.
    assert_eq!(from(78).get(&url).send().await.unwrap().status(), 302);
    let user = env.browser();
    user.login(&env, "alice", "alice", "/").await;
    assert_eq!(user.user(&env).await.status, 200);
    // A finished login frees its place: the user's network logs in again and again.
    for _ in 0..4 {
        user.login(&env, "alice", "alice", "/").await;
    }
}

/// A login-binding cookie planted in the victim's browser (an attacker knows its
/// value) does not bind the victim's login: the victim's `state` and `code` are
/// useless with the planted cookie, and the victim's own logins, several at once,
/// still work.
#[tokio::test]
async fn a_planted_binding_cookie_does_not_bind_the_login() {
    let env = Env::builder().start().await;
    let origin = env.gateway.origin.clone();
    let victim = env.browser();
    let planted = "AttackerKnowsThisBindingValue_0123456789abc";
    assert_eq!(planted.len(), 43);
    for planted_value in [planted.to_owned(), format!("{planted}.{planted}")] {
        victim.set_cookie(&origin, LOGIN_COOKIE, &planted_value);
        let authorize = victim.start_login(&env, "/").await;
        let issued = victim.cookie(&origin, LOGIN_COOKIE).unwrap();
        assert_ne!(issued, planted_value, "the server issued its own binding");
        let callback = victim.provider_login(&authorize, "alice", "alice").await;

        // The attacker's browser, with the planted value, and the victim's callback.
        let attacker = Browser::new();
        attacker.set_cookie(&origin, LOGIN_COOKIE, &planted_value);
        let r = attacker.get(&callback).await;
        r.assert_error(400, "invalid_request");
        assert!(!r.sets_cookie(COOKIE), "the attacker got a session");
        attacker
            .user(&env)
            .await
            .assert_error(401, "unauthenticated");
    }

    // The victim (planted cookie still there) logs in in two tabs at once.
    victim.set_cookie(&origin, LOGIN_COOKIE, planted);
    let tab1 = victim.start_login(&env, "/one").await;
    let tab2 = victim.start_login(&env, "/two").await;
    let cb1 = victim.provider_login(&tab1, "alice", "alice").await;
    let cb2 = victim.provider_login(&tab2, "alice", "alice").await;
    let r2 = victim.get(&cb2).await;
    assert_eq!(r2.status, 302, "{}", r2.text());
    assert_eq!(r2.location(), "/two");
    let r1 = victim.get(&cb1).await;
    assert_eq!(r1.status, 302, "{}", r1.text());
    assert_eq!(r1.location(), "/one");
    assert_eq!(victim.user(&env).await.status, 200);
}

/// Many tabs of one browser log in at once, finishing in any order.
#[tokio::test]
async fn many_tabs_log_in_at_once() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    let mut tabs = Vec::new();
    for i in 0..8 {
        tabs.push((i, browser.start_login(&env, &format!("/tab{i}")).await));
    }
    let mut callbacks = Vec::new();
    for (i, authorize) in &tabs {
        callbacks.push((
            *i,
            browser.provider_login(authorize, "alice", "alice").await,
        ));
    }
    callbacks.reverse();
    for (i, callback) in callbacks {
        let r = browser.get(&callback).await;
        assert_eq!(r.status, 302, "tab {i}: {}", r.text());
        assert_eq!(r.location(), format!("/tab{i}"));
    }
    assert_eq!(browser.user(&env).await.status, 200);
}

/// Logout CSRF: a request to `/bff/logout` without the session cookie (what a
/// cross-site navigation sends under `SameSite=Strict`) ends nothing and sets no
/// cookie, whatever `sid` it names; a wrong `sid` with the cookie is refused and
/// keeps the session.
#[tokio::test]
async fn a_logout_without_the_session_cookie_touches_no_cookie() {
    let env = Env::builder().start().await;
    let user = env.browser();
    user.login(&env, "alice", "alice", "/").await;
    let sid = user.user(&env).await.json()["sid"]
        .as_str()
        .unwrap()
        .to_owned();

    let cross_site = Browser::new();
    for q in ["anything", &sid, "x", "%00", ""] {
        let r = cross_site
            .get(&env.url(&format!("/bff/logout?sid={q}")))
            .await;
        assert!(r.set_cookies().is_empty(), "sid={q}: {:?}", r.set_cookies());
        if !q.is_empty() {
            assert_eq!(r.status, 302, "sid={q}");
            assert_eq!(r.location(), env.url("/"));
        } else {
            r.assert_error(400, "invalid_request");
        }
    }
    // The POST form, with the CSRF header but no cookie: no cookie touched either.
    let r = cross_site
        .send(
            reqwest::Method::POST,
            &env.url("/bff/logout"),
            &[("x-csrf", "1")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());

    // With the cookie, a wrong sid: 400, no cookie touched, still logged in.
    for wrong in ["anything", "x", &format!("{sid}x")] {
        let r = user
            .get(&env.url(&format!("/bff/logout?sid={wrong}")))
            .await;
        r.assert_error(400, "invalid_request");
        assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    }
    assert_eq!(user.user(&env).await.status, 200);

    // The right sid logs out and removes the cookie.
    let r = user.get(&env.url(&format!("/bff/logout?sid={sid}"))).await;
    assert_eq!(r.status, 302);
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{COOKIE}=")) && c.contains("Max-Age=0"))
    );

    // A browser still holding a dead session's cookie gets it removed.
    let stale = Browser::new();
    stale.set_cookie(&env.gateway.origin, COOKIE, &"A".repeat(43));
    let r = stale.get(&env.url("/bff/logout?sid=whatever")).await;
    assert_eq!(r.status, 302);
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{COOKIE}=")) && c.contains("Max-Age=0")),
        "{:?}",
        r.set_cookies()
    );
}
