use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    PendingCaps, PendingLogin, SessionFilter, SessionKey, SessionRecord, SessionStore, StoreError,
};

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

/// Sessions in a SQLite file (WAL). Survives restarts; one host only.
///
/// rusqlite is blocking, so every operation runs on tokio's blocking pool with a
/// connection taken from a small pool (WAL lets readers run beside the writer).
pub struct SqliteStore {
    pool: Arc<Pool>,
}

struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
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
    pub async fn open(path: &Path) -> Result<Self, String> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            let conn =
                Pool::connect(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            conn.execute_batch(SCHEMA)
                .map_err(|e| format!("cannot create schema: {e}"))?;
            migrate(&conn).map_err(|e| format!("cannot migrate schema: {e}"))?;
            Ok(Self {
                pool: Arc::new(Pool {
                    path,
                    idle: Mutex::new(vec![conn]),
                }),
            })
        })
        .await
        .map_err(|e| format!("open task failed: {e}"))?
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || pool.run(f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("sqlite task failed: {e}")))?
    }
}

/// Brings a database written by an older Portcullis up to [`SCHEMA`]: columns added
/// since are added with their defaults, so existing sessions stay valid.
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
    Ok(())
}

const COLUMNS: &str =
    "key, sub, sid, claims, tokens, created_at, last_seen, expires_at, version, frontend";

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Arc<SessionRecord>> {
    let key: Vec<u8> = row.get(0)?;
    let key = <[u8; 32]>::try_from(key.as_slice()).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            "key is not 32 bytes".into(),
        )
    })?;
    Ok(Arc::new(SessionRecord {
        key: SessionKey::from_bytes(key),
        sub: row.get(1)?,
        sid: row.get(2)?,
        claims: row.get(3)?,
        sealed_tokens: row.get(4)?,
        created_at: row.get(5)?,
        last_seen: row.get(6)?,
        expires_at: row.get(7)?,
        version: row.get::<_, i64>(8)? as u64,
        frontend: row.get(9)?,
    }))
}

