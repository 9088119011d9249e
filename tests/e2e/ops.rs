//! Operations: the admin listener and its metrics, logs that never hold a secret,
//! graceful shutdown with streams in flight, session key rotation, TLS.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::Method;

use crate::harness::*;

/// The value of the sample `name{labels}` (labels in the order the exporter writes
/// them), or 0 when absent.
pub(crate) fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.split(' ').next().unwrap().parse().unwrap())
        .unwrap_or(0.0)
}

pub(crate) async fn scrape(admin: u16) -> (String, String) {
    let r = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    (ct, r.text().await.unwrap())
}

async fn logout(browser: &Browser, env: &Env) {
    let user = browser.user(env).await;
    assert_eq!(user.status, 200, "{}", user.text());
    let url = user.json()["bff:logout_url"].as_str().unwrap().to_owned();
    let r = browser.get(&env.url(&url)).await;
    assert_eq!(r.status, 302, "{}", r.text());
}

#[tokio::test]
async fn admin_listener_serves_metrics_that_follow_a_session() {
    let admin = free_port();
    let env = Env::builder()
        .server(&format!("admin_listen = \"127.0.0.1:{admin}\"\n"))
        .start()
        .await;
    let browser = env.browser();
    let admin_url = |p: &str| format!("http://127.0.0.1:{admin}{p}");
    assert_eq!(
        reqwest::get(admin_url("/healthz")).await.unwrap().status(),
        200
    );
    let ready = reqwest::get(admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    // The main listener keeps its own health endpoints, and has no /metrics.
    assert_eq!(browser.get(&env.url("/readyz")).await.status, 200);
    assert_eq!(browser.get(&env.url("/metrics")).await.status, 404);

    browser.login(&env, "alice", "alice", "/").await;
    let api = browser
        .get_with(&env.url("/api/items"), &[("x-csrf", "1")])
        .await;
    assert_eq!(api.status, 200, "{}", api.text());
    // A refused call (no CSRF header) is counted too.
    let refused = browser.get(&env.url("/api/items")).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    let (_, during) = scrape(admin).await;
    assert_eq!(sample(&during, "portcullis_sessions_active"), 1.0);
    logout(&browser, &env).await;

    let (content_type, m) = scrape(admin).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    println!("--- /metrics after login, API call, refused call, logout ---\n{m}");
    assert_eq!(
        sample(&m, "portcullis_logins_total{outcome=\"success\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "portcullis_logouts_total{kind=\"rp\",outcome=\"success\"}"
        ),
        1.0
    );
    assert_eq!(sample(&m, "portcullis_sessions_created_total"), 1.0);
    assert_eq!(
        sample(&m, "portcullis_sessions_ended_total{reason=\"logout\"}"),
        1.0
    );
    assert_eq!(sample(&m, "portcullis_sessions_active"), 0.0);
    assert_eq!(
        sample(
            &m,
            "portcullis_http_requests_total{route=\"/api\",status=\"2xx\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "portcullis_http_requests_total{route=\"/api\",status=\"4xx\"}"
        ),
        1.0
    );
    assert!(
        sample(
            &m,
            "portcullis_http_requests_total{route=\"bff\",status=\"3xx\"}"
        ) >= 3.0
    );
    assert_eq!(
        sample(
            &m,
            "portcullis_upstream_request_duration_seconds_count{route=\"/api\",outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(sample(&m, "portcullis_csrf_rejected_total"), 1.0);
    assert_eq!(sample(&m, "portcullis_errors_total{code=\"csrf\"}"), 1.0);
    assert_eq!(
        sample(
            &m,
            "portcullis_provider_request_duration_seconds_count{endpoint=\"token_code\"}"
        ),
        1.0
    );
    assert!(
        sample(
            &m,
            "portcullis_provider_request_duration_seconds_count{endpoint=\"userinfo\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &m,
            "portcullis_store_operation_duration_seconds_count{backend=\"memory\",op=\"insert\"}"
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &m,
            "portcullis_store_errors_total{backend=\"memory\",op=\"get\"}"
        ),
        0.0
    );
    assert!(m.ends_with("# EOF\n"));
}

#[tokio::test]
async fn request_ids_are_generated_unless_a_trusted_proxy_sent_one() {
    let env = Env::builder().start().await;
    let browser = env.browser();
    // The test client is not a trusted proxy: its id is replaced.
    let r = browser
        .get_with(
            &env.url("/public/x"),
            &[("x-request-id", "planted-by-browser")],
        )
        .await;
    assert_eq!(r.status, 200);
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, "planted-by-browser");
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(env.upstream.last().headers["x-request-id"], id.as_str());

    let trusted = Env::builder()
        .server("trusted_proxies = [\"127.0.0.0/8\"]\n")
        .start()
        .await;
    let r = browser
        .get_with(&trusted.url("/public/x"), &[("x-request-id", "lb-42.abc")])
        .await;
    assert_eq!(r.headers["x-request-id"], "lb-42.abc");
    assert_eq!(trusted.upstream.last().headers["x-request-id"], "lb-42.abc");
    // Even from a trusted proxy, an unsafe id is replaced.
    let r = browser
        .get_with(&trusted.url("/public/x"), &[("x-request-id", "a b")])
        .await;
    assert_ne!(r.headers["x-request-id"], "a b");
}

#[tokio::test]
async fn the_logs_of_a_whole_session_hold_no_secret() {
    // 4 s access tokens: refreshed 2 s before expiry.
    let env = Env::builder().access_token_ttl(4).start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let cookie = browser.session_cookie(&env).unwrap();
    for i in 0..3 {
        let r = browser
            .get_with(&env.url(&format!("/api/call{i}")), &[("x-csrf", "1")])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = browser
        .get_with(&env.url("/api/after-refresh"), &[("x-csrf", "1")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let request_id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(env.provider.grant_count("refresh_token").await.0, 1);
    logout(&browser, &env).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the revocation runs in the background

    let logs = env.gateway.logs();
    let mut secrets: Vec<(String, String)> = env
        .provider
        .issued_values("alice")
        .await
        .into_iter()
        .map(|v| ("a token or code issued by the provider".into(), v))
        .collect();
    for seen in env.upstream.requests() {
        if let Some(auth) = seen.headers.get("authorization") {
            let token = auth
                .to_str()
                .unwrap()
                .trim_start_matches("Bearer ")
                .to_owned();
            secrets.push(("an access token the upstream received".into(), token));
        }
    }
    assert!(secrets.len() >= 6, "tokens to look for: {}", secrets.len());
    secrets.push(("the session cookie".into(), cookie));
    secrets.push(("the client secret".into(), CLIENT_SECRET.into()));
    secrets.push(("the session encryption key".into(), env.key.clone()));
    for (what, value) in &secrets {
        assert!(!logs.contains(value.as_str()), "{what} appears in the logs");
    }
    assert!(
        !logs.contains("eyJ"),
        "a JWT (ID token) appears in the logs"
    );

    // JSON lines; the audit trail is there, with the session label and the request id.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 5, "{logs}");
    let audit = |event: &str| {
        lines
            .iter()
            .filter(|l| l["target"] == "portcullis::audit" && l["event"] == event)
            .cloned()
            .collect::<Vec<_>>()
    };
    let login = audit("login");
    assert_eq!(login.len(), 1);
    assert_eq!(login[0]["sub"], "alice");
    assert_eq!(login[0]["session"].as_str().unwrap().len(), 16);
    assert_eq!(login[0]["span"]["name"], "request");
    assert_eq!(login[0]["span"]["path"], "/bff/callback");
    assert!(login[0]["span"]["request_id"].is_string());
    let refresh = audit("refresh");
    assert_eq!(refresh.len(), 1);
    assert_eq!(refresh[0]["outcome"], "success");
    assert_eq!(refresh[0]["session"], login[0]["session"]);
    assert_eq!(refresh[0]["span"]["request_id"], request_id.as_str());
    let ended = audit("session_ended");
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["reason"], "logout");
    assert_eq!(audit("revocation")[0]["outcome"], "revoked");
    // Every line logged while serving the refreshed call carries its request id.
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["request_id"] == request_id.as_str())
    );
}

/// A request body that arrives slowly: `chunks` × 64 KiB, `pause` apart.
fn slow_body(chunks: usize, pause: Duration) -> Body {
    let stream = futures_util::stream::unfold(0, move |i| async move {
        if i == chunks {
            return None;
        }
        tokio::time::sleep(pause).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(vec![b'u'; 65536])),
            i + 1,
        ))
    });
    Body::from_stream(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_downloads_and_uploads_in_flight_finish() {
    // The harness sets drain_timeout = "5s".
    let mut env = Env::builder().start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;

    // 4 MiB in 64 chunks 40 ms apart (~2.6 s), and a 2 MiB upload over ~2.2 s.
    let download_bytes = 4 * 1024 * 1024;
    let download = {
        let (b, url) = (
            browser.clone(),
            env.url(&format!("/api/download?bytes={download_bytes}&delay_ms=40")),
        );
        tokio::spawn(async move {
            let t = Instant::now();
            let r = b.get_with(&url, &[("x-csrf", "1")]).await;
            (r, t.elapsed())
        })
    };
    let upload = {
        let (b, url) = (browser.clone(), env.url("/api/upload"));
        tokio::spawn(async move {
            let t = Instant::now();
            let r = b
                .send(
                    Method::POST,
                    &url,
                    &[
                        ("x-csrf", "1"),
                        ("content-type", "application/octet-stream"),
                    ],
                    Some(slow_body(32, Duration::from_millis(70))),
                )
                .await;
            (r, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let term = Instant::now();
    env.gateway.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = std::net::TcpStream::connect(("127.0.0.1", env.gateway.port));
    assert!(
        refused.is_err(),
        "a new connection was accepted after SIGTERM"
    );

    let (down, down_took) = download.await.unwrap();
    let (up, up_took) = upload.await.unwrap();
    let exit = tokio::task::block_in_place(|| env.gateway.wait_exit(Duration::from_secs(8)));
    let exited_after = term.elapsed();
    assert_eq!(down.status, 200, "{}", down.text());
    assert_eq!(down.body.len(), download_bytes, "the download was cut");
    assert_eq!(up.status, 200, "{}", up.text());
    assert_eq!(up.json()["body_len"], 32 * 65536, "the upload was cut");
    let status = exit.expect("the gateway did not exit");
    assert!(status.success(), "exit status {status}");
    assert!(
        exited_after < Duration::from_secs(5) + Duration::from_millis(800),
        "exited {exited_after:?} after SIGTERM, drain_timeout is 5 s"
    );
    println!(
        "GRACEFUL SHUTDOWN: SIGTERM 600 ms into a {download_bytes}-byte download ({down_took:?} in all) \
         and a {}-byte upload ({up_took:?} in all); new connections refused 300 ms after SIGTERM; \
         both completed; process exited {exited_after:?} after SIGTERM (drain_timeout 5 s)",
        32 * 65536
    );
    let logs = env.gateway.logs();
    assert!(logs.contains("in-flight requests drained"));
    assert!(logs.contains("session store closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_drain_timeout_is_cut_at_the_deadline() {
    use futures_util::StreamExt;
    let mut env = Env::builder().start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let cookie = browser.session_cookie(&env).unwrap();
    // 64 chunks 200 ms apart: ~13 s, longer than the 5 s drain.
    let total = 4 * 1024 * 1024;
    let url = env.url(&format!("/api/download?bytes={total}&delay_ms=200"));
    let download = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .get(url)
            .header("x-csrf", "1")
            .header("cookie", format!("{COOKIE}={cookie}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut received = 0;
        let mut body = r.bytes_stream();
        while let Some(Ok(chunk)) = body.next().await {
            received += chunk.len();
        }
        received
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let term = Instant::now();
    env.gateway.signal("-TERM");
    let exit = tokio::task::block_in_place(|| env.gateway.wait_exit(Duration::from_secs(10)));
    let exited_after = term.elapsed();
    assert!(exit.expect("the gateway did not exit").success());
    let received = download.await.unwrap();
    assert!(received < total, "the stream should have been cut");
    assert!(
        exited_after >= Duration::from_millis(4500) && exited_after < Duration::from_millis(6500),
        "exited {exited_after:?} after SIGTERM; drain_timeout is 5 s"
    );
    println!(
        "DRAIN DEADLINE: a ~13 s download was cut after {received} of {total} bytes; \
         the process exited {exited_after:?} after SIGTERM (drain_timeout 5 s)"
    );
    assert!(env.gateway.logs().contains("drain timeout"));
}

/// Replaces the `keys = [...]` line of the gateway's config.
fn set_keys(env: &Env, keys: &[&str]) {
    let path = &env.gateway.config_path;
    let config = std::fs::read_to_string(path).unwrap();
    let list = keys
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = config
        .lines()
        .map(|l| {
            if l.starts_with("keys = [") {
                format!("keys = [{list}]")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(path, config).unwrap();
}

#[tokio::test]
async fn rotating_session_keys_keeps_sessions_and_retiring_one_ends_them_cleanly() {
    let mut env = Env::builder().store("sqlite").start().await;
    let old_key = env.key.clone();
    let new_key = random_key();
    let before = env.browser();
    before.login(&env, "alice", "alice", "/").await;
    let api = |b: &Browser, env: &Env| {
        let (b, url) = (b.clone(), env.url("/api/x"));
        async move { b.get_with(&url, &[("x-csrf", "1")]).await }
    };
    assert_eq!(api(&before, &env).await.status, 200);

    // Step 1: the new key first, the old one still there to open existing sessions.
    set_keys(&env, &[&new_key, &old_key]);
    env.gateway.restart();
    assert_eq!(before.user(&env).await.status, 200);
    let r = api(&before, &env).await;
    assert_eq!(
        r.status,
        200,
        "a session sealed under the old key: {}",
        r.text()
    );
    let after = env.browser();
    after.login(&env, "bob", "bob", "/").await;
    assert_eq!(api(&after, &env).await.status, 200);

    // Step 2 (after the absolute timeout, in production): the old key is removed.
    set_keys(&env, &[&new_key]);
    env.gateway.restart();
    assert_eq!(
        api(&after, &env).await.status,
        200,
        "sealed under the new key"
    );
    // Sealed under the retired key: ended with a clean 401, never a 500.
    api(&before, &env)
        .await
        .assert_error(401, "session_expired");
    before.user(&env).await.assert_error(401, "unauthenticated");
    let logs = env.gateway.logs();
    assert!(
        logs.contains("\"reason\":\"unreadable\""),
        "the session end is audited"
    );
}

pub(crate) struct TestPki {
    pub(crate) ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    pub(crate) fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Portcullis test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Self {
            ca_pem: ca.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf certificate for localhost / 127.0.0.1: (cert PEM, key PEM, cert DER).
    pub(crate) fn leaf(&self, name: &str) -> (String, String, Vec<u8>) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// A TLS connection offering h2 and http/1.1: (negotiated ALPN, server certificate DER, stream).
async fn tls_connect(
    port: u16,
    ca_pem: &str,
) -> (
    Option<Vec<u8>>,
    Vec<u8>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    tls_connect_alpn(port, ca_pem, &[b"h2", b"http/1.1"]).await
}

/// Like [`tls_connect`], offering only HTTP/1.1.
async fn tls_connect_h1(
    port: u16,
    ca_pem: &str,
) -> (
    Option<Vec<u8>>,
    Vec<u8>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    tls_connect_alpn(port, ca_pem, &[b"http/1.1"]).await
}

async fn tls_connect_alpn(
    port: u16,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> (
    Option<Vec<u8>>,
    Vec<u8>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
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
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let (_, conn) = stream.get_ref();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let cert = conn.peer_certificates().unwrap()[0].to_vec();
    (alpn, cert, stream)
}

/// An HTTP/1.1 GET over an established stream; returns the status line and body.
async fn http1_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn tls_termination_with_http2_reload_on_demand_and_verified_https_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert_a, key_a, der_a) = pki.leaf("first");
    let (cert_pem, key_pem, ca_pem) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert_pem, &cert_a).unwrap();
    std::fs::write(&key_pem, &key_a).unwrap();
    std::fs::write(&ca_pem, &pki.ca_pem).unwrap();
    let port = free_port();
    let config = standalone_config(
        port,
        &format!("https://localhost:{port}"),
        &format!(
            "upstream_ca_file = {:?}\n[server.tls]\ncert = {:?}\nkey = {:?}",
            ca_pem.to_str().unwrap(),
            cert_pem.to_str().unwrap(),
            key_pem.to_str().unwrap(),
        ),
        &format!(
            "[[routes]]\nprefix = \"/loop\"\nupstream = \"https://localhost:{port}\"\n\
             token = \"none\"\nstrip_prefix = true"
        ),
    );
    let config = portcullis::config::Config::from_toml(&config, []).unwrap();
    let server = portcullis::server::Server::start(config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // ALPN: browsers get HTTP/2.
        let (alpn, cert, kept_open) = tls_connect(port, &pki.ca_pem).await;
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(cert, der_a);
        drop(kept_open);

        // HTTP/1.1 over TLS, and an https upstream verified with upstream_ca_file:
        // `/loop/healthz` is proxied to this very listener over https.
        let (_, _, mut s) = tls_connect_h1(port, &pki.ca_pem).await;
        let answer = http1_get(&mut s, "/loop/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok\n"), "{answer}");

        // A renewed certificate is picked up on reload (SIGHUP), for new handshakes.
        let (_, _, mut open_before) = tls_connect_h1(port, &pki.ca_pem).await;
        let (cert_b, key_b, der_b) = pki.leaf("second");
        std::fs::write(&cert_pem, &cert_b).unwrap();
        std::fs::write(&key_pem, &key_b).unwrap();
        server.reload_tls().unwrap();
        let (_, cert, _) = tls_connect(port, &pki.ca_pem).await;
        assert_eq!(cert, der_b, "new handshakes present the new certificate");
        // The connection opened before the reload still works.
        let answer = http1_get(&mut open_before, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        // A broken reload keeps the current certificate.
        std::fs::write(&key_pem, "not a key").unwrap();
        assert!(server.reload_tls().is_err());
        let (_, cert, _) = tls_connect(port, &pki.ca_pem).await;
        assert_eq!(cert, der_b);
    });
    server.stop();
}
