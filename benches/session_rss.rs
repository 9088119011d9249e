//! Memory per live session (memory store) and bytes per session on disk (SQLite store).
//!
//!     cargo bench --bench session_rss                     # 100,000 sessions
//!     BENCH_SESSIONS=200000 cargo bench --bench session_rss
//!
//! `BENCH_SESSIONS` (default 100,000) sessions go into the memory store;
//! `BENCH_SQLITE_SESSIONS` (default 20,000: the figure per session is stable, and the
//! SQLite store creates only a few thousand sessions per second) into the SQLite store.
//!
//! Creates the sessions through `Sessions::create` (what a login does: a fresh id, its
//! SHA-256 store key, the tokens sealed with AES-256-GCM) and measures
//! - the memory store: this process's `VmRSS` before and after (the ids themselves are
//!   dropped, as the gateway does: only the browser keeps them);
//! - the SQLite store: the database file after a WAL checkpoint, and the memory its
//!   in-process cache takes per cached session: `VmRSS` of a fresh process (this
//!   benchmark run again, so that no memory freed by the phases above is reused)
//!   before and after a store on that file has loaded every session once, less the
//!   same in a fresh process whose store has no cache (SQLite's own page cache and
//!   the read path grow too; they are not the cache's).
//!
//! Prints a human summary and one line `RESULT {json}` for bench/run.sh.

mod common;

use std::time::Instant;

/// The binary's allocator (src/main.rs): the memory per session is the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use portcullis::config::{SessionConfig, StoreKind};
use portcullis::session::{MemoryStore, SessionId, Sessions, SqliteOptions, SqliteStore, Store};

/// Set (to the database file) for the child process that measures the SQLite cache.
const CACHE_PHASE: &str = "SESSION_RSS_SQLITE_CACHE";
/// The cache size (`session.sqlite_cache_size`) of that child process.
const CACHE_SIZE: &str = "SESSION_RSS_SQLITE_CACHE_SIZE";

