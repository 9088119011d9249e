//! Redis failover under load, injected for real: two instances serve a steady load
//! with refreshes falling due while a Redis Cluster master is killed (kill -9) and
//! its replica takes over, or a Sentinel-monitored master dies and the sentinels
//! promote the replica. Seen from outside: no session lost, no refresh grant made
//! twice (counted at the provider), only 503 `store_unavailable` while the store is
//! failing over, and service back soon after the store reports ok.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

/// One answer of the load: when it came (since the load started), status, error code.
type Outcome = (Duration, u16, String);

/// A steady load: every browser sends requests one after another, alternating between
/// the instances, until `stop` is set. Returns every outcome.
struct Load {
    started: Instant,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(browsers: &[Browser], instances: &[&Gateway]) -> Self {
        let started = Instant::now();
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (i, browser) in browsers.iter().enumerate() {
            // Two requests in flight per browser, each alternating between instances.
            for lane in 0..2 {
                let browser = browser.clone();
                let urls: Vec<String> = instances
                    .iter()
                    .map(|g| g.url(&format!("/api/load/{i}/{lane}")))
                    .collect();
                let (outcomes, stop) = (outcomes.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let mut n = lane;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let r = browser
                            .get_with(&urls[n % urls.len()], &[("x-csrf", "1")])
                            .await;
                        let code = if r.status == 200 {
                            String::new()
                        } else {
                            r.json()["error"].as_str().unwrap_or("?").to_owned()
                        };
                        outcomes
                            .lock()
                            .unwrap()
                            .push((started.elapsed(), r.status.as_u16(), code));
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }));
            }
        }
        Self {
            started,
            outcomes,
            stop,
            tasks,
        }
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let mut v = self.outcomes.lock().unwrap().clone();
        v.sort_by_key(|o| o.0);
        v
    }
}

/// What a failover looked like from outside.
struct Seen {
    ok: usize,
    failed: Vec<Outcome>,
    /// From the store reporting ok to the last failed answer (zero if none after it).
    back_after: Duration,
}

fn judge(outcomes: &[Outcome], store_ok_at: Duration) -> Seen {
    let failed: Vec<Outcome> = outcomes.iter().filter(|o| o.1 != 200).cloned().collect();
    let back_after = failed
        .iter()
        .map(|o| o.0.saturating_sub(store_ok_at))
        .max()
        .unwrap_or_default();
    Seen {
        ok: outcomes.len() - failed.len(),
        failed,
        back_after,
    }
}

/// The assertions every failover must pass: only 503 `store_unavailable` while it
/// lasted, service back within a generous bound of the store reporting ok, every
/// session still there on every instance, no refresh grant made twice.
async fn assert_survived(
    what: &str,
    env: &Env,
    browsers: &[Browser],
    outcomes: &[Outcome],
    store_ok_at: Duration,
    killed_at: Duration,
) {
    let seen = judge(outcomes, store_ok_at);
    let (refreshed, refresh_errors) = env.provider.grant_count("refresh_token").await;
    let mut tokens: Vec<String> = env
        .upstream
        .requests()
        .iter()
        .filter_map(|s| s.headers.get("authorization"))
        .map(|h| h.to_str().unwrap().to_owned())
        .collect();
    tokens.sort();
    tokens.dedup();
    let first_failure = seen.failed.first().map(|o| o.0.saturating_sub(killed_at));
    println!(
        "FAILOVER ({what}): {} ok, {} failed ({:?}); store ok {:?} after the kill; \
         first failure {:?} after the kill; service back {:?} after the store reported ok; \
         refresh grants {refreshed} ok, {refresh_errors} failed; access tokens used {}",
        seen.ok,
        seen.failed.len(),
        seen.failed
            .iter()
            .map(|o| format!("{}:{}", o.1, o.2))
            .collect::<std::collections::BTreeSet<_>>(),
        store_ok_at.saturating_sub(killed_at),
        first_failure,
        seen.back_after,
        tokens.len()
    );
    for (at, status, code) in &seen.failed {
        assert!(
            *status == 503 && code == "store_unavailable",
            "{what}: at {at:?} a request got {status} {code} (only 503 store_unavailable is allowed)"
        );
    }
    assert!(
        seen.back_after < Duration::from_secs(6),
        "{what}: service back only {:?} after the store reported ok",
        seen.back_after
    );
    // Every answer in the last seconds of the run was a success.
    let tail = outcomes
        .iter()
        .filter(|o| o.0 > store_ok_at + Duration::from_secs(6))
        .count();
    assert!(tail > 0, "{what}: the load ran on after the failover");
    assert_eq!(
        refresh_errors, 0,
        "{what}: a refresh grant failed at the provider (a refresh token spent twice revokes the grant)"
    );
    assert!(
        refreshed >= browsers.len() as u64,
        "{what}: refreshes fell due"
    );
    assert_eq!(
        tokens.len() as u64,
        refreshed + browsers.len() as u64,
        "{what}: one refresh per expiry per session"
    );
    for (i, b) in browsers.iter().enumerate() {
        for g in std::iter::once(&env.gateway).chain(&env.others) {
            let r = b.get_with(&g.url("/bff/user"), &[("x-csrf", "1")]).await;
            assert_eq!(
                r.status,
                200,
                "{what}: session {i} on {}: {}",
                g.origin,
                r.text()
            );
        }
    }
}

