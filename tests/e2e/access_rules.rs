//! Per-route access rules: the `methods` allow-list (405 with `Allow`) and claim
//! requirements (403 `forbidden`), both answered before the upstream is called, with
//! the real provider's claims.

use axum::http::Method;
use serde_json::json;

use crate::harness::*;

/// Accounts with group and role claims (userinfo gives them through `profile`).
fn users() -> serde_json::Value {
    json!({
        "alice": { "password": "alice", "claims": {
            "name": "Alice", "preferred_username": "alice",
            "email": "alice@example.com", "email_verified": true,
            "groups": ["staff", "admins"],
            "realm_access": { "roles": ["auditor"] },
        }},
        "bob": { "password": "bob", "claims": {
            "name": "Bob", "preferred_username": "bob",
            "email": "bob@example.com", "email_verified": false,
            "groups": ["staff"],
            "realm_access": { "roles": ["viewer"] },
        }},
    })
}

const ROUTES: &str = r#"
[[routes]]
prefix = "/ro"
upstream = "{upstream}"
token = "none"
methods = ["GET"]

[[routes]]
prefix = "/write"
upstream = "{upstream}"
methods = ["POST", "PUT"]

[[routes]]
prefix = "/admin"
upstream = "{upstream}"
require = [
  { claim = "groups", contains = "admins" },
  { claim = "email_verified", equals = true },
]

[[routes]]
prefix = "/audit"
upstream = "{upstream}"
require = [{ claim = ["realm_access", "roles"], contains_any = ["auditor", "owner"] }]
"#;

async fn env() -> Env {
    Env::builder()
        .provider_option("users", users())
        .provider_option("profileClaims", json!(["groups", "realm_access"]))
        .routes(ROUTES)
        .start()
        .await
}

fn upstream_saw(env: &Env, path: &str) -> usize {
    env.upstream
        .requests()
        .iter()
        .filter(|s| s.path_and_query.starts_with(path))
        .count()
}

#[tokio::test]
async fn methods_outside_the_allow_list_get_405_before_the_upstream() {
    let env = env().await;
    let browser = env.browser();
    for method in [Method::GET, Method::HEAD] {
        let r = browser
            .send(method.clone(), &env.url("/ro/x"), &[], None)
            .await;
        assert_eq!(r.status, 200, "{method}");
    }
    let before = env.upstream.requests().len();
    for method in [
        "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "get",
    ] {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = browser.send(m, &env.url("/ro/x"), &[], None).await;
        r.assert_error(405, "method_not_allowed");
        assert_eq!(r.headers["allow"], "GET, HEAD", "{method}");
        assert_eq!(r.headers["cache-control"], "no-store");
    }
    assert_eq!(
        env.upstream.requests().len(),
        before,
        "the upstream saw none of them"
    );

    // On a session route the method is refused before the session is looked at: no
    // session, yet 405, not 401.
    let r = browser
        .get_with(&env.url("/write/x"), &[("x-csrf", "1")])
        .await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.headers["allow"], "POST, PUT");
    let r = browser
        .send(Method::POST, &env.url("/write/x"), &[("x-csrf", "1")], None)
        .await;
    r.assert_error(401, "unauthenticated");
    browser.login(&env, "alice", "alice", "/").await;
    let r = browser
        .send(Method::PUT, &env.url("/write/x"), &[("x-csrf", "1")], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.upstream.last().method, Method::PUT);
    let r = browser
        .get_with(&env.url("/write/x"), &[("x-csrf", "1")])
        .await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(upstream_saw(&env, "/write"), 1);
    // Routes without the key are as before.
    let r = browser
        .send(Method::DELETE, &env.url("/api/x"), &[("x-csrf", "1")], None)
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn claim_requirements_gate_a_route_with_403_before_the_upstream() {
    let env = env().await;
    let alice = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    let bob = env.browser();
    bob.login(&env, "bob", "bob", "/").await;
    let csrf = [("x-csrf", "1")];

    // The claims the rules read are the session's, as /bff/user shows them.
    let user = alice.user(&env).await.json();
    assert_eq!(user["groups"], json!(["staff", "admins"]), "{user}");

    for path in ["/admin/users", "/audit/log"] {
        let r = alice.get_with(&env.url(path), &csrf).await;
        assert_eq!(r.status, 200, "alice {path}: {}", r.text());
    }
    let seen = env.upstream.requests().len();
    for path in ["/admin/users", "/audit/log"] {
        let r = bob.get_with(&env.url(path), &csrf).await;
        r.assert_error(403, "forbidden");
        assert_eq!(r.headers["cache-control"], "no-store");
        assert!(
            !r.text().contains("admins"),
            "no claim values in the answer"
        );
    }
    assert_eq!(
        env.upstream.requests().len(),
        seen,
        "the upstream saw none of bob's"
    );

    // Refused, not logged out: bob's session and other routes work; alice is untouched.
    assert_eq!(bob.user(&env).await.status, 200);
    assert_eq!(bob.get_with(&env.url("/api/x"), &csrf).await.status, 200);
    assert_eq!(
        alice.get_with(&env.url("/admin/x"), &csrf).await.status,
        200
    );

    // Without a session: 401 as on any user route; without X-CSRF: csrf.
    Browser::new()
        .get_with(&env.url("/admin/x"), &csrf)
        .await
        .assert_error(401, "unauthenticated");
    bob.get(&env.url("/admin/x"))
        .await
        .assert_error(403, "csrf");

    // Audited, naming the route and the rule, never a claim's value.
    let logs = env.gateway.logs();
    let denied: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("access_denied"))
        .collect();
    assert_eq!(denied.len(), 2, "{logs}");
    assert!(
        denied[0].contains("/admin") && denied[0].contains("groups"),
        "{}",
        denied[0]
    );
    assert!(denied[1].contains("realm_access"), "{}", denied[1]);
    for line in &denied {
        assert!(
            line.contains("\"sub\":\"bob\"") || line.contains("sub=bob"),
            "{line}"
        );
        assert!(
            !line.contains("viewer") && !line.contains("staff"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_method_that_is_not_one_is_a_config_error_naming_the_key() {
    let env = Env::builder().start().await;
    let text = std::fs::read_to_string(&env.gateway.config_path).unwrap();
    let bad = env.gateway.dir.path().join("bad.toml");
    let marker = "prefix = \"/maybe\"";
    assert!(text.contains(marker));
    std::fs::write(
        &bad,
        text.replace(marker, &format!("{marker}\nmethods = [\"GET\", \"get\"]")),
    )
    .unwrap();
    let dir = env.gateway.dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(["check", "--config", bad.to_str().unwrap()])
            .current_dir(dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routes[2].methods[1]"), "{err}");
}
