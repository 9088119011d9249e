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
