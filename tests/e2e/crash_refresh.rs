//! kill -9 of the instance that holds a session's refresh lease while the provider is
//! slow to answer its refresh. The other instance takes over once the lease (here
//! `refresh_timeout` 2 s + 5 s) has run out. When the provider never processed the
//! dead instance's refresh, the old refresh token is still good and the session
//! survives; when it did (it rotated the token, the answer died with the instance),
//! the old token is spent and the session ends cleanly with a 401 (`session_expired`,
//! or `unauthenticated` for a request after the one that found the grant spent): the
//! one case no BFF can save (docs/operations.md).

use std::time::{Duration, Instant};

use crate::harness::*;

async fn slow_token(env: &Env, ms: u64, consume: bool) {
    let r = reqwest::Client::new()
        .post(env.provider.url("/test/slow-token"))
        .json(&serde_json::json!({ "ms": ms, "consume": consume }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

fn bearer(env: &Env) -> String {
    env.upstream.last().headers["authorization"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Logs in, lets the access token fall due, starts a refresh on instance A against a
/// provider that takes 3 s, kills A (-9) half a second in, and lets B carry on.
/// Returns B's answers from the kill on (time since the kill, status, error code),
/// until one is final: a 200 with a new access token, or a 401.
async fn crash_during_refresh(
    consume: bool,
) -> (Env, Browser, Vec<(Duration, u16, String)>, String) {
    let env = Env::builder()
        .store("redis")
        .instances(2)
        .access_token_ttl(4)
        .userinfo(false)
        .tokens("refresh_timeout = \"2s\"\n")
        .oidc("http_timeout = \"1s\"\n")
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    browser.share_session_with(&env, &env.others[0]);
    let r = browser
        .get_with(&env.url("/api/first"), &[("x-csrf", "1")])
        .await;
    assert_eq!(r.status, 200);
    let first = bearer(&env);

    // Due (refresh_before is capped at half the 4 s lifetime).
    tokio::time::sleep(Duration::from_millis(2300)).await;
    slow_token(&env, 3000, consume).await;
    // A request on A starts the refresh (sent raw: its connection dies with A).
    let cookie = format!("{COOKIE}={}", browser.session_cookie(&env).unwrap());
    let on_a = tokio::spawn(
        reqwest::Client::new()
            .get(env.url("/api/on-a"))
            .header("cookie", cookie)
            .header("x-csrf", "1")
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.gateway.signal("-KILL");
    let killed = Instant::now();
    let _ = on_a.await;
    slow_token(&env, 0, false).await;

    let b = &env.others[0];
    let mut seen = Vec::new();
    loop {
        let r = browser
            .get_with(&b.url("/api/on-b"), &[("x-csrf", "1")])
            .await;
        let code = if r.status == 200 {
            String::new()
        } else {
            r.json()["error"].as_str().unwrap_or("?").to_owned()
        };
        let status = r.status.as_u16();
        seen.push((killed.elapsed(), status, code));
        if status == 401 || (status == 200 && bearer(&env) != first) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no outcome 30 s after the crash: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (env, browser, seen, first)
}

fn assert_only_waiting(seen: &[(Duration, u16, String)]) {
    for (at, status, code) in &seen[..seen.len() - 1] {
        assert!(
            *status == 200 || (*status == 503 && code == "idp_unavailable"),
            "at {at:?} after the crash: {status} {code} (only 200 with the current token or 503 idp_unavailable while the lease runs)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_refresh_the_provider_never_processed_keeps_the_session() {
    let (env, browser, seen, first) = crash_during_refresh(false).await;
    let (took, status, _) = seen.last().unwrap().clone();
    println!(
        "CRASH MID-REFRESH (not consumed): new token on B {took:?} after the kill; answers meanwhile: {:?}",
        seen.iter().map(|s| (s.1, s.2.clone())).collect::<Vec<_>>()
    );
    assert_eq!(status, 200, "the session survived: {seen:?}");
    assert_only_waiting(&seen);
    assert!(
        took < Duration::from_secs(15),
        "takeover {took:?} after the crash (lease 7 s)"
    );
    assert_ne!(bearer(&env), first);
    let (ok, failed) = env.provider.grant_count("refresh_token").await;
    assert_eq!((ok, failed), (1, 0), "one refresh, by B");
    let r = browser
        .get_with(&env.others[0].url("/bff/user"), &[("x-csrf", "1")])
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_refresh_the_provider_processed_ends_the_session_cleanly() {
    let (env, browser, seen, _) = crash_during_refresh(true).await;
    let (took, _, _) = seen.last().unwrap().clone();
    println!(
        "CRASH MID-REFRESH (consumed): session ended on B {took:?} after the kill; answers: {:?}",
        seen.iter().map(|s| (s.1, s.2.clone())).collect::<Vec<_>>()
    );
    // The request whose refresh found the grant spent answers 401 `session_expired`;
    // when it had stopped waiting (503 `idp_unavailable` after `oidc.http_timeout`),
    // the session is already gone for the next one: 401 `unauthenticated`.
    let last = seen.last().unwrap();
    assert!(
        last.1 == 401 && (last.2 == "session_expired" || last.2 == "unauthenticated"),
        "{seen:?}"
    );
    assert_only_waiting(&seen);
    let b = &env.others[0];
    browser
        .get_with(&b.url("/bff/user"), &[("x-csrf", "1")])
        .await
        .assert_error(401, "unauthenticated");
}
