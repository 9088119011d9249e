//! Browser-facing defences, attacked over real HTTP (and raw TCP where a client
//! library would refuse to send the attack).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Sends raw bytes and returns everything the server answers until it closes or
/// `wait` passes.
fn raw(port: u16, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = s.write_all(request);
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while started.elapsed() < wait {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                eprintln!("raw: read error after {:?}: {e}", started.elapsed());
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn cross_site_requests_are_refused_by_origin_and_fetch_metadata() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let origin = env.gateway.origin.clone();
    for path in ["/api/data", "/bff/user"] {
        let url = env.url(path);
        // Fine: same-origin, user-initiated, or no metadata at all (old browsers, tools).
        for ok in [
            vec![("x-csrf", "1")],
            vec![
                ("x-csrf", "1"),
                ("sec-fetch-site", "same-origin"),
                ("origin", origin.as_str()),
            ],
            vec![("x-csrf", "1"), ("sec-fetch-site", "none")],
        ] {
            assert_eq!(
                browser.get_with(&url, &ok).await.status,
                200,
                "{path} {ok:?}"
            );
        }
        // Refused, even with the CSRF header and a valid session.
        for bad in [
            vec![("x-csrf", "1"), ("origin", "https://evil.example")],
            vec![("x-csrf", "1"), ("origin", "null")],
            vec![("x-csrf", "1"), ("origin", "http://127.0.0.1:1")],
            vec![("x-csrf", "1"), ("sec-fetch-site", "cross-site")],
            vec![("x-csrf", "1"), ("sec-fetch-site", "same-site")],
            vec![
                ("x-csrf", "1"),
                ("sec-fetch-site", "same-origin"),
                ("origin", "https://evil.example"),
            ],
        ] {
            browser.get_with(&url, &bad).await.assert_error(403, "csrf");
        }
    }
    // Nothing refused reached the upstream: 3 good /api calls only.
    assert_eq!(env.upstream.requests().len(), 3);
    // Login and the callback stay reachable cross-site (links, the provider's redirect).
    let r = Browser::new()
        .get_with(&env.url("/bff/login"), &[("sec-fetch-site", "cross-site")])
        .await;
    assert_eq!(r.status, 302);
}

#[tokio::test]
async fn cors_is_off_by_default_and_exact_when_configured() {
    let env = Env::builder().start().await;
    let preflight = |origin: &'static str| {
        let env = &env;
        async move {
            Browser::new()
                .send(
                    axum::http::Method::OPTIONS,
                    &env.url("/api/data"),
                    &[
                        ("origin", origin),
                        ("access-control-request-method", "GET"),
                        ("access-control-request-headers", "x-csrf"),
                    ],
                    None,
                )
                .await
        }
    };
    let r = preflight("https://evil.example").await;
    r.assert_error(403, "csrf");
    assert!(r.headers.get("access-control-allow-origin").is_none());

    let env = Env::builder()
        .oidc("")
        .start_with_security("allowed_origins = [\"https://admin.example\"]\n")
        .await;
    let r = Browser::new()
        .send(
            axum::http::Method::OPTIONS,
            &env.url("/api/data"),
            &[
                ("origin", "https://admin.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-csrf, content-type"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://admin.example"
    );
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    let evil = Browser::new()
        .send(
            axum::http::Method::OPTIONS,
            &env.url("/api/data"),
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ],
            None,
        )
        .await;
    evil.assert_error(403, "csrf");
    assert!(evil.headers.get("access-control-allow-origin").is_none());

    // The allowed origin's real request works cross-site; the answer names it exactly.
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let ok = browser
        .get_with(
            &env.url("/api/data"),
            &[
                ("x-csrf", "1"),
                ("origin", "https://admin.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        ok.headers["access-control-allow-origin"],
        "https://admin.example"
    );
    assert_ne!(ok.headers["access-control-allow-origin"], "*");
    browser
        .get_with(
            &env.url("/api/data"),
            &[
                ("x-csrf", "1"),
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        )
        .await
        .assert_error(403, "csrf");
}

#[tokio::test]
async fn a_route_without_session_can_opt_out_of_the_origin_checks() {
    let env = Env::builder()
        .routes("[[routes]]\nprefix = \"/webhooks\"\nupstream = \"{upstream}\"\ntoken = \"none\"\ncsrf = false\n")
        .start()
        .await;
    let hook = Browser::new()
        .get_with(
            &env.url("/webhooks/payment"),
            &[
                ("origin", "https://payments.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        )
        .await;
    assert_eq!(hook.status, 200);
    // The default is to check, also on session-less routes.
    Browser::new()
        .get_with(&env.url("/public/x"), &[("origin", "https://evil.example")])
        .await
        .assert_error(403, "csrf");
}

// Blocking raw sockets: the in-process upstream needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_bodies_are_refused() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let huge = "x".repeat(40 * 1024);
    let answer = raw(
        env.gateway.port,
        format!("GET /api/data HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
        Duration::from_secs(3),
    );
    assert_eq!(
        status_of(&answer),
        431,
        "{}",
        &answer[..answer.len().min(200)]
    );
    let many: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw(
        env.gateway.port,
        format!("GET /api/data HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(3),
    );
    assert!(
        matches!(status_of(&answer), 431 | 400),
        "{}",
        &answer[..answer.len().min(200)]
    );
    // A large body on /bff/*.
    let r = browser
        .send(
            axum::http::Method::POST,
            &env.url("/bff/logout"),
            &[("x-csrf", "1"), ("content-length", "200000")],
            Some(axum::body::Body::from(vec![b'a'; 200_000])),
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert!(env.upstream.requests().is_empty());
    assert_eq!(
        browser.user(&env).await.status,
        200,
        "the session is unharmed"
    );
}

// Blocking raw sockets: the in-process upstream needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_never_reaches_the_upstream() {
    let env = Env::builder().start().await;
    let port = env.gateway.port;
    // CL.TE: a front end trusting the length would pass on 6 bytes and a chunked back
    // end would see a second, smuggled request. hyper drops the Content-Length
    // (RFC 9112 §6.3); Portcullis's framing inspector still sees it, answers 400 and
    // closes, so neither request reaches the upstream (more in `exhaustion.rs`).
    for cl_te in [
        "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let answer = raw(port, cl_te.as_bytes(), Duration::from_secs(2));
        // Closing with the smuggled bytes unread makes the kernel reset the connection,
        // which may discard the answer before the client reads it: empty is a reset.
        let lower = answer.to_ascii_lowercase();
        assert!(
            answer.is_empty() || status_of(&answer) == 400 || lower.contains("connection: close"),
            "{answer}"
        );
        assert!(
            answer.matches("HTTP/1.1 ").count() <= 1,
            "at most one answer: {answer}"
        );
    }
    // Two equal lengths are one length (RFC 9110 §8.6).
    let answer = raw(port, b"POST /public/same HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", Duration::from_secs(2));
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen_before: Vec<(String, usize)> = env
        .upstream
        .requests()
        .iter()
        .map(|r| (r.path_and_query.clone(), r.body_len))
        .collect();
    assert!(
        seen_before.iter().all(|(p, _)| !p.contains("smuggled")),
        "{seen_before:?}"
    );
    assert!(
        seen_before
            .iter()
            .filter(|(p, _)| p == "/a")
            .all(|(_, len)| *len == 0),
        "{seen_before:?}"
    );
    assert!(
        seen_before.contains(&("/same".to_owned(), 5)),
        "{seen_before:?}"
    );
    let before = seen_before.len();

    let attacks: Vec<String> = vec![
        // TE.CL with an obfuscated coding.
        "POST /public/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n".into(),
        "POST /public/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".into(),
        "POST /public/d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n".into(),
        // Two different lengths.
        "POST /public/e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello".into(),
        "POST /public/f HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 50\r\n\r\nhello".into(),
        // Invalid header values / names.
        "GET /public/g HTTP/1.1\r\nHost: x\r\nX-Bad: a\rb\r\n\r\n".into(),
        "GET /public/h HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n".into(),
        "GET /public/i HTTP/1.1\r\nHost: x\r\n Folded: v\r\n\r\n".into(),
        "POST /public/j HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".into(),
        "POST /public/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n".into(),
    ];
    for attack in &attacks {
        let answer = raw(port, attack.as_bytes(), Duration::from_secs(2));
        assert_eq!(
            status_of(&answer),
            400,
            "not refused: {attack:?} → {}",
            &answer[..answer.len().min(120)]
        );
    }
    let seen: Vec<String> = env.upstream.requests()[before..]
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert!(seen.is_empty(), "reached the upstream: {seen:?}");
    // A well-formed chunked request still works.
    let ok = raw(
        port,
        b"POST /public/ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(2),
    );
    assert_eq!(status_of(&ok), 200, "{ok}");
    assert_eq!(env.upstream.last().body_len, 5);
}

// Blocking raw sockets: the in-process upstream needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off() {
    let env = Env::builder()
        .start_with_security("header_read_timeout = \"1s\"\n")
        .await;
    let mut s = TcpStream::connect(("127.0.0.1", env.gateway.port)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut closed = false;
    let mut buf = [0u8; 512];
    for i in 0..60 {
        // A header byte now and then, never finishing.
        if s.write_all(format!("X-{i}: y\r\n").as_bytes()).is_err() {
            closed = true;
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {
                closed = true; // a 408 answer, then close
                break;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(closed, "the slow client was never cut off");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off after {:?}",
        started.elapsed()
    );
    // Everyone else is served.
    assert_eq!(Browser::new().get(&env.url("/healthz")).await.status, 200);
}

#[tokio::test]
async fn a_login_flood_gets_429() {
    let env = Env::builder()
        .start_with_security("login_rate_per_minute = 5\npending_logins_per_browser = 100\n")
        .await;
    let flood = Browser::new();
    for _ in 0..5 {
        assert_eq!(flood.get(&env.url("/bff/login")).await.status, 302);
    }
    let r = flood.get(&env.url("/bff/login")).await;
    r.assert_error(429, "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The callback shares the per-IP budget.
    Browser::new()
        .get(&env.url("/bff/callback?state=x"))
        .await
        .assert_error(429, "rate_limited");
}

#[tokio::test]
async fn one_browser_can_start_only_so_many_logins() {
    let env = Env::builder()
        .start_with_security("pending_logins_per_browser = 3\n")
        .await;
    let browser = env.browser();
    for _ in 0..3 {
        browser.start_login(&env, "/").await;
    }
    browser
        .get(&env.url("/bff/login"))
        .await
        .assert_error(429, "rate_limited");
    // Another browser is not affected.
    assert_eq!(Browser::new().get(&env.url("/bff/login")).await.status, 302);
}

#[tokio::test]
async fn spa_files_carry_the_configured_csp() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
    let env = Env::builder().static_dir(dir.path()).start().await;
    let r = Browser::new().get(&env.url("/")).await;
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(
        r.headers.get("strict-transport-security").is_none(),
        "no HSTS on plain http"
    );
}
