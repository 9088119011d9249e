//! Sessions in a SQLite file (WAL): they survive restarts; one host only (the file may
//! be shared by several Portcullis processes on that host, and by the command line).
//!
//! **Reads at memory speed.** Records this process has read or written are kept in
//! a bounded in-process cache ([`cache`], `session.sqlite_cache_size`), so a request
//! for a session seen before goes neither to the file nor through tokio's blocking
//! pool. Writes go to the file first and then to the cache (write-through).
//!
//! **Other processes.** Every change to a session by anyone — this process, another
//! `portcullis serve` on the same file, `portcullis sessions revoke` — is logged in
//! the same statement by triggers, into the `changes` table (`seq`, `key`). A
//! background thread reads the new rows every [`POLL_EVERY`] and evicts those keys.
//! A cached copy is used only while that read has succeeded within [`TRUST_WINDOW`]:
//! so a revocation by another process is refused within that window (well under a
//! second), one through this process at once; and while the log can't be read (a
//! broken file, a long stall) every read goes to the file. A reader that missed
//! rows (trimmed after [`KEEP_CHANGES_SECS`]) drops its whole cache.
//!
//! **Durability.** WAL mode: every commit survives a crash of the *process*. What
//! must also survive a crash of the *machine* (power loss, on storage that honours
//! fsync) is committed with `synchronous = FULL` (the WAL fsynced before the call
//! returns); everything else with `NORMAL` (fsynced at checkpoints).
//! - A session is on disk before `insert` returns, so before its cookie is sent.
//! - A refresh's new tokens are on disk before `update` returns, so before they are
//!   used: a restart never brings back (and reuses) a rotated refresh token.
//! - A logout or revocation is on disk before `remove` returns: no session comes back.
//! - Pending logins, refresh-lock leases, the replay cache and the sweep are `NORMAL`:
//!   losing their last writes in a power cut is harmless (a login to start again, a
//!   lease that lapses).
//! - `last_seen` (the idle clock) is *not* written on the request path: [`SqliteStore::touch`]
//!   moves the cached copy and queues the value, and a background writer commits the
//!   queue every [`FLUSH_EVERY`] in one transaction (and before a sweep, and when the
//!   store closes). A crash loses at most that last second of idle-clock moves. So
//!   that the idle timeout holds across processes sharing the file despite the lag, a
//!   cached copy that *looks* idle past its timeout is re-read from the file (another
//!   process may have used the session), and the sweep gives other processes'
//!   queued writes [`SWEEP_GRACE_SECS`].
//!
//! The price of the promise is one fsync per login, refresh and logout (7 ms on the
//! benchmark machine's virtual disk, well under 1 ms on an SSD); writes of this
//! process take turns on a mutex rather than in SQLite's busy handler. The request
//! path doesn't write.

mod cache;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    PendingCaps, PendingLogin, SessionFilter, SessionRecord, SessionStore, StoreError, StoreKey,
};
use cache::RecordCache;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    key         BLOB PRIMARY KEY,
    sub         TEXT NOT NULL,
    sid         TEXT,
    frontend    TEXT NOT NULL DEFAULT '',
    claims      TEXT NOT NULL,
    tokens      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    version     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_sub ON sessions(sub);
CREATE INDEX IF NOT EXISTS sessions_sid ON sessions(sid) WHERE sid IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_expires ON sessions(expires_at);
CREATE INDEX IF NOT EXISTS sessions_last_seen ON sessions(last_seen);
CREATE TABLE IF NOT EXISTS refresh_locks (
    key         BLOB PRIMARY KEY,
    owner       TEXT NOT NULL,
    expires_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen_once (
    key         BLOB PRIMARY KEY,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_logins (
    key         BLOB PRIMARY KEY,
    data        TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    network     TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
";

/// The change log (see the module docs), created in existing databases too. Triggers,
/// not code: every writer of the file logs, whatever its version or path. Only
/// `last_seen` writes (not part of any cached decision) and fresh inserts (nothing
/// can have cached a session that didn't exist) are not logged.
const CHANGE_LOG: &str = "
CREATE TABLE IF NOT EXISTS changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    key         BLOB NOT NULL,
    at          INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS sessions_changed
AFTER UPDATE OF key, sub, sid, frontend, claims, tokens, created_at, expires_at, version
ON sessions BEGIN
    INSERT INTO changes (key, at) VALUES (old.key, CAST(strftime('%s', 'now') AS INTEGER));
END;
CREATE TRIGGER IF NOT EXISTS sessions_removed AFTER DELETE ON sessions BEGIN
    INSERT INTO changes (key, at) VALUES (old.key, CAST(strftime('%s', 'now') AS INTEGER));
END;
";

/// How often the change log is read.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// A cached copy is used only while the change log was read in full this recently:
/// the longest another process's revocation can go unseen.
pub const TRUST_WINDOW: Duration = Duration::from_millis(750);
/// How often queued `last_seen` values are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Change-log rows older than this are trimmed (a reader further behind starts over).
pub const KEEP_CHANGES_SECS: i64 = 60;
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// The sweep leaves sessions whose idle end is this recent: another process's queued
/// `last_seen` may not be written yet.
pub const SWEEP_GRACE_SECS: i64 = 2;
/// How the SQLite store caches.
#[derive(Debug, Clone, Copy)]
pub struct SqliteOptions {
    /// Most session records kept in process (`session.sqlite_cache_size`); 0 turns
    /// the cache off (every read goes to the file).
    pub cache_size: usize,
    /// The idle timeout in seconds: a cached copy idle this long is re-read before
    /// it is believed (another process may have used the session meanwhile).
    pub idle_timeout: i64,
}

impl SqliteOptions {
    /// Default of `session.sqlite_cache_size`.
    pub const DEFAULT_CACHE_SIZE: usize = crate::config::values::DEFAULT_SQLITE_CACHE_SIZE;
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            cache_size: Self::DEFAULT_CACHE_SIZE,
            idle_timeout: 30 * 60,
        }
    }
}

/// Sessions in a SQLite file: see the module docs for the cache and the durability
/// promise. rusqlite is blocking, so what goes to the file runs on tokio's blocking
/// pool with a connection taken from a small pool (WAL lets readers run beside the
/// writer).
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: Pool,
    cache: RecordCache,
    /// `last_seen` values not yet written (see [`FLUSH_EVERY`]).
    touches: Mutex<HashMap<StoreKey, i64, KeyHasher>>,
    idle: i64,
    /// Session reads that went to the file (diagnostics, tests, benchmarks).
    file_reads: AtomicU64,
}

