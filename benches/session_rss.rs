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
//! - the SQLite store: the database file after a WAL checkpoint.
//!
//! Prints a human summary and one line `RESULT {json}` for bench/run.sh.

mod common;

use std::time::Instant;

use portcullis::config::{SessionConfig, StoreKind};
use portcullis::session::{MemoryStore, Sessions, SqliteStore, Store};

fn main() {
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
        let mut next = 0u64;
        while next < sqlite_n as u64 {
            let batch: Vec<_> = (next..(next + 16).min(sqlite_n as u64))
                .map(|i| {
                    let s = sessions.clone();
                    tokio::spawn(async move { s.create(common::new_session(i)).await.map(drop) })
                })
                .collect();
            next += batch.len() as u64;
            for t in batch {
                t.await.unwrap().unwrap();
            }
        }
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
        })
    );
}
