//! The lean client and its pool against a real upstream: a tiny HTTP/1.1 server on
//! its own thread (blocking sockets), which can close its idle keep-alive
//! connections on command, as an upstream's keep-alive timeout does.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;

use super::*;

#[derive(Clone, Copy)]
enum Answer {
    /// `200`, a 5-byte body, keep-alive.
    Ok,
    /// `200` announcing 10 bytes, sending 3, then closing.
    Truncated,
}

#[derive(Default)]
struct Seen {
    /// Every connection accepted, kept to close it on command.
    connections: Vec<TcpStream>,
    /// The head of every request, in order, with the index of its connection.
    requests: Vec<(usize, String)>,
}

struct Upstream {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl Upstream {
    fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let stream = stream.unwrap();
                let index = {
                    let mut seen = shared.lock().unwrap();
                    seen.connections.push(stream.try_clone().unwrap());
                    seen.connections.len() - 1
                };
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, index, answer, &shared));
            }
        });
        Self { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections.len()
    }

    fn requests(&self) -> Vec<(usize, String)> {
        self.seen.lock().unwrap().requests.clone()
    }

    /// Closes every connection (FIN), as a keep-alive timeout does; returns once done.
    fn close_all(&self) {
        for c in &self.seen.lock().unwrap().connections {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn serve(mut stream: TcpStream, index: usize, answer: Answer, seen: &Mutex<Seen>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        seen.lock().unwrap().requests.push((index, head));
        match answer {
            Answer::Ok => {
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                    .is_err()
                {
                    return;
                }
            }
            Answer::Truncated => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

fn settings() -> Settings {
    Settings {
        max_idle: 16,
        idle_timeout: Duration::from_secs(60),
    }
}

fn get(url: &str) -> Request<Body> {
    Request::get(url).body(Body::empty()).unwrap()
}

/// The answer's status and whole body.
async fn fetch(client: &UpstreamClient, url: &str) -> Result<(u16, String), String> {
    let response = client
        .request(get(url))
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

fn key(upstream: &Upstream) -> Key {
    Key::new(
        false,
        format!("127.0.0.1:{}", upstream.port).parse().unwrap(),
    )
}

#[tokio::test]
async fn sequential_requests_reuse_one_idle_connection_in_origin_form_with_host() {
    let upstream = Upstream::start(Answer::Ok);
    let client = UpstreamClient::lean(settings());
    for _ in 0..3 {
        assert_eq!(
            fetch(&client, &upstream.url("/a/b?q=1")).await.unwrap(),
            (200, "hello".to_owned())
        );
    }
    assert_eq!(upstream.connections(), 1);
    assert_eq!(pool::idle_count(&key(&upstream)), 1);
    let requests = upstream.requests();
    assert_eq!(requests.len(), 3);
    let (_, head) = &requests[0];
    assert!(head.starts_with("GET /a/b?q=1 HTTP/1.1\r\n"), "{head}");
    let host = format!("host: 127.0.0.1:{}\r\n", upstream.port);
    assert!(head.to_ascii_lowercase().contains(&host), "{head}");
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_while_idle_is_not_handed_out() {
    let upstream = Upstream::start(Answer::Ok);
    let client = UpstreamClient::lean(settings());
    let url = upstream.url("/");
    fetch(&client, &url).await.unwrap();
    assert_eq!(pool::idle_count(&key(&upstream)), 1);

    // Closed while idle, and this runtime has seen it (its connection task ran):
    // the pool hands out another connection.
    upstream.close_all();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fetch(&client, &url).await.unwrap().0, 200);
    assert_eq!(upstream.connections(), 2);

    assert_eq!(pool::idle_count(&key(&upstream)), 1);
}

#[tokio::test]
async fn a_request_on_a_pooled_connection_found_closed_before_sending_is_retried_once() {
    let upstream = Upstream::start(Answer::Ok);
    let client = UpstreamClient::lean(settings());
    // A pooled connection to the upstream's authority, over a pipe whose far end
    // this task closes: the connection's task is woken by the close but has not run
    // when the request is handed to it (as when the runtime has read the upstream's
    // FIN but not yet run the connection's task), so not one byte of the request
    // goes out on it.
    let (near, far) = tokio::io::duplex(4096);
    let mut sender = handshake(TokioIo::new(near)).await.unwrap();
    sender.ready().await.unwrap();
    pool::checkin(key(&upstream), sender, settings());
    assert_eq!(pool::idle_count(&key(&upstream)), 1);
    drop(far);

    assert_eq!(
        fetch(&client, &upstream.url("/")).await.unwrap(),
        (200, "hello".to_owned())
    );
    // Retried on a fresh connection, which is pooled in turn.
    assert_eq!(upstream.connections(), 1);
    assert_eq!(upstream.requests().len(), 1);
    assert_eq!(pool::idle_count(&key(&upstream)), 1);
}

#[tokio::test]
async fn a_connection_whose_answer_failed_is_not_reused() {
    let upstream = Upstream::start(Answer::Truncated);
    let client = UpstreamClient::lean(settings());
    for _ in 0..2 {
        let response = client.request(get(&upstream.url("/"))).await.unwrap();
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(pool::idle_count(&key(&upstream)), 0);
    }
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn the_pool_keeps_at_most_its_cap_of_idle_connections_per_upstream() {
    let upstream = Upstream::start(Answer::Ok);
    let client = UpstreamClient::lean(Settings {
        max_idle: 2,
        ..settings()
    });
    let url = upstream.url("/");
    let answers = futures_util::future::join_all((0..4).map(|_| fetch(&client, &url))).await;
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().is_ok_and(|(s, _)| *s == 200))
    );
    assert_eq!(upstream.connections(), 4);
    assert_eq!(pool::idle_count(&key(&upstream)), 2);
}

#[tokio::test]
async fn idle_connections_past_the_idle_timeout_are_closed() {
    let upstream = Upstream::start(Answer::Ok);
    let client = UpstreamClient::lean(Settings {
        idle_timeout: Duration::from_millis(100),
        ..settings()
    });
    let url = upstream.url("/");
    fetch(&client, &url).await.unwrap();
    assert_eq!(pool::idle_count(&key(&upstream)), 1);
    // The reaper (every idle timeout) has closed it.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(pool::idle_count(&key(&upstream)), 0);
    fetch(&client, &url).await.unwrap();
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_connect_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = UpstreamClient::lean(settings());
    let e = client
        .request(get(&format!("http://127.0.0.1:{port}/")))
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::Connect(_)), "{e:?}");
}