impl SessionStore for SqliteStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let key = *key;
        self.blocking(move |c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM sessions WHERE key = ?1"))?
                .query_row([key.as_bytes().as_slice()], row_to_record)
                .optional()
        })
        .await
    }

    async fn insert(&self, record: Arc<SessionRecord>) -> Result<(), StoreError> {
        self.blocking(move |c| {
            c.prepare_cached(&format!(
                "INSERT OR REPLACE INTO sessions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))?
            .execute(params![
                record.key.as_bytes().as_slice(),
                record.sub,
                record.sid,
                record.claims,
                record.sealed_tokens,
                record.created_at,
                record.last_seen,
                record.expires_at,
                record.version as i64,
                record.frontend,
            ])
            .map(drop)
        })
        .await
    }

    async fn update(&self, record: Arc<SessionRecord>) -> Result<bool, StoreError> {
        self.blocking(move |c| {
            c.prepare_cached(
                "UPDATE sessions SET sub = ?2, sid = ?3, claims = ?4, tokens = ?5, created_at = ?6, \
                 last_seen = max(last_seen, ?7), expires_at = ?8, version = ?9 WHERE key = ?1",
            )?
            .execute(params![
                record.key.as_bytes().as_slice(),
                record.sub,
                record.sid,
                record.claims,
                record.sealed_tokens,
                record.created_at,
                record.last_seen,
                record.expires_at,
                record.version as i64,
            ])
            .map(|n| n == 1)
        })
        .await
    }

    async fn touch(&self, key: &SessionKey, last_seen: i64) -> Result<(), StoreError> {
        let key = *key;
        self.blocking(move |c| {
            c.prepare_cached("UPDATE sessions SET last_seen = max(last_seen, ?2) WHERE key = ?1")?
                .execute(params![key.as_bytes().as_slice(), last_seen])
                .map(drop)
        })
        .await
    }

    async fn remove(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let key = *key;
        self.blocking(move |c| {
            c.prepare_cached(&format!(
                "DELETE FROM sessions WHERE key = ?1 RETURNING {COLUMNS}"
            ))?
            .query_row([key.as_bytes().as_slice()], row_to_record)
            .optional()
        })
        .await
    }

    async fn find(&self, filter: &SessionFilter) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
        let filter = filter.clone();
        self.blocking(move |c| {
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
        .await
    }

    async fn remove_expired(&self, now: i64, idle: i64) -> Result<usize, StoreError> {
        self.blocking(move |c| {
            let n = c.execute(
                // Both terms can use an index: the sweep reads only the expired rows,
                // not the whole table (a full scan of a million sessions held the write
                // lock for seconds and stalled the proxy path every minute).
                "DELETE FROM sessions WHERE expires_at <= ?1 OR last_seen <= ?1 - ?2",
                params![now, idle],
            )?;
            c.execute("DELETE FROM pending_logins WHERE expires_at <= ?1", [now])?;
            c.execute(
                "DELETE FROM refresh_locks WHERE expires_ms <= ?1",
                [now * 1000],
            )?;
            Ok(n)
        })
        .await
    }

    async fn put_pending(
        &self,
        key: SessionKey,
        pending: PendingLogin,
        caps: PendingCaps,
    ) -> Result<usize, StoreError> {
        let data = serde_json::to_string(&pending).expect("pending login serializes");
        let now = super::now_secs();
        let outcome = self
            .blocking(move |c| {
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
        key: &SessionKey,
        now: i64,
    ) -> Result<Option<PendingLogin>, StoreError> {
        let key = *key;
        let row: Option<(String, i64)> = self
            .blocking(move |c| {
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
        key: &SessionKey,
        owner: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let key = *key;
        let owner = owner.to_owned();
        let now = now_ms();
        self.blocking(move |c| {
            // One statement: take the lock if it's free or its lease has run out.
            let n = c
                .prepare_cached(
                    "INSERT INTO refresh_locks (key, owner, expires_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, expires_ms = excluded.expires_ms \
                     WHERE refresh_locks.expires_ms <= ?4",
                )?
                .execute(params![key.as_bytes().as_slice(), owner, now + lease_ms as i64, now])?;
            Ok(n == 1)
        })
        .await
    }

    async fn unlock_refresh(&self, key: &SessionKey, owner: &str) -> Result<(), StoreError> {
        let key = *key;
        let owner = owner.to_owned();
        self.blocking(move |c| {
            c.prepare_cached("DELETE FROM refresh_locks WHERE key = ?1 AND owner = ?2")?
                .execute(params![key.as_bytes().as_slice(), owner])
                .map(drop)
        })
        .await
    }

    async fn remember_once(&self, key: SessionKey, expires_at: i64) -> Result<bool, StoreError> {
        let now = super::now_secs();
        self.blocking(move |c| {
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

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }

    async fn count(&self, now: i64) -> Result<u64, StoreError> {
        self.blocking(move |c| {
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
            .get(&SessionKey::from_bytes([7; 32]))
            .await
            .unwrap()
            .expect("the old session is still there");
        assert_eq!(record.sub, "alice");
        assert_eq!(record.frontend, "");
        // A login pending across the upgrade finishes, from the unknown network "".
        let pending = store
            .take_pending(&SessionKey::from_bytes([8; 32]), now_ms() / 1000)
            .await
            .unwrap()
            .expect("the old pending login is still there");
        assert_eq!(pending.network, "");
        let caps = PendingCaps {
            total: 10,
            per_network: 10,
        };
        store
            .put_pending(SessionKey::from_bytes([9; 32]), pending, caps)
            .await
            .unwrap();
        drop(store);
        // Opening again (already migrated) is fine.
        SqliteStore::open(&path).await.unwrap();
    }
}
