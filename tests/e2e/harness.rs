//! The end-to-end harness: a real OpenID provider (npm `oidc-provider`, started from
//! `demo/provider/provider.mjs`), a real HTTP upstream that records what it receives,
//! the real `portcullis` binary, and a cookie-keeping "browser" with redirects off.
//!
//! ```ignore
//! let env = Env::builder().store("sqlite").start().await;
//! let browser = env.browser();
//! browser.login(&env, "alice", "alice", "/").await;
//! ```

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use futures_util::StreamExt;
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "portcullis-test";
pub const CLIENT_SECRET: &str = "portcullis-test-secret-0123456789";
pub const API_CLIENT_ID: &str = "test-api";
pub const API_CLIENT_SECRET: &str = "test-api-secret";
pub const COOKIE: &str = "__Host-portcullis";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn random_key() -> String {
    portcullis::session::cipher::generate_key()
}

// ---------------------------------------------------------------- provider

/// The test OpenID provider, a child process stopped on drop.
pub struct Provider {
    pub issuer: String,
    child: Child,
}

impl Provider {
    pub fn start(config: Value) -> Self {
        let root = repo_root();
        assert!(
            root.join("demo/provider/node_modules/oidc-provider")
                .is_dir(),
            "demo/provider/node_modules is missing: run ./scripts/test.sh (or `npm ci` in demo/provider)"
        );
        let mut child = Command::new("node")
            .arg(root.join("demo/provider/provider.mjs"))
            .env("PROVIDER_CONFIG", config.to_string())
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node must be installed to run the test provider");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = tx.send(issuer.trim().to_owned());
                }
            }
        });
        let issuer = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the test provider did not print READY within 20 s"));
        Self { issuer, child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The provider's discovery document.
    pub async fn discovery(&self) -> Value {
        reqwest::get(self.url("/.well-known/openid-configuration"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// RFC 7662 introspection as the API client: is this access token active?
    pub async fn introspect(&self, token: &str) -> Value {
        let endpoint = self.discovery().await["introspection_endpoint"]
            .as_str()
            .unwrap()
            .to_owned();
        reqwest::Client::new()
            .post(endpoint)
            .basic_auth(API_CLIENT_ID, Some(API_CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Token endpoint grants of `client_id`, counted by the provider itself:
    /// `{"refresh_token": {"success": n, "error": m, "errors": {...}}, ...}`.
    pub async fn grants(&self, client_id: &str) -> Value {
        reqwest::get(self.url(&format!("/test/grants?client_id={client_id}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Successful grants of `client_id` by grant type and target (`resource` or
    /// `audience`), counted by the provider: `{"refresh_token": {"https://a/": 2}}`.
    pub async fn grants_by_target(&self, client_id: &str) -> Value {
        reqwest::get(self.url(&format!("/test/grants-by-target?client_id={client_id}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// How many grants of `grant_type` succeeded / failed for our client.
    pub async fn grant_count(&self, grant_type: &str) -> (u64, u64) {
        let g = self.grants(CLIENT_ID).await;
        (
            g[grant_type]["success"].as_u64().unwrap_or(0),
            g[grant_type]["error"].as_u64().unwrap_or(0),
        )
    }

    /// Freezes the provider (SIGSTOP): connections are accepted by the kernel but
    /// never answered — an unreachable, timing-out provider.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }

    /// Revokes every grant of `sub` at the provider (an administrator ends the user's access).
    pub async fn revoke_grants(&self, sub: &str) {
        let r = reqwest::Client::new()
            .post(self.url(&format!("/test/revoke-grants?sub={sub}")))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// `claims` signed with the provider's own signing key (RS256), `typ` in the
    /// header when given: a token shaped like another provider's.
    pub async fn sign(&self, claims: &Value, typ: Option<&str>) -> String {
        let answer: Value = reqwest::Client::new()
            .post(self.url("/test/sign"))
            .json(&json!({ "claims": claims, "typ": typ }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["jwt"].as_str().unwrap().to_owned()
    }

    /// From now on the ID tokens of refreshes have these claims replaced (`null`
    /// removes one), re-signed with the provider's key; `{}` turns it off.
    pub async fn tamper_refreshed_id_tokens(&self, claims: Value) {
        let r = reqwest::Client::new()
            .post(self.url("/test/refresh-id-token"))
            .json(&claims)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Every opaque token and code the provider issued for `sub`.
    pub async fn issued_values(&self, sub: &str) -> Vec<String> {
        let v: Value = reqwest::get(self.url(&format!("/test/issued?sub={sub}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_object()
            .unwrap()
            .values()
            .flat_map(|list| list.as_array().cloned().unwrap_or_default())
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

impl Drop for Provider {
    fn drop(&mut self) {
        signal(self.child.id(), "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- upstream

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    pub body_sha256: String,
}

/// A real HTTP upstream on a free port. It records every request and answers
/// according to the path:
/// - `/…/slow…` waits 3 s first;
/// - `/…/download?bytes=N[&delay_ms=D]` streams N bytes (pausing D ms before each 64 KiB);
/// - anything else: JSON describing the request, with hop-by-hop headers added to
///   the response (which Portcullis must drop).
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let record = record.clone();
            async move { upstream_answer(request, record).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream_answer(
    request: axum::extract::Request,
    record: Arc<Mutex<Vec<Seen>>>,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut len = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        len += chunk.len();
        ctx.update(&chunk);
    }
    let sha = hex(ctx.finish().as_ref());
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    record.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        path_and_query: pq.clone(),
        headers: parts.headers.clone(),
        body_len: len,
        body_sha256: sha.clone(),
    });
    let path = parts.uri.path();
    if path.contains("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if path.ends_with("/download") {
        let q: HashMap<String, String> =
            form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let n: usize = q.get("bytes").and_then(|n| n.parse().ok()).unwrap_or(0);
        // `delay_ms`: a pause before each 64 KiB chunk (a slow, long download).
        let delay =
            Duration::from_millis(q.get("delay_ms").and_then(|d| d.parse().ok()).unwrap_or(0));
        let chunks =
            futures_util::stream::iter((0..n).step_by(65536)).then(move |start| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let size = (n - start).min(65536);
                Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size]))
            });
        return axum::response::Response::builder()
            .header("content-type", "application/octet-stream")
            .body(Body::from_stream(chunks))
            .unwrap();
    }
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(v.to_str().unwrap_or("<binary>").to_owned()),
            )
        })
        .collect();
    let body = json!({
        "method": parts.method.as_str(),
        "path": pq,
        "headers": headers,
        "body_len": len,
        "body_sha256": sha,
    });
    axum::response::Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("x-upstream", "yes")
        .header("keep-alive", "timeout=5")
        .header("proxy-authenticate", "Basic realm=x")
        .header("x-hop-from-upstream", "should-be-dropped")
        .header("connection", "x-hop-from-upstream")
        .body(Body::from(body.to_string()))
        .unwrap()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

// ---------------------------------------------------------------- test signing keys

/// An ES256 key the test holds. Its public half can be published in the provider's
/// JWKS, so tokens the test signs verify as the provider's.
pub struct TestSigner {
    pub kid: String,
    pkcs8: Vec<u8>,
    public_jwk: Value,
}

impl TestSigner {
    pub fn new(kid: &str) -> Self {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        use base64::Engine;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref(); // 0x04 || x || y
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let public_jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        Self {
            kid: kid.to_owned(),
            pkcs8: pkcs8.as_ref().to_vec(),
            public_jwk,
        }
    }

    pub fn public_jwk(&self) -> Value {
        self.public_jwk.clone()
    }

    /// The private key as PKCS#8 PEM (for `oidc.private_key_file`).
    pub fn private_pem(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    /// Signs `claims` with this key; `typ` goes in the header when given.
    pub fn sign(&self, claims: &Value, typ: Option<&str>) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        )
        .unwrap()
    }
}

/// An unsigned JWT (`alg: none`).
pub fn unsigned_jwt(claims: &Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "logout+jwt"})),
        b64(claims)
    )
}

/// An HS256 JWT keyed with `secret` (the "public key as HMAC secret" attack).
pub fn hmac_jwt(claims: &Value, secret: &[u8], kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    header.typ = Some("logout+jwt".into());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

// ---------------------------------------------------------------- gateway

/// The `portcullis` binary, started with a config file; stopped on drop.
pub struct Gateway {
    pub origin: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    child: Option<Child>,
    /// Extra environment of the process (e.g. `OTEL_*`).
    env: Vec<(String, String)>,
}

/// A config for a gateway that needs no provider (its issuer is unreachable and only
/// `token = "none"` routes are used): one worker on `127.0.0.1:port`, a memory store.
/// `server` holds extra lines of `[server]` (and may open `[server.tls]`), `routes`
/// the `[[routes]]` tables.
pub fn standalone_config(port: u16, public_origin: &str, server: &str, routes: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_origin = "{public_origin}"
workers = 1
{server}
[oidc]
issuer = "http://127.0.0.1:1"
client_id = "c"
client_secret = "s"
http_timeout = "1s"
[session]
store = "memory"
keys = ["{key}"]
{routes}
"#,
        key = random_key(),
    )
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

impl Gateway {
    pub fn start(port: u16, config: &str) -> Self {
        Self::start_with_env(port, config, &[])
    }

    /// Like [`Gateway::start`] for a config with `[server.tls]`: ready once it
    /// listens (the health probe speaks plain HTTP).
    pub fn start_tls(port: u16, config: &str) -> Self {
        Self::start_with_env(port, config, &[("PORTCULLIS_TEST_TLS", "1")])
    }

    /// Like [`Gateway::start`], with extra environment variables.
    pub fn start_with_env(port: u16, config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut gw = Self {
            origin: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            config_path,
            child: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        gw.spawn();
        gw
    }

    fn spawn(&mut self) {
        let mut child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info,portcullis=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.tee_logs(&mut child);
        self.child = Some(child);
        self.wait_ready();
    }

    /// Copies the gateway's stderr to the test's stderr and appends it to
    /// [`Gateway::log_path`], so a test can read what the gateway logged.
    fn tee_logs(&self, child: &mut Child) {
        use std::io::Write;
        let stderr = child.stderr.take().unwrap();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                let _ = writeln!(file, "{line}");
            }
        });
    }

    /// Where the gateway's stderr is collected (across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("portcullis.log")
    }

    /// Everything the gateway has logged so far. The copy runs on a thread; a short
    /// pause first lets the last lines land.
    pub fn logs(&self) -> String {
        std::thread::sleep(Duration::from_millis(200));
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`"-TERM"`, `"-HUP"`…) to the running gateway.
    pub fn signal(&self, sig: &str) {
        signal(self.pid().expect("the gateway is running"), sig);
    }

    /// Waits for the process to exit on its own; returns whether it did within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("portcullis exited before it was ready: {status}");
            }
            let tls = self.env.iter().any(|(k, _)| k == "PORTCULLIS_TEST_TLS");
            if tls && self.logs().contains("\"message\":\"listening\"") {
                self.origin = format!("https://localhost:{}", self.port);
                return;
            }
            if !tls && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                let ok = status_probe(&format!("{}/healthz", self.origin));
                if ok == Some(200) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "portcullis not ready within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tiny blocking status probe (the harness's own readiness check).
fn status_probe(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let url = ::url::Url::parse(url).ok()?;
    let mut s = std::net::TcpStream::connect((url.host_str()?, url.port()?)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        url.path()
    )
    .ok()?;
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .get(9..12)?
        .parse()
        .ok()
}

// ---------------------------------------------------------------- environment builder

/// Provider + upstream + Portcullis, configured together.
pub struct Env {
    pub provider: Provider,
    pub upstream: Upstream,
    /// The first instance; its address is the public origin.
    pub gateway: Gateway,
    /// More instances behind the same public origin (as behind a load balancer).
    pub others: Vec<Gateway>,
    pub redis: Option<RedisServer>,
    /// With `store("redis-cluster")`: the real Redis Cluster the instances share.
    pub redis_cluster: Option<RedisCluster>,
    /// With `store("redis-sentinel")`: master, replica and three sentinels.
    pub redis_sentinel: Option<RedisSentinel>,
    pub key: String,
}

#[path = "../support/redis_cluster.rs"]
mod redis_cluster;
pub use redis_cluster::RedisCluster;
#[path = "../support/redis_sentinel.rs"]
mod redis_sentinel;
pub use redis_sentinel::RedisSentinel;

/// A `redis-server` of the test's own on a free port; `--appendonly` so a restart
/// keeps what it had. Stopped on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is required (./scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Waits until Redis answers PING (not `-LOADING` while it reads its append-only file).
    pub fn wait_pong(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.command(&["PING"]).starts_with("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server does not answer PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs a command with redis-cli semantics through a raw RESP exchange.
    pub fn command(&self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct EnvBuilder {
    store: &'static str,
    instances: usize,
    userinfo: bool,
    access_token_ttl: u64,
    extra_routes: String,
    extra_session: String,
    extra_oidc: String,
    extra_tokens: String,
    extra_security: String,
    extra_server: String,
    static_dir: Option<PathBuf>,
    route_timeout: &'static str,
    auth_method: &'static str,
    extra_jwks: Vec<Value>,
    provider_options: serde_json::Map<String, Value>,
    client_key: Option<(Value, PathBuf)>,
    login_scopes: Option<String>,
}

impl Env {
    pub fn builder() -> EnvBuilder {
        EnvBuilder {
            store: "memory",
            instances: 1,
            userinfo: true,
            access_token_ttl: 300,
            extra_routes: String::new(),
            extra_session: String::new(),
            extra_oidc: String::new(),
            extra_tokens: String::new(),
            extra_security: String::new(),
            extra_server: String::new(),
            static_dir: None,
            route_timeout: "30s",
            auth_method: "client_secret_basic",
            extra_jwks: Vec::new(),
            provider_options: serde_json::Map::new(),
            client_key: None,
            login_scopes: None,
        }
    }

    pub fn browser(&self) -> Browser {
        Browser::new()
    }

    pub fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    /// POSTs a logout token to `/bff/backchannel-logout`, as a provider would.
    pub async fn backchannel_logout(&self, token: &str) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("logout_token", token)
            .finish();
        Browser::new()
            .send(
                Method::POST,
                &self.url("/bff/backchannel-logout"),
                &[("content-type", "application/x-www-form-urlencoded")],
                Some(Body::from(body)),
            )
            .await
    }
}

impl EnvBuilder {
    pub fn store(mut self, store: &'static str) -> Self {
        self.store = store;
        self
    }
    /// Several Portcullis instances on one Redis (or one SQLite file), behind one
    /// public origin.
    pub fn instances(mut self, n: usize) -> Self {
        self.instances = n;
        self
    }
    /// `oidc.scopes` instead of openid, profile, email, offline_access (a TOML array body).
    pub fn login_scopes(mut self, scopes: &str) -> Self {
        self.login_scopes = Some(scopes.to_owned());
        self
    }
    pub fn userinfo(mut self, on: bool) -> Self {
        self.userinfo = on;
        self
    }
    pub fn access_token_ttl(mut self, secs: u64) -> Self {
        self.access_token_ttl = secs;
        self
    }
    /// Extra `[[routes]]` TOML appended to the config; `{upstream}` stands for the
    /// test upstream's URL.
    pub fn routes(mut self, toml: &str) -> Self {
        self.extra_routes.push_str(toml);
        self
    }
    /// Extra lines in `[session]`.
    pub fn session(mut self, toml: &str) -> Self {
        self.extra_session.push_str(toml);
        self
    }
    /// Extra lines in `[oidc]`.
    pub fn oidc(mut self, toml: &str) -> Self {
        self.extra_oidc.push_str(toml);
        self
    }
    /// Extra lines in `[tokens]`.
    pub fn tokens(mut self, toml: &str) -> Self {
        self.extra_tokens.push_str(toml);
        self
    }
    pub fn static_dir(mut self, dir: &Path) -> Self {
        self.static_dir = Some(dir.to_owned());
        self
    }
    /// `private_key_jwt`: the client authenticates with `signer`'s key (PEM written
    /// to `dir`), registered at the provider by its public JWK; no client secret.
    pub fn private_key_jwt(mut self, signer: &TestSigner, dir: &Path) -> Self {
        let path = dir.join("client-key.pem");
        std::fs::write(&path, signer.private_pem()).unwrap();
        self.client_key = Some((signer.public_jwk(), path));
        self.auth_method = "private_key_jwt";
        self.extra_oidc.push_str(&format!(
            "private_key_file = {:?}\nprivate_key_alg = \"ES256\"\nprivate_key_id = {:?}\n",
            self.client_key.as_ref().unwrap().1.to_str().unwrap(),
            signer.kid
        ));
        self
    }

    /// No pushed authorization request: the parameters travel in the authorization
    /// URL, where a test can read (and an attacker could alter) them.
    pub fn plain_authorize(mut self) -> Self {
        self.extra_oidc.push_str("par = \"never\"\n");
        self
    }

    /// A setting of the test provider (see demo/provider/provider.mjs), e.g. `requirePAR`.
    pub fn provider_option(mut self, key: &str, value: Value) -> Self {
        self.provider_options.insert(key.to_owned(), value);
        self
    }

    /// Publishes `signer`'s public key in the provider's JWKS from the start.
    pub fn publish_key(mut self, signer: &TestSigner) -> Self {
        self.extra_jwks.push(signer.public_jwk());
        self
    }
    pub fn route_timeout(mut self, t: &'static str) -> Self {
        self.route_timeout = t;
        self
    }
    pub fn auth_method(mut self, m: &'static str) -> Self {
        self.auth_method = m;
        self
    }

    /// Extra lines in `[server]` (e.g. `admin_listen`).
    pub fn server(mut self, toml: &str) -> Self {
        self.extra_server.push_str(toml);
        self
    }

    /// Starts with extra lines in `[security]`.
    pub async fn start_with_security(mut self, toml: &str) -> Env {
        self.extra_security.push_str(toml);
        self.start().await
    }

    pub async fn start(self) -> Env {
        let port = free_port();
        let origin = format!("http://127.0.0.1:{port}");
        // The provider lives on `localhost`, Portcullis on `127.0.0.1`: two sites, as in production.
        let mut provider_config = json!({
            "port": 0,
            "host": "127.0.0.1",
            "issuerHost": "localhost",
            "accessTokenTTL": self.access_token_ttl,
            "extraJwks": self.extra_jwks,
            "clients": [
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "token_endpoint_auth_method": self.auth_method,
                    "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
                    "response_types": ["code"],
                    "redirect_uris": [format!("{origin}/bff/callback")],
                    "post_logout_redirect_uris": [format!("{origin}/")],
                    "backchannel_logout_uri": format!("{origin}/bff/backchannel-logout"),
                    "backchannel_logout_session_required": true
                },
                {
                    "client_id": API_CLIENT_ID,
                    "client_secret": API_CLIENT_SECRET,
                    "token_endpoint_auth_method": "client_secret_basic",
                    "grant_types": ["client_credentials"],
                    "response_types": [],
                    "redirect_uris": []
                }
            ]
        });
        if let Some((jwk, _)) = &self.client_key {
            let client = &mut provider_config["clients"][0];
            client.as_object_mut().unwrap().remove("client_secret");
            client["jwks"] = json!({ "keys": [jwk] });
            client["token_endpoint_auth_signing_alg"] = json!("ES256");
        }
        for (k, v) in &self.provider_options {
            provider_config[k] = v.clone();
        }
        let provider = Provider::start(provider_config);
        let redis = (self.store == "redis").then(RedisServer::start);
        let redis_cluster = (self.store == "redis-cluster").then(RedisCluster::start);
        let redis_sentinel = (self.store == "redis-sentinel").then(RedisSentinel::start);
        let redis_url = match (&redis, &redis_cluster, &redis_sentinel) {
            (Some(r), _, _) => r.url(),
            (_, Some(c), _) => c.url(),
            (_, _, Some(s)) => s.url(),
            _ => String::new(),
        };
        let upstream = Upstream::start().await;
        let key = random_key();
        let static_section = match &self.static_dir {
            Some(dir) => format!(
                "[static]\ndir = {:?}\nspa_fallback = true\n",
                dir.to_str().unwrap()
            ),
            None => String::new(),
        };
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:LISTEN_PORT"
public_origin = "{origin}"
drain_timeout = "5s"
{extra_server}

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
auth_method = "{auth_method}"
scopes = [{login_scopes}]
post_logout_redirect_uri = "{origin}/"
userinfo = {userinfo}
{extra_oidc}

[session]
store = "{store}"
redis_url = "{redis_url}"
sqlite_path = "sessions.db"
keys = ["{key}"]
{extra_session}

[tokens]
{extra_tokens}

[security]
{extra_security}

[[routes]]
prefix = "/api"
upstream = "{upstream}"
token = "user"
timeout = "{route_timeout}"

[[routes]]
prefix = "/public"
upstream = "{upstream}"
token = "none"
strip_prefix = true

[[routes]]
prefix = "/maybe"
upstream = "{upstream}"
token = "user_or_none"
{extra_routes}
{static_section}
"#,
            issuer = provider.issuer,
            auth_method = self.auth_method,
            login_scopes = self
                .login_scopes
                .as_deref()
                .unwrap_or(r#""openid", "profile", "email", "offline_access""#),
            userinfo = self.userinfo,
            extra_oidc = self.extra_oidc,
            store = if self.store.starts_with("redis-") {
                "redis"
            } else {
                self.store
            },
            extra_session = self.extra_session,
            extra_tokens = self.extra_tokens,
            extra_security = self.extra_security,
            extra_server = self.extra_server,
            upstream = upstream.url(),
            route_timeout = self.route_timeout,
            extra_routes = self.extra_routes.replace("{upstream}", &upstream.url()),
            redis_url = redis_url,
        );
        let gateway = Gateway::start(port, &config.replace("LISTEN_PORT", &port.to_string()));
        // With the SQLite store, the other instances share the first one's file (one host).
        let shared_file = format!(
            "sqlite_path = {:?}",
            gateway.dir.path().join("sessions.db").to_str().unwrap()
        );
        let config = config.replace("sqlite_path = \"sessions.db\"", &shared_file);
        let others = (1..self.instances)
            .map(|_| {
                let p = free_port();
                let mut g = Gateway::start(p, &config.replace("LISTEN_PORT", &p.to_string()));
                g.origin = format!("http://127.0.0.1:{p}");
                g
            })
            .collect();
        Env {
            provider,
            upstream,
            gateway,
            others,
            redis,
            redis_cluster,
            redis_sentinel,
            key,
        }
    }
}

// ---------------------------------------------------------------- browser

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn location(&self) -> String {
        self.headers
            .get("location")
            .unwrap_or_else(|| panic!("no Location in {} answer: {}", self.status, self.text()))
            .to_str()
            .unwrap()
            .to_owned()
    }
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
    pub fn sets_cookie(&self, name: &str) -> bool {
        self.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{name}=")) && !c.contains("Max-Age=0"))
    }
    /// Asserts the contract's JSON error.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(self.json()["error"], code, "body: {}", self.text());
        assert!(self.json()["error_description"].is_string());
    }
}

/// Cookies by `host:port`, as (name, value) pairs.
type CookieJar = HashMap<String, Vec<(String, String)>>;

/// A cookie-keeping client with redirects off. Cookies are kept per host:port and
/// sent to that host:port only (attributes other than deletion are ignored).
#[derive(Clone)]
pub struct Browser {
    client: reqwest::Client,
    jar: Arc<Mutex<CookieJar>>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            // A fresh connection per request: a restarted gateway leaves no stale pool behind.
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Self {
            client,
            jar: Arc::default(),
        }
    }

    fn site(url: &::url::Url) -> String {
        format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port_or_known_default().unwrap()
        )
    }

    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let url = ::url::Url::parse(url).unwrap();
        let jar = self.jar.lock().unwrap();
        jar.get(&Self::site(&url))?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub fn set_cookie(&self, url: &str, name: &str, value: &str) {
        let url = ::url::Url::parse(url).unwrap();
        let mut jar = self.jar.lock().unwrap();
        let cookies = jar.entry(Self::site(&url)).or_default();
        cookies.retain(|(n, _)| n != name);
        cookies.push((name.to_owned(), value.to_owned()));
    }

    pub fn clear_cookie(&self, url: &str, name: &str) {
        let url = ::url::Url::parse(url).unwrap();
        if let Some(c) = self.jar.lock().unwrap().get_mut(&Self::site(&url)) {
            c.retain(|(n, _)| n != name);
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Body>,
    ) -> Answer {
        let body = body.map(|b| reqwest::Body::wrap_stream(b.into_data_stream()));
        self.send_body(method, url, headers, body).await
    }

    /// Like [`Browser::send`] with a reqwest body: one made from bytes is sent with a
    /// `Content-Length` (servers that can't read chunked requests, like WSGI's).
    pub async fn send_body(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<reqwest::Body>,
    ) -> Answer {
        let parsed = ::url::Url::parse(url).unwrap();
        let mut request = self.client.request(method, url);
        let cookie_header = {
            let jar = self.jar.lock().unwrap();
            jar.get(&Self::site(&parsed)).map(|c| {
                c.iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        };
        if let Some(c) = cookie_header.filter(|c| !c.is_empty()) {
            request = request.header("cookie", c);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        {
            let mut jar = self.jar.lock().unwrap();
            let cookies = jar.entry(Self::site(&parsed)).or_default();
            for sc in headers.get_all("set-cookie") {
                let c = cookie::Cookie::parse(sc.to_str().unwrap().to_owned()).unwrap();
                cookies.retain(|(n, _)| n != c.name());
                let deleted = c.value().is_empty()
                    || c.max_age().is_some_and(|a| a.is_zero() || a.is_negative());
                if !deleted {
                    cookies.push((c.name().to_owned(), c.value().to_owned()));
                }
            }
        }
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.send(Method::GET, url, &[], None).await
    }

    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(Method::GET, url, headers, None).await
    }

    /// `GET /bff/user` with the CSRF header.
    pub async fn user(&self, env: &Env) -> Answer {
        self.get_with(&env.url("/bff/user"), &[("x-csrf", "1")])
            .await
    }

    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.send(
            Method::POST,
            url,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(Body::from(body)),
        )
        .await
    }

    /// Like [`Browser::post_form`], with a `Content-Length` instead of a chunked body.
    pub async fn post_form_sized(&self, url: &str, form: &[(&str, &str)]) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.send_body(
            Method::POST,
            url,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(reqwest::Body::from(body)),
        )
        .await
    }

    /// Starts a login at Portcullis; returns the provider's authorization URL.
    pub async fn start_login(&self, env: &Env, return_url: &str) -> String {
        let q = form_urlencoded::Serializer::new(String::new())
            .append_pair("returnUrl", return_url)
            .finish();
        let r = self.get(&env.url(&format!("/bff/login?{q}"))).await;
        assert_eq!(r.status, 302, "login: {}", r.text());
        let location = r.location();
        assert!(
            location.starts_with(&env.provider.issuer),
            "login redirects to the provider: {location}"
        );
        location
    }

    /// Signs in at the provider from an authorization URL; returns the URL the
    /// provider redirects back to (Portcullis's callback with code, state, iss).
    pub async fn provider_login(&self, authorize_url: &str, user: &str, password: &str) -> String {
        let mut url = authorize_url.to_owned();
        for _ in 0..10 {
            let r = self.get(&url).await;
            assert!(
                r.status.is_redirection() || r.status == 200,
                "{url}: {} {}",
                r.status,
                r.text()
            );
            if r.status == 200 {
                // The login form.
                assert!(
                    r.text().contains("login-form"),
                    "expected the login form at {url}: {}",
                    r.text()
                );
                let action = format!("{}/login", url.split('?').next().unwrap());
                let posted = self
                    .post_form(&action, &[("login", user), ("password", password)])
                    .await;
                assert!(
                    posted.status.is_redirection(),
                    "login POST: {} {}",
                    posted.status,
                    posted.text()
                );
                url = resolve(&action, &posted.location());
                continue;
            }
            let next = resolve(&url, &r.location());
            if next.contains("/bff/callback") {
                return next;
            }
            url = next;
        }
        panic!("the provider login did not come back to the callback");
    }

    /// The whole login: `/bff/login` → provider → `/bff/callback`. Returns the callback's answer.
    pub async fn login(&self, env: &Env, user: &str, password: &str, return_url: &str) -> Answer {
        let authorize = self.start_login(env, return_url).await;
        let callback = self.provider_login(&authorize, user, password).await;
        let r = self.get(&callback).await;
        assert_eq!(r.status, 302, "callback: {}", r.text());
        assert!(
            r.sets_cookie(COOKIE),
            "callback sets the session cookie: {:?}",
            r.set_cookies()
        );
        r
    }

    pub fn session_cookie(&self, env: &Env) -> Option<String> {
        self.cookie(&env.gateway.origin, COOKIE)
    }

    /// Gives `other` (another instance behind the same public origin) this
    /// browser's session cookie, as a load balancer would route the same browser.
    pub fn share_session_with(&self, env: &Env, other: &Gateway) {
        if let Some(v) = self.session_cookie(env) {
            self.set_cookie(&other.origin, COOKIE, &v);
        } else {
            self.clear_cookie(&other.origin, COOKIE);
        }
    }
}

/// Resolves a Location against the URL it came from.
pub fn resolve(base: &str, location: &str) -> String {
    ::url::Url::parse(base)
        .unwrap()
        .join(location)
        .unwrap()
        .to_string()
}

/// The query parameters of a URL.
pub fn query(url: &str) -> HashMap<String, String> {
    ::url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// Replaces (or adds, or with `None` removes) one query parameter.
pub fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let mut u = ::url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != name)
        .collect();
    {
        let mut q = u.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        if let Some(v) = value {
            q.append_pair(name, v);
        }
    }
    u.to_string()
}

pub fn header_value(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap()
}
