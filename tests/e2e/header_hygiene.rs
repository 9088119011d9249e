//! Header hygiene, attacked over real HTTP and raw TCP (issue #16, items 3, 4, 7–11):
//! an upstream can't set Portcullis's cookies or have its answers shared between users
//! or run script on the origin; a client can't choose the forwarding headers an
//! upstream believes, send an ambiguous `Host`, or use `TRACE`/`TRACK`/`CONNECT`; no
//! redirect Portcullis writes leaves the origin; and every answer carries `nosniff`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method};

use crate::harness::*;

// ---------------------------------------------------------------- helpers

/// An upstream that answers with what the query asks for: every `h=Name: value` as a
/// response header, `ct=` as the Content-Type (none when `ct` is empty; JSON when
/// absent), `body=` as the body.
struct Responder {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Responder {
    async fn start() -> Self {
        let app = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
            let mut response = axum::response::Response::builder().status(200);
            let mut body = String::from("{}");
            let mut ct = Some("application/json".to_owned());
            for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
                match &*k {
                    "h" => {
                        let (name, value) = v.split_once(':').unwrap();
                        response = response.header(name.trim(), value.trim_start());
                    }
                    "ct" if v.is_empty() => ct = None,
                    "ct" => ct = Some(v.into_owned()),
                    "body" => body = v.into_owned(),
                    _ => {}
                }
            }
            if let Some(ct) = ct {
                response = response.header("content-type", ct);
            }
            response.body(axum::body::Body::from(body)).unwrap()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `{path}?h=…&h=…` asking the responder for these headers.
fn asking(path: &str, headers: &[&str], extra: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for h in headers {
        q.append_pair("h", h);
    }
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    format!("{path}?{}", q.finish())
}

/// The responder's routes: a session route, an anonymous one, a maybe-session one,
/// and an anonymous one that opts out of the document sandbox.
fn responder_routes(upstream: &str) -> String {
    format!(
        r#"
[[routes]]
prefix = "/respond"
upstream = "{upstream}"
token = "user"

[[routes]]
prefix = "/respond-anon"
upstream = "{upstream}"
token = "none"

[[routes]]
prefix = "/respond-maybe"
upstream = "{upstream}"
token = "user_or_none"

[[routes]]
prefix = "/respond-raw"
upstream = "{upstream}"
token = "none"
html_sandbox = false
"#
    )
}

/// A raw HTTP exchange: sends `request` as is and reads until the server closes the
/// connection (the requests say `Connection: close`) or 5 s pass. On a blocking
/// thread, so in-process upstreams keep running.
async fn raw(port: u16, request: &[u8]) -> RawAnswer {
    let request = request.to_vec();
    tokio::task::spawn_blocking(move || raw_blocking(port, &request))
        .await
        .unwrap()
}

fn raw_blocking(port: u16, request: &[u8]) -> RawAnswer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(request).unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while started.elapsed() < Duration::from_secs(5) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    RawAnswer::parse(&String::from_utf8_lossy(&out))
}

#[derive(Debug)]
struct RawAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawAnswer {
    fn parse(text: &str) -> Self {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.get(9..12))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Self {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let json: serde_json::Value = serde_json::from_str(self.body.trim())
            .unwrap_or_else(|e| panic!("not the JSON error ({e}): {self:?}"));
        assert_eq!(json["error"], code, "{self:?}");
        assert!(json["error_description"].is_string(), "{self:?}");
    }
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// A gateway without a provider (`token = "none"` routes only), on a free port.
fn standalone(server: &str, rest: &str) -> Gateway {
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    Gateway::start(port, &standalone_config(port, &origin, server, rest))
}

// ---------------------------------------------------------------- item 3

#[tokio::test]
async fn an_upstream_cannot_set_or_delete_portcullis_cookies() {
    let responder = Responder::start().await;
    let env = Env::builder()
        .routes(&responder_routes(&responder.url()))
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let session = browser.session_cookie(&env).unwrap();

    // Every spelling a browser would take as our session or login-binding cookie:
    // attributes, leading blanks, other casings, the prefix variants, deletion, and
    // name-less cookies whose value the browser sends back as `name=value`.
    let attacks = [
        "__Host-portcullis=attacker-session-value; Path=/; Secure; HttpOnly; SameSite=Strict",
        "__Host-portcullis=attacker-session-value",
        "  __Host-portcullis=attacker-session-value; Path=/",
        "__host-portcullis=attacker-session-value; Path=/; Secure",
        "__HOST-PORTCULLIS=attacker-session-value; Path=/; Secure",
        "__Secure-portcullis=attacker-session-value; Path=/; Secure",
        "portcullis=attacker-session-value; Path=/",
        "__Host-portcullis=; Path=/; Secure; Max-Age=0",
        "__Host-portcullis=deleted; Path=/; Secure; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        "__Host-portcullis-login=attacker-binding; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600",
        "__Secure-portcullis-login=attacker-binding; Path=/; Secure",
        "=__Host-portcullis=attacker-session-value; Path=/",
        "__Host-portcullis",
    ];
    for attack in attacks {
        let url = env.url(&asking(
            "/respond/x",
            &[
                &format!("Set-Cookie: {attack}"),
                "Set-Cookie: theme=dark; Path=/",
            ],
            &[],
        ));
        let r = browser.get_with(&url, &[("x-csrf", "1")]).await;
        assert_eq!(r.status, 200, "{attack}: {}", r.text());
        assert_eq!(
            r.set_cookies(),
            ["theme=dark; Path=/"],
            "{attack}: only the upstream's own cookie passes"
        );
        assert_eq!(
            browser.session_cookie(&env).as_deref(),
            Some(session.as_str())
        );
    }
    // Clear-Site-Data naming cookies would delete the session too; other kinds pass.
    for clear in ["\"cookies\"", "\"cache\", \"Cookies\"", "\"*\""] {
        let url = env.url(&asking(
            "/respond/x",
            &[&format!("Clear-Site-Data: {clear}")],
            &[],
        ));
        let r = browser.get_with(&url, &[("x-csrf", "1")]).await;
        assert!(r.headers.get("clear-site-data").is_none(), "{clear}");
    }
    let url = env.url(&asking("/respond/x", &["Clear-Site-Data: \"cache\""], &[]));
    let r = browser.get_with(&url, &[("x-csrf", "1")]).await;
    assert_eq!(r.headers["clear-site-data"], "\"cache\"");

    // A route without a session is no different.
    let url = env.url(&asking(
        "/respond-anon/x",
        &["Set-Cookie: __Host-portcullis=attacker-session-value; Path=/"],
        &[],
    ));
    assert!(Browser::new().get(&url).await.set_cookies().is_empty());

    // Still alice's own session.
    let user = browser.user(&env).await;
    assert_eq!(user.status, 200);
    assert_eq!(user.json()["sub"], "alice");
    let logs = env.gateway.logs();
    assert!(
        logs.contains("dropped an upstream Set-Cookie naming a Portcullis cookie")
            && logs.contains("/respond"),
        "the drop is logged with the route"
    );
    assert!(
        !logs.contains("attacker-session-value") && !logs.contains("attacker-binding"),
        "never the value"
    );
}

// ---------------------------------------------------------------- item 4

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let routes = format!(
        "[[routes]]\nprefix = \"/public\"\nupstream = \"{}\"\ntoken = \"none\"\n",
        upstream.url()
    );
    let gw = standalone("", &routes);
    // What a client could claim: every forwarding, client-address, URL-override,
    // method-override, TLS, identity and CDN header, in `-` and `_` spellings.
    let spoofed = [
        "Forwarded: for=6.6.6.6;host=evil.example;proto=https",
        "X-Forwarded-For: 6.6.6.6",
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Port: 443",
        "X-Forwarded-Prefix: /admin",
        "X-Forwarded-Server: evil.example",
        "X-Forwarded-Scheme: https",
        "X-Forwarded-Ssl: on",
        "X-Forwarded-Uri: /admin",
        "X-Forwarded-Path: /admin",
        "X-Forwarded-User: admin",
        "X-Forwarded-Client-Cert: Hash=x;Subject=\"CN=admin\"",
        "X_Forwarded_For: 6.6.6.6",
        "X-Forwarded_Host: evil.example",
        "X_Real_IP: 6.6.6.6",
        "X-Real-IP: 6.6.6.6",
        "True-Client-IP: 6.6.6.6",
        "X-Client-IP: 6.6.6.6",
        "CF-Connecting-IP: 6.6.6.6",
        "Client-IP: 6.6.6.6",
        "X-Originating-IP: 6.6.6.6",
        "X-Cluster-Client-IP: 6.6.6.6",
        "Fastly-Client-IP: 6.6.6.6",
        "X-ProxyUser-Ip: 6.6.6.6",
        "X-Remote-Addr: 6.6.6.6",
        "X-Original-URL: /admin",
        "X-Rewrite-URL: /admin",
        "X-Original-Host: evil.example",
        "X-Host: evil.example",
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: DELETE",
        "X-Method-Override: DELETE",
        "Front-End-Https: on",
        "X-Url-Scheme: https",
        "X-SSL-Client-Cert: forged",
        "X-Remote-User: admin",
        "Remote-User: admin",
        "X-Auth-Request-Email: admin@example.com",
        "CF-Visitor: {\"scheme\":\"https\"}",
    ];
    let mut request = String::from(
        "GET /public/echo HTTP/1.1\r\nHost: evil.example\r\nX-Kept: yes\r\nConnection: close\r\n",
    );
    for h in spoofed {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let r = raw(gw.port, request.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");

    let seen = upstream.last();
    for h in spoofed {
        let name = h.split_once(':').unwrap().0.to_ascii_lowercase();
        if matches!(
            name.as_str(),
            "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
        ) {
            continue;
        }
        assert!(
            seen.headers.get(&name).is_none(),
            "{name} reached the upstream: {:?}",
            seen.headers.get(&name)
        );
    }
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(
        seen.headers["x-forwarded-host"],
        format!("127.0.0.1:{}", gw.port),
        "the public origin's host, not the request's Host"
    );
    assert_eq!(seen.headers["x-kept"], "yes");
    for v in seen.headers.values() {
        let v = v.to_str().unwrap_or_default();
        assert!(
            !v.contains("6.6.6.6") && !v.contains("evil.example"),
            "a spoofed value reached the upstream: {v}"
        );
    }

    // A peer in `trusted_proxies` is believed: its chain is extended, its headers kept.
    let trusted = standalone("trusted_proxies = [\"127.0.0.1/32\"]\n", &routes);
    let r = raw(
        trusted.port,
        b"GET /public/echo HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 203.0.113.9\r\n\
          X-Forwarded-Host: app.example\r\nX-Real-IP: 203.0.113.9\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = upstream.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-host"], "app.example");
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.9");
}

#[tokio::test]
async fn a_missing_duplicate_or_malformed_host_is_refused() {
    let upstream = Upstream::start().await;
    let routes = format!(
        "[[routes]]\nprefix = \"/public\"\nupstream = \"{}\"\ntoken = \"none\"\n",
        upstream.url()
    );
    let gw = standalone("", &routes);
    let bad: &[&[u8]] = &[
        b"GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\nhost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET /public/x HTTP/1.0\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"GET http://127.0.0.1/public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: evil.example/path\r\nConnection: close\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: user@evil.example\r\nConnection: close\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: evil.example:port\r\nConnection: close\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    ];
    for request in bad {
        let r = raw(gw.port, request).await;
        assert!(
            r.status == 400,
            "{:?}: {r:?}",
            String::from_utf8_lossy(request)
        );
        // hyper refuses some of these itself, with an empty 400; ours is the JSON error.
        if !r.body.is_empty() {
            r.assert_error(400, "invalid_request");
        }
    }
    assert!(
        upstream.requests().is_empty(),
        "nothing reached the upstream"
    );

    // HTTP/1.0 needs no Host; absolute form names its own authority.
    for ok in [
        &b"GET /public/x HTTP/1.0\r\n\r\n"[..],
        b"GET http://127.0.0.1/public/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: 127.0.0.1:1234\r\nConnection: close\r\n\r\n",
    ] {
        let r = raw(gw.port, ok).await;
        assert_eq!(r.status, 200, "{:?}: {r:?}", String::from_utf8_lossy(ok));
    }
    assert_eq!(upstream.requests().len(), 3);
}

// ---------------------------------------------------------------- item 7

#[tokio::test]
async fn answers_to_session_requests_are_never_shared_cacheable() {
    let responder = Responder::start().await;
    let env = Env::builder()
        .routes(&responder_routes(&responder.url()))
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let caching = [
        "Cache-Control: public, max-age=600, s-maxage=3600",
        "CDN-Cache-Control: max-age=3600",
        "Surrogate-Control: max-age=3600",
        "Vary: Accept-Encoding",
    ];
    let call = |path: &str, session: bool| {
        let url = env.url(&asking(path, &caching, &[]));
        let browser = if session {
            browser.clone()
        } else {
            Browser::new()
        };
        async move { browser.get_with(&url, &[("x-csrf", "1")]).await }
    };

    for path in ["/respond/x", "/respond-maybe/x"] {
        let r = call(path, true).await;
        assert_eq!(r.status, 200, "{path}");
        let cc = values(&r.headers, "cache-control").join(", ");
        assert!(cc.contains("private"), "{path}: {cc}");
        assert!(
            !cc.contains("public") && !cc.contains("s-maxage"),
            "{path}: {cc}"
        );
        assert!(
            cc.contains("max-age=600"),
            "the browser may still cache it: {cc}"
        );
        assert!(r.headers.get("cdn-cache-control").is_none(), "{path}");
        assert!(r.headers.get("surrogate-control").is_none(), "{path}");
        let vary = values(&r.headers, "vary").join(", ");
        assert!(
            vary.contains("Cookie") && vary.contains("Accept-Encoding"),
            "{path}: {vary}"
        );
    }
    // A field-qualified `private="…"` leaves the rest shareable: replaced.
    let url = env.url(&asking(
        "/respond/x",
        &["Cache-Control: private=\"set-cookie\", max-age=600"],
        &[],
    ));
    let r = browser.get_with(&url, &[("x-csrf", "1")]).await;
    assert_eq!(r.headers["cache-control"], "private, max-age=600");
    // No Cache-Control at all (heuristic caching): `private`.
    let url = env.url(&asking("/respond/x", &[], &[]));
    let r = browser.get_with(&url, &[("x-csrf", "1")]).await;
    assert_eq!(r.headers["cache-control"], "private");

    // Without a session, a `user_or_none` answer keeps its caching but varies on the
    // cookie (the signed-in answer differs); a `none` route is the upstream's alone.
    let r = call("/respond-maybe/x", false).await;
    assert_eq!(
        r.headers["cache-control"],
        "public, max-age=600, s-maxage=3600"
    );
    assert!(values(&r.headers, "vary").join(",").contains("Cookie"));
    let r = call("/respond-anon/x", true).await;
    assert_eq!(
        r.headers["cache-control"],
        "public, max-age=600, s-maxage=3600"
    );
    assert_eq!(r.headers["cdn-cache-control"], "max-age=3600");
    assert_eq!(values(&r.headers, "vary"), ["Accept-Encoding"]);
}

// ---------------------------------------------------------------- item 8

#[tokio::test]
async fn upstream_documents_are_sandboxed_and_nothing_is_sniffed() {
    let responder = Responder::start().await;
    let gw = standalone("", &responder_routes(&responder.url()));
    let browser = Browser::new();
    let html = "<script>alert(document.domain)</script>";
    for ct in [
        "text/html",
        "text/html; charset=utf-8",
        "TEXT/HTML",
        "Text/Html;charset=UTF-8",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "",
    ] {
        let r = browser
            .get(&gw.url(&asking(
                "/respond-anon/page",
                &[],
                &[("ct", ct), ("body", html)],
            )))
            .await;
        assert_eq!(r.status, 200);
        let csp = values(&r.headers, "content-security-policy");
        assert!(
            csp.iter()
                .any(|p| p.starts_with("sandbox;") && p.contains("default-src 'none'")),
            "{ct:?}: {csp:?}"
        );
        assert!(!csp.iter().any(|p| p.contains("allow-scripts")), "{ct:?}");
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{ct:?}");
    }
    // The upstream's own policy stays beside ours (a browser enforces both).
    let r = browser
        .get(&gw.url(&asking(
            "/respond-anon/page",
            &["Content-Security-Policy: default-src 'self'"],
            &[("ct", "text/html")],
        )))
        .await;
    let csp = values(&r.headers, "content-security-policy");
    assert_eq!(csp.len(), 2, "{csp:?}");
    assert_eq!(csp[0], "default-src 'self'");
    // Data is not a document: no sandbox, but never sniffed either.
    for ct in ["application/json", "text/plain", "image/png", "text/css"] {
        let r = browser
            .get(&gw.url(&asking("/respond-anon/data", &[], &[("ct", ct)])))
            .await;
        assert!(r.headers.get("content-security-policy").is_none(), "{ct}");
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{ct}");
    }
    // An upstream that claims `X-Content-Type-Options` otherwise is overruled.
    let r = browser
        .get(&gw.url(&asking(
            "/respond-anon/data",
            &["X-Content-Type-Options: sniff-away"],
            &[("ct", "text/plain")],
        )))
        .await;
    assert_eq!(values(&r.headers, "x-content-type-options"), ["nosniff"]);
    // A route that opts out keeps the upstream's page as it is.
    let r = browser
        .get(&gw.url(&asking("/respond-raw/page", &[], &[("ct", "text/html")])))
        .await;
    assert!(r.headers.get("content-security-policy").is_none());
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
}

// ---------------------------------------------------------------- item 9

#[tokio::test]
async fn trace_track_and_connect_are_refused_everywhere() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
    let routes = format!(
        "[[routes]]\nprefix = \"/public\"\nupstream = \"{up}\"\ntoken = \"none\"\n\
         [[routes]]\nprefix = \"/hook\"\nupstream = \"{up}\"\ntoken = \"none\"\ncsrf = false\n\
         [static]\ndir = {dir:?}\n",
        up = upstream.url(),
        dir = dir.path().to_str().unwrap(),
    );
    let gw = standalone("", &routes);
    let browser = Browser::new();
    let paths = [
        "/public/x",
        "/hook/x",
        "/bff/user",
        "/bff/login",
        "/healthz",
        "/readyz",
        "/",
        "/index.html",
        "/nowhere",
    ];
    for method in ["TRACE", "TRACK", "trace", "Track", "connect"] {
        for path in paths {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            let r = browser.send(m, &gw.url(path), &[], None).await;
            r.assert_error(405, "method_not_allowed");
            let allow = r.headers["allow"].to_str().unwrap();
            assert!(allow.contains("GET") && !allow.contains("TRACE"), "{allow}");
            assert_eq!(r.headers["x-content-type-options"], "nosniff");
        }
    }
    // CONNECT (a client library only sends it in authority form): on every path, and
    // in authority form, as a tunnel client sends it.
    for path in paths {
        let r = raw(
            gw.port,
            format!("CONNECT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        r.assert_error(405, "method_not_allowed");
    }
    let r = raw(
        gw.port,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
    )
    .await;
    r.assert_error(405, "method_not_allowed");
    let r = raw(
        gw.port,
        b"TRACE /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer x\r\nConnection: close\r\n\r\n",
    ).await;
    r.assert_error(405, "method_not_allowed");
    assert!(upstream.requests().is_empty(), "no upstream was called");
    // Other methods still pass.
    let r = browser
        .send(
            Method::from_bytes(b"PROPFIND").unwrap(),
            &gw.url("/public/x"),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.last().method.as_str(), "PROPFIND");
}

// ---------------------------------------------------------------- item 10

/// Is `location` (from an answer of `origin`) a place on `origin`?
fn stays_on(origin: &str, location: &str) -> bool {
    let base = url::Url::parse(origin).unwrap();
    let target = base.join(location).unwrap();
    target.origin() == base.origin()
        && location.starts_with('/')
        && !location.starts_with("//")
        && !location.starts_with("/\\")
}

#[tokio::test]
async fn no_redirect_portcullis_writes_leaves_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
    std::fs::create_dir_all(dir.path().join("assets/img")).unwrap();
    std::fs::write(dir.path().join("assets/index.html"), "assets").unwrap();
    std::fs::write(dir.path().join("assets/img/index.html"), "img").unwrap();
    let env = Env::builder().static_dir(dir.path()).start().await;
    let origin = env.gateway.origin.clone();
    let port = env.gateway.port;

    // The directory redirect, in every spelling of the path.
    let expect = [
        ("/assets", Some("/assets/")),
        ("//assets", Some("/assets/")),
        ("///assets", Some("/assets/")),
        ("////assets?x=1", Some("/assets/?x=1")),
        ("//assets/img", Some("/assets/img/")),
        ("/assets//img", None),
        ("/%2fassets", None),
        ("/%2f/assets", None),
        ("/%2F%2Fassets", None),
        ("/%5cassets", None),
        ("//assets/..", None),
        ("//assets/img/..", None),
        ("/./assets", None),
        ("//./assets", None),
        ("/.%2fassets", None),
        ("/%09/assets", None),
        ("//%09/assets", None),
        ("/\\assets", None),
        ("/\\/assets", None),
        ("//\\assets", None),
    ];
    for (path, want) in expect {
        let r = raw(
            port,
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        match r.header("location") {
            Some(location) => {
                assert!(
                    stays_on(&origin, location),
                    "{path}: Location {location} leaves the origin"
                );
                if let Some(want) = want {
                    assert_eq!(location, want, "{path}");
                }
            }
            None => assert!(want.is_none(), "{path}: expected a redirect: {r:?}"),
        }
        assert!(
            !(300..400).contains(&r.status) || r.header("location").is_some(),
            "{path}: {r:?}"
        );
    }
    // Revalidation is not a redirect: a 304 stays a 304.
    let first = Browser::new().get(&env.url("/assets/index.html")).await;
    let etag = first.headers["etag"].to_str().unwrap().to_owned();
    let again = Browser::new()
        .get_with(&env.url("/assets/index.html"), &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, 304);
    assert!(again.headers.get("location").is_none());
    // An absolute-form request names another authority: the redirect stays ours.
    for target in [
        "http://evil.example/assets",
        "http://evil.example//assets",
        "https://evil.example/assets?x",
    ] {
        let r = raw(
            port,
            format!("GET {target} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        if let Some(location) = r.header("location") {
            assert!(stays_on(&origin, location), "{target}: {location}");
        }
    }

    // The login's returnUrl (the callback redirects there): every off-site spelling is
    // refused before the login starts.
    let browser = Browser::new();
    for bad in [
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\/evil.example",
        "/%2F%2Fevil.example",
        "/%2f/evil.example",
        "/%5Cevil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "/ /evil.example",
        "https://evil.example",
        "HTTPS://evil.example",
        "https:evil.example",
        "//evil.example/..",
        "javascript:alert(1)",
    ] {
        let q = form_urlencoded::Serializer::new(String::new())
            .append_pair("returnUrl", bad)
            .finish();
        let r = browser.get(&env.url(&format!("/bff/login?{q}"))).await;
        r.assert_error(400, "invalid_request");
    }
    // A spelling that is still a path here passes, and the callback goes there.
    let browser = env.browser();
    let authorize = browser.start_login(&env, "/%09/x").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    let r = browser.get(&callback).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.location(), "/%09/x");
    assert!(stays_on(&origin, &r.location()));
}

// ---------------------------------------------------------------- item 11

#[tokio::test]
async fn every_answer_portcullis_writes_says_nosniff() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
    std::fs::write(dir.path().join("app.js"), "1").unwrap();
    std::fs::create_dir(dir.path().join("assets")).unwrap();
    std::fs::write(dir.path().join("assets/index.html"), "a").unwrap();
    let admin = free_port();
    let dead = free_port();
    let env = Env::builder()
        .static_dir(dir.path())
        .server(&format!("admin_listen = \"127.0.0.1:{admin}\"\n"))
        .routes(&format!(
            "[[routes]]\nprefix = \"/dead\"\nupstream = \"http://127.0.0.1:{dead}\"\ntoken = \"none\"\n"
        ))
        .start()
        .await;
    let browser = env.browser();
    let admin_url = |p: &str| format!("http://127.0.0.1:{admin}{p}");
    let mut answers = vec![
        ("/healthz", browser.get(&env.url("/healthz")).await),
        ("/readyz", browser.get(&env.url("/readyz")).await),
        ("/", browser.get(&env.url("/")).await),
        ("/app.js", browser.get(&env.url("/app.js")).await),
        ("/assets", browser.get(&env.url("/assets")).await),
        ("/nowhere.js", browser.get(&env.url("/nowhere.js")).await),
        ("/api/x (401)", browser.get(&env.url("/api/x")).await),
        (
            "/api/x (403 csrf)",
            browser
                .get_with(&env.url("/api/x"), &[("origin", "https://evil.example")])
                .await,
        ),
        ("/public/x", browser.get(&env.url("/public/x")).await),
        ("/dead/x (502)", browser.get(&env.url("/dead/x")).await),
        ("/bff/user (401)", browser.user(&env).await),
        ("/bff/nothing", browser.get(&env.url("/bff/nothing")).await),
        (
            "/bff/callback (400)",
            browser.get(&env.url("/bff/callback?code=x&state=y")).await,
        ),
        (
            "/bff/logout (400)",
            browser.get(&env.url("/bff/logout")).await,
        ),
        (
            "TRACE (405)",
            browser
                .send(Method::TRACE, &env.url("/public/x"), &[], None)
                .await,
        ),
        (
            "POST /healthz (405)",
            browser
                .send(Method::POST, &env.url("/healthz"), &[], None)
                .await,
        ),
        ("admin /metrics", browser.get(&admin_url("/metrics")).await),
        ("admin /healthz", browser.get(&admin_url("/healthz")).await),
        ("admin /readyz", browser.get(&admin_url("/readyz")).await),
        ("admin /nowhere", browser.get(&admin_url("/nowhere")).await),
    ];
    answers.push((
        "/bff/login (302)",
        browser.get(&env.url("/bff/login")).await,
    ));
    browser.login(&env, "alice", "alice", "/").await;
    answers.push((
        "/api/x (200)",
        browser
            .get_with(&env.url("/api/x"), &[("x-csrf", "1")])
            .await,
    ));
    answers.push(("/bff/user (200)", browser.user(&env).await));
    for (what, r) in &answers {
        assert_eq!(
            values(&r.headers, "x-content-type-options"),
            ["nosniff"],
            "{what}: {} {:?}",
            r.status,
            r.headers
        );
    }
    // The sweep covered successes, redirects and errors alike.
    let statuses: std::collections::BTreeSet<u16> =
        answers.iter().map(|(_, r)| r.status.as_u16()).collect();
    for s in [200, 302, 307, 400, 401, 403, 404, 405, 502] {
        assert!(statuses.contains(&s), "no {s} in the sweep: {statuses:?}");
    }
    // A Host refusal (raw: a client library won't send two) carries it too.
    let r = raw(
        env.gateway.port,
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    )
    .await;
    r.assert_error(400, "invalid_request");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

// ---------------------------------------------------------------- several frontends

#[tokio::test]
async fn with_several_frontends_every_frontends_cookies_and_prefix_are_kept() {
    let responder = Responder::start().await;
    let files = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(files.path().join("assets")).unwrap();
    std::fs::write(files.path().join("index.html"), "<!doctype html>").unwrap();
    std::fs::write(files.path().join("assets/index.html"), "a").unwrap();
    let port = free_port();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_origin = "http://127.0.0.1:{port}"
workers = 1
[oidc]
issuer = "http://127.0.0.1:1"
http_timeout = "1s"
[session]
store = "memory"
keys = ["{key}"]

[[frontends]]
name = "shop"
[frontends.oidc]
client_id = "shop"
client_secret = "s"
[[frontends.routes]]
prefix = "/respond"
upstream = "{up}"
token = "none"

[[frontends]]
name = "admin"
path_prefix = "/admin"
[frontends.oidc]
client_id = "admin"
client_secret = "s"
[frontends.static]
dir = "{files}"
"#,
        key = random_key(),
        up = responder.url(),
        files = files.path().display(),
    );
    let gw = Gateway::start(port, &config);
    // The shop's upstream can't set the admin frontend's cookies either.
    for cookie in [
        "__Host-portcullis-admin=planted; Path=/; Secure; HttpOnly",
        "__Host-portcullis-admin-login=planted; Path=/; Secure",
        "__Secure-portcullis-admin=planted; Path=/; Secure",
        "__Host-portcullis-shop=planted; Path=/; Secure",
        "__Host-portcullis-shop-login=planted; Path=/; Secure",
    ] {
        let r = Browser::new()
            .get(&gw.url(&asking(
                "/respond/x",
                &[&format!("Set-Cookie: {cookie}"), "Set-Cookie: theme=dark"],
                &[],
            )))
            .await;
        assert_eq!(r.set_cookies(), ["theme=dark"], "{cookie}");
    }
    // A prefixed frontend's directory redirect keeps the prefix and the origin.
    for (path, want) in [
        ("/admin/assets", "/admin/assets/"),
        ("/admin//assets", "/admin/assets/"),
        ("/admin///assets?x=1", "/admin/assets/?x=1"),
    ] {
        let r = raw(
            port,
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 307, "{path}: {r:?}");
        assert_eq!(r.header("location"), Some(want), "{path}");
    }
}

// ---------------------------------------------------------------- HTTP/2

/// One HTTP/2 request over TLS (ALPN h2) with the given `Host` lines; the status.
async fn h2_status(port: u16, ca_pem: &str, path: &str, hosts: &[&str]) -> u16 {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut request = axum::http::Request::builder()
        .uri(format!("https://localhost:{port}{path}"))
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .unwrap();
    for h in hosts {
        request
            .headers_mut()
            .append("host", axum::http::HeaderValue::from_str(h).unwrap());
    }
    send.send_request(request).await.unwrap().status().as_u16()
}

#[test]
fn over_http2_a_host_beside_authority_must_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::ops::TestPki::new();
    let (cert, key, _) = pki.leaf("gateway");
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), key).unwrap();
    let port = free_port();
    let config = standalone_config(
        port,
        &format!("https://localhost:{port}"),
        &format!(
            "[server.tls]\ncert = {:?}\nkey = {:?}",
            dir.path().join("cert.pem").to_str().unwrap(),
            dir.path().join("key.pem").to_str().unwrap(),
        ),
        "",
    );
    let config = portcullis::config::Config::from_toml(&config, []).unwrap();
    let server = portcullis::server::Server::start(config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let authority = format!("localhost:{port}");
    rt.block_on(async {
        let ca = &pki.ca_pem;
        assert_eq!(h2_status(port, ca, "/healthz", &[]).await, 200);
        assert_eq!(h2_status(port, ca, "/healthz", &[&authority]).await, 200);
        assert_eq!(
            h2_status(port, ca, "/healthz", &[&authority.to_uppercase()]).await,
            200
        );
        for hosts in [
            &["evil.example"][..],
            &[&format!("evil.example:{port}")],
            &[&authority, &authority],
            &[&authority, "evil.example"],
            &["a b"],
        ] {
            assert_eq!(
                h2_status(port, ca, "/healthz", hosts).await,
                400,
                "{hosts:?}"
            );
        }
    });
    drop(rt); // closes the client connections, so the drain has nothing to wait for
    server.stop();
}
