//! Issue 16, item 1: a route's upstream path can't leave the route's base, however the
//! upstream decodes it. Attacked over raw TCP (an HTTP client library would normalise
//! the path) against a real nginx serving `/public/` and `/internal/`, and against a
//! Tomcat-style upstream (`;parameters` stripped per segment, permissive decoding) that
//! records what it resolved, behind a `token = "client"` route.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

const NGINX: &str = "/usr/sbin/nginx";
const SECRET: &str = "TOP-SECRET-internal-7f3a";

/// A real nginx, run as this test's own process (no master, no daemon) on a free port,
/// serving `html/public/` and `html/internal/` (the secret) from a temporary directory.
/// Its access log has one `request_uri|uri|status` line per request.
struct Nginx {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Nginx {
    fn start() -> Self {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: install Debian's nginx (scripts/test.sh does: apt-get install nginx)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["html/public/partner", "html/internal", "html/admin", "tmp"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("html/public/file.txt"), "public content\n").unwrap();
        std::fs::write(d.join("html/public/café.txt"), "public café\n").unwrap();
        std::fs::write(d.join("html/public/a b.txt"), "public space\n").unwrap();
        std::fs::write(d.join("html/public/partner/x.txt"), "partner content\n").unwrap();
        for secret in [
            "html/internal/secret.txt",
            "html/internal/index.html",
            "html/admin/users",
        ] {
            std::fs::write(d.join(secret), SECRET).unwrap();
        }
        let port = free_port();
        let p = d.to_str().unwrap();
        let conf = format!(
            r#"
worker_processes 1;
pid {p}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    log_format paths '$request_uri|$uri|$status';
    access_log {p}/access.log paths;
    client_body_temp_path {p}/tmp;
    proxy_temp_path {p}/tmp;
    fastcgi_temp_path {p}/tmp;
    uwsgi_temp_path {p}/tmp;
    scgi_temp_path {p}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {p}/html;
        location / {{ autoindex on; }}
    }}
}}
"#
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .args(["-e", "stderr", "-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let nginx = Self { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx not listening within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// `(request_uri, uri, status)` of every request nginx answered so far.
    fn access_log(&self) -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let mut f = l.splitn(3, '|');
                let mut next = || f.next().unwrap_or("").to_owned();
                (next(), next(), next())
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 request (the target exactly as given); the status and the body.
fn raw_get(port: u16, target: &[u8]) -> (u16, String) {
    raw_get_with(port, target, "")
}

/// [`raw_get`] with extra header lines (each ending in `\r\n`).
fn raw_get_with(port: u16, target: &[u8], headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    request.extend_from_slice(headers.as_bytes());
    request.extend_from_slice(b"\r\n");
    s.write_all(&request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Dot segments, in the spellings some upstream resolves.
const DOTS: &[&str] = &[
    "..",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "%2e.",
    "%252e%252e",
    "%25%32%65%25%32%65",
    "%u002e%u002e",
    "%U002E%U002E",
    "%c0%ae%c0%ae",
    "%e0%80%ae%e0%80%ae",
    "%ef%bc%8e%ef%bc%8e",
    "%e2%80%a5",
    "..%20",
    "..%00",
    "..+",
    "..%c2%a0",
    "..%e2%80%8b",
    "..;",
    "..;jsessionid=1",
    ".%2e;x",
    "%2e%2e%3b",
    "..%3f",
    "..::$DATA",
];

/// Separators, in the spellings some upstream resolves.
const SEPARATORS: &[&str] = &[
    "/",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "%252f",
    "%255c",
    "%c0%af",
    "%u2215",
    "%ef%bc%8f",
    "%e2%88%95",
    "%c2%a5",
];

/// Every combination, once and twice, towards `target` (e.g. `internal/secret.txt`),
/// after `prefix`.
fn escapes(prefix: &str, target: &str) -> Vec<String> {
    let mut out = Vec::new();
    for d in DOTS {
        for s in SEPARATORS {
            out.push(format!("{prefix}/{d}{s}{target}"));
            out.push(format!("{prefix}/x/{d}{s}{d}{s}{target}"));
        }
        out.push(format!("{prefix}/{d}"));
    }
    out
}

fn assert_refused(port: u16, path: &str) {
    let (status, body) = raw_get(port, path.as_bytes());
    assert!(!body.contains(SECRET), "{path}: the secret was served");
    assert_eq!(status, 400, "{path}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|_| panic!("{path}: not the contract's JSON error: {body:?}"));
    assert_eq!(json["error"], "invalid_request", "{path}: {body}");
}

#[tokio::test]
async fn no_spelling_of_an_escape_reaches_outside_the_nginx_base() {
    let nginx = Nginx::start();
    let env = Env::builder()
        .routes(&format!(
            r#"
[[routes]]
prefix = "/pub2"
upstream = "http://127.0.0.1:{port}/public"
token = "none"
strip_prefix = true

[[routes]]
prefix = "/npartner"
upstream = "http://127.0.0.1:{port}/public/partner"
token = "client"
strip_prefix = true
"#,
            port = nginx.port
        ))
        .start()
        .await;
    let port = env.gateway.port;

    // Legitimate paths reach nginx unchanged and are served.
    for (path, content) in [
        ("/pub2/file.txt", "public content"),
        ("/pub2/caf%C3%A9.txt", "public café"),
        ("/pub2/a%20b.txt", "public space"),
        ("/pub2/%66ile.txt", "public content"),
        ("/pub2/partner/x.txt?q=../../internal", "partner content"),
        ("/npartner/x.txt", "partner content"),
    ] {
        let (status, body) = raw_get(port, path.as_bytes());
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains(content), "{path}: {body}");
    }

    let mut attacks = escapes("/pub2", "internal/secret.txt");
    attacks.extend(escapes("/npartner", "../internal/secret.txt"));
    attacks.extend(escapes("/npartner", "admin/users"));
    for path in &attacks {
        assert_refused(port, path);
    }
    // Raw bytes in the request line: overlong UTF-8 and a fullwidth dot.
    for target in [
        &b"/pub2/\xc0\xae\xc0\xae/internal/secret.txt"[..],
        "/pub2/\u{FF0E}\u{FF0E}/internal/secret.txt".as_bytes(),
    ] {
        let (status, body) = raw_get(port, target);
        assert_eq!(status, 400, "{}: {body}", String::from_utf8_lossy(target));
        assert!(!body.contains(SECRET));
    }

    // A refusal is logged with its reason, never with the cookie.
    let cookie = "__Host-portcullis=cookie-value-never-logged-5b1e";
    let (status, _) = raw_get_with(
        port,
        b"/pub2/..;/internal/secret.txt",
        &format!("Cookie: {cookie}\r\n"),
    );
    assert_eq!(status, 400);

    // nginx saw nothing outside /public/ (a line without a uri is a request nginx
    // itself refused).
    let log = nginx.access_log();
    assert!(
        log.len() >= 6,
        "nginx served the legitimate requests: {log:?}"
    );
    for (request_uri, uri, status) in &log {
        assert!(
            uri.is_empty() || uri == "/public" || uri.starts_with("/public/"),
            "nginx resolved {request_uri} to {uri} ({status})"
        );
    }
    assert!(
        log.len() < attacks.len() / 10,
        "attacks reached nginx: {log:?}"
    );
    let logs = env.gateway.logs();
    assert!(
        logs.contains("invalid request path: an encoded") && logs.contains("a dot segment"),
        "the refusals are logged with their reason"
    );
    assert!(
        !logs.contains("cookie-value-never-logged"),
        "a cookie was logged"
    );

    // The control: this nginx does resolve the escape, so the gateway is what stops it.
    let (status, body) = raw_get(nginx.port, b"/public/..%2finternal/secret.txt");
    assert_eq!((status, body.as_str()), (200, SECRET));
}

/// What the Tomcat-style upstream received and resolved.
#[derive(Debug, Clone)]
struct Resolved {
    target: String,
    /// `None`: refused (400).
    path: Option<String>,
    authorized: bool,
}

/// A tiny HTTP/1.1 upstream that resolves request paths like a permissive Tomcat or
/// Jetty (`;parameters` stripped per segment, `%2F` and `\` as separators, `%uXXXX`,
/// overlong UTF-8: `path_models::tomcat_permissive`) or Spring
/// (`path_models::spring`), answers the deepest resolution, and records it.
struct TomcatStyle {
    port: u16,
    seen: Arc<Mutex<Vec<Resolved>>>,
}

impl TomcatStyle {
    fn start() -> Self {
        use portcullis::path::models::{spring, tomcat_permissive};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Resolved>>> = Arc::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = Vec::new();
                if reader.read_until(b'\n', &mut line).is_err() {
                    continue;
                }
                let mut authorized = false;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    authorized |= h.to_ascii_lowercase().starts_with("authorization: bearer ");
                }
                let target = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
                let path = target.split(|&b| b == b'?').next().unwrap_or_default();
                // Both views; the one that climbs higher is what an attacker gets.
                let path = match (tomcat_permissive(path), spring(path)) {
                    (Some(a), Some(b)) => Some(if a.len() <= b.len() { a } else { b }),
                    (a, b) => a.or(b),
                }
                .map(|segments| {
                    let s: Vec<String> = segments
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect();
                    format!("/{}", s.join("/"))
                });
                let answer = match &path {
                    Some(p) => format!("resolved {p}"),
                    None => "refused".to_owned(),
                };
                record.lock().unwrap().push(Resolved {
                    target: String::from_utf8_lossy(target).into_owned(),
                    path,
                    authorized,
                });
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        Self { port, seen }
    }

    fn seen(&self) -> Vec<Resolved> {
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_tomcat_style_upstream_behind_a_client_token_route_resolves_nothing_outside_its_base() {
    let upstream = TomcatStyle::start();
    let env = Env::builder()
        .routes(&format!(
            r#"
[[routes]]
prefix = "/partner"
upstream = "http://127.0.0.1:{port}/v1/partner"
token = "client"
strip_prefix = true
"#,
            port = upstream.port
        ))
        .start()
        .await;
    let port = env.gateway.port;

    // The legitimate requests reach it with the gateway's client token; `;parameters`
    // that are not on a dot segment pass.
    for (path, resolved) in [
        ("/partner/users", "/v1/partner/users"),
        ("/partner/users;jsessionid=abc/7", "/v1/partner/users/7"),
        ("/partner/a.b/.../x", "/v1/partner/a.b/.../x"),
        ("/partner/caf%C3%A9?next=../..", "/v1/partner/café"),
    ] {
        let (status, body) = raw_get(port, path.as_bytes());
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body, format!("resolved {resolved}"), "{path}");
    }
    assert!(
        upstream.seen().iter().all(|r| r.authorized),
        "the client token is sent"
    );

    let before = upstream.seen().len();
    for path in escapes("/partner", "admin/users") {
        assert_refused(port, &path);
    }
    let seen = upstream.seen();
    assert_eq!(
        seen.len(),
        before,
        "attacks reached the upstream: {:?}",
        &seen[before..]
    );
    for r in &seen {
        let p = r.path.as_deref().unwrap_or("/v1/partner");
        assert!(
            p == "/v1/partner" || p.starts_with("/v1/partner/"),
            "{} resolved to {p}",
            r.target
        );
    }

    // The control: the upstream resolves the issue's escape when it gets it.
    let (_, body) = raw_get(upstream.port, b"/v1/partner/..;/admin/users");
    assert_eq!(body, "resolved /v1/admin/users");
}