type KeyHasher = std::hash::BuildHasherDefault<super::record::KeyHasher>;

struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    writer: Mutex<()>,
    /// Why the last write failed (a full disk, a read-only file, a lock held by
    /// another process past the busy timeout), until a write succeeds again: while
    /// set, the store is not ready ([`SqliteStore::ping`] probes with a write).
    write_fault: Mutex<Option<String>>,
}

impl Pool {
    fn connect(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Sessions are ~2.5 KiB rows (sealed tokens): in a rowid table with 16 KiB
        // pages six share a page, where a WITHOUT ROWID table (whose cells spill to
        // overflow pages past ~1 KiB) took a 4 KiB overflow page each. Only a new
        // database takes the page size (it is fixed once WAL is on); existing ones keep
        // theirs and their table, and work as before.
        conn.pragma_update(None, "page_size", 16384)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A commit survives a crash of the process; what must also survive a power
        // loss is written with `Access::Durable` (see the module docs).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(conn)
    }

    fn run<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => Self::connect(&self.path).map_err(unavailable)?,
        };
        let result = f(&conn).map_err(unavailable);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < 8 {
            idle.push(conn);
        }
        result
    }

    /// [`Self::run`] for a write: one writer of this process at a time (the others
    /// wait on this mutex, woken at once, instead of in SQLite's busy handler, which
    /// sleeps in steps of up to 100 ms), and for `Access::Durable` with the commit
    /// fsynced (`synchronous = FULL` for that statement).
    fn write<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let _one_writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.run(|c| {
            if !durable {
                return f(c);
            }
            c.pragma_update(None, "synchronous", "FULL")?;
            let result = f(c);
            c.pragma_update(None, "synchronous", "NORMAL")?;
            result
        });
        self.note_write(result.as_ref().err());
        result
    }

    /// Remembers whether writes work, logging each change once (with the cause).
    fn note_write(&self, error: Option<&StoreError>) {
        let mut fault = self.write_fault.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(StoreError::Unavailable(cause)) => {
                if fault.is_none() {
                    tracing::error!(cause = %cause, path = %self.path.display(), "sqlite writes fail; not ready until one succeeds");
                }
                *fault = Some(cause.clone());
            }
            Some(_) => {}
            None => {
                if let Some(cause) = fault.take() {
                    tracing::info!(was = %cause, "sqlite writes work again");
                }
            }
        }
    }

    fn write_fault(&self) -> Option<String> {
        self.write_fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn access<T>(
        &self,
        access: Access,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        match access {
            Access::Read => self.run(f),
            Access::Write => self.write(false, f),
            Access::Durable => self.write(true, f),
        }
    }
}

/// What an operation does to the file.
#[derive(Clone, Copy)]
enum Access {
    Read,
    /// A write whose loss in a power cut is harmless (a pending login, a lock lease,
    /// `last_seen`, the sweep).
    Write,
    /// A write of the durability promise: a session created, refreshed or ended.
    Durable,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

impl SqliteStore {
    /// Opens (creating or migrating) the database with the default [`SqliteOptions`].
    pub async fn open(path: &Path) -> Result<Self, String> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    pub async fn open_with(path: &Path, options: SqliteOptions) -> Result<Self, String> {
        let path = path.to_owned();
        let (conn, seq) = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> Result<_, String> {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                let conn = Pool::connect(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                conn.execute_batch(SCHEMA)
                    .map_err(|e| format!("cannot create schema: {e}"))?;
                migrate(&conn).map_err(|e| format!("cannot migrate schema: {e}"))?;
                let seq =
                    last_change(&conn).map_err(|e| format!("cannot read the change log: {e}"))?;
                Ok((conn, seq))
            }
        })
        .await
        .map_err(|e| format!("open task failed: {e}"))??;
        let shared = Arc::new(Shared {
            pool: Pool {
                path,
                idle: Mutex::new(vec![conn]),
                writer: Mutex::new(()),
                write_fault: Mutex::new(None),
            },
            cache: RecordCache::new(options.cache_size),
            touches: Mutex::default(),
            idle: options.idle_timeout,
            file_reads: AtomicU64::new(0),
        });
        // The cache is empty and the log read up to `seq`: trusted from here.
        shared.cache.followed(shared.cache.now_ms());
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("sqlite-changes".into())
            .spawn(move || follow_changes(weak, seq))
            .map_err(|e| format!("cannot start the change-log reader: {e}"))?;
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_behind(weak))
            .map_err(|e| format!("cannot start the last_seen writer: {e}"))?;
        Ok(Self { shared })
    }

    /// Session records cached in this process now.
    pub fn cached_sessions(&self) -> usize {
        self.shared.cache.len()
    }

    /// How many session reads went to the file since the store was opened.
    pub fn file_reads(&self) -> u64 {
        self.shared.file_reads.load(Ordering::Relaxed)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        access: Access,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.pool.access(access, f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("sqlite task failed: {e}")))?
    }
}

