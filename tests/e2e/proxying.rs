//! The API proxy, seen from the browser's side and from the upstream's.

use std::time::Duration;

use axum::body::Body;
use axum::http::Method;

use crate::harness::*;

#[tokio::test]
async fn api_calls_need_a_session_and_the_csrf_header_and_never_redirect() {
    let env = Env::builder().start().await;
    let anonymous = env.browser();
    // No cookie, whatever the request looks like: 401 JSON, never a redirect.
    for headers in [
        vec![],
        vec![("x-csrf", "1")],
        vec![
            ("accept", "text/html"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
        ],
        vec![("x-requested-with", "XMLHttpRequest")],
    ] {
        let r = anonymous.get_with(&env.url("/api/data"), &headers).await;
        r.assert_error(401, "unauthenticated");
    }
    // Forged and malformed cookies.
    for forged in [random_key(), "short".into(), "%%%".into(), "A".repeat(43)] {
        let b = Browser::new();
        b.set_cookie(&env.gateway.origin, COOKIE, &forged);
        b.get_with(&env.url("/api/data"), &[("x-csrf", "1")])
            .await
            .assert_error(401, "unauthenticated");
        b.user(&env).await.assert_error(401, "unauthenticated");
    }
    assert!(
        env.upstream.requests().is_empty(),
        "nothing reached the upstream"
    );

    // Logged in but without X-CSRF: 403, and still nothing upstream.
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    browser
        .get(&env.url("/api/data"))
        .await
        .assert_error(403, "csrf");
    browser
        .get_with(&env.url("/api/data"), &[("x-csrf", "0")])
        .await
        .assert_error(403, "csrf");
    browser
        .get(&env.url("/bff/user"))
        .await
        .assert_error(403, "csrf");
    assert!(env.upstream.requests().is_empty());
    assert_eq!(
        browser
            .get_with(&env.url("/api/data"), &[("x-csrf", "1")])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn header_hygiene_seen_from_the_upstream() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    browser.set_cookie(&env.gateway.origin, "theme", "dark");

    let r = browser
        .send(
            Method::PUT,
            &env.url("/api/things/42?q=a%20b&q=c"),
            &[
                ("x-csrf", "1"),
                ("authorization", "Bearer browser-supplied"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "secret"),
                ("keep-alive", "timeout=99"),
                ("te", "trailers"),
                ("proxy-authorization", "Basic eDp5"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-proto", "gopher"),
                ("forwarded", "for=6.6.6.6"),
                ("x-end-to-end", "kept"),
                ("content-type", "application/json"),
            ],
            Some(Body::from(r#"{"a":1}"#)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = env.upstream.last();
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.path_and_query, "/api/things/42?q=a%20b&q=c");
    assert_eq!(seen.body_len, 7);
    let h = &seen.headers;
    for gone in [
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "forwarded",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream");
    }
    assert_ne!(
        h.get("connection").map(|v| v.to_str().unwrap()),
        Some("keep-alive, x-hop")
    );
    let auth = h["authorization"].to_str().unwrap();
    assert!(auth.starts_with("Bearer ") && auth != "Bearer browser-supplied");
    assert_eq!(h.get_all("authorization").iter().count(), 1);
    assert_eq!(
        h["cookie"], "theme=dark",
        "our cookies are stripped, others kept"
    );
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["x-forwarded-host"],
        format!("127.0.0.1:{}", env.gateway.port)
    );
    assert_eq!(h["x-end-to-end"], "kept");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["host"], env.upstream.addr.to_string());
    // And on the way back: the upstream's hop-by-hop headers are dropped.
    assert_eq!(r.headers["x-upstream"], "yes");
    for gone in ["keep-alive", "proxy-authenticate", "x-hop-from-upstream"] {
        assert!(!r.headers.contains_key(gone), "{gone} reached the browser");
    }
}

#[tokio::test]
async fn routes_without_a_session_carry_no_token_and_keep_our_cookies_out() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    // token = "none", strip_prefix = true: no token, no CSRF needed, prefix removed.
    let r = browser
        .get_with(
            &env.url("/public/info?x=1"),
            &[("authorization", "Bearer mine")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = env.upstream.last();
    assert_eq!(seen.path_and_query, "/info?x=1");
    assert!(!seen.headers.contains_key("authorization"));
    assert!(
        !seen.headers.contains_key("cookie"),
        "{:?}",
        seen.headers.get("cookie")
    );

    // token = "user_or_none": the user's token with a session, none without.
    browser
        .get_with(&env.url("/maybe/x"), &[("x-csrf", "1")])
        .await;
    assert!(
        env.upstream.last().headers["authorization"]
            .to_str()
            .unwrap()
            .starts_with("Bearer ")
    );
    Browser::new().get(&env.url("/maybe/x")).await;
    assert!(!env.upstream.last().headers.contains_key("authorization"));
    browser
        .get(&env.url("/maybe/x"))
        .await
        .assert_error(403, "csrf");
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;

    // 8 MiB up, sent as a chunked stream.
    let size = 8 * 1024 * 1024;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let expected = sha256_hex(&data);
    let chunks: Vec<Result<axum::body::Bytes, std::io::Error>> = data
        .chunks(100_000)
        .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
        .collect();
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    let r = browser
        .send(
            Method::POST,
            &env.url("/api/upload"),
            &[
                ("x-csrf", "1"),
                ("content-type", "application/octet-stream"),
            ],
            Some(body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = env.upstream.last();
    assert_eq!(seen.body_len, size);
    assert_eq!(seen.body_sha256, expected);

    // 16 MiB down.
    let n = 16 * 1024 * 1024;
    let r = browser
        .get_with(
            &env.url(&format!("/api/download?bytes={n}")),
            &[("x-csrf", "1")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), n);
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let dead = free_port();
    let env = Env::builder()
        .route_timeout("1s")
        .routes(&format!(
            "[[routes]]\nprefix = \"/down\"\nupstream = \"http://127.0.0.1:{dead}\"\n"
        ))
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    browser
        .get_with(&env.url("/down/x"), &[("x-csrf", "1")])
        .await
        .assert_error(502, "upstream_unavailable");
    let started = std::time::Instant::now();
    browser
        .get_with(&env.url("/api/slow"), &[("x-csrf", "1")])
        .await
        .assert_error(504, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The session is unharmed.
    assert_eq!(browser.user(&env).await.status, 200);
}

#[tokio::test]
async fn spa_files_and_fallback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        "<!doctype html><title>spa</title>",
    )
    .unwrap();
    std::fs::write(dir.path().join("app.js"), "console.log(1)").unwrap();
    let env = Env::builder().static_dir(dir.path()).start().await;
    let b = env.browser();

    let index = b.get(&env.url("/")).await;
    assert_eq!(index.status, 200);
    assert!(index.text().contains("<title>spa</title>"));
    assert_eq!(index.headers["x-frame-options"], "DENY");
    assert_eq!(index.headers["x-content-type-options"], "nosniff");
    let js = b.get(&env.url("/app.js")).await;
    assert_eq!(js.status, 200);
    assert!(
        js.headers["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );

    // An unknown navigation gets index.html; an unknown asset does not.
    let nav = b
        .get_with(
            &env.url("/settings/profile"),
            &[("accept", "text/html,*/*")],
        )
        .await;
    assert_eq!(nav.status, 200);
    assert!(nav.text().contains("<title>spa</title>"));
    assert_eq!(
        b.get_with(&env.url("/missing.js"), &[("accept", "*/*")])
            .await
            .status,
        404
    );
    // /bff/* and API prefixes never fall back.
    let bff = b
        .get_with(&env.url("/bff/nope"), &[("accept", "text/html")])
        .await;
    assert_eq!(bff.status, 404);
    assert!(!bff.text().contains("<title>spa</title>"));
    b.get_with(&env.url("/api/nope"), &[("accept", "text/html")])
        .await
        .assert_error(401, "unauthenticated");
}

#[tokio::test]
async fn trace_context_passes_through_to_upstreams_unchanged_without_export() {
    // Without OpenTelemetry export (the default build, or `--features otel` with no
    // OTEL_* endpoint), Portcullis is transparent to W3C trace context.
    let env = Env::builder().start().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = "vendor=opaque,other=1";
    let r = Browser::new()
        .get_with(
            &env.url("/public/traced"),
            &[("traceparent", traceparent), ("tracestate", tracestate)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = env.upstream.last();
    assert_eq!(seen.headers["traceparent"], traceparent);
    assert_eq!(seen.headers["tracestate"], tracestate);
    assert_eq!(seen.headers.get_all("traceparent").iter().count(), 1);
}
