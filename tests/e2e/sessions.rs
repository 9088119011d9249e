//! Sessions over time: restarts, storage at rest.

use crate::harness::*;

#[tokio::test]
async fn sqlite_sessions_survive_a_restart() {
    let mut env = Env::builder().store("sqlite").start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    assert_eq!(browser.user(&env).await.status, 200);

    env.gateway.restart();

    let user = browser.user(&env).await;
    assert_eq!(user.status, 200, "{}", user.text());
    assert_eq!(user.json()["sub"], "alice");
    let r = browser
        .get_with(&env.url("/api/after-restart"), &[("x-csrf", "1")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = env.upstream.last().headers["authorization"]
        .to_str()
        .unwrap()[7..]
        .to_owned();
    assert_eq!(env.provider.introspect(&token).await["active"], true);

    // Nothing in the database file is a token or the cookie's id.
    env.gateway.stop();
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(env.gateway.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("sessions.db") {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(!bytes.is_empty());
    let id = browser.session_cookie(&env).unwrap();
    let mut secrets = env.provider.issued_values("alice").await;
    secrets.push(id);
    for s in secrets {
        assert!(
            !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
            "a secret is stored in clear"
        );
    }
}

#[tokio::test]
async fn memory_sessions_end_with_the_process() {
    let mut env = Env::builder().store("memory").start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    env.gateway.restart();
    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");
}

#[tokio::test]
async fn idle_timeout_ends_a_session() {
    let env = Env::builder()
        .session("idle_timeout = \"2s\"\nabsolute_timeout = \"1h\"\n")
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    assert_eq!(browser.user(&env).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");
}

#[tokio::test]
async fn security_headers_on_bff_answers() {
    let env = Env::builder().start().await;
    let b = env.browser();
    for path in ["/bff/user", "/bff/login", "/bff/login?returnUrl=//evil"] {
        let r = b.get(&env.url(path)).await;
        assert_eq!(r.headers["cache-control"], "no-store", "{path}");
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(r.headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(r.headers["referrer-policy"], "no-referrer", "{path}");
        assert!(
            r.headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
    }
    assert_eq!(b.get(&env.url("/healthz")).await.status, 200);
    let ready = b.get(&env.url("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["provider"], "ok");
}

#[tokio::test]
async fn a_login_beyond_max_per_user_ends_the_oldest_session() {
    for store in ["memory", "sqlite", "redis"] {
        let env = Env::builder()
            .store(store)
            .session("max_per_user = 2\n")
            .start()
            .await;
        let first = env.browser();
        let second = env.browser();
        let third = env.browser();
        let bob = env.browser();
        bob.login(&env, "bob", "bob", "/").await;
        first.login(&env, "alice", "alice", "/").await;
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        second.login(&env, "alice", "alice", "/").await;
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        third.login(&env, "alice", "alice", "/").await;
        first.user(&env).await.assert_error(401, "unauthenticated");
        assert_eq!(second.user(&env).await.status, 200, "{store}");
        assert_eq!(third.user(&env).await.status, 200, "{store}");
        assert_eq!(
            bob.user(&env).await.status,
            200,
            "other users are not counted ({store})"
        );
    }
}

// ------------------------------------------- the SQLite store's in-process cache

async fn api_via(browser: &Browser, gateway: &Gateway, path: &str) -> Answer {
    browser
        .get_with(&gateway.url(path), &[("x-csrf", "1")])
        .await
}

/// `portcullis sessions ARGS` against the gateway's config, from its directory (the
/// SQLite path is relative): another process on the same file.
async fn sessions_command(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["sessions"];
    all.extend_from_slice(args);
    let all: Vec<String> = all.iter().map(|s| (*s).to_owned()).collect();
    let config = env.gateway.config_path.clone();
    let dir = env.gateway.dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(&all)
            .arg("--config")
            .arg(config)
            .current_dir(dir)
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The gateway answers sessions it has seen from memory (SQLite store), yet a
/// revocation from the command line — another process — is refused within a second,
/// by `--sub` and by `--sid`, and leaves other users alone.
#[tokio::test]
async fn a_command_line_revocation_is_refused_within_a_second_despite_the_cache() {
    let env = Env::builder().store("sqlite").start().await;
    // Bob logs in twice (two browsers): two provider sessions, two sids.
    let (alice, bob, bob_elsewhere) = (env.browser(), env.browser(), env.browser());
    alice.login(&env, "alice", "alice", "/").await;
    bob.login(&env, "bob", "bob", "/").await;
    bob_elsewhere.login(&env, "bob", "bob", "/").await;
    for b in [&alice, &bob, &bob_elsewhere] {
        for _ in 0..2 {
            assert_eq!(api_via(b, &env.gateway, "/api/warm").await.status, 200);
        }
    }

    let out = sessions_command(&env, &["revoke", "--sub", "alice"]).await;
    assert!(out.contains("revoked 1"), "{out}");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(api_via(&alice, &env.gateway, "/api/x").await.status, 401);
    alice.user(&env).await.assert_error(401, "unauthenticated");
    assert_eq!(api_via(&bob, &env.gateway, "/api/x").await.status, 200);

    // Bob's first session by its sid (the provider's, as /bff/user tells it).
    let sid = bob.user(&env).await.json()["sid"]
        .as_str()
        .expect("a sid claim")
        .to_owned();
    let listed = sessions_command(&env, &["list", "--sub", "bob"]).await;
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.contains(&sid), "{listed}");
    let out = sessions_command(&env, &["revoke", "--sid", &sid]).await;
    assert!(out.contains("revoked 1"), "{out}");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(api_via(&bob, &env.gateway, "/api/y").await.status, 401);
    assert_eq!(
        api_via(&bob_elsewhere, &env.gateway, "/api/y").await.status,
        200
    );
}

/// Two `portcullis serve` on one SQLite file: a session works on both, and a logout
/// through one instance is refused by the other (which had it cached) within a second.
#[tokio::test]
async fn two_instances_on_one_sqlite_file_share_sessions_and_logouts() {
    let env = Env::builder().store("sqlite").instances(2).start().await;
    let (a, b) = (&env.gateway, &env.others[0]);
    let alice = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    alice.share_session_with(&env, b);
    for g in [a, b, b] {
        assert_eq!(api_via(&alice, g, "/api/warm").await.status, 200);
    }
    let logout_url = alice.user(&env).await.json()["bff:logout_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(alice.get(&env.url(&logout_url)).await.status, 302);
    alice.user(&env).await.assert_error(401, "unauthenticated");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        api_via(&alice, b, "/api/after-logout").await.status,
        401,
        "the other instance still answered from its cache"
    );
}

/// The idle clock across instances on one file: b saw the session once, then only a
/// was used. When b's copy looks idle past the timeout, b must ask the file (a's
/// `last_seen`, written behind within a second) instead of ending the session.
#[tokio::test]
async fn the_idle_timeout_counts_use_on_every_instance_sharing_the_file() {
    let env = Env::builder()
        .store("sqlite")
        .instances(2)
        .session("idle_timeout = \"4s\"\nabsolute_timeout = \"1h\"\n")
        .start()
        .await;
    let (a, b) = (&env.gateway, &env.others[0]);
    let alice = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    alice.share_session_with(&env, b);
    assert_eq!(api_via(&alice, b, "/api/once").await.status, 200);
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(5500) {
        assert_eq!(api_via(&alice, a, "/api/busy").await.status, 200);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(
        api_via(&alice, b, "/api/again").await.status,
        200,
        "used on a within the idle timeout"
    );
    // And idle for real (on both): it ends.
    tokio::time::sleep(std::time::Duration::from_millis(4600)).await;
    assert_eq!(api_via(&alice, b, "/api/idle").await.status, 401);
}

/// Two instances on one SQLite file under a request storm, the access token expiring
/// every 4 s: each expiry is refreshed once across both, and no rotated refresh token
/// is ever used again (the provider would revoke the grant) — although each instance
/// answers the session from its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_across_two_instances_on_one_sqlite_file_refreshes_once_per_expiry() {
    storm_on_two_instances("sqlite", 40, 2).await;
}