impl Shared {
    /// A record read from the file, with the `last_seen` this process has queued.
    fn with_queued_touch(&self, mut record: SessionRecord) -> SessionRecord {
        if let Some(&t) = self
            .touches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&record.key)
        {
            record.last_seen = record.last_seen.max(t);
        }
        record
    }

    /// Writes the queued `last_seen` values in one transaction (blocking). On failure
    /// they are queued again.
    fn flush_touches(&self) -> Result<(), StoreError> {
        let batch = std::mem::take(&mut *self.touches.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.pool.write(false, |c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE sessions SET last_seen = max(last_seen, ?2) WHERE key = ?1",
                )?;
                for (key, last_seen) in &batch {
                    stmt.execute(params![key.as_bytes().as_slice(), last_seen])?;
                }
            }
            tx.commit()
        });
        if result.is_err() {
            let mut touches = self.touches.lock().unwrap_or_else(|p| p.into_inner());
            for (key, t) in batch {
                let queued = touches.entry(key).or_insert(t);
                *queued = (*queued).max(t);
            }
        }
        result
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The store is closing (shutdown): the queued idle clocks go to the file.
        if let Err(e) = self.flush_touches() {
            tracing::warn!(error = %e, "sqlite: last_seen values not written at close");
        }
    }
}

/// The highest change-log sequence number ever given out (0 for none).
fn last_change(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'changes'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// A change-log row: its sequence number and the session key it names.
type Change = (i64, Vec<u8>);

/// The change-log rows after `after`, and the last sequence number, in one snapshot.
fn read_changes(c: &Connection, after: i64) -> rusqlite::Result<(i64, Vec<Change>)> {
    let tx = c.unchecked_transaction()?;
    let last = last_change(&tx)?;
    let rows = tx
        .prepare_cached("SELECT seq, key FROM changes WHERE seq > ?1 ORDER BY seq")?
        .query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.finish()?;
    Ok((last, rows))
}

/// The change-log reader (its own thread; ends when the store is dropped).
fn follow_changes(shared: Weak<Shared>, mut after: i64) {
    let mut failing = false;
    loop {
        std::thread::sleep(POLL_EVERY);
        let Some(s) = shared.upgrade() else { return };
        let started = s.cache.now_ms();
        match s.pool.run(|c| read_changes(c, after)) {
            Ok((last, rows)) => {
                // Every row from `after` on must be there, else some were trimmed
                // before we read them (or the file was replaced): start over.
                let complete = last == after
                    || (last > after
                        && rows.first().is_some_and(|r| r.0 == after + 1)
                        && rows.last().is_some_and(|r| r.0 == last));
                if complete {
                    for (_, key) in &rows {
                        if let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) {
                            s.cache.evict(&StoreKey::from_bytes(key));
                        }
                    }
                } else {
                    tracing::warn!(
                        "sqlite: change log read too late (rows trimmed); session cache dropped"
                    );
                    s.cache.clear();
                }
                after = last;
                s.cache.followed(started);
                if failing {
                    failing = false;
                    tracing::info!("sqlite: change log readable again; session cache in use");
                }
            }
            Err(e) => {
                s.cache.unfollowed();
                s.cache.clear();
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, "sqlite: change log unreadable; sessions are read from the file until it is back");
                }
            }
        }
    }
}

/// Writes queued `last_seen` values every [`FLUSH_EVERY`] and trims the change log
/// (its own thread; ends when the store is dropped).
fn write_behind(shared: Weak<Shared>) {
    let mut last_trim = std::time::Instant::now();
    loop {
        std::thread::sleep(FLUSH_EVERY);
        let Some(s) = shared.upgrade() else { return };
        if let Err(e) = s.flush_touches() {
            tracing::warn!(error = %e, "sqlite: last_seen write failed; retrying");
        }
        if last_trim.elapsed() >= TRIM_EVERY {
            last_trim = std::time::Instant::now();
            let before = super::now_secs() - KEEP_CHANGES_SECS;
            if let Err(e) = s.pool.write(false, |c| {
                c.execute("DELETE FROM changes WHERE at < ?1", [before])
            }) {
                tracing::warn!(error = %e, "sqlite: change log trim failed");
            }
        }
    }
}

