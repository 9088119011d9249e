//! gRPC through Portcullis: real tonic servers and clients (tonic's generic
//! `server::Grpc`/`client::Grpc` with prost messages and `tonic-prost`'s codec, so no
//! protoc), an `h2c://` route and an `https://` route (h2 by ALPN), the client talking
//! HTTP/2 to Portcullis's TLS listener.
//!
//! The routes take `token = "none"` with `csrf = false`: a gRPC client is not a browser
//! (no cookie jar, no `Origin`), and this gateway has no provider. A deployment would use
//! `token = "client"` the same way (see docs/configuration.md).
//!
//! Checked: unary, server-, client- and bidirectional streaming; `te: trailers` reaches
//! the upstream; a failing call's `grpc-status`/`grpc-message` (and a custom trailer)
//! come back; the route timeout answers a call whose headers never come. Measured:
//! unary calls/s through Portcullis vs direct, at several concurrencies over one client
//! connection (one upstream h2 connection per Portcullis runtime).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::uri::PathAndQuery;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::harness::*;
use crate::ops::TestPki;

#[derive(Clone, PartialEq, prost::Message)]
struct Echo {
    #[prost(string, tag = "1")]
    msg: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

fn echo(msg: &str, n: u32) -> Echo {
    Echo {
        msg: msg.to_owned(),
        n,
    }
}

type Codec = ProstCodec<Echo, Echo>;
type EchoStream = BoxStream<'static, Result<Echo, Status>>;

/// What the upstream saw of the last call.
#[derive(Default, Clone)]
struct SeenCall {
    te: Option<String>,
    authorization: Option<String>,
    version: Option<http::Version>,
}

/// The gRPC service `test.Echo`, served by tonic's generic server.
async fn dispatch(
    request: http::Request<hyper::body::Incoming>,
    seen: Arc<Mutex<SeenCall>>,
) -> http::Response<tonic::body::Body> {
    *seen.lock().unwrap() = SeenCall {
        te: header(&request, "te"),
        authorization: header(&request, "authorization"),
        version: Some(request.version()),
    };
    let mut grpc = tonic::server::Grpc::new(Codec::default());
    match request.uri().path() {
        "/test.Echo/Unary" => {
            let svc = tower::service_fn(|r: Request<Echo>| async move {
                let m = r.into_inner();
                Ok::<_, Status>(Response::new(echo(&format!("hello {}", m.msg), m.n + 1)))
            });
            grpc.unary(svc, request).await
        }
        "/test.Echo/Slow" => {
            let svc = tower::service_fn(|r: Request<Echo>| async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok::<_, Status>(Response::new(r.into_inner()))
            });
            grpc.unary(svc, request).await
        }
        "/test.Echo/Fail" => {
            let svc = tower::service_fn(|_: Request<Echo>| async move {
                let mut status = Status::not_found("no such thing: ünïcode");
                status
                    .metadata_mut()
                    .insert("x-detail", "from-the-upstream".parse().unwrap());
                Err::<Response<Echo>, _>(status)
            });
            grpc.unary(svc, request).await
        }
        "/test.Echo/Count" => {
            let svc = tower::service_fn(|r: Request<Echo>| async move {
                let n = r.into_inner().n;
                let items: EchoStream = futures_util::stream::iter(0..n)
                    .then(|i| async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok(echo("item", i))
                    })
                    .boxed();
                Ok::<_, Status>(Response::new(items))
            });
            grpc.server_streaming(svc, request).await
        }
        "/test.Echo/Sum" => {
            let svc = tower::service_fn(|r: Request<Streaming<Echo>>| async move {
                let mut s = r.into_inner();
                let (mut count, mut sum) = (0, 0);
                while let Some(m) = s.message().await? {
                    count += 1;
                    sum += m.n;
                }
                Ok::<_, Status>(Response::new(echo(&format!("{count} messages"), sum)))
            });
            grpc.client_streaming(svc, request).await
        }
        "/test.Echo/Chat" => {
            let svc = tower::service_fn(|r: Request<Streaming<Echo>>| async move {
                let replies: EchoStream = r
                    .into_inner()
                    .map(|m| m.map(|m| echo(&format!("re: {}", m.msg), m.n * 2)))
                    .boxed();
                Ok::<_, Status>(Response::new(replies))
            });
            grpc.streaming(svc, request).await
        }
        _ => Status::unimplemented("no such method").into_http(),
    }
}