/// Four sessions (two users, two browsers each), shared by both instances.
async fn sessions(env: &Env) -> Vec<Browser> {
    let mut browsers = Vec::new();
    for user in ["alice", "bob", "alice", "bob"] {
        let b = env.browser();
        b.login(env, user, user, "/").await;
        for other in &env.others {
            b.share_session_with(env, other);
        }
        browsers.push(b);
    }
    browsers
}

fn session_redis_key(env: &Env, browser: &Browser) -> String {
    let id = browser.session_cookie(env).unwrap();
    let key = portcullis::session::SessionId::parse(&id).unwrap().key();
    format!("portcullis:s:{}", hex(key.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_under_load_costs_no_session_and_no_second_grant() {
    let mut env = Env::builder()
        .store("redis-cluster")
        .instances(2)
        .access_token_ttl(4)
        .userinfo(false)
        .start()
        .await;
    let browsers = sessions(&env).await;
    let key = session_redis_key(&env, &browsers[0]);
    let load = Load::start(&browsers, &[&env.gateway, &env.others[0]]);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The master holding the first session dies; its replica takes over.
    let cluster = env.redis_cluster.as_mut().unwrap();
    let victim = cluster.master_of(&key);
    cluster.kill(victim);
    let killed_at = load.started.elapsed();
    let cluster = env.redis_cluster.take().unwrap();
    let (cluster, promoted) = tokio::task::spawn_blocking({
        let key = key.clone();
        move || {
            let p = cluster.wait_failover(&key, Duration::from_secs(30));
            (cluster, p)
        }
    })
    .await
    .unwrap();
    let store_ok_at = load.started.elapsed();
    env.redis_cluster = Some(cluster);
    println!("FAILOVER (cluster): master {victim} killed, {promoted} promoted");

    // Long enough for every session to refresh again after the failover.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let outcomes = load.finish().await;
    assert_survived(
        "cluster",
        &env,
        &browsers,
        &outcomes,
        store_ok_at,
        killed_at,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_invalidation_moves_to_a_live_node_when_its_cluster_node_dies() {
    let mut env = Env::builder()
        .store("redis-cluster")
        .instances(2)
        .start()
        .await;
    let (a, b) = (&env.gateway, &env.others[0]);
    let live = |g: &Gateway| g.logs().matches("redis invalidation channel live").count();
    let before = (live(a), live(b));
    assert!(before.0 >= 1 && before.1 >= 1, "subscribed at start");

    // The node both instances listen on (pub/sub clients in its CLIENT LIST) dies.
    let cluster = env.redis_cluster.as_mut().unwrap();
    let listened: Vec<(u16, usize)> = cluster
        .ports
        .iter()
        .map(|&p| (p, cluster.subscribers(p)))
        .filter(|&(_, n)| n > 0)
        .collect();
    assert_eq!(
        listened.len(),
        1,
        "both instances listen on one node: {listened:?}"
    );
    assert_eq!(listened[0].1, 2, "{listened:?}");
    cluster.kill(listened[0].0);
    let killed = Instant::now();
    let resubscribed = loop {
        if live(a) > before.0 && live(b) > before.1 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the invalidation channel did not come back on another node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("PUBSUB: resubscribed on a live node {resubscribed:?} after its node died");
    // Let the cluster heal, then the channel works: a logout on B is refused on A
    // although A has the session cached.
    let cluster = env.redis_cluster.take().unwrap();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    })
    .await
    .unwrap();
    env.redis_cluster = Some(cluster);
    let (a, b) = (&env.gateway, &env.others[0]);
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    browser.share_session_with(&env, b);
    for _ in 0..3 {
        let r = browser
            .get_with(&a.url("/api/warm"), &[("x-csrf", "1")])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let old = Browser::new();
    old.set_cookie(
        &a.origin,
        COOKIE,
        &browser.cookie(&a.origin, COOKIE).unwrap(),
    );
    let r = browser
        .send(
            axum::http::Method::POST,
            &b.url("/bff/logout"),
            &[("x-csrf", "1")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(200)).await;
    old.get_with(&a.url("/api/after-logout"), &[("x-csrf", "1")])
        .await
        .assert_error(401, "unauthenticated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_is_followed_with_no_session_lost() {
    let mut env = Env::builder()
        .store("redis-sentinel")
        .instances(2)
        .access_token_ttl(4)
        .userinfo(false)
        .start()
        .await;
    let browsers = sessions(&env).await;
    let load = Load::start(&browsers, &[&env.gateway, &env.others[0]]);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let sentinel = env.redis_sentinel.as_mut().unwrap();
    let victim = sentinel.kill_master();
    let killed_at = load.started.elapsed();
    let sentinel = env.redis_sentinel.take().unwrap();
    let (sentinel, promoted) = tokio::task::spawn_blocking(move || {
        let p = sentinel.wait_failover(victim, Duration::from_secs(30));
        (sentinel, p)
    })
    .await
    .unwrap();
    let store_ok_at = load.started.elapsed();
    env.redis_sentinel = Some(sentinel);
    println!("FAILOVER (sentinel): master {victim} killed, {promoted} promoted");

    tokio::time::sleep(Duration::from_secs(9)).await;
    let outcomes = load.finish().await;
    assert_survived(
        "sentinel",
        &env,
        &browsers,
        &outcomes,
        store_ok_at,
        killed_at,
    )
    .await;
}
