//! Session stores at scale: insert rate and lookup latency with a million sessions.
//!
//!     cargo bench --bench store_scale
//!     STORE_SCALE_SESSIONS=200000 STORE_SCALE_STORES=sqlite cargo bench --bench store_scale
//!
//! Environment:
//! - `STORE_SCALE_SESSIONS`: sessions to create per store. Default 1,000,000 for the
//!   memory store (about 20 s) and 200,000 for SQLite: the SQLite store creates only
//!   about 2,000–4,000 sessions per second here, so a million takes about 8 minutes
//!   (`STORE_SCALE_SESSIONS=1000000 STORE_SCALE_STORES=sqlite` to measure it anyway);
//! - `STORE_SCALE_STORES` (default `memory,sqlite`; add `redis` for the Redis store);
//! - `STORE_SCALE_REDIS_URL`: the Redis to fill (its sessions are left there, for
//!   `bench/run.sh --scale`); without it a `redis-server` of its own is started on a free
//!   port (with `--save ""`, and stopped at the end);
//! - `STORE_SCALE_SQLITE_PATH`: where to create the SQLite database (kept afterwards,
//!   for `bench/run.sh --scale`); default a temporary directory;
//! - `STORE_SCALE_LOOKUPS` (default 100,000): timed lookups of existing sessions;
//! - `STORE_SCALE_CONCURRENCY` (default 16): creates / lookups in flight in the
//!   concurrent phases (what many simultaneous logins and API calls look like).
//!
//! Sessions are created with `Sessions::create` (fresh id, SHA-256 key, tokens sealed)
//! and looked up with `Sessions::load` (the proxy's per-request call), on a
//! current-thread tokio runtime like each of the gateway's workers. The SQLite store
//! runs its queries on tokio's blocking pool, as in the gateway.
//!
//! Prints a human summary and one line `RESULT {json}` per store.

mod common;
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::{SessionConfig, StoreKind};
use portcullis::session::{
    MemoryStore, RedisStore, SessionId, SessionStore, Sessions, SqliteStore, Store,
};
use tokio::task::JoinSet;

struct Params {
    sessions: usize,
    lookups: usize,
    concurrency: usize,
}

fn main() {
    if common::only_listing() {
        return;
    }
    let explicit = std::env::var("STORE_SCALE_SESSIONS").is_ok();
    let params = |default: usize| Params {
        sessions: common::env_count("STORE_SCALE_SESSIONS", default),
        lookups: common::env_count("STORE_SCALE_LOOKUPS", 100_000),
        concurrency: common::env_count("STORE_SCALE_CONCURRENCY", 16).max(1),
    };
    let stores = std::env::var("STORE_SCALE_STORES").unwrap_or_else(|_| "memory,sqlite".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for store in stores.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let dir = tempfile::tempdir().unwrap();
        let mut own_redis = None;
        let idle = SessionConfig::default().idle_timeout.as_secs() as i64;
        let (kind, store_enum, path) = match store {
            "memory" => (StoreKind::Memory, Store::Memory(MemoryStore::new()), None),
            "sqlite" => {
                let path = std::env::var_os("STORE_SCALE_SQLITE_PATH")
                    .map_or_else(|| dir.path().join("sessions.db"), Into::into);
                let opened = rt.block_on(SqliteStore::open(&path)).unwrap();
                (StoreKind::Sqlite, Store::Sqlite(opened), Some(path))
            }
            "redis" => {
                let url = match std::env::var("STORE_SCALE_REDIS_URL") {
                    Ok(url) => url,
                    Err(_) => own_redis.insert(redis_server::RedisServer::start()).url(),
                };
                let opened = rt.block_on(RedisStore::open(&url, idle)).unwrap();
                (StoreKind::Redis, Store::Redis(opened), None)
            }
            other => {
                eprintln!("store_scale: unknown store {other:?} (memory, sqlite, redis)");
                std::process::exit(2);
            }
        };
        let config = SessionConfig {
            store: kind,
            ..SessionConfig::default()
        };
        let sessions = Arc::new(Sessions::new(store_enum, common::cipher(), &config));
        let params = params(if store == "memory" {
            1_000_000
        } else {
            200_000
        });
        if store != "memory" && !explicit {
            println!(
                "{store}: 200,000 sessions by default (a million takes minutes here); \
                 set STORE_SCALE_SESSIONS=1000000 for the full size"
            );
        }
        rt.block_on(scale(store, &sessions, &params, path.as_deref()));
        drop(sessions);
        drop(own_redis);
    }
}