fn header<B>(r: &http::Request<B>, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// A gRPC server on a free port: cleartext (h2c, prior knowledge) or TLS with ALPN `h2`.
struct GrpcUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<SeenCall>>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcUpstream {
    async fn start(tls: Option<&TestPki>) -> Self {
        let acceptor = tls.map(|pki| {
            let (cert, key, _) = pki.leaf("grpc-upstream");
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let seen: Arc<Mutex<SeenCall>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |r| {
                        let record = record.clone();
                        async move { Ok::<_, Infallible>(dispatch(r, record).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Self { addr, seen, task }
    }

    fn seen(&self) -> SeenCall {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    tonic::body::Body,
>;

/// An HTTP/2-only client (TLS verified against `ca_pem`, or h2c for `http://`).
fn h2_client(ca_pem: &str) -> HttpClient {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    // TCP_NODELAY, or small calls wait for delayed ACKs (~40 ms each).
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http2()
        .wrap_connector(tcp);
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector)
}

fn grpc(client: &HttpClient, origin: &str) -> tonic::client::Grpc<HttpClient> {
    tonic::client::Grpc::with_origin(client.clone(), origin.parse().unwrap())
}

fn path(p: &str) -> PathAndQuery {
    PathAndQuery::try_from(p).unwrap()
}

/// A gateway on `https://localhost:port` with an `h2c://` route (`/test.Echo`) and an
/// `https://` route (`/viatls`, prefix stripped), both `token = "none"`, `csrf = false`.
fn gateway(port: u16, dir: &Path, pki: &TestPki, h2c: SocketAddr, tls: SocketAddr) -> Gateway {
    let (cert, key, _) = pki.leaf("portcullis");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (ca, cert, key) = (
        write("ca.pem", &pki.ca_pem),
        write("cert.pem", &cert),
        write("key.pem", &key),
    );
    let config = standalone_config(
        port,
        &format!("https://localhost:{port}"),
        &format!("upstream_ca_file = {ca:?}\n[server.tls]\ncert = {cert:?}\nkey = {key:?}"),
        &format!(
            "[[routes]]\nprefix = \"/test.Echo\"\nupstream = \"h2c://127.0.0.1:{}\"\n\
             token = \"none\"\ncsrf = false\ntimeout = \"1s\"\n\
             [[routes]]\nprefix = \"/viatls\"\nupstream = \"https://localhost:{}\"\n\
             token = \"none\"\ncsrf = false\nstrip_prefix = true\ntimeout = \"1s\"\n\
             [[routes]]\nprefix = \"/h1only\"\nupstream = \"https://localhost:{}\"\n\
             token = \"none\"\ncsrf = false\nstrip_prefix = true\nhttp2 = false\n",
            h2c.port(),
            tls.port(),
            tls.port()
        ),
    );
    Gateway::start_tls(port, &config)
}

/// Every kind of call over `grpc`, with `prefix` before `/test.Echo/…`.
async fn all_call_kinds(client: &HttpClient, origin: &str, prefix: &str, up: &GrpcUpstream) {
    let p = |m: &str| path(&format!("{prefix}/test.Echo/{m}"));
    let mut g = grpc(client, origin);

    // Unary.
    g.ready().await.unwrap();
    let r = g
        .unary(
            Request::new(echo("alice", 41)),
            p("Unary"),
            Codec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r, echo("hello alice", 42));
    let seen = up.seen();
    assert_eq!(
        seen.te.as_deref(),
        Some("trailers"),
        "te: trailers reached the upstream"
    );
    assert_eq!(
        seen.version,
        Some(http::Version::HTTP_2),
        "the upstream spoke HTTP/2"
    );
    assert!(seen.authorization.is_none(), "token = \"none\"");

    // Server streaming: every item, in order, then the OK trailers.
    g.ready().await.unwrap();
    let mut s = g
        .server_streaming(Request::new(echo("", 20)), p("Count"), Codec::default())
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        got.push(m.n);
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    // The OK status came as a trailer after the last message.
    let trailers = s.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    // Client streaming.
    g.ready().await.unwrap();
    let outbound = futures_util::stream::iter((1..=10).map(|n| echo("x", n)));
    let r = g
        .client_streaming(Request::new(outbound), p("Sum"), Codec::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r, echo("10 messages", 55));

    // Bidirectional: each reply comes before the next message is sent.
    g.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Echo>(1);
    let outbound = tokio_stream_from(rx);
    let mut replies = g
        .streaming(Request::new(outbound), p("Chat"), Codec::default())
        .await
        .unwrap()
        .into_inner();
    for n in 0..5 {
        tx.send(echo(&format!("m{n}"), n)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("the reply came while the call is open")
            .unwrap()
            .unwrap();
        assert_eq!(reply, echo(&format!("re: m{n}"), n * 2));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());

    // A failing call: the status, its message and a custom trailer come back.
    g.ready().await.unwrap();
    let e = g
        .unary(Request::new(echo("", 0)), p("Fail"), Codec::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(e.message(), "no such thing: ünïcode");
    assert_eq!(e.metadata().get("x-detail").unwrap(), "from-the-upstream");
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Echo>,
) -> impl futures_util::Stream<Item = Echo> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_of_every_kind_pass_through_h2c_and_tls_routes() {
    let pki = TestPki::new();
    let h2c = GrpcUpstream::start(None).await;
    let tls = GrpcUpstream::start(Some(&pki)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _gw = gateway(port, dir.path(), &pki, h2c.addr, tls.addr);
    let client = h2_client(&pki.ca_pem);
    let origin = format!("https://localhost:{port}");

    // Directly first: the servers work as the test expects.
    all_call_kinds(&client, &format!("http://{}", h2c.addr), "", &h2c).await;
    // Through Portcullis: to the h2c:// upstream and to the https:// one (h2 by ALPN).
    all_call_kinds(&client, &origin, "", &h2c).await;
    all_call_kinds(&client, &origin, "/viatls", &tls).await;

    // `http2 = false`: the same https upstream is spoken to in HTTP/1.1 (ALPN offers
    // only http/1.1), whatever the call makes of that.
    let mut g = grpc(&client, &origin);
    g.ready().await.unwrap();
    let _ = g
        .unary(
            Request::new(echo("h1", 0)),
            path("/h1only/test.Echo/Unary"),
            Codec::default(),
        )
        .await;
    assert_eq!(tls.seen().version, Some(http::Version::HTTP_11));

    // The route timeout (1 s) bounds the wait for the answer's headers: 504 → UNAVAILABLE.
    let started = Instant::now();
    let mut g = grpc(&client, &origin);
    g.ready().await.unwrap();
    let e = g
        .unary(
            Request::new(echo("", 0)),
            path("/test.Echo/Slow"),
            Codec::default(),
        )
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Portcullis's 504 carries a grpc-status (UNAVAILABLE) beside its JSON error.
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert_eq!(e.message(), "upstream_timeout", "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_throughput_through_portcullis_vs_direct() {
    let pki = TestPki::new();
    let h2c = GrpcUpstream::start(None).await;
    let tls = GrpcUpstream::start(Some(&pki)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let gw = gateway(port, dir.path(), &pki, h2c.addr, tls.addr);
    let pid = gw.pid().expect("the gateway runs");
    // The gateway's CPU time (user + system), in seconds: is its one runtime saturated?
    let cpu = move || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
    };
    let origin = format!("https://localhost:{port}");
    let direct = format!("https://localhost:{}", tls.addr.port());

    async fn rate(origin: &str, at: &str, ca: &str, concurrency: usize, for_: Duration) -> f64 {
        // One client, so one HTTP/2 connection that multiplexes every call.
        let client = h2_client(ca);
        let deadline = Instant::now() + for_;
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let mut g = grpc(&client, origin);
                let at = path(at);
                tokio::spawn(async move {
                    let mut calls = 0u64;
                    while Instant::now() < deadline {
                        g.ready().await.unwrap();
                        g.unary(Request::new(echo("bench", 1)), at.clone(), Codec::default())
                            .await
                            .unwrap();
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total as f64 / for_.as_secs_f64()
    }
    let period = Duration::from_secs(2);
    let mut report = Vec::new();
    for concurrency in [1, 16, 64] {
        // Interleaved, same run: only the ratio means anything on a shared machine.
        let unary = "/test.Echo/Unary";
        let d = rate(&direct, unary, &pki.ca_pem, concurrency, period).await;
        let before = cpu();
        let t = rate(
            &origin,
            "/viatls/test.Echo/Unary",
            &pki.ca_pem,
            concurrency,
            period,
        )
        .await;
        let busy = (cpu() - before) / period.as_secs_f64();
        let c = rate(&origin, unary, &pki.ca_pem, concurrency, period).await;
        assert!(d > 0.0 && t > 0.0 && c > 0.0);
        report.push(format!(
            "c{concurrency}: direct (TLS) {d:.0}/s, through Portcullis to the https route {t:.0}/s ({:.2}x), to the h2c route {c:.0}/s ({:.2}x); gateway CPU during the https run {:.0}% of a core",
            t / d,
            c / d,
            busy * 100.0
        ));
    }
    println!(
        "gRPC unary calls/s (client over TLS h2; Portcullis 1 worker = 1 upstream h2 connection): {}",
        report.join("; ")
    );
}
