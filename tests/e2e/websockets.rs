//! WebSockets through Portcullis (issue 14): a real WebSocket upstream
//! (tokio-tungstenite) and a real WebSocket client, the handshake's CSRF and
//! bad-input answers, and sockets that end with their session — on the same
//! instance and on another one sharing a real Redis.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::*;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// Request headers of one handshake, as (name, value).
type Headers = Vec<(String, String)>;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Echoes every message back.
    Echo,
    /// Refuses every handshake with 403 (the library's own refusal).
    Refuse,
    /// Accepts the TCP connection and never answers.
    Silent,
}

/// A real WebSocket server on a free port.
struct WsUpstream {
    port: u16,
    /// Request headers of every handshake that reached it.
    handshakes: Arc<Mutex<Vec<Headers>>>,
    /// The close frames it received (code, reason).
    closes: Arc<Mutex<Vec<(u16, String)>>>,
    connections: Arc<AtomicUsize>,
}

impl WsUpstream {
    async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let closes = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c, n) = (handshakes.clone(), closes.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                n.fetch_add(1, Ordering::SeqCst);
                let (h, c) = (h.clone(), c.clone());
                tokio::spawn(async move {
                    if mode == Mode::Silent {
                        let _hold = stream;
                        tokio::time::sleep(Duration::from_secs(120)).await;
                        return;
                    }
                    #[allow(clippy::result_large_err)] // the library's callback type
                    let callback = |req: &Request, mut resp: Response| {
                        if let Some(p) = req.headers().get("sec-websocket-protocol") {
                            let first = p.to_str().unwrap().split(',').next().unwrap().trim();
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", first.parse().unwrap());
                        }
                        h.lock().unwrap().push(
                            req.headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect(),
                        );
                        if mode == Mode::Refuse {
                            let mut refusal = ErrorResponse::new(Some("no sockets here".into()));
                            *refusal.status_mut() = http::StatusCode::FORBIDDEN;
                            return Err(refusal);
                        }
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        match m {
                            Message::Close(frame) => {
                                let f = frame
                                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                                    .unwrap_or((1005, String::new()));
                                c.lock().unwrap().push(f);
                                break;
                            }
                            m @ (Message::Text(_) | Message::Binary(_)) => {
                                let sent = ws.send(m).await;
                                if sent.is_err() {
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        Self {
            port,
            handshakes,
            closes,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn handshake_count(&self) -> usize {
        self.handshakes.lock().unwrap().len()
    }

    fn last_handshake(&self) -> Vec<(String, String)> {
        self.handshakes.lock().unwrap().last().cloned().unwrap()
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `[[routes]]` for the upstream at `url`: `/ws` (user token), with extra lines.
fn ws_route(prefix: &str, url: &str, extra: &str) -> String {
    format!(
        "\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{url}\"\ntoken = \"user\"\nwebsocket = true\n{extra}\n"
    )
}

/// Opens a WebSocket to `url` (http:// of the gateway) with these headers.
async fn connect(url: &str, headers: &[(&str, String)]) -> Result<Client, String> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut request = ws_url.into_client_request().unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(format!(
            "{} {}",
            r.status().as_u16(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default())
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The headers a same-origin page's `new WebSocket()` sends, with the session cookie.
fn same_origin(env: &Env, browser: &Browser) -> Vec<(&'static str, String)> {
    vec![
        ("origin", env.gateway.origin.clone()),
        (
            "cookie",
            format!("{COOKIE}={}", browser.session_cookie(env).unwrap()),
        ),
    ]
}

/// A same-origin socket on `/ws` with the browser's session.
async fn open_ws(env: &Env, browser: &Browser) -> Client {
    connect(&env.url("/ws"), &same_origin(env, browser))
        .await
        .unwrap()
}

/// A raw handshake (for the malformed ones a real client won't send): the status code
/// and body of the answer.
async fn raw_handshake(port: u16, path: &str, lines: &[String]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for l in lines {
        head.push_str(l);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer to the handshake")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.get(9..12).unwrap_or("000").parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits for the close frame Portcullis sends; returns it and when it came.
async fn wait_close(ws: &mut Client, limit: Duration) -> (Option<(u16, String)>, Instant) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("the socket was not closed within {limit:?}"),
            Ok(Some(Ok(Message::Close(f)))) => {
                return (
                    f.map(|f| (u16::from(f.code), f.reason.to_string())),
                    Instant::now(),
                );
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return (None, Instant::now()),
        }
    }
}

async fn echo_round_trips(ws: &mut Client, n: usize) -> f64 {
    let started = Instant::now();
    for i in 0..n {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("m{i}")),
            other => panic!("no echo: {other:?}"),
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn logout(env: &Env, browser: &Browser) {
    let me = browser.user(env).await;
    assert_eq!(me.status, 200, "{}", me.text());
    let url = me.json()["bff:logout_url"].as_str().unwrap().to_owned();
    let r = browser.get(&env.url(&url)).await;
    assert_eq!(r.status, 302, "{}", r.text());
}

/// Waits (up to 10 s) until `check` holds; panics with `what` otherwise.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap())
        .unwrap()
}

#[tokio::test]
async fn a_websocket_opens_echoes_and_carries_the_users_token_only() {
    let up = WsUpstream::start(Mode::Echo).await;
    let env = Env::builder()
        .routes(&ws_route("/ws", &up.url(), ""))
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let mut headers = same_origin(&env, &browser);
    headers.push(("sec-websocket-protocol", "chat".into()));
    headers.push(("authorization", "Bearer forged".into()));
    headers.push(("sec-websocket-extensions", "permessage-deflate".into()));
    let mut ws = connect(&env.url("/ws/chat"), &headers)
        .await
        .expect("the handshake succeeds");
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello"),
        "text echoed"
    );
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );

    let seen = up.last_handshake();
    let auth = header(&seen, "authorization").expect("a token upstream");
    assert!(
        auth.starts_with("Bearer ") && auth != "Bearer forged",
        "{auth}"
    );
    assert!(
        header(&seen, "cookie").is_none_or(|c| !c.contains(COOKIE)),
        "no session cookie upstream: {seen:?}"
    );
    assert_eq!(
        header(&seen, "upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
    assert_eq!(header(&seen, "sec-websocket-version"), Some("13"));
    assert_eq!(header(&seen, "sec-websocket-protocol"), Some("chat"));
    assert!(
        header(&seen, "sec-websocket-extensions").is_none(),
        "{seen:?}"
    );
    assert!(header(&seen, "x-csrf").is_none(), "{seen:?}");
    // The TCP peer reaches the upstream as on every proxied request.
    assert_eq!(
        header(&seen, "x-forwarded-for"),
        Some("127.0.0.1"),
        "{seen:?}"
    );

    // Echo rate through Portcullis and direct (reported, not asserted).
    let through = echo_round_trips(&mut ws, 2000).await;
    let (mut direct, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/", up.port))
        .await
        .unwrap();
    let direct_rate = echo_round_trips(&mut direct, 2000).await;
    println!(
        "MEASURE websocket echo round trips/s: through Portcullis {through:.0}, direct {direct_rate:.0} (ratio {:.2})",
        through / direct_rate
    );
    ws.close(None).await.unwrap();
    let _ = ws.next().await;
    eventually("the upstream got the browser's close", || {
        up.closes
            .lock()
            .unwrap()
            .iter()
            .any(|(c, _)| *c == 1000 || *c == 1005)
    })
    .await;
}

#[tokio::test]
async fn handshakes_from_other_origins_and_without_a_session_are_refused_before_the_upstream() {
    let up = WsUpstream::start(Mode::Echo).await;
    let env = Env::builder()
        .routes(&ws_route("/ws", &up.url(), ""))
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let cookie = format!("{COOKIE}={}", browser.session_cookie(&env).unwrap());
    let port = env.gateway.port;
    let foreign = [
        "http://evil.example".to_owned(),
        "null".to_owned(),
        format!("http://127.0.0.1:{port}.evil.example"),
        format!("http://127.0.0.1:{port}/"),
        format!("https://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{}", port + 1),
        format!("http://localhost:{port}"),
        format!("HTTP://127.0.0.1:{port}"),
        format!("http://evil.example, http://127.0.0.1:{port}"),
        String::new(),
    ];
    for origin in &foreign {
        let e = connect(
            &env.url("/ws"),
            &[("origin", origin.clone()), ("cookie", cookie.clone())],
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("Origin {origin:?} was accepted"));
        assert!(
            e.starts_with("403") && e.contains("csrf"),
            "{origin:?}: {e}"
        );
    }
    // No Origin at all (not a browser, or a hand-made page request).
    let (status, body) = raw_handshake(
        port,
        "/ws",
        &[
            "Upgrade: websocket".into(),
            "Connection: Upgrade".into(),
            "Sec-WebSocket-Version: 13".into(),
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".into(),
            format!("Cookie: {cookie}"),
        ],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("csrf"), "{body}");
    // The right Origin but a cross-site fetch.
    let e = connect(
        &env.url("/ws"),
        &[
            ("origin", env.gateway.origin.clone()),
            ("sec-fetch-site", "cross-site".into()),
            ("cookie", cookie.clone()),
        ],
    )
    .await
    .unwrap_err();
    assert!(e.starts_with("403") && e.contains("csrf"), "{e}");
    // No session: 401.
    let e = connect(&env.url("/ws"), &[("origin", env.gateway.origin.clone())])
        .await
        .unwrap_err();
    assert!(e.starts_with("401") && e.contains("unauthenticated"), "{e}");
    // A route without `websocket = true`: 400, never upgraded.
    let before = env.upstream.requests().len();
    let e = connect(&env.url("/api/socket"), &same_origin(&env, &browser))
        .await
        .unwrap_err();
    assert!(e.starts_with("400") && e.contains("invalid_request"), "{e}");
    assert_eq!(
        env.upstream.requests().len(),
        before,
        "nothing reached /api's upstream"
    );
    assert_eq!(
        up.handshake_count(),
        0,
        "nothing reached the WebSocket upstream"
    );
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);

    // Same origin with the session: accepted.
    open_ws(&env, &browser).await;
    assert_eq!(up.handshake_count(), 1);
}

#[tokio::test]
async fn malformed_handshakes_the_cap_and_upstreams_that_refuse_or_never_answer() {
    let echo = WsUpstream::start(Mode::Echo).await;
    let refuse = WsUpstream::start(Mode::Refuse).await;
    let silent = WsUpstream::start(Mode::Silent).await;
    let routes = format!(
        "{}{}{}",
        ws_route("/ws", &echo.url(), "max_websockets_per_session = 2"),
        ws_route("/refuse", &refuse.url(), ""),
        ws_route("/silent", &silent.url(), "timeout = \"1s\""),
    );
    let env = Env::builder().routes(&routes).start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let cookie = format!("Cookie: {COOKIE}={}", browser.session_cookie(&env).unwrap());
    let origin = format!("Origin: {}", env.gateway.origin);
    let port = env.gateway.port;
    let base = |key: &str, version: &str| {
        let mut l = vec![
            "Upgrade: websocket".to_owned(),
            "Connection: Upgrade".to_owned(),
            cookie.clone(),
            origin.clone(),
        ];
        if !key.is_empty() {
            l.push(format!("Sec-WebSocket-Key: {key}"));
        }
        if !version.is_empty() {
            l.push(format!("Sec-WebSocket-Version: {version}"));
        }
        l
    };
    for (key, version) in [
        ("", "13"),
        ("short", "13"),
        ("dGhlIHNhbXBsZSBub25jZQ", "13"),
        ("dGhlIHNhbXBsZSBub25jZSBsb25nZXI=", "13"),
        ("!!!!!!!!!!!!!!!!!!!!!!==", "13"),
        ("dGhlIHNhbXBsZSBub25jZQ==", "8"),
        ("dGhlIHNhbXBsZSBub25jZQ==", ""),
        ("dGhlIHNhbXBsZSBub25jZQ==", "13, 8"),
    ] {
        let (status, body) = raw_handshake(port, "/ws", &base(key, version)).await;
        assert_eq!(status, 400, "key {key:?} version {version:?}: {body}");
        assert!(body.contains("invalid_request"), "{body}");
    }
    let mut two_keys = base("dGhlIHNhbXBsZSBub25jZQ==", "13");
    two_keys.push("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==".into());
    assert_eq!(raw_handshake(port, "/ws", &two_keys).await.0, 400);
    let mut post = base("dGhlIHNhbXBsZSBub25jZQ==", "13");
    post[1] = "Connection: keep-alive".into();
    assert_eq!(
        raw_handshake(port, "/ws", &post).await.0,
        400,
        "no Connection: upgrade"
    );
    assert_eq!(
        echo.handshake_count(),
        0,
        "no malformed handshake reached the upstream"
    );

    // At most two sockets per session on /ws; the third is refused, a fourth after one closed is not.
    let h = same_origin(&env, &browser);
    let mut one = connect(&env.url("/ws"), &h).await.unwrap();
    let _two = connect(&env.url("/ws"), &h).await.unwrap();
    let e = connect(&env.url("/ws"), &h).await.unwrap_err();
    assert!(e.starts_with("429") && e.contains("rate_limited"), "{e}");
    one.close(None).await.unwrap();
    let _ = one.next().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect(&env.url("/ws"), &h).await {
            Ok(_) => break,
            Err(e) if e.starts_with("429") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no room again after a close: {e}"),
        }
    }

    // An upstream that refuses: its answer passes through.
    let e = connect(&env.url("/refuse"), &h).await.unwrap_err();
    assert!(e.starts_with("403") && e.contains("no sockets here"), "{e}");
    assert_eq!(refuse.handshake_count(), 1);

    // An upstream that never answers: the route's timeout, 504.
    let started = Instant::now();
    let e = connect(&env.url("/silent"), &h).await.unwrap_err();
    assert!(
        e.starts_with("504") && e.contains("upstream_timeout"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_logout_closes_the_sessions_sockets_with_1008() {
    let up = WsUpstream::start(Mode::Echo).await;
    let env = Env::builder()
        .routes(&ws_route("/ws", &up.url(), ""))
        .start()
        .await;
    let alice = env.browser();
    let bob = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    bob.login(&env, "bob", "bob", "/").await;
    let mut a = open_ws(&env, &alice).await;
    let mut b = open_ws(&env, &bob).await;
    a.send(Message::text("x")).await.unwrap();
    a.next().await.unwrap().unwrap();

    let started = Instant::now();
    logout(&env, &alice).await;
    let (frame, at) = wait_close(&mut a, Duration::from_secs(5)).await;
    println!(
        "MEASURE logout-to-close, same instance: {:?}",
        at.duration_since(started)
    );
    assert_eq!(frame, Some((1008, "session ended".to_owned())));
    // The upstream was told too, and the other user's socket goes on.
    eventually("the upstream got 1001 session ended", || {
        up.closes
            .lock()
            .unwrap()
            .iter()
            .any(|(c, r)| *c == 1001 && r == "session ended")
    })
    .await;
    b.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        b.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    // The audit log names the stream's end.
    eventually("a stream_closed audit event with reason logout", || {
        let logs = env.gateway.logs();
        logs.contains("stream_closed") && logs.contains("\"reason\":\"logout\"")
    })
    .await;
}

#[tokio::test]
async fn a_logout_on_one_instance_closes_the_socket_on_another() {
    let up = WsUpstream::start(Mode::Echo).await;
    let sse = start_sse_upstream().await;
    let env = Env::builder()
        .store("redis")
        .instances(2)
        .routes(&ws_route("/ws", &up.url(), ""))
        .routes(&format!(
            "\n[[routes]]\nprefix = \"/events\"\nupstream = \"{sse}\"\ntoken = \"user\"\n"
        ))
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let other = &env.others[0];
    let mut ws = connect(
        &other.url("/ws"),
        &[
            ("origin", env.gateway.origin.clone()),
            (
                "cookie",
                format!("{COOKIE}={}", browser.session_cookie(&env).unwrap()),
            ),
        ],
    )
    .await
    .expect("the socket opens on the second instance");
    ws.send(Message::text("x")).await.unwrap();
    ws.next().await.unwrap().unwrap();

    // A server-sent event stream of the same session, on the second instance too.
    let events = read_events(
        other.url("/events"),
        format!("{COOKIE}={}", browser.session_cookie(&env).unwrap()),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    logout(&env, &browser).await;
    let (frame, at) = wait_close(&mut ws, Duration::from_secs(5)).await;
    println!(
        "MEASURE logout-to-close, other instance (Redis): {:?}",
        at.duration_since(started)
    );
    assert_eq!(frame, Some((1008, "session ended".to_owned())));
    let cut = tokio::time::timeout(Duration::from_secs(5), events)
        .await
        .expect("the event stream was cut off")
        .unwrap();
    println!(
        "MEASURE logout → SSE stream cut, other instance (Redis): {:?}",
        cut.duration_since(started)
    );
    eventually("reason ended_elsewhere on the other instance", || {
        other.logs().contains("ended_elsewhere")
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_frames_keeps_memory_flat_and_a_quiet_socket_is_closed_when_idle() {
    let up = WsUpstream::start(Mode::Echo).await;
    let routes = format!(
        "{}{}",
        ws_route("/ws", &up.url(), ""),
        ws_route("/quiet", &up.url(), "websocket_idle_timeout = \"1s\""),
    );
    let env = Env::builder().routes(&routes).start().await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let pid = env.gateway.pid().unwrap();
    let h = same_origin(&env, &browser);

    // 100 MB in 1 MiB binary frames, echoed back, read by the client as they come.
    let ws = connect(&env.url("/ws"), &h).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let before = rss_kib(pid);
    let frame = Bytes::from(vec![7u8; 1 << 20]);
    let sender = tokio::spawn(async move {
        for _ in 0..100 {
            tx.send(Message::Binary(frame.clone())).await.unwrap();
        }
        tx
    });
    let mut peak = before;
    let mut received = 0usize;
    let started = Instant::now();
    while received < 100 << 20 {
        match tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => received += b.len(),
            other => panic!("flood interrupted after {received} bytes: {other:?}"),
        }
        peak = peak.max(rss_kib(pid));
    }
    let _tx = sender.await.unwrap();
    println!(
        "MEASURE 100 MB frame flood: RSS before {before} KiB, peak {peak} KiB (+{} KiB), {:.0} MB/s",
        peak.saturating_sub(before),
        100.0 / started.elapsed().as_secs_f64()
    );
    assert!(
        peak < before + 200 * 1024,
        "memory grew with the flood: {before} → {peak} KiB"
    );

    // A client that sends nothing and reads nothing is closed after the idle timeout.
    let mut quiet = connect(&env.url("/quiet"), &h).await.unwrap();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (frame, _) = wait_close(&mut quiet, Duration::from_secs(5)).await;
    assert_eq!(frame, Some((1001, "idle timeout".to_owned())));
    assert!(started.elapsed() < Duration::from_secs(9));
}

/// A server-sent events upstream (axum): `/events` writes an event every 100 ms, forever.
async fn start_sse_upstream() -> String {
    let app = axum::Router::new().route(
        "/events",
        axum::routing::get(|| async {
            let events = futures_util::stream::unfold(0u64, |n| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((
                    Ok::<_, std::io::Error>(Bytes::from(format!("data: tick {n}\n\n"))),
                    n + 1,
                ))
            });
            (
                [
                    ("content-type", "text/event-stream"),
                    ("cache-control", "no-cache"),
                ],
                axum::body::Body::from_stream(events),
            )
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Reads an event stream at `url` with the session cookie: resolves to when it was cut
/// off, after at least one event arrived.
fn read_events(url: String, cookie: String) -> tokio::task::JoinHandle<Instant> {
    tokio::spawn(async move {
        let mut r = reqwest::Client::new()
            .get(url)
            .header("cookie", cookie)
            .header("x-csrf", "1")
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut events = 0;
        loop {
            match r.chunk().await {
                Ok(Some(c)) => events += c.windows(5).filter(|w| w == b"data:").count(),
                Ok(None) => panic!("the event stream ended by itself"),
                Err(_) => {
                    assert!(events > 0, "no event arrived before the cut");
                    return Instant::now();
                }
            }
        }
    })
}

/// A slow download through `/api` with the browser's session, read in a task: resolves
/// to when it was cut off (or panics if it finished or never started).
fn slow_download(env: &Env, browser: &Browser) -> tokio::task::JoinHandle<Instant> {
    let url = env.url("/api/download?bytes=100000000&delay_ms=50");
    let cookie = format!("{COOKIE}={}", browser.session_cookie(env).unwrap());
    tokio::spawn(async move {
        let mut r = reqwest::Client::new()
            .get(url)
            .header("cookie", cookie)
            .header("x-csrf", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut got = 0usize;
        loop {
            match r.chunk().await {
                Ok(Some(c)) => got += c.len(),
                Ok(None) => panic!("the download finished ({got} bytes): it was not cut off"),
                Err(_) => return Instant::now(),
            }
        }
    })
}

#[tokio::test]
async fn every_way_a_session_ends_closes_its_sockets_and_streamed_answers() {
    let up = WsUpstream::start(Mode::Echo).await;
    let admin = free_port();
    let env = Env::builder()
        .session("max_per_user = 1\n")
        .server(&format!("admin_listen = \"127.0.0.1:{admin}\"\n"))
        .routes(&ws_route("/ws", &up.url(), ""))
        .start()
        .await;
    let limit = Duration::from_secs(5);

    // Eviction by max_per_user: alice's second login ends the first session's socket.
    let first = env.browser();
    first.login(&env, "alice", "alice", "/").await;
    let mut ws1 = open_ws(&env, &first).await;
    let second = env.browser();
    let started = Instant::now();
    second.login(&env, "alice", "alice", "/").await;
    let (frame, at) = wait_close(&mut ws1, limit).await;
    assert_eq!(frame, Some((1008, "session ended".to_owned())));
    println!(
        "MEASURE max_per_user eviction → close: {:?} (login included)",
        at - started
    );

    // Back-channel logout: the socket and a streamed answer of that session end.
    let mut ws2 = open_ws(&env, &second).await;
    let download = slow_download(&env, &second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    second.logout_at_provider(&env).await;
    let (frame, at) = wait_close(&mut ws2, limit).await;
    assert_eq!(frame, Some((1008, "session ended".to_owned())));
    let cut = tokio::time::timeout(limit, download)
        .await
        .expect("download cut off")
        .unwrap();
    println!(
        "MEASURE back-channel logout → socket closed {:?}, download cut {:?}",
        at - started,
        cut - started
    );

    // /bff/logout cuts a streamed answer (a long download) of the session.
    let bob = env.browser();
    bob.login(&env, "bob", "bob", "/").await;
    let download = slow_download(&env, &bob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    logout(&env, &bob).await;
    let cut = tokio::time::timeout(limit, download)
        .await
        .expect("download cut off")
        .unwrap();
    println!("MEASURE /bff/logout → download cut: {:?}", cut - started);

    // The audit events and metrics are written as each stream's task winds down: wait for them.
    let series = [
        "portcullis_streams_closed_total{route=\"/ws\",kind=\"websocket\",reason=\"max_per_user\"} 1",
        "portcullis_streams_closed_total{route=\"/ws\",kind=\"websocket\",reason=\"backchannel_logout\"} 1",
        "portcullis_streams_closed_total{route=\"/api\",kind=\"stream\",reason=\"logout\"} 1",
        "portcullis_streams_open{route=\"/ws\",kind=\"websocket\"} 0",
        "portcullis_stream_duration_seconds_count{route=\"/ws\",kind=\"websocket\"} 2",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = env.gateway.logs();
        let metrics = env
            .browser()
            .get(&format!("http://127.0.0.1:{admin}/metrics"))
            .await
            .text();
        let missing_logs: Vec<_> = ["max_per_user", "backchannel_logout", "logout"]
            .into_iter()
            .filter(|r| {
                !(logs.contains("stream_closed") && logs.contains(&format!("\"reason\":\"{r}\"")))
            })
            .collect();
        let missing_series: Vec<_> = series.iter().filter(|s| !metrics.contains(*s)).collect();
        if missing_logs.is_empty() && missing_series.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no stream_closed for {missing_logs:?}, series {missing_series:?} missing from:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_revocation_by_another_process_and_the_idle_timeout_close_sockets_sqlite() {
    let up = WsUpstream::start(Mode::Echo).await;
    let env = Env::builder()
        .store("sqlite")
        .session("idle_timeout = \"4s\"\nabsolute_timeout = \"1h\"\n")
        .routes(&ws_route("/ws", &up.url(), ""))
        .start()
        .await;
    let alice = env.browser();
    let bob = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    bob.login(&env, "bob", "bob", "/").await;
    let mut a = open_ws(&env, &alice).await;
    let mut b = open_ws(&env, &bob).await;
    let opened = Instant::now();

    // `portcullis sessions revoke` is another process on the same SQLite file.
    let config = env.gateway.config_path.to_str().unwrap().to_owned();
    let dir = env.gateway.dir.path().to_owned();
    let revoked = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(binary())
            .args(["sessions", "revoke", "--sub", "alice", "--config", &config])
            .current_dir(dir)
            .env_remove("PORTCULLIS_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Instant::now()
    })
    .await
    .unwrap();
    let (frame, at) = wait_close(&mut a, Duration::from_secs(5)).await;
    assert_eq!(frame, Some((1008, "session ended".to_owned())));
    println!(
        "MEASURE sessions revoke (another process, SQLite) → close: {:?}",
        at.saturating_duration_since(revoked)
    );
    b.send(Message::text("on")).await.unwrap();
    assert_eq!(b.next().await.unwrap().unwrap(), Message::text("on"));

    // Bob's session times out (the socket is not activity): his socket ends with it.
    let (frame, at) = wait_close(&mut b, Duration::from_secs(10)).await;
    assert_eq!(frame, Some((1008, "session ended".to_owned())));
    println!("MEASURE idle timeout 4s → close after {:?}", at - opened);
    assert!(
        at - opened >= Duration::from_secs(3),
        "closed before the idle timeout"
    );
    eventually("reason idle_timeout", || {
        env.gateway.logs().contains("\"reason\":\"idle_timeout\"")
    })
    .await;
}

/// A wss upstream: the echo server behind TLS (rustls, a certificate of the test CA).
async fn start_wss_upstream(pki: &crate::ops::TestPki) -> (u16, Arc<AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (cert, key, _) = pki.leaf("upstream");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_upstreams_are_reached_over_the_routes_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::ops::TestPki::new();
    let (upstream, accepted) = start_wss_upstream(&pki).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let config = standalone_config(
        port,
        &origin,
        &format!("upstream_ca_file = {:?}\n", ca.to_str().unwrap()),
        &format!(
            "[[routes]]\nprefix = \"/live\"\nupstream = \"https://localhost:{upstream}\"\n\
             token = \"none\"\nwebsocket = true\n"
        ),
    );
    let gateway = Gateway::start(port, &config);
    let mut ws = connect(&gateway.url("/live/feed"), &[("origin", origin.clone())])
        .await
        .expect("wss through the route");
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Still no Origin, no socket, also on a route without a session.
    let e = connect(&gateway.url("/live/feed"), &[]).await.unwrap_err();
    assert!(e.starts_with("403"), "{e}");
}

#[tokio::test]
async fn a_refresh_answered_invalid_grant_closes_the_sessions_socket() {
    let up = WsUpstream::start(Mode::Echo).await;
    let env = Env::builder()
        .access_token_ttl(4)
        .userinfo(false)
        .routes(&ws_route("/ws", &up.url(), ""))
        .start()
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let mut ws = open_ws(&env, &browser).await;
    env.provider.revoke_grants("alice").await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // The next call needs a refresh; the provider answers invalid_grant; the session ends.
    browser
        .get_with(&env.url("/api/x"), &[("x-csrf", "1")])
        .await
        .assert_error(401, "session_expired");
    let (frame, _) = wait_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(frame, Some((1008, "session ended".to_owned())));
    eventually("reason invalid_grant", || {
        env.gateway.logs().contains("\"reason\":\"invalid_grant\"")
    })
    .await;
}

#[tokio::test]
async fn at_shutdown_open_sockets_get_going_away() {
    let up = WsUpstream::start(Mode::Echo).await;
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let config = standalone_config(
        port,
        &origin,
        "",
        &format!(
            "[[routes]]\nprefix = \"/live\"\nupstream = \"{}\"\ntoken = \"none\"\nwebsocket = true\n",
            up.url()
        ),
    );
    let mut gateway = Gateway::start(port, &config);
    let mut ws = connect(&gateway.url("/live"), &[("origin", origin.clone())])
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    gateway.signal("-TERM");
    let (frame, _) = wait_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(frame, Some((1001, "going away".to_owned())));
    eventually("the upstream got 1001 going away", || {
        up.closes
            .lock()
            .unwrap()
            .iter()
            .any(|(c, r)| *c == 1001 && r == "going away")
    })
    .await;
    assert!(
        gateway.wait_exit(Duration::from_secs(10)).is_some(),
        "the process exits"
    );
}

/// A browser on an https origin: the WebSocket comes through Portcullis's own TLS
/// listener (`[server.tls]`; the browser offers `http/1.1` by ALPN for it, as browsers do
/// when the server doesn't offer WebSockets over HTTP/2), is relayed to the upstream, and
/// the Origin rule holds there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_come_through_the_tls_listener() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let up = WsUpstream::start(Mode::Echo).await;
    let pki = crate::ops::TestPki::new();
    let (cert, key, _) = pki.leaf("localhost");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (cert, key) = (write("cert.pem", &cert), write("key.pem", &key));
    let port = free_port();
    let origin = format!("https://localhost:{port}");
    let config = standalone_config(
        port,
        &origin,
        &format!("[server.tls]\ncert = {cert:?}\nkey = {key:?}"),
        &format!(
            "[[routes]]\nprefix = \"/live\"\nupstream = \"{}\"\ntoken = \"none\"\nwebsocket = true\n",
            up.url()
        ),
    );
    let _gw = Gateway::start_tls(port, &config);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let open = |origin: Option<String>| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let stream = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .expect("TLS handshake with the listener");
            let mut request = format!("wss://localhost:{port}/live/feed")
                .into_client_request()
                .unwrap();
            if let Some(o) = origin {
                request.headers_mut().insert("origin", o.parse().unwrap());
            }
            tokio_tungstenite::client_async(request, stream)
                .await
                .map(|(ws, _)| ws)
                .map_err(|e| e.to_string())
        }
    };
    let mut ws = open(Some(origin.clone()))
        .await
        .expect("wss through the listener");
    for i in 0..3 {
        let text = format!("over the listener's tls {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.close(None).await.unwrap();
    // No Origin, or a foreign one: refused before the upstream, over TLS as in plain.
    let before = up.connections.load(Ordering::SeqCst);
    for bad in [None, Some("https://evil.example".to_owned())] {
        let e = open(bad.clone()).await.expect_err("refused");
        assert!(e.contains("403"), "{bad:?}: {e}");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), before);
}