/// Brings a database written by an older Portcullis up to [`SCHEMA`]: columns added
/// since are added with their defaults, so existing sessions stay valid; then the
/// change log ([`CHANGE_LOG`]) is created if missing.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_frontend: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('sessions') WHERE name = 'frontend'")?
        .exists([])?;
    if !has_frontend {
        conn.execute_batch("ALTER TABLE sessions ADD COLUMN frontend TEXT NOT NULL DEFAULT ''")?;
    }
    let has_network: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('pending_logins') WHERE name = 'network'")?
        .exists([])?;
    if !has_network {
        conn.execute_batch(
            "ALTER TABLE pending_logins ADD COLUMN network TEXT NOT NULL DEFAULT ''",
        )?;
    }
    // After the column exists (an older database gets it just above).
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS pending_logins_network ON pending_logins(network, expires_at)",
    )?;
    conn.execute_batch(CHANGE_LOG)
}

const COLUMNS: &str =
    "key, sub, sid, claims, tokens, created_at, last_seen, expires_at, version, frontend";

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    let key: Vec<u8> = row.get(0)?;
    let key = <[u8; 32]>::try_from(key.as_slice()).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            "key is not 32 bytes".into(),
        )
    })?;
    Ok(SessionRecord {
        key: StoreKey::from_bytes(key),
        sub: row.get(1)?,
        sid: row.get(2)?,
        claims: row.get(3)?,
        sealed_tokens: row.get(4)?,
        created_at: row.get(5)?,
        last_seen: row.get(6)?,
        expires_at: row.get(7)?,
        version: row.get::<_, i64>(8)? as u64,
        frontend: row.get(9)?,
    })
}

impl SessionStore for SqliteStore {
    async fn get(&self, key: &StoreKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let s = &self.shared;
        let now = super::now_secs();
        let followed = s.cache.is_followed(TRUST_WINDOW.as_millis() as u64);
        if followed
            && let Some(r) = s.cache.get(key)
            // One that looks ended is re-read: another process may have used it since.
            && now < r.expires_at
            && now < r.last_seen.saturating_add(s.idle)
        {
            return Ok(Some(r));
        }
        s.file_reads.fetch_add(1, Ordering::Relaxed);
        let snapshot = s.cache.snapshot(key);
        let key = *key;
        let record = self
            .blocking(Access::Read, move |c| {
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM sessions WHERE key = ?1"))?
                    .query_row([key.as_bytes().as_slice()], row_to_record)
                    .optional()
            })
            .await?
            .map(|r| Arc::new(s.with_queued_touch(r)));
        if followed && let Some(r) = &record {
            s.cache.fill(r.clone(), snapshot);
        }
        Ok(record)
    }

    async fn insert(&self, record: Arc<SessionRecord>) -> Result<(), StoreError> {
        let snapshot = self.shared.cache.snapshot(&record.key);
        let r = record.clone();
        self.blocking(Access::Durable, move |c| {
            // An upsert, not INSERT OR REPLACE: replacing a row must fire the change
            // log's update trigger (REPLACE's implicit delete fires none).
            c.prepare_cached(&format!(
                "INSERT INTO sessions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT(key) DO UPDATE SET sub = excluded.sub, sid = excluded.sid, \
                 claims = excluded.claims, tokens = excluded.tokens, \
                 created_at = excluded.created_at, last_seen = excluded.last_seen, \
                 expires_at = excluded.expires_at, version = excluded.version, \
                 frontend = excluded.frontend"
            ))?
            .execute(params![
                r.key.as_bytes().as_slice(),
                r.sub,
                r.sid,
                r.claims,
                r.sealed_tokens,
                r.created_at,
                r.last_seen,
                r.expires_at,
                r.version as i64,
                r.frontend,
            ])
            .map(drop)
        })
        .await?;
        self.shared.cache.fill(record, snapshot);
        Ok(())
    }

    async fn update(&self, record: Arc<SessionRecord>) -> Result<bool, StoreError> {
        let s = &self.shared;
        let key = record.key;
        let snapshot = s.cache.snapshot(&key);
        let stored = self
            .blocking(Access::Durable, move |c| {
                c.prepare_cached(&format!(
                    "UPDATE sessions SET sub = ?2, sid = ?3, claims = ?4, tokens = ?5, created_at = ?6, \
                     last_seen = max(last_seen, ?7), expires_at = ?8, version = ?9 WHERE key = ?1 \
                     RETURNING {COLUMNS}"
                ))?
                .query_row(
                    params![
                        record.key.as_bytes().as_slice(),
                        record.sub,
                        record.sid,
                        record.claims,
                        record.sealed_tokens,
                        record.created_at,
                        record.last_seen,
                        record.expires_at,
                        record.version as i64,
                    ],
                    row_to_record,
                )
                .optional()
            })
            .await?;
        match stored {
            Some(r) => {
                s.cache.fill(Arc::new(s.with_queued_touch(r)), snapshot);
                Ok(true)
            }
            None => {
                s.cache.evict(&key);
                Ok(false)
            }
        }
    }

    /// Not on the request path: the cached copy moves now, the file within
    /// [`FLUSH_EVERY`] (see the module docs).
    async fn touch(&self, key: &StoreKey, last_seen: i64) -> Result<(), StoreError> {
        let s = &self.shared;
        s.cache.touch(key, last_seen);
        let mut touches = s.touches.lock().unwrap_or_else(|p| p.into_inner());
        let queued = touches.entry(*key).or_insert(last_seen);
        *queued = (*queued).max(last_seen);
        Ok(())
    }

