//! Several Portcullis instances on one Redis, behind one public origin, no sticky
//! sessions: one truth, whichever instance a request reaches.

use std::time::{Duration, Instant};

use crate::harness::*;

async fn api_via(browser: &Browser, gateway: &Gateway, path: &str) -> Answer {
    browser
        .get_with(&gateway.url(path), &[("x-csrf", "1")])
        .await
}

/// Polls until `check` holds, returning how long it took (panics after `limit`).
async fn within<F, Fut>(limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn login_on_a_call_on_b_logout_on_b_and_a_refuses_the_cookie(store: &'static str) {
    let env = Env::builder().store(store).instances(2).start().await;
    let (a, b) = (&env.gateway, &env.others[0]);
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    browser.share_session_with(&env, b);

    // A has the session cached after this call.
    assert_eq!(api_via(&browser, a, "/api/on-a").await.status, 200);
    let r = api_via(&browser, b, "/api/on-b").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = env.upstream.last().headers["authorization"]
        .to_str()
        .unwrap()[7..]
        .to_owned();
    assert_eq!(env.provider.introspect(&token).await["sub"], "alice");

    let user = browser
        .get_with(&b.url("/bff/user"), &[("x-csrf", "1")])
        .await;
    let logout_url = user.json()["bff:logout_url"].as_str().unwrap().to_owned();
    let out = browser.get(&b.url(&logout_url)).await;
    assert_eq!(out.status, 302);

    // A refuses the old cookie, despite its cache.
    let old = Browser::new();
    old.set_cookie(
        &a.origin,
        COOKIE,
        &browser.cookie(&a.origin, COOKIE).unwrap(),
    );
    let delay = within(Duration::from_millis(100), || async {
        old.get_with(&a.url("/api/after-logout"), &[("x-csrf", "1")])
            .await
            .status
            == 401
    })
    .await;
    println!("CROSS-INSTANCE: logout on B refused on A after {delay:?}");
}

async fn a_storm_across_two_instances_refreshes_once_per_expiry(store: &'static str) {
    storm_on_two_instances(store, 200, 3).await;
}

#[tokio::test]
async fn a_dead_lock_holder_blocks_a_refresh_only_until_its_lease_ends() {
    // Lease = refresh_timeout + 5 s = 7 s.
    let env = Env::builder()
        .store("redis")
        .instances(2)
        .access_token_ttl(4)
        .userinfo(false)
        .tokens("refresh_timeout = \"2s\"\n")
        .oidc("http_timeout = \"1s\"\n")
        .start()
        .await;
    let b = &env.others[0];
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    browser.share_session_with(&env, b);
    assert_eq!(api_via(&browser, b, "/api/a").await.status, 200);

    // An instance took this session's refresh lock and died (its owner token is
    // nobody's): exactly what a crash between lock and release leaves in Redis.
    let id = browser.session_cookie(&env).unwrap();
    let key = portcullis::session::SessionId::parse(&id).unwrap().key();
    let lock = format!("portcullis:lock:{}", hex(key.as_bytes()));
    let reply =
        env.redis
            .as_ref()
            .unwrap()
            .command(&["SET", &lock, "crashed-instance", "PX", "7000"]);
    assert!(reply.starts_with("+OK"), "{reply}");
    let locked_at = Instant::now();

    // Past expiry: nobody can refresh while the dead holder's lease runs.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let blocked = api_via(&browser, b, "/api/b").await;
    blocked.assert_error(503, "idp_unavailable");
    assert_eq!(
        browser
            .get_with(&b.url("/bff/user"), &[("x-csrf", "1")])
            .await
            .status,
        200,
        "session kept"
    );

    // After the lease: the session recovers by itself, no new login.
    let recovered = within(Duration::from_secs(12), || async {
        api_via(&browser, b, "/api/c").await.status == 200
    })
    .await;
    println!(
        "DEAD LOCK HOLDER: recovered {:?} after the lock was taken",
        locked_at.elapsed()
    );
    assert!(
        locked_at.elapsed() >= Duration::from_secs(7),
        "not before the lease ended"
    );
    let _ = recovered;
    assert_eq!(env.provider.grant_count("refresh_token").await, (1, 0));
}

#[tokio::test]
async fn redis_down_is_503_and_not_ready_then_recovers_by_itself() {
    let mut env = Env::builder().store("redis").instances(2).start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    assert_eq!(api_via(&browser, &env.gateway, "/api/a").await.status, 200);

    env.redis.as_mut().unwrap().stop();
    let down = within(Duration::from_secs(5), || async {
        browser
            .get_with(&env.url("/api/b"), &[("x-csrf", "1")])
            .await
            .status
            == 503
    })
    .await;
    api_via(&browser, &env.gateway, "/api/c")
        .await
        .assert_error(503, "store_unavailable");
    browser
        .user(&env)
        .await
        .assert_error(503, "store_unavailable");
    let ready = Browser::new().get(&env.url("/readyz")).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["store"], "unavailable");
    // Logging in needs the store too: a clean 503, not a crash.
    Browser::new()
        .get(&env.url("/bff/login"))
        .await
        .assert_error(503, "store_unavailable");
    println!("REDIS DOWN: first 503 after {down:?}");

    // Redis comes back with what it kept (append-only file): the same session works again.
    env.redis.as_mut().unwrap().restart();
    within(Duration::from_secs(10), || async {
        api_via(&browser, &env.gateway, "/api/d").await.status == 200
    })
    .await;
    let b = &env.others[0];
    browser.share_session_with(&env, b);
    within(Duration::from_secs(10), || async {
        api_via(&browser, b, "/api/e").await.status == 200
    })
    .await;
    assert_eq!(Browser::new().get(&env.url("/readyz")).await.status, 200);
}

