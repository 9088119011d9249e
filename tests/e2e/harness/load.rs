//! Load a test applies: a storm of concurrent API calls through one browser's session.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Browser, Env, Upstream};

/// What a [`storm`] did.
pub struct Storm {
    /// Calls answered 200.
    pub ok: u64,
    /// Calls answered otherwise (each one logged as `storm failure`).
    pub failed: u64,
    /// The slowest call.
    pub slowest: Duration,
    /// From the start until the last task ended.
    pub elapsed: Duration,
}

/// `tasks` concurrent loops, task `i` calling `urls[i % urls.len()]` with the
/// browser's session and the CSRF header, one call after another, until `run_for`
/// has passed since the start.
pub async fn storm(browser: &Browser, urls: &[String], tasks: usize, run_for: Duration) -> Storm {
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut running = Vec::new();
    for i in 0..tasks {
        let (browser, url) = (browser.clone(), urls[i % urls.len()].clone());
        let (ok, failed, slowest_us) = (ok.clone(), failed.clone(), slowest_us.clone());
        running.push(tokio::spawn(async move {
            while started.elapsed() < run_for {
                let t = Instant::now();
                let r = browser.get_with(&url, &[("x-csrf", "1")]).await;
                slowest_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("storm failure: {} {}", r.status, r.text());
                }
            }
        }));
    }
    for t in running {
        t.await.unwrap();
    }
    Storm {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        slowest: Duration::from_micros(slowest_us.load(Ordering::Relaxed)),
        elapsed: started.elapsed(),
    }
}

impl Upstream {
    /// The distinct `Authorization` headers of every request received, sorted.
    pub fn distinct_authorizations(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .requests()
            .iter()
            .map(|s| s.headers["authorization"].to_str().unwrap().to_owned())
            .collect();
        tokens.sort();
        tokens.dedup();
        tokens
    }
}

/// Two instances on one `store` under a [`storm`] of `tasks` callers for 9 s through one
/// browser's session, the access token expiring every 4 s: no call fails, no refresh is
/// refused (a rotated refresh token used twice would be), at least `min_refreshes`
/// expiries were crossed, and each expiry was refreshed once across both instances.
pub async fn storm_on_two_instances(store: &'static str, tasks: usize, min_refreshes: u64) {
    let env = Env::builder()
        .store(store)
        .instances(2)
        .access_token_ttl(4)
        .userinfo(false)
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    browser.share_session_with(&env, &env.others[0]);
    let urls = [
        env.gateway.url("/api/storm"),
        env.others[0].url("/api/storm"),
    ];
    let run_for = Duration::from_secs(9);
    let Storm { ok, failed, .. } = storm(&browser, &urls, tasks, run_for).await;
    let tokens = env.upstream.distinct_authorizations();
    let (refreshed, refresh_errors) = env.provider.grant_count("refresh_token").await;
    println!(
        "STORM (2 instances, {store}): {ok} ok, {failed} failed; access tokens used: {}; refresh grants: {refreshed} ok, {refresh_errors} failed",
        tokens.len()
    );
    assert_eq!(failed, 0);
    assert_eq!(refresh_errors, 0);
    assert!(refreshed >= min_refreshes, "{refreshed}");
    assert_eq!(
        tokens.len() as u64,
        refreshed + 1,
        "one refresh per expiry across both instances"
    );
}