    async fn remove(&self, key: &StoreKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let k = *key;
        let removed = self
            .blocking(Access::Durable, move |c| {
                c.prepare_cached(&format!(
                    "DELETE FROM sessions WHERE key = ?1 RETURNING {COLUMNS}"
                ))?
                .query_row([k.as_bytes().as_slice()], row_to_record)
                .optional()
            })
            .await;
        // Evicted after the commit: a read that raced it is not cached (see `cache`).
        self.shared.cache.evict(key);
        let removed = removed?;
        self.shared
            .touches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        Ok(removed.map(Arc::new))
    }

    async fn find(&self, filter: &SessionFilter) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
        let filter = filter.clone();
        let rows = self
            .blocking(Access::Read, move |c| {
                let (sql, arg) = match &filter {
                    SessionFilter::All => (format!("SELECT {COLUMNS} FROM sessions"), None),
                    SessionFilter::Sid(sid) => (
                        format!("SELECT {COLUMNS} FROM sessions WHERE sid = ?1"),
                        Some(sid),
                    ),
                    SessionFilter::Sub(sub) => (
                        format!("SELECT {COLUMNS} FROM sessions WHERE sub = ?1"),
                        Some(sub),
                    ),
                };
                let mut stmt = c.prepare_cached(&sql)?;
                let rows = match arg {
                    Some(a) => stmt
                        .query_map([a], row_to_record)?
                        .collect::<rusqlite::Result<Vec<_>>>()?,
                    None => stmt
                        .query_map([], row_to_record)?
                        .collect::<rusqlite::Result<Vec<_>>>()?,
                };
                Ok(rows)
            })
            .await?;
        // Not cached: a listing of every session would push out the ones in use.
        Ok(rows
            .into_iter()
            .map(|r| Arc::new(self.shared.with_queued_touch(r)))
            .collect())
    }

    async fn remove_expired(&self, now: i64, idle: i64) -> Result<usize, StoreError> {
        // What this process knows was used recently goes to the file first.
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.flush_touches())
            .await
            .map_err(|e| StoreError::Unavailable(format!("sqlite task failed: {e}")))??;
        let removed = self
            .blocking(Access::Write, move |c| {
                // Both terms can use an index: the sweep reads only the expired rows,
                // not the whole table (a full scan of a million sessions held the write
                // lock for seconds and stalled the proxy path every minute).
                let keys = c
                    .prepare_cached(
                        "DELETE FROM sessions WHERE expires_at <= ?1 OR last_seen <= ?1 - ?2 \
                         RETURNING key",
                    )?
                    .query_map(params![now, idle + SWEEP_GRACE_SECS], |r| {
                        r.get::<_, Vec<u8>>(0)
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                c.execute("DELETE FROM pending_logins WHERE expires_at <= ?1", [now])?;
                c.execute(
                    "DELETE FROM refresh_locks WHERE expires_ms <= ?1",
                    [now * 1000],
                )?;
                Ok(keys)
            })
            .await?;
        for key in &removed {
            if let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) {
                self.shared.cache.evict(&StoreKey::from_bytes(key));
            }
        }
        Ok(removed.len())
    }

    async fn put_pending(
        &self,
        key: StoreKey,
        pending: PendingLogin,
        caps: PendingCaps,
    ) -> Result<usize, StoreError> {
        let data = serde_json::to_string(&pending).expect("pending login serializes");
        let now = super::now_secs();
        let outcome = self
            .blocking(Access::Write, move |c| {
                // IMMEDIATE: the counts and the insert are one write transaction, so
                // concurrent logins can't both see room for one.
                let tx = rusqlite::Transaction::new_unchecked(
                    c,
                    rusqlite::TransactionBehavior::Immediate,
                )?;
                let in_network: i64 = tx
                    .prepare_cached(
                        "SELECT count(*) FROM pending_logins WHERE network = ?1 AND expires_at > ?2",
                    )?
                    .query_row(params![pending.network, now], |r| r.get(0))?;
                if in_network as usize >= caps.per_network {
                    return Ok(None);
                }
                let mut live: i64 = tx
                    .prepare_cached("SELECT count(*) FROM pending_logins WHERE expires_at > ?1")?
                    .query_row([now], |r| r.get(0))?;
                let mut evicted = 0;
                if live as usize >= caps.total {
                    tx.execute("DELETE FROM pending_logins WHERE expires_at <= ?1", [now])?;
                    tx.execute("DELETE FROM refresh_locks WHERE expires_ms <= ?1", [now * 1000])?;
                    tx.execute("DELETE FROM seen_once WHERE expires_at <= ?1", [now])?;
                }
                while live > 0 && live as usize >= caps.total {
                    // The oldest login of the network holding the most (ties: the
                    // network whose oldest is oldest).
                    evicted += tx
                        .prepare_cached(
                            "DELETE FROM pending_logins WHERE key = (
                                SELECT key FROM pending_logins WHERE network = (
                                    SELECT network FROM pending_logins GROUP BY network
                                    ORDER BY count(*) DESC, min(expires_at) LIMIT 1)
                                ORDER BY expires_at LIMIT 1)",
                        )?
                        .execute([])?;
                    live -= 1;
                }
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO pending_logins (key, data, expires_at, network)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    key.as_bytes().as_slice(),
                    data,
                    pending.expires_at,
                    pending.network
                ])?;
                tx.commit()?;
                Ok(Some(evicted))
            })
            .await?;
        outcome.ok_or(StoreError::PendingFull)
    }

    async fn take_pending(
        &self,
        key: &StoreKey,
        now: i64,
    ) -> Result<Option<PendingLogin>, StoreError> {
        let key = *key;
        let row: Option<(String, i64)> = self
            .blocking(Access::Write, move |c| {
                c.prepare_cached(
                    "DELETE FROM pending_logins WHERE key = ?1 RETURNING data, expires_at",
                )?
                .query_row([key.as_bytes().as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
            })
            .await?;
        Ok(row
            .filter(|(_, expires_at)| now < *expires_at)
            .and_then(|(data, _)| serde_json::from_str(&data).ok()))
    }

    async fn try_lock_refresh(
        &self,
        key: &StoreKey,
        owner: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let k = *key;
        let owner = owner.to_owned();
        let now = now_ms();
        let taken = self
            .blocking(Access::Write, move |c| {
                // One statement: take the lock if it's free or its lease has run out.
                let n = c
                    .prepare_cached(
                        "INSERT INTO refresh_locks (key, owner, expires_ms) VALUES (?1, ?2, ?3) \
                         ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, expires_ms = excluded.expires_ms \
                         WHERE refresh_locks.expires_ms <= ?4",
                    )?
                    .execute(params![k.as_bytes().as_slice(), owner, now + lease_ms as i64, now])?;
                Ok(n == 1)
            })
            .await?;
        if taken {
            // The holder re-reads the session under the lock to see whether someone
            // refreshed it meanwhile: that read must be the file's (another process's
            // refresh may not have reached the change log reader yet), or the rotated
            // refresh token would be used again and the provider would revoke the grant.
            self.shared.cache.evict(key);
        }
        Ok(taken)
    }

    async fn unlock_refresh(&self, key: &StoreKey, owner: &str) -> Result<(), StoreError> {
        let key = *key;
        let owner = owner.to_owned();
        self.blocking(Access::Write, move |c| {
            c.prepare_cached("DELETE FROM refresh_locks WHERE key = ?1 AND owner = ?2")?
                .execute(params![key.as_bytes().as_slice(), owner])
                .map(drop)
        })
        .await
    }

    async fn remember_once(&self, key: StoreKey, expires_at: i64) -> Result<bool, StoreError> {
        let now = super::now_secs();
        self.blocking(Access::Write, move |c| {
            // Insert, or take over an entry that has expired; otherwise it's a replay.
            let n = c
                .prepare_cached(
                    "INSERT INTO seen_once (key, expires_at) VALUES (?1, ?2) \
                     ON CONFLICT(key) DO UPDATE SET expires_at = excluded.expires_at \
                     WHERE seen_once.expires_at <= ?3",
                )?
                .execute(params![key.as_bytes().as_slice(), expires_at, now])?;
            Ok(n == 1)
        })
        .await
    }

    /// A read; after a failed write, a write too: a store that can read but not
    /// write (full disk, read-only file, locked by another process) is not ready.
    /// The probe waits 100 ms at most for a lock, so `/readyz` answers promptly.
    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(Access::Read, |c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await?;
        if self.shared.pool.write_fault().is_none() {
            return Ok(());
        }
        self.blocking(Access::Write, |c| {
            c.busy_timeout(Duration::from_millis(100))?;
            // A page's worth, as a session write needs: a probe of a few bytes can
            // fit where a session no longer does.
            let probe = c.execute_batch(
                "CREATE TABLE IF NOT EXISTS store_probe (id INTEGER PRIMARY KEY, data BLOB);
                 INSERT OR REPLACE INTO store_probe VALUES (1, randomblob(16384));",
            );
            c.busy_timeout(Duration::from_secs(5))?;
            probe
        })
        .await
    }

    async fn count(&self, now: i64) -> Result<u64, StoreError> {
        self.blocking(Access::Read, move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM sessions WHERE expires_at > ?1",
                [now],
                |row| row.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written before sessions had a frontend opens, and its sessions
    /// belong to the single frontend ("").
    #[tokio::test]
    async fn an_older_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            let old_schema = SCHEMA
                .replace("    frontend    TEXT NOT NULL DEFAULT '',\n", "")
                .replace(",\n    network     TEXT NOT NULL DEFAULT ''", "");
            assert!(!old_schema.contains("frontend") && !old_schema.contains("network"));
            conn.execute_batch(&old_schema).unwrap();
            conn.execute(
                "INSERT INTO pending_logins (key, data, expires_at) VALUES (?1, ?2, 9999999999)",
                params![
                    [8u8; 32].as_slice(),
                    r#"{"binding":"b","pkce_verifier":"v","nonce":"n","return_url":"/","expires_at":9999999999}"#
                ],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO sessions (key, sub, sid, claims, tokens, created_at, last_seen, \
                 expires_at, version) VALUES (?1, 'alice', NULL, '{}', x'01', 1, 1, 9999999999, 1)",
                [[7u8; 32].as_slice()],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let record = store
            .get(&StoreKey::from_bytes([7; 32]))
            .await
            .unwrap()
            .expect("the old session is still there");
        assert_eq!(record.sub, "alice");
        assert_eq!(record.frontend, "");
        // A login pending across the upgrade finishes, from the unknown network "".
        let pending = store
            .take_pending(&StoreKey::from_bytes([8; 32]), now_ms() / 1000)
            .await
            .unwrap()
            .expect("the old pending login is still there");
        assert_eq!(pending.network, "");
        let caps = PendingCaps {
            total: 10,
            per_network: 10,
        };
        store
            .put_pending(StoreKey::from_bytes([9; 32]), pending, caps)
            .await
            .unwrap();
        // The change log came with the migration: a delete by anyone is logged.
        let conn = Connection::open(&path).unwrap();
        conn.execute("DELETE FROM sessions", []).unwrap();
        let logged: Vec<u8> = conn
            .query_row("SELECT key FROM changes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(logged, [7u8; 32]);
        drop(store);
        // Opening again (already migrated) is fine.
        SqliteStore::open(&path).await.unwrap();
    }

    fn record(sub: &str) -> Arc<SessionRecord> {
        let now = crate::primitives::now_secs();
        Arc::new(SessionRecord {
            key: crate::session::SessionId::generate().key(),
            sub: sub.into(),
            sid: Some(format!("sid-{sub}")),
            frontend: String::new(),
            claims: "{}".into(),
            sealed_tokens: vec![1, 2, 3],
            created_at: now,
            last_seen: now,
            expires_at: now + 3600,
            version: 1,
        })
    }

    /// Two stores on one file: two processes, as far as SQLite is concerned (each has
    /// its own connections, cache and change-log reader).
    async fn two_stores(options: SqliteOptions) -> (tempfile::TempDir, SqliteStore, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let a = SqliteStore::open_with(&path, options).await.unwrap();
        let b = SqliteStore::open_with(&path, options).await.unwrap();
        (dir, a, b)
    }

    /// Polls `check` until it holds; panics after `limit` (a generous bound, not a
    /// measurement).
    async fn eventually<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(
        limit: Duration,
        mut check: F,
    ) {
        let started = std::time::Instant::now();
        while !check().await {
            assert!(started.elapsed() < limit, "not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `store` answers `key` from memory: two reads, no file read. (Only
    /// while its change-log reader keeps up, which a busy machine may delay a moment.)
    async fn assert_cached(store: &SqliteStore, key: &StoreKey) {
        eventually(Duration::from_secs(5), || async {
            store.get(key).await.unwrap().unwrap();
            let before = store.file_reads();
            store.get(key).await.unwrap().unwrap();
            store.file_reads() == before
        })
        .await;
    }

    fn file_last_seen(path: &Path, key: &StoreKey) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT last_seen FROM sessions WHERE key = ?1",
                [key.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_seen_before_is_answered_without_the_file() {
        let (_dir, a, b) = two_stores(SqliteOptions::default()).await;
        let r = record("alice");
        a.insert(r.clone()).await.unwrap();
        assert_eq!(a.get(&r.key).await.unwrap().as_deref(), Some(&*r));
        assert_cached(&a, &r.key).await;
        assert_eq!(b.get(&r.key).await.unwrap().as_deref(), Some(&*r));
        assert_cached(&b, &r.key).await;
        // Unknown sessions are not cached (nothing to evict when they appear).
        let unknown = record("nobody");
        assert!(b.get(&unknown.key).await.unwrap().is_none());
        a.insert(unknown.clone()).await.unwrap();
        assert!(b.get(&unknown.key).await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_by_another_process_is_seen_within_a_second() {
        let (dir, a, b) = two_stores(SqliteOptions::default()).await;
        let revoked = record("alice");
        let refreshed = record("bob");
        let dropped = record("carol");
        for r in [&revoked, &refreshed, &dropped] {
            a.insert(r.clone()).await.unwrap();
            assert_cached(&b, &r.key).await;
        }

        // `portcullis sessions revoke` in another process; a refresh there; and a
        // plain SQLite client (an older Portcullis, the sqlite3 shell).
        a.remove(&revoked.key).await.unwrap().unwrap();
        let mut new_tokens = (*refreshed).clone();
        new_tokens.sealed_tokens = vec![9; 9];
        new_tokens.version = 2;
        assert!(a.update(Arc::new(new_tokens)).await.unwrap());
        Connection::open(dir.path().join("s.db"))
            .unwrap()
            .execute(
                "DELETE FROM sessions WHERE key = ?1",
                [dropped.key.as_bytes().as_slice()],
            )
            .unwrap();

        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(b.get(&revoked.key).await.unwrap().is_none(), "revoked");
        assert!(b.get(&dropped.key).await.unwrap().is_none(), "deleted");
        let seen = b.get(&refreshed.key).await.unwrap().unwrap();
        assert_eq!(
            (seen.sealed_tokens.as_slice(), seen.version),
            (&[9u8; 9][..], 2)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_through_this_store_is_seen_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        let r = record("alice");
        store.insert(r.clone()).await.unwrap();
        assert!(store.get(&r.key).await.unwrap().is_some());
        let mut updated = (*r).clone();
        updated.sealed_tokens = vec![5; 5];
        updated.version = 2;
        assert!(store.update(Arc::new(updated.clone())).await.unwrap());
        assert_eq!(store.get(&r.key).await.unwrap().as_deref(), Some(&updated));
        store.remove(&r.key).await.unwrap().unwrap();
        assert!(store.get(&r.key).await.unwrap().is_none());
        assert!(!store.update(Arc::new(updated)).await.unwrap());
        assert!(store.get(&r.key).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_holds_its_bound_and_evicted_sessions_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            cache_size: 100,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_with(&dir.path().join("s.db"), options)
            .await
            .unwrap();
        let records: Vec<_> = (0..1000).map(|i| record(&format!("u{i}"))).collect();
        for r in &records {
            store.insert(r.clone()).await.unwrap();
            assert!(store.cached_sessions() <= 100);
        }
        assert!(store.cached_sessions() > 50, "{}", store.cached_sessions());
        for r in &records {
            assert_eq!(store.get(&r.key).await.unwrap().as_deref(), Some(&**r));
            assert!(store.cached_sessions() <= 100);
        }
        assert!(store.file_reads() >= 900, "{}", store.file_reads());
    }

    /// Two processes refresh the same session one after the other: the second, once
    /// it holds the lock, must see the first one's new tokens at once, not its cached
    /// copy (whose refresh token the provider has already rotated away).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_refresh_lock_holder_reads_the_file() {
        let (_dir, a, b) = two_stores(SqliteOptions::default()).await;
        let r = record("alice");
        a.insert(r.clone()).await.unwrap();
        assert_cached(&b, &r.key).await;
        for round in 2..12u64 {
            assert!(a.try_lock_refresh(&r.key, "a", 60_000).await.unwrap());
            let mut rotated = (*a.get(&r.key).await.unwrap().unwrap()).clone();
            rotated.sealed_tokens = round.to_le_bytes().to_vec();
            rotated.version = round;
            assert!(a.update(Arc::new(rotated)).await.unwrap());
            a.unlock_refresh(&r.key, "a").await.unwrap();
            assert!(b.try_lock_refresh(&r.key, "b", 60_000).await.unwrap());
            let seen = b.get(&r.key).await.unwrap().unwrap();
            assert_eq!(seen.version, round, "b, under the lock, saw an old refresh");
            b.unlock_refresh(&r.key, "b").await.unwrap();
            // b's copy is cached again, as after any read.
            b.get(&r.key).await.unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rotated_refresh_token_is_on_disk_when_update_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let r = record("alice");
        store.insert(r.clone()).await.unwrap();
        let mut rotated = (*r).clone();
        rotated.sealed_tokens = b"new tokens".to_vec();
        rotated.version = 2;
        assert!(store.update(Arc::new(rotated)).await.unwrap());
        // Read by a store opened afterwards, while this one still runs (a restart
        // after a crash reads the same file).
        let after = SqliteStore::open(&path).await.unwrap();
        let seen = after.get(&r.key).await.unwrap().unwrap();
        assert_eq!(seen.sealed_tokens, b"new tokens");
        assert_eq!(seen.version, 2);
        // Session writes are fsynced (the promise also holds across a power loss);
        // the connections' default stays NORMAL for everything else.
        let pragma = |c: &Connection| c.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0));
        let durable = store.shared.pool.access(Access::Durable, pragma).unwrap();
        let other = store.shared.pool.access(Access::Write, pragma).unwrap();
        let after = store.shared.pool.access(Access::Read, pragma).unwrap();
        assert_eq!((durable, other, after), (2, 1, 1), "FULL, NORMAL, NORMAL");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn last_seen_is_written_behind_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let mut r = (*record("alice")).clone();
        r.last_seen -= 100;
        let now = r.last_seen + 100;
        store.insert(Arc::new(r.clone())).await.unwrap();
        store.touch(&r.key, now).await.unwrap();
        assert_eq!(store.get(&r.key).await.unwrap().unwrap().last_seen, now);
        eventually(Duration::from_secs(5), || async {
            file_last_seen(&path, &r.key) == now
        })
        .await;
        // Queued values are written when the store closes, too.
        store.touch(&r.key, now + 1).await.unwrap();
        drop(store);
        assert_eq!(file_last_seen(&path, &r.key), now + 1);
    }

    /// The idle clock across processes: b's copy looks idle past its timeout, but a
    /// used the session meanwhile. b must ask the file, not end the session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_that_looks_idle_is_checked_in_the_file() {
        let options = SqliteOptions {
            idle_timeout: 10,
            ..SqliteOptions::default()
        };
        let (dir, a, b) = two_stores(options).await;
        let mut r = (*record("alice")).clone();
        let now = r.last_seen;
        r.last_seen = now - 9;
        a.insert(Arc::new(r.clone())).await.unwrap();
        assert_eq!(b.get(&r.key).await.unwrap().unwrap().last_seen, now - 9);
        a.touch(&r.key, now).await.unwrap();
        let path = dir.path().join("s.db");
        eventually(Duration::from_secs(5), || async {
            file_last_seen(&path, &r.key) == now
        })
        .await;
        // Wait until b's copy (last_seen = now - 9) is idle past 10 s.
        while crate::primitives::now_secs() < now + 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(b.get(&r.key).await.unwrap().unwrap().last_seen, now);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_change_log_stops_the_cache_until_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let r = record("alice");
        store.insert(r.clone()).await.unwrap();
        assert_cached(&store, &r.key).await;

        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("ALTER TABLE changes RENAME TO changes_away")
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = store.file_reads();
        for _ in 0..3 {
            store.get(&r.key).await.unwrap().unwrap();
        }
        assert_eq!(
            store.file_reads() - before,
            3,
            "every read went to the file"
        );

        conn.execute_batch("ALTER TABLE changes_away RENAME TO changes")
            .unwrap();
        assert_cached(&store, &r.key).await;
    }
}
