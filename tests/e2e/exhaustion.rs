//! Connection exhaustion and framing, attacked over raw sockets against the real
//! binary: idle, silent-TLS, idle-HTTP/2 and never-reading clients under a small
//! descriptor limit (`prlimit`), the per-client connection cap, health at the limit,
//! and framing errors that must close the connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{Gateway, Upstream, free_port, standalone_config};
use crate::ops::TestPki;

// ---------------------------------------------------------------- helpers

/// A TCP connection to the gateway from `source` (any 127/8 address is loopback);
/// `rcvbuf` shrinks the receive buffer (a client that stops reading stalls sooner).
fn connect_from(source: &str, port: u16, rcvbuf: Option<usize>) -> TcpStream {
    try_connect_from(source, port, rcvbuf).unwrap()
}

fn try_connect_from(source: &str, port: u16, rcvbuf: Option<usize>) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    let local: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&local.into())?;
    let remote: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect_timeout(&remote.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// Writes `request`, reads until the server closes (or `wait` passes):
/// (everything read, closed by the server).
fn exchange(stream: &mut impl Read, write: impl FnOnce(), wait: Duration) -> (String, bool) {
    write();
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    while started.elapsed() < wait {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if would_block(&e) => {}
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), false)
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// A plain HTTP/1.1 request on a new connection from `source`: the whole answer.
fn get_from(source: &str, port: u16, path: &str, wait: Duration) -> String {
    let mut s = connect_from(source, port, None);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut w = s.try_clone().unwrap();
    exchange(&mut s, || w.write_all(request.as_bytes()).unwrap(), wait).0
}

/// Repeats `request` (a fresh connection each time) until it is answered 200, for
/// at most 20 s; returns the last answer.
fn until_served(request: impl Fn() -> String) -> String {
    let started = Instant::now();
    loop {
        let answer = request();
        if status_of(&answer) == 200 || started.elapsed() > Duration::from_secs(20) {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status_of(answer: &str) -> u16 {
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Lowers the running gateway's descriptor limit to what it uses now plus `spare`.
fn limit_descriptors(gw: &Gateway, spare: usize) -> usize {
    let pid = gw.pid().expect("gateway running");
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open + spare;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit (util-linux) must be installed");
    assert!(status.success(), "prlimit failed");
    limit
}

/// Waits until every socket is closed by the server; panics naming the survivors.
fn all_closed<S: Read>(what: &str, sockets: &mut [S], within: Duration) {
    let started = Instant::now();
    let mut open: Vec<usize> = (0..sockets.len()).collect();
    let mut buf = [0u8; 65536];
    while !open.is_empty() && started.elapsed() < within {
        open.retain(|&i| {
            loop {
                match sockets[i].read(&mut buf) {
                    Ok(0) => break false,
                    // Data (an answer being written): keep reading until the close.
                    Ok(_) => continue,
                    Err(e) if would_block(&e) => break true,
                    Err(_) => break false,
                }
            }
        });
    }
    assert!(
        open.is_empty(),
        "{} of {} {what} still open after {within:?}",
        open.len(),
        sockets.len()
    );
}

/// Reads a never-reading client's socket at last: the server must have given up on
/// it (the answer ends in EOF or a reset before all of `full` bytes). A server still
/// waiting would go on writing once read, and the whole file would arrive.
fn gave_up_on<S: Read>(what: &str, sockets: &mut [S], full: usize) {
    for (i, socket) in sockets.iter_mut().enumerate() {
        let started = Instant::now();
        let mut total = 0;
        let mut buf = [0u8; 65536];
        let ended = loop {
            if started.elapsed() > Duration::from_secs(20) {
                break false;
            }
            match socket.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => total += n,
                Err(e) if would_block(&e) => {}
                Err(_) => break true,
            }
        };
        assert!(
            ended && total < full,
            "{what} {i}: {total} bytes read, closed by the server: {ended}"
        );
    }
}

/// Asks for `path` and never reads the answer.
fn stall(stream: &TcpStream, path: &str) {
    let mut w = stream;
    w.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
}

fn site(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("site");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "hello\n").unwrap();
    std::fs::write(root.join("big.bin"), vec![b'x'; 32 << 20]).unwrap();
    root
}

fn metrics(admin_port: u16) -> String {
    get_from("127.0.0.3", admin_port, "/metrics", Duration::from_secs(5))
}

// ---------------------------------------------------------------- plaintext

/// Idle connections, keep-alive connections gone quiet and clients that stop
/// reading a large file, more than the gateway has descriptors for: they are all
/// closed by their timeouts, and a legitimate client (another address) is served.
#[test]
fn idle_and_never_reading_connections_are_closed_at_the_descriptor_limit() {
    let dir = tempfile::tempdir().unwrap();
    let root = site(dir.path());
    // A real upstream (on a runtime of its own: this test blocks on raw sockets).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(Upstream::start());
    let (port, admin) = (free_port(), free_port());
    let config = standalone_config(
        port,
        &format!("http://127.0.0.1:{port}"),
        &format!(
            "admin_listen = \"127.0.0.1:{admin}\"\nfirst_request_timeout = \"1s\"\n\
             idle_timeout = \"2s\"\nwrite_timeout = \"2s\"\nmax_connections_per_client = 0"
        ),
        &format!(
            "[[routes]]\nprefix = \"/api\"\nupstream = \"{}\"\ntoken = \"none\"\n\
             strip_prefix = true\n[static]\ndir = {:?}",
            upstream.url(),
            root.to_str().unwrap()
        ),
    );
    let gw = Gateway::start(port, &config);
    let limit = limit_descriptors(&gw, 24);

    // Clients that ask for 32 MiB (a file, a proxied answer) and never read.
    let stall_started = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..6)
        .map(|i| {
            let s = connect_from("127.0.0.1", port, Some(4096));
            match i % 2 {
                0 => stall(&s, "/big.bin"),
                _ => stall(&s, "/api/download?bytes=33554432"),
            }
            s
        })
        .collect();
    // Keep-alive connections that go quiet after one request.
    let mut quiet: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect_from("127.0.0.1", port, None);
            s.write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect();
    // Connections that never send a byte: more than the descriptors left.
    let mut idle: Vec<TcpStream> = (0..40)
        .map(|_| connect_from("127.0.0.1", port, None))
        .collect();
    for s in stalled.iter().chain(&quiet).chain(&idle) {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    }

    // A legitimate client waits in the backlog at worst, and is served. While the
    // gateway is at its limit, a request may still find no descriptor for the file
    // (500): the client tries again, as a browser's user would.
    let answer =
        until_served(|| get_from("127.0.0.2", port, "/index.html", Duration::from_secs(20)));
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.ends_with("hello\n"), "{answer}");

    // Every attacker connection is closed, well before hyper's 10 s header timer
    // would have (idle ones) or ever (never-reading ones).
    all_closed("idle connections", &mut idle, Duration::from_secs(8));
    all_closed(
        "quiet keep-alive connections",
        &mut quiet,
        Duration::from_secs(8),
    );
    // The downloads stalled at least 8 s ago; a 2 s write timeout has closed them.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(stall_started.elapsed()));
    gave_up_on("never-reading download", &mut stalled, 32 << 20);

    let m = metrics(admin);
    for kind in ["first_request", "idle", "write"] {
        assert!(
            m.contains(&format!(
                "portcullis_connection_timeouts_total{{kind=\"{kind}\"}}"
            )),
            "{kind} timeouts counted:\n{m}"
        );
    }
    assert!(m.contains("portcullis_connections_open 0\n"), "{m}");
    assert_eq!(
        upstream
            .requests()
            .iter()
            .filter(|r| r.path_and_query.starts_with("/download"))
            .count(),
        3,
        "the proxied downloads reached the upstream"
    );
    eprintln!("descriptor limit {limit}");
    drop(upstream);
}

/// Out of descriptors for good (the connections are within their timeouts): the
/// accept loop backs off without spinning, the admin listener's `/healthz` still
/// answers, and once the connections are gone the gateway serves again.
#[test]
fn health_answers_while_the_gateway_is_out_of_descriptors() {
    let (port, admin) = (free_port(), free_port());
    let config = standalone_config(
        port,
        &format!("http://127.0.0.1:{port}"),
        &format!(
            "admin_listen = \"127.0.0.1:{admin}\"\nfirst_request_timeout = \"60s\"\n\
             max_connections_per_client = 0"
        ),
        "",
    );
    let gw = Gateway::start(port, &config);
    limit_descriptors(&gw, 16);
    let pid = gw.pid().unwrap();
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| connect_from("127.0.0.1", port, None))
        .collect();
    // Wait until the gateway has run out (its accept fails and it says so).
    let started = Instant::now();
    while !gw.logs().contains("accept failed; backing off") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the gateway never ran out of descriptors"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu_before = cpu_ticks(pid);
    for _ in 0..3 {
        let answer = get_from("127.0.0.2", admin, "/healthz", Duration::from_secs(5));
        assert_eq!(
            status_of(&answer),
            200,
            "admin /healthz at the limit: {answer:?}"
        );
    }
    // Backing off, not spinning: well under half a core over these seconds.
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(pid) - cpu_before;
    assert!(spent < 100, "{spent} CPU ticks while out of descriptors");
    let logs = gw.logs();
    let warnings = logs.matches("accept failed; backing off").count();
    assert!(
        warnings <= 3,
        "accept failures are logged at a bounded rate: {warnings}"
    );

    drop(idle);
    let answer = get_from("127.0.0.2", port, "/healthz", Duration::from_secs(10));
    assert_eq!(status_of(&answer), 200, "served again: {answer}");
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// One address holds at most `max_connections_per_client`; the next is closed at
/// once and counted, other addresses are served, and a freed slot is reusable.
#[test]
fn one_client_address_holds_at_most_its_share_of_connections() {
    let (port, admin) = (free_port(), free_port());
    let config = standalone_config(
        port,
        &format!("http://127.0.0.1:{port}"),
        &format!("admin_listen = \"127.0.0.1:{admin}\"\nmax_connections_per_client = 4"),
        "",
    );
    let _gw = Gateway::start(port, &config);
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| connect_from("127.0.0.1", port, None))
        .collect();
    // The fifth from the same address is closed at once (the idle timeout is 60 s).
    let mut fifth = connect_from("127.0.0.1", port, None);
    fifth
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (answer, closed) = exchange(&mut fifth, || {}, Duration::from_secs(3));
    assert!(
        closed && answer.is_empty(),
        "refused without an answer: {answer:?}"
    );
    // The four are still open and served.
    let mut first = held.remove(0);
    first
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut w = first.try_clone().unwrap();
    let (answer, _) = exchange(
        &mut first,
        || {
            w.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap()
        },
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&answer), 200, "{answer}");
    // Another address is not affected.
    let answer = get_from("127.0.0.2", port, "/healthz", Duration::from_secs(5));
    assert_eq!(status_of(&answer), 200, "{answer}");
    // `first` is closed now: its slot is free again.
    drop(first);
    std::thread::sleep(Duration::from_millis(300));
    let answer = get_from("127.0.0.1", port, "/healthz", Duration::from_secs(5));
    assert_eq!(status_of(&answer), 200, "{answer}");

    // The gauge: the three still held (the last request's connection may take a
    // moment to be counted out).
    let started = Instant::now();
    let m = loop {
        let m = metrics(admin);
        if m.contains("portcullis_connections_open 3\n")
            || started.elapsed() > Duration::from_secs(3)
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(m.contains("portcullis_connections_open 3\n"), "{m}");
    assert!(
        m.contains("portcullis_connections_refused_total{reason=\"per_client_limit\"} 1\n"),
        "{m}"
    );
    drop(held);
}

