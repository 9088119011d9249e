//! The yardstick of `bench/profile.sh cpu` (PROFILE_MINIMAL=1): the least a hyper-based
//! BFF proxy can do per request, to tell how much of Portcullis's cost per request is
//! hyper and tokio and how much is Portcullis. Not a product; no config, no checks
//! beyond the hot path's.
//!
//!     cargo run --release --example minimal_proxy -- LISTEN UPSTREAM COOKIE_VALUE
//!
//! The hot path of `../shared/PERFORMANCE.md`'s minimal proxy: one current-thread
//! runtime per core, each with its own `SO_REUSEPORT` listener and its own HTTP/1.1
//! upstream connections (hyper's `client::conn`, newest idle first); per request:
//! the session cookie → SHA-256 of its value → a shared in-memory session map →
//! the `X-CSRF` check → hop-by-hop and cookie stripping → `Authorization: Bearer`
//! with a 900-byte token → forward → stream the answer back.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::digest;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

type Body = BoxBody<Bytes, hyper::Error>;

thread_local! {
    static IDLE: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

struct Shared {
    upstream: SocketAddr,
    authority: HeaderValue,
    sessions: HashMap<[u8; 32], HeaderValue>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, cookie] = &args[..] else {
        eprintln!("usage: minimal_proxy LISTEN UPSTREAM COOKIE_VALUE");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM");
    let token = format!("Bearer {}", "t".repeat(900));
    let mut sessions = HashMap::new();
    sessions.insert(
        key(cookie.as_bytes()),
        HeaderValue::from_str(&token).unwrap(),
    );
    let shared = Arc::new(Shared {
        upstream,
        authority: HeaderValue::from_str(&upstream.to_string()).unwrap(),
        sessions,
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let shared = shared.clone();
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(listen),
                socket2::Type::STREAM,
                None,
            )
            .unwrap();
            socket.set_reuse_port(true).unwrap();
            socket.set_reuse_address(true).unwrap();
            socket.set_nonblocking(true).unwrap();
            socket.bind(&listen.into()).unwrap();
            socket.listen(4096).unwrap();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(serve(socket.into(), shared));
            })
        })
        .collect();
    println!("READY");
    for t in threads {
        let _ = t.join();
    }
}

fn key(id: &[u8]) -> [u8; 32] {
    let mut k = [0; 32];
    k.copy_from_slice(digest::digest(&digest::SHA256, id).as_ref());
    k
}

async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |r| handle(shared.clone(), r));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(http_body_util::Empty::new().map_err(|e| match e {}).boxed());
    *r.status_mut() = code;
    r
}

async fn handle(
    shared: Arc<Shared>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let token = request
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| {
            c.split(';')
                .find_map(|p| p.trim().strip_prefix("__Host-portcullis="))
        })
        .and_then(|id| shared.sessions.get(&key(id.as_bytes())))
        .cloned();
    let Some(token) = token else {
        return Ok(status(StatusCode::UNAUTHORIZED));
    };
    if request.headers().get("x-csrf").is_none_or(|v| v != "1") {
        return Ok(status(StatusCode::FORBIDDEN));
    }
    let headers = request.headers_mut();
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::COOKIE,
    ] {
        headers.remove(name);
    }
    headers.insert(header::AUTHORIZATION, token);
    headers.insert(header::HOST, shared.authority.clone());
    let sender = IDLE.with_borrow_mut(|idle| {
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    });
    let mut sender = match sender {
        Some(s) => s,
        None => {
            let Ok(stream) = tokio::net::TcpStream::connect(shared.upstream).await else {
                return Ok(status(StatusCode::BAD_GATEWAY));
            };
            let _ = stream.set_nodelay(true);
            let Ok((sender, conn)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
            else {
                return Ok(status(StatusCode::BAD_GATEWAY));
            };
            tokio::spawn(conn);
            sender
        }
    };
    if sender.ready().await.is_err() {
        return Ok(status(StatusCode::BAD_GATEWAY));
    }
    let Ok(response) = sender.send_request(request).await else {
        return Ok(status(StatusCode::BAD_GATEWAY));
    };
    // The connection goes back once the answer's body is read (hyper readies it then).
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONNECTION);
    let body = ReturnOnEnd {
        body,
        sender: Some(sender),
    };
    Ok(Response::from_parts(parts, body.boxed()))
}

/// The answer's body; at its end the upstream connection goes back to the idle list.
struct ReturnOnEnd {
    body: Incoming,
    sender: Option<SendRequest<Incoming>>,
}

impl hyper::body::Body for ReturnOnEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        let done = matches!(frame, std::task::Poll::Ready(None)) || this.body.is_end_stream();
        if done && let Some(sender) = this.sender.take() {
            IDLE.with_borrow_mut(|idle| idle.push(sender));
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}
