//! Overload: a flood of connections and requests well beyond what two shared cores
//! serve, against the real binary. Memory stays bounded (the peak RSS is reported),
//! `/healthz` and `/readyz` on the public and the admin listener keep answering, and
//! service is back to normal once the flood stops. Longer floods: scripts/chaos.sh.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_capacity_keeps_health_answering_and_memory_bounded() {
    let admin = free_port();
    let env = Env::builder()
        .server(&format!("admin_listen = \"127.0.0.1:{admin}\"\n"))
        .start()
        .await;
    let alice = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    assert_eq!(
        alice
            .get_with(&env.url("/api/before"), &[("x-csrf", "1")])
            .await
            .status,
        200
    );
    let pid = env.gateway.pid().unwrap();
    let rss_before = rss_kib(pid, "VmRSS:");

    // 600 connections held open with half a request each (below the per-client cap).
    let port = env.gateway.port;
    let held: Vec<std::net::TcpStream> = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        (0..600)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                let _ = s.write_all(b"GET /api/slow HTTP/1.1\r\nHost: x\r\n");
                s
            })
            .collect()
    })
    .await
    .unwrap();

    // 300 clients sending requests as fast as they are answered, for 8 s.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut flood = Vec::new();
    for i in 0..300 {
        let (client, stop, served, refused) = (
            client.clone(),
            stop.clone(),
            served.clone(),
            refused.clone(),
        );
        let url = env.url(&format!("/public/flood/{i}"));
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => served.fetch_add(1, Ordering::Relaxed),
                    _ => refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    // Health, readiness and the admin listener answer throughout.
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(8) {
        for url in [
            env.url("/healthz"),
            env.url("/readyz"),
            format!("http://127.0.0.1:{admin}/healthz"),
            format!("http://127.0.0.1:{admin}/readyz"),
        ] {
            let t = Instant::now();
            let r = probe.get(&url).send().await;
            let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
            assert_eq!(status, 200, "{url} during the flood");
            slowest = slowest.max(t.elapsed());
        }
        peak = peak.max(rss_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.await.unwrap();
    }
    drop(held);
    let hwm = rss_kib(pid, "VmHWM:");
    let (served, refused) = (
        served.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    println!(
        "OVERLOAD: 600 held connections + 300 busy clients for 8 s: {served} served, {refused} failed; \
         slowest health probe {slowest:?}; RSS {rss_before} KiB before, peak {} KiB (VmHWM {hwm} KiB)",
        peak.max(hwm)
    );
    assert!(
        hwm < 512 * 1024,
        "peak RSS {hwm} KiB: memory is not bounded under a flood"
    );
    assert!(served > 0);

    // Back to normal: the user's requests are served, quickly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let r = alice
        .get_with(&env.url("/api/after"), &[("x-csrf", "1")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    println!("OVERLOAD: a request after the flood took {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(2));
}
