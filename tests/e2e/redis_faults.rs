//! Redis faults seen from outside: a Redis that restarts (same port, data kept) costs
//! no request on any instance, busy or idle.

use std::time::Duration;

use crate::harness::*;

async fn api_via(browser: &Browser, gateway: &Gateway, path: &str) -> Answer {
    browser
        .get_with(&gateway.url(path), &[("x-csrf", "1")])
        .await
}

#[tokio::test]
async fn a_redis_restart_costs_no_request_on_any_instance() {
    // a and b are in use before the restart; c has served nothing since it started.
    let mut env = Env::builder().store("redis").instances(3).start().await;
    let (a, b, c) = (&env.gateway, &env.others[0], &env.others[1]);
    let alice = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    alice.share_session_with(&env, b);
    alice.share_session_with(&env, c);
    assert_eq!(api_via(&alice, a, "/api/1").await.status, 200);
    assert_eq!(api_via(&alice, b, "/api/2").await.status, 200);
    // A second session, created before the restart, first used after it.
    let bob = env.browser();
    bob.login(&env, "bob", "bob", "/").await;
    bob.share_session_with(&env, c);

    for round in 0..2 {
        let redis = env.redis.as_mut().unwrap();
        redis.restart();
        redis.wait_pong();
        // Let every instance sit idle on its dead connection a moment (its
        // invalidation channel notices the restart and comes back meanwhile).
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (a, b, c) = (&env.gateway, &env.others[0], &env.others[1]);
        for (name, browser, gateway) in [("a", &alice, a), ("b", &alice, b), ("c", &bob, c)] {
            let r = api_via(browser, gateway, &format!("/api/after-restart-{round}")).await;
            assert_eq!(
                r.status,
                200,
                "round {round}: the first request on {name} after the restart: {}",
                r.text()
            );
        }
        assert_eq!(
            Browser::new().get(&c.url("/readyz")).await.status,
            200,
            "round {round}"
        );
    }
    // Writes too: logging out on c after a restart works, and ends the session everywhere.
    let redis = env.redis.as_mut().unwrap();
    redis.restart();
    redis.wait_pong();
    let (a, c) = (&env.gateway, &env.others[1]);
    let r = bob
        .send(
            axum::http::Method::POST,
            &c.url("/bff/logout"),
            &[("x-csrf", "1")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "logout after a restart: {}", r.text());
    bob.share_session_with(&env, a);
    assert_eq!(api_via(&bob, a, "/api/after-logout").await.status, 401);
}