// ---------------------------------------------------------------- TLS

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_client(ca_pem: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A TLS connection from `source` with its handshake complete.
fn tls_connect(
    config: &Arc<rustls::ClientConfig>,
    source: &str,
    port: u16,
    rcvbuf: Option<usize>,
) -> Tls {
    try_tls_connect(config, source, port, rcvbuf).unwrap()
}

fn try_tls_connect(
    config: &Arc<rustls::ClientConfig>,
    source: &str,
    port: u16,
    rcvbuf: Option<usize>,
) -> std::io::Result<Tls> {
    let tcp = try_connect_from(source, port, rcvbuf)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    tls.sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    Ok(tls)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The HTTP/2 preface and an empty SETTINGS frame.
fn h2_start(tls: &mut Tls) {
    let mut out = PREFACE.to_vec();
    out.extend(h2_frame(4, 0, 0, &[]));
    tls.write_all(&out).unwrap();
    tls.flush().unwrap();
}

/// `GET path` on stream 1 (HPACK: static-table names, literal values).
fn h2_get(tls: &mut Tls, path: &str) {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    block.push(0x44); // :path, literal value
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block.push(0x41); // :authority
    block.push(9);
    block.extend_from_slice(b"localhost");
    tls.write_all(&h2_frame(1, 0x5, 1, &block)).unwrap(); // END_STREAM | END_HEADERS
    tls.flush().unwrap();
}

/// An HTTP/2 client that reads everything, answers the server's PINGs and sends its
/// own every 300 ms, but never opens the flow-control window: runs until the server
/// closes the connection, and returns after how long.
fn h2_hold(mut tls: Tls, started: Instant) -> Duration {
    let mut pending = Vec::new();
    let mut buf = [0u8; 65536];
    let mut last_ping = Instant::now();
    loop {
        if started.elapsed() > Duration::from_secs(30) {
            return started.elapsed();
        }
        if last_ping.elapsed() > Duration::from_millis(300) {
            if tls.write_all(&h2_frame(6, 0, 0, b"attacker")).is_err() || tls.flush().is_err() {
                return started.elapsed();
            }
            last_ping = Instant::now();
        }
        match tls.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if would_block(&e) => continue,
            Err(_) => return started.elapsed(),
        }
        while pending.len() >= 9 {
            let len = (usize::from(pending[0]) << 16)
                | (usize::from(pending[1]) << 8)
                | usize::from(pending[2]);
            if pending.len() < 9 + len {
                break;
            }
            let (kind, flags) = (pending[3], pending[4]);
            if kind == 6 && flags & 1 == 0 {
                let ack = h2_frame(6, 1, 0, &pending[9..9 + len]);
                if tls.write_all(&ack).is_err() {
                    return started.elapsed();
                }
            }
            if kind == 4 && flags & 1 == 0 {
                let _ = tls.write_all(&h2_frame(4, 1, 0, &[]));
            }
            pending.drain(..9 + len);
        }
        let _ = tls.flush();
    }
}

/// On the TLS listener: connections silent after the handshake, HTTP/2 connections
/// idle after the preface (pinging all along), HTTP/1.1 and HTTP/2 downloads the
/// client stops taking, more than the descriptors left — all closed by their
/// timeouts, while a legitimate client from another address is served.
#[test]
fn silent_tls_idle_http2_and_stalled_downloads_are_closed_at_the_descriptor_limit() {
    let dir = tempfile::tempdir().unwrap();
    let root = site(dir.path());
    let pki = TestPki::new();
    let (cert, key, _) = pki.leaf("gateway");
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert).unwrap();
    std::fs::write(&key_pem, key).unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = standalone_config(
        port,
        &format!("https://localhost:{port}"),
        &format!(
            "admin_listen = \"127.0.0.1:{admin}\"\nfirst_request_timeout = \"1s\"\n\
             idle_timeout = \"2s\"\nwrite_timeout = \"2s\"\nmax_connections_per_client = 0\n\
             [server.tls]\ncert = {:?}\nkey = {:?}",
            cert_pem.to_str().unwrap(),
            key_pem.to_str().unwrap()
        ),
        &format!("[static]\ndir = {:?}", root.to_str().unwrap()),
    );
    let gw = Gateway::start_tls(port, &config);
    let (h1, h2) = (
        tls_client(&pki.ca_pem, b"http/1.1"),
        tls_client(&pki.ca_pem, b"h2"),
    );
    let started = Instant::now();

    // HTTP/2 downloads whose flow-control window is never opened, and HTTP/2
    // connections idle after the preface, each held by a client thread.
    let mut holders = Vec::new();
    for i in 0..6 {
        let mut tls = tls_connect(&h2, "127.0.0.1", port, None);
        h2_start(&mut tls);
        if i < 3 {
            h2_get(&mut tls, "/big.bin");
        }
        holders.push(std::thread::spawn(move || h2_hold(tls, started)));
    }
    // HTTP/1.1 over TLS downloads never read.
    let mut stalled: Vec<Tls> = (0..4)
        .map(|_| {
            let mut tls = tls_connect(&h1, "127.0.0.1", port, Some(4096));
            tls.write_all(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            tls.flush().unwrap();
            tls
        })
        .collect();
    let limit = limit_descriptors(&gw, 12);
    // Silent after the handshake: more than the descriptors left (they queue).
    let silent: Vec<std::thread::JoinHandle<Option<Tls>>> = (0..30)
        .map(|_| {
            let h1 = h1.clone();
            // A handshake may wait in the backlog: each in its own thread.
            std::thread::spawn(move || try_tls_connect(&h1, "127.0.0.1", port, None).ok())
        })
        .collect();

    // A legitimate client from another address is served.
    let legit = until_served(|| {
        // The handshake itself may time out while the gateway is full: try again.
        let Ok(mut tls) = try_tls_connect(&h1, "127.0.0.2", port, None) else {
            return String::new();
        };
        tls.write_all(b"GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        tls.flush().unwrap();
        exchange(&mut tls, || {}, Duration::from_secs(20)).0
    });
    assert_eq!(status_of(&legit), 200, "{legit}");
    assert!(legit.ends_with("hello\n"), "{legit}");

    let mut silent: Vec<Tls> = silent
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    all_closed(
        "silent TLS connections",
        &mut silent,
        Duration::from_secs(8),
    );
    std::thread::sleep(Duration::from_secs(8).saturating_sub(started.elapsed()));
    gave_up_on("never-reading TLS download", &mut stalled, 32 << 20);
    for (i, holder) in holders.into_iter().enumerate() {
        let held = holder.join().unwrap();
        assert!(
            held < Duration::from_secs(20),
            "HTTP/2 connection {i} held for {held:?}"
        );
    }
    let m = metrics(admin);
    for kind in ["first_request", "write"] {
        assert!(
            m.contains(&format!(
                "portcullis_connection_timeouts_total{{kind=\"{kind}\"}}"
            )),
            "{kind} timeouts counted:\n{m}"
        );
    }
    eprintln!("descriptor limit {limit}");
}

// ---------------------------------------------------------------- framing

/// Every framing error is answered 400 and closes the connection: a second request
/// pipelined in the same write never reaches the upstream, nor does the first.
// Blocking raw sockets: the in-process upstream needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framing_error_closes_the_connection_and_nothing_after_it_is_served() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let config = standalone_config(
        port,
        &format!("http://127.0.0.1:{port}"),
        "",
        &format!(
            "[[routes]]\nprefix = \"/public\"\nupstream = \"{}\"\ntoken = \"none\"\nstrip_prefix = true",
            upstream.url()
        ),
    );
    let gw = Gateway::start(port, &config);
    let smuggled = "GET /public/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // (head and body of the refused request, refused by Portcullis with its JSON error)
    let attacks: &[(&str, bool)] = &[
        // CL.TE and TE.CL, in either order and any case.
        (
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            true,
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            true,
        ),
        (
            "transfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n0\r\n\r\n",
            true,
        ),
        (
            "TRANSFER-ENCODING: Chunked\r\nCONTENT-LENGTH: 40\r\n\r\n0\r\n\r\n",
            true,
        ),
        (
            "Content-Length: 5\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            true,
        ),
        // Repeated or listed codings.
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            true,
        ),
        ("Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", true),
        ("Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", true),
        (
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            true,
        ),
        (
            "Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
            true,
        ),
        // Refused by hyper's parser (its plain 400), which closes as well.
        ("Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", false),
        ("Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", false),
        ("Transfer-Encoding: identity\r\n\r\n", false),
        (
            "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            false,
        ),
        ("Content-Length: 5, 6\r\n\r\nhello!", false),
        ("Content-Length: +5\r\n\r\nhello", false),
        ("Content-Length: -1\r\n\r\n", false),
        ("Content-Length: 0x5\r\n\r\nhello", false),
        ("Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", false),
        ("Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", false),
        ("X-Folded: a\r\n b\r\nContent-Length: 5\r\n\r\nhello", false),
        ("\tTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false),
        (
            "Content-Length: 5\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            false,
        ),
    ];
    for (i, (rest, ours)) in attacks.iter().enumerate() {
        let request = format!("POST /public/attack{i} HTTP/1.1\r\nHost: x\r\n{rest}{smuggled}");
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut w = s.try_clone().unwrap();
        let (answer, closed) = exchange(
            &mut s,
            || w.write_all(request.as_bytes()).unwrap(),
            Duration::from_secs(5),
        );
        assert_eq!(status_of(&answer), 400, "{request:?} → {answer}");
        assert!(closed, "the connection stays open after {request:?}");
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "one answer: {answer}"
        );
        if *ours {
            assert!(answer.contains("\"error\":\"invalid_request\""), "{answer}");
            assert!(
                answer.to_ascii_lowercase().contains("connection: close"),
                "{answer}"
            );
        }
    }
    let seen: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert!(seen.is_empty(), "reached the upstream: {seen:?}");

    // Well-framed requests keep the connection: a body with a length, then a
    // pipelined request, both served on one connection.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let (answer, _) = exchange(
        &mut s,
        || {
            w.write_all(b"POST /public/one HTTP/1.1\r\nHost: x\r\nContent-Length: 47\r\n\r\nGET /public/not-a-request HTTP/1.1\r\nHost: x\r\n\r\nGET /public/two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap()
        },
        Duration::from_secs(5),
    );
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    // A chunked request is served, and its answer ends the connection.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let (answer, closed) = exchange(
        &mut s,
        || {
            w.write_all(b"POST /public/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /public/after-chunked HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap()
        },
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(
        closed && answer.matches("HTTP/1.1 ").count() == 1,
        "{answer}"
    );
    let seen: Vec<(String, usize)> = upstream
        .requests()
        .iter()
        .map(|r| (r.path_and_query.clone(), r.body_len))
        .collect();
    assert_eq!(
        seen,
        [
            ("/one".to_owned(), 47),
            ("/two".to_owned(), 0),
            ("/chunked".to_owned(), 5)
        ],
        "{seen:?}"
    );
    drop(gw);
}