async fn scale(name: &str, sessions: &Arc<Sessions>, p: &Params, path: Option<&std::path::Path>) {
    let n = p.sessions;
    let keep_every = (n / p.lookups.max(1)).max(1);
    let mut sample: Vec<SessionId> = Vec::with_capacity(p.lookups + 1);
    let rss_before = common::rss_bytes().unwrap_or(0);

    // ---- insert, `concurrency` at a time.
    println!(
        "{name}: creating {n} sessions ({} at a time)",
        p.concurrency
    );
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut tasks = JoinSet::new();
    let mut created = 0usize;
    let mut next = 0u64;
    while created < n {
        while tasks.len() < p.concurrency && (next as usize) < n {
            let s = sessions.clone();
            let i = next;
            tasks.spawn(async move { (i, s.create(common::new_session(i)).await) });
            next += 1;
        }
        let (i, result) = tasks.join_next().await.unwrap().unwrap();
        let (id, _) = result.expect("create");
        if (i as usize).is_multiple_of(keep_every) && sample.len() < p.lookups {
            sample.push(id);
        }
        created += 1;
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "  {created}/{n} after {:.0} s ({:.0} sessions/s so far)",
                started.elapsed().as_secs_f64(),
                created as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let insert_secs = started.elapsed().as_secs_f64();
    let insert_rate = n as f64 / insert_secs;
    let rss_after = common::rss_bytes().unwrap_or(0);

    // Lookups in a shuffled order (no walking the keys in insertion order).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..sample.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sample.swap(i, (x % (i as u64 + 1)) as usize);
    }

    // ---- sequential raw store reads (`SessionStore::get`): no expiry check, no touch.
    // Done first, so `Sessions::load` below sees the same sessions as due for their
    // `last_seen` touch as a live gateway would (at most once a minute per session).
    let mut raw_ns = Vec::with_capacity(sample.len());
    for id in &sample {
        let key = id.key();
        let t = Instant::now();
        let found = sessions.store().get(&key).await.expect("get");
        raw_ns.push(t.elapsed().as_nanos() as u64);
        assert!(found.is_some(), "a created session is missing");
    }
    raw_ns.sort_unstable();

    // ---- sequential lookups: latency of one `Sessions::load`.
    let mut ns = Vec::with_capacity(sample.len());
    for id in &sample {
        let t = Instant::now();
        let found = sessions.load(id, "").await.expect("load");
        ns.push(t.elapsed().as_nanos() as u64);
        assert!(found.is_some(), "a created session is missing");
    }
    ns.sort_unstable();
    let misses: Vec<SessionId> = (0..sample.len().min(10_000))
        .map(|_| SessionId::generate())
        .collect();
    let mut miss_ns = Vec::with_capacity(misses.len());
    for id in &misses {
        let t = Instant::now();
        let found = sessions.load(id, "").await.expect("load");
        miss_ns.push(t.elapsed().as_nanos() as u64);
        assert!(found.is_none());
    }
    miss_ns.sort_unstable();

    // ---- concurrent lookups: throughput with `concurrency` in flight.
    let sample = Arc::new(sample);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let per_task = sample.len() / p.concurrency.max(1);
    for t in 0..p.concurrency {
        let s = sessions.clone();
        let sample = sample.clone();
        tasks.spawn(async move {
            for id in &sample[t * per_task..(t + 1) * per_task] {
                s.load(id, "").await.expect("load").expect("present");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let concurrent_rate = (per_task * p.concurrency) as f64 / started.elapsed().as_secs_f64();

    let file_bytes = path.map(|path| {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        std::fs::metadata(path).map_or(0, |m| m.len())
    });

    let us = |v: u64| v as f64 / 1000.0;
    println!("{name}: {n} sessions created in {insert_secs:.1} s = {insert_rate:.0} sessions/s");
    println!(
        "{name}: Sessions::load of an existing session, {} lookups: p50 {:.2} µs, p90 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.1} µs",
        ns.len(),
        us(common::percentile(&ns, 50.0)),
        us(common::percentile(&ns, 90.0)),
        us(common::percentile(&ns, 99.0)),
        us(common::percentile(&ns, 99.9)),
        us(*ns.last().unwrap_or(&0)),
    );
    println!(
        "{name}: SessionStore::get alone (no touch): p50 {:.2} µs, p99 {:.2} µs",
        us(common::percentile(&raw_ns, 50.0)),
        us(common::percentile(&raw_ns, 99.0)),
    );
    println!(
        "{name}: unknown id: p50 {:.2} µs, p99 {:.2} µs; {} lookups in flight: {concurrent_rate:.0} lookups/s",
        us(common::percentile(&miss_ns, 50.0)),
        us(common::percentile(&miss_ns, 99.0)),
        p.concurrency,
    );
    match file_bytes {
        Some(b) => println!(
            "{name}: database file {:.1} MiB = {:.0} bytes/session",
            b as f64 / 1048576.0,
            b as f64 / n as f64
        ),
        None => println!(
            "{name}: VmRSS grew {:.1} MiB = {:.0} bytes/session",
            rss_after.saturating_sub(rss_before) as f64 / 1048576.0,
            rss_after.saturating_sub(rss_before) as f64 / n as f64
        ),
    }
    println!(
        "RESULT {}",
        serde_json::json!({
            "store": name,
            "sessions": n,
            "insert_concurrency": p.concurrency,
            "insert_secs": (insert_secs * 10.0).round() / 10.0,
            "insert_per_sec": insert_rate.round(),
            "lookups": ns.len(),
            "lookup_p50_us": us(common::percentile(&ns, 50.0)),
            "lookup_p90_us": us(common::percentile(&ns, 90.0)),
            "lookup_p99_us": us(common::percentile(&ns, 99.0)),
            "lookup_p999_us": us(common::percentile(&ns, 99.9)),
            "lookup_max_us": us(*ns.last().unwrap_or(&0)),
            "store_get_p50_us": us(common::percentile(&raw_ns, 50.0)),
            "store_get_p99_us": us(common::percentile(&raw_ns, 99.0)),
            "miss_p50_us": us(common::percentile(&miss_ns, 50.0)),
            "miss_p99_us": us(common::percentile(&miss_ns, 99.0)),
            "concurrent_lookups_per_sec": concurrent_rate.round(),
            "rss_delta_bytes": if file_bytes.is_none() { rss_after.saturating_sub(rss_before) } else { 0 },
            "file_bytes": file_bytes,
        })
    );
}