fn main() {
    if common::only_listing() {
        return;
    }
    if let Ok(path) = std::env::var(CACHE_PHASE) {
        return sqlite_cache_phase(std::path::Path::new(&path));
    }
    let n = common::env_count("BENCH_SESSIONS", 100_000);
    let sqlite_n = common::env_count("BENCH_SQLITE_SESSIONS", 20_000).max(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // ---- memory store: RSS delta.
    // Build the fixtures' strings once up front so the allocator has warmed up.
    let sessions = common::sessions(Store::Memory(MemoryStore::new()));
    drop(common::now(sessions.create(common::new_session(u64::MAX))).unwrap());
    let sealed_len = {
        let (_, r) = common::now(sessions.create(common::new_session(1))).unwrap();
        r.sealed_tokens.len() + r.claims.len() + r.sub.len() + r.sid.as_ref().map_or(0, String::len)
    };
    let before = common::rss_bytes().expect("VmRSS");
    let started = Instant::now();
    for i in 0..n as u64 {
        // The id is dropped at once: only the browser keeps it.
        common::now(sessions.create(common::new_session(i))).unwrap();
    }
    let mem_secs = started.elapsed().as_secs_f64();
    let after = common::rss_bytes().expect("VmRSS");
    let rss_delta = after.saturating_sub(before);
    let per_session = rss_delta as f64 / n as f64;
    let per_100k_mib = per_session * 100_000.0 / (1024.0 * 1024.0);
    println!(
        "memory store: {n} sessions, VmRSS {:.1} MiB -> {:.1} MiB: {:.0} bytes/session, {:.1} MiB per 100k sessions (payload ~{sealed_len} bytes/session; created at {:.0}/s)",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per_session,
        per_100k_mib,
        n as f64 / mem_secs,
    );
    drop(sessions);

    // ---- SQLite store: file size.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let config = SessionConfig {
        store: StoreKind::Sqlite,
        sqlite_path: path.clone(),
        ..SessionConfig::default()
    };
    rt.block_on(async {
        let store = SqliteStore::open(&path).await.unwrap();
        let sessions = std::sync::Arc::new(Sessions::new(
            Store::Sqlite(store),
            common::cipher(),
            &config,
        ));
        // 16 logins at a time.
        let mut ids = String::new();
        let mut next = 0u64;
        while next < sqlite_n as u64 {
            let batch: Vec<_> = (next..(next + 16).min(sqlite_n as u64))
                .map(|i| {
                    let s = sessions.clone();
                    tokio::spawn(async move { s.create(common::new_session(i)).await.map(|c| c.0) })
                })
                .collect();
            next += batch.len() as u64;
            for t in batch {
                ids.push_str(&t.await.unwrap().unwrap().to_cookie_value());
                ids.push('\n');
            }
        }
        std::fs::write(dir.path().join("ids"), ids).unwrap();
    });
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    let db = std::fs::metadata(&path).map_or(0, |m| m.len());
    let wal = std::fs::metadata(dir.path().join("sessions.db-wal")).map_or(0, |m| m.len());
    let file_bytes = db + wal;
    let per_row = file_bytes as f64 / sqlite_n as f64;
    println!(
        "sqlite store: {sqlite_n} sessions, database {:.1} MiB (after a WAL checkpoint): {:.0} bytes/session",
        file_bytes as f64 / 1048576.0,
        per_row
    );
    // The cache's cost: the same loads in two fresh processes, with the cache and
    // without it; what they share (SQLite's page cache, the read path) cancels out.
    let cache_phase = |cache_size: usize| {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(CACHE_PHASE, &path)
            .env(CACHE_SIZE, cache_size.to_string())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&child.stdout).into_owned();
        let field = |name: &str| -> f64 {
            out.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "cache phase failed: {}",
                        String::from_utf8_lossy(&child.stderr)
                    )
                })
        };
        (field("RSS_DELTA"), field("CACHED"))
    };
    let (with_cache, cached) = cache_phase(SqliteOptions::DEFAULT_CACHE_SIZE);
    let (without_cache, _) = cache_phase(0);
    let cache_per_session = (with_cache - without_cache).max(0.0) / cached.max(1.0);
    println!(
        "sqlite store: {cached} sessions cached in process: {cache_per_session:.0} bytes/cached session (VmRSS +{:.1} MiB loading them with the cache, +{:.1} MiB without)",
        with_cache / 1048576.0,
        without_cache / 1048576.0,
    );
    let (access, refresh, id) = common::token_sizes();
    println!(
        "RESULT {}",
        serde_json::json!({
            "sessions": n,
            "sqlite_sessions": sqlite_n,
            "token_bytes": {"access": access, "refresh": refresh, "id": id},
            "payload_bytes_per_session": sealed_len,
            "memory_rss_delta_bytes": rss_delta,
            "memory_bytes_per_session": per_session.round(),
            "memory_mib_per_100k_sessions": (per_100k_mib * 10.0).round() / 10.0,
            "sqlite_file_bytes": file_bytes,
            "sqlite_bytes_per_session": per_row.round(),
            "sqlite_cache_bytes_per_session": cache_per_session.round(),
        })
    );
}

/// In a fresh process: `VmRSS` growth while a store with a cache of
/// `SESSION_RSS_SQLITE_CACHE_SIZE` records loads each session of the file the parent
/// wrote once (their ids in `ids` beside it), and how many it then holds.
fn sqlite_cache_phase(path: &std::path::Path) {
    let text = std::fs::read_to_string(path.with_file_name("ids")).unwrap();
    let ids: Vec<SessionId> = text.lines().filter_map(SessionId::parse).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache_size = std::env::var(CACHE_SIZE).unwrap().parse().unwrap();
    rt.block_on(async {
        let options = SqliteOptions {
            cache_size,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_with(path, options).await.unwrap();
        let sessions = common::sessions(Store::Sqlite(store));
        // One load first: connections, statements, the runtime's blocking pool.
        sessions.load(&ids[0], "").await.unwrap();
        let before = common::rss_bytes().expect("VmRSS");
        for id in &ids {
            sessions
                .load(id, "")
                .await
                .unwrap()
                .expect("a live session");
        }
        let after = common::rss_bytes().expect("VmRSS");
        let Store::Sqlite(store) = sessions.store() else {
            unreachable!()
        };
        println!("RSS_DELTA {}", after.saturating_sub(before));
        println!("CACHED {}", store.cached_sessions());
    });
}