async fn revoking_a_user_from_the_command_line_reaches_every_instance_at_once(store: &'static str) {
    let env = Env::builder().store(store).instances(2).start().await;
    let (a, b) = (&env.gateway, &env.others[0]);
    let alice = env.browser();
    let bob = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    bob.login(&env, "bob", "bob", "/").await;
    alice.share_session_with(&env, b);
    bob.share_session_with(&env, b);
    for g in [a, b] {
        assert_eq!(
            api_via(&alice, g, "/api/warm").await.status,
            200,
            "cached on both"
        );
    }

    let config = env.gateway.config_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(["sessions", "revoke", "--sub", "alice", "--config"])
            .arg(config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = Instant::now();
    for g in [a, b] {
        within(Duration::from_millis(100), || async {
            api_via(&alice, g, "/api/x").await.status == 401
        })
        .await;
    }
    println!(
        "REVOKE: refused on both instances {:?} after the command returned",
        revoked_at.elapsed()
    );
    for g in [a, b] {
        assert_eq!(
            api_via(&bob, g, "/api/y").await.status,
            200,
            "other users untouched"
        );
    }
    // sessions list sees what is left.
    let config = env.gateway.config_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(["sessions", "list", "--config"])
            .arg(config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("\"sub\":\"bob\""));
}

async fn back_channel_logout_on_one_instance_ends_the_session_on_all(store: &'static str) {
    let env = Env::builder().store(store).instances(2).start().await;
    let b = &env.others[0];
    let laptop = env.browser();
    let phone = env.browser();
    laptop.login(&env, "alice", "alice", "/").await;
    phone.login(&env, "alice", "alice", "/").await;
    laptop.share_session_with(&env, b);
    assert_eq!(api_via(&laptop, b, "/api/warm").await.status, 200);

    // The provider sends real logout tokens (to instance A, the registered URI).
    let r = reqwest::Client::new()
        .post(env.provider.url("/test/backchannel-logout?sub=alice"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    within(Duration::from_millis(100), || async {
        api_via(&laptop, b, "/api/x").await.status == 401
    })
    .await;
    phone.user(&env).await.assert_error(401, "unauthenticated");
}

/// The tests above, on one Redis and on a real Redis Cluster (3 masters, 3 replicas).
macro_rules! on_every_redis {
    ($($name:ident),*) => {
        mod one_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("redis").await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("redis-cluster").await;
                }
            )*
        }
    };
}

on_every_redis!(
    login_on_a_call_on_b_logout_on_b_and_a_refuses_the_cookie,
    a_storm_across_two_instances_refreshes_once_per_expiry,
    revoking_a_user_from_the_command_line_reaches_every_instance_at_once,
    back_channel_logout_on_one_instance_ends_the_session_on_all
);
