//! The test upstream: a real HTTP server on a free port that records what it
//! receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::hex;

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
