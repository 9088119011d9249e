//! Sessions in Redis, for several Portcullis instances sharing one truth.
//!
//! Layout (prefix `portcullis:`):
//! - `s:{key}` — a hash per session; Redis expires it at the earlier of its idle and
//!   absolute deadline, so both timeouts hold even if no instance is running.
//! - `sid:{sid}`, `sub:{sub}` — sets of session keys (the back-channel logout and
//!   admin lookups); `all` — a sorted set of every key by expiry. Members whose
//!   session expired are dropped lazily. A session and its index entries live in
//!   different slots on Redis Cluster: they are written by separate single-key
//!   pipelines (the session first), never by one command or script.
//! - `{pending}:*` — pending logins, all in one hash slot so the caps, the eviction
//!   and the single-use take are atomic Lua, also on Redis Cluster: `z` (key by
//!   expiry), `h` (key → data), `o` (`network|expiry|key`, one lexicographic set: a
//!   network's logins oldest first), `n` (key → its `o` member), `c` (network by
//!   count: the heaviest network).
//! - `lock:{key}` — the refresh lock: `SET NX PX` with a random owner, released by a
//!   compare-and-delete script. `once:{key}` — replay cache (`SET NX EXAT`).
//!
//! **Hot path.** Recently read sessions are kept in process. Every write that can
//! make a cached copy wrong (update, remove) is published on `portcullis:invalidate`,
//! and every instance evicts the key when the message arrives (well under 100 ms on
//! a LAN). The cache is only used while the subscription is live: if it drops, the
//! cache is cleared and reads go to Redis until it is back. Cached entries also age
//! out after [`CACHE_TTL`] as a safety net.
//!
//! **Faults.** Short connect/response timeouts; a failed call is
//! [`StoreError::Unavailable`] (503 `store_unavailable`), never a logout. The
//! connection manager reconnects by itself; Portcullis may even start while Redis
//! is down.
//!
//! **Reconnects.** After Redis restarts, the pooled connection is dead and the first
//! command on it fails (broken pipe, reset, EOF). Every call is therefore run by
//! [`Shared::run`]: a call that failed on a dead connection — never one Redis
//! answered with an error, never a timeout — is sent once more on a fresh one, so a
//! restart costs no request. A resend after an unknown outcome must not change the
//! answer: reads and the idempotent writes (insert, update, touch, unlock, the index
//! trims) are simply sent again; the lock and the replay cache (`SET NX`) store a
//! value of their own and, when a resend finds the key taken, compare it (the first
//! send may have taken it); storing a pending login drops its own earlier copy before
//! the caps are checked; taking one may find it already taken by the lost first
//! send, which fails that login as an unknown state — no worse than the 503 without
//! the resend.
//!
//! **Failover.** Redis Cluster: the cluster client follows a promoted replica by
//! itself (it refreshes its slot map after a connection error or `MOVED`); calls to
//! the dead master's slots fail within [`TIMEOUT`] until then. Sentinel: a call that
//! finds the master's connection dead, timing out, or on a replica (`READONLY`) drops
//! the connection, and the next call asks the sentinels for the master again
//! ([`Shared::follow_master`]); a write a replica refused is sent once to the master.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Script, Value};

use super::{
    PendingCaps, PendingLogin, SessionFilter, SessionRecord, SessionStore, StoreError, StoreKey,
};
pub use crate::config::values::RedisAddress;

const PREFIX: &str = "portcullis:";
const CHANNEL: &str = "portcullis:invalidate";
/// Longest time a cached session is used without re-reading it.
const CACHE_TTL: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_secs(1);
/// Least time between two connection attempts while Redis is unreachable.
const RECONNECT_EVERY_MS: u64 = 500;

/// One connection type for the three deployments.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Shared {
    address: RedisAddress,
    /// The connection and its generation (bumped on every connect), so that a call
    /// that saw it fail forgets only that one, never a newer connection.
    conn: tokio::sync::RwLock<Option<(u64, Conn)>>,
    generation: AtomicU64,
    connecting: tokio::sync::Mutex<Option<Instant>>,
    idle: i64,
    cache: DashMap<StoreKey, (Arc<SessionRecord>, Instant)>,
    cache_live: AtomicBool,
    /// Bumped by every invalidation: a read that raced one is not cached.
    invalidations: AtomicU64,
}

/// The Redis session store.
pub struct RedisStore {
    shared: Arc<Shared>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// Whether a call failed because its connection was dead (broken pipe, reset, EOF,
/// refused): worth one more try on a fresh connection. An error reply from Redis or
/// a timeout is not.
fn connection_was_dead(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() && !e.is_timeout()
}

fn hex(key: &StoreKey) -> String {
    key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<StoreKey> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(StoreKey::from_bytes(out))
}

fn session_key(key: &StoreKey) -> String {
    format!("{PREFIX}s:{}", hex(key))
}

async fn connect(address: &RedisAddress) -> redis::RedisResult<Conn> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(1);
    match address {
        RedisAddress::Single(url) => {
            let client = redis::Client::open(url.as_str())?;
            Ok(Conn::Single(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
        RedisAddress::Cluster(nodes) => {
            let client = redis::cluster::ClusterClient::builder(nodes.clone())
                .connection_timeout(TIMEOUT)
                .response_timeout(TIMEOUT)
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
        RedisAddress::Sentinel {
            sentinels,
            master,
            db,
            tls,
        } => {
            let mut params = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(redis::RedisConnectionInfo::default().set_db(*db));
            if *tls {
                params = params.set_tls_mode(redis::TlsMode::Secure);
            }
            let mut sentinel = redis::sentinel::SentinelClient::build(
                sentinels.clone(),
                master.clone(),
                Some(params),
                redis::sentinel::SentinelServerType::Master,
            )?;
            let client = sentinel.async_get_client().await?;
            Ok(Conn::Single(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
    }
}

impl RedisStore {
    /// Opens the store. A Redis that is down is not fatal: operations fail with
    /// `Unavailable` until it answers. `idle` is the idle timeout in seconds (TTLs).
    pub async fn open(url: &str, idle: i64) -> Result<Self, String> {
        let address = RedisAddress::parse(url).map_err(|e| format!("session.redis_url: {e}"))?;
        let shared = Arc::new(Shared {
            address,
            conn: tokio::sync::RwLock::new(None),
            generation: AtomicU64::new(0),
            connecting: tokio::sync::Mutex::new(None),
            idle,
            cache: DashMap::new(),
            cache_live: AtomicBool::new(false),
            invalidations: AtomicU64::new(0),
        });
        if let Err(e) = shared.conn().await {
            tracing::warn!(error = %e, "redis not reachable yet; retrying on use");
        }
        tokio::spawn(invalidation_listener(Arc::downgrade(&shared)));
        Ok(Self { shared })
    }
}

impl Shared {
    async fn conn(&self) -> Result<Conn, StoreError> {
        self.current().await.map(|(_, c)| c)
    }

    /// The connection with its generation; connects (at most every 500 ms) if there
    /// is none.
    async fn current(&self) -> Result<(u64, Conn), StoreError> {
        if let Some(c) = self.conn.read().await.as_ref() {
            return Ok(c.clone());
        }
        let mut last_try = self.connecting.lock().await;
        if let Some(c) = self.conn.read().await.as_ref() {
            return Ok(c.clone());
        }
        if last_try.is_some_and(|t| t.elapsed() < Duration::from_millis(RECONNECT_EVERY_MS)) {
            return Err(StoreError::Unavailable("redis: not connected".into()));
        }
        *last_try = Some(Instant::now());
        let conn = connect(&self.address).await.map_err(unavailable)?;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *self.conn.write().await = Some((generation, conn.clone()));
        tracing::info!("connected to redis");
        Ok((generation, conn))
    }

    /// Behind Sentinel the master can move: a call that found the connection dead,
    /// timing out, or on a replica (`READONLY`, the old master came back demoted)
    /// drops it, and the next call asks the sentinels for the master again.
    async fn follow_master(&self, generation: u64, e: &redis::RedisError) -> bool {
        let moved = e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if !matches!(self.address, RedisAddress::Sentinel { .. })
            || !(moved || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal())
        {
            return false;
        }
        let mut conn = self.conn.write().await;
        if conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            *conn = None;
            tracing::warn!(error = %e, "redis master lost; asking the sentinels for the master again");
        }
        moved
    }

    /// Runs one call; if it failed on a dead connection, once more on a fresh one
    /// (the connection manager reconnects when a call fails on a dropped connection).
    /// `op` is told whether it is the resend, for the calls whose answer must be
    /// read differently then (see the module documentation).
    async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(Conn, bool) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (generation, conn) = self.current().await?;
        match op(conn, false).await {
            Ok(v) => Ok(v),
            Err(e) => {
                // A write a replica refused was not done: sending it to the master is safe.
                let refused_by_replica = self.follow_master(generation, &e).await;
                if !(refused_by_replica || connection_was_dead(&e)) {
                    return Err(unavailable(e));
                }
                tracing::info!(error = %e, "redis connection was dead; sending once more on a fresh one");
                let (generation, conn) = self.current().await?;
                match op(conn, true).await {
                    Ok(v) => Ok(v),
                    Err(e) => {
                        self.follow_master(generation, &e).await;
                        Err(unavailable(e))
                    }
                }
            }
        }
    }

    /// Sends pipelines that each touch one key (one slot on Redis Cluster, where a
    /// pipeline across slots is refused), all at once. Each is idempotent: sent again
    /// whole, it gives the same result.
    async fn send_each(&self, groups: &[Pipeline]) -> Result<(), StoreError> {
        futures_util::future::try_join_all(groups.iter().map(|pipe| {
            self.run(move |mut conn, _| async move { pipe.query_async::<()>(&mut conn).await })
        }))
        .await?;
        Ok(())
    }

    fn evict(&self, key: &StoreKey) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.cache.remove(key);
    }

    async fn publish_invalidation(&self, conn: &mut Conn, key: &StoreKey) {
        let r: redis::RedisResult<i64> = conn.publish(CHANNEL, hex(key)).await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "redis invalidation publish failed");
        }
    }

    fn deadline(&self, record: &SessionRecord) -> i64 {
        record.expires_at.min(record.last_seen + self.idle)
    }
}

/// Keeps the subscription to the invalidation channel; while it's live the cache is used.
///
/// On Redis Cluster a publish reaches every node, so any live node will do: the
/// listener subscribes on one seed node and, whenever that fails or the subscription
/// drops (the node died), tries the next seed node: a dead node is never retried in
/// a loop while others are alive.
async fn invalidation_listener(shared: std::sync::Weak<Shared>) {
    let mut node = 0usize;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let client = match &s.address {
            RedisAddress::Single(url) => redis::Client::open(url.as_str()),
            RedisAddress::Cluster(nodes) => {
                node = (node + 1) % nodes.len();
                redis::Client::open(nodes[node].as_str())
            }
            RedisAddress::Sentinel { .. } => {
                // Sentinel deployments read through to Redis (no cross-instance cache).
                return;
            }
        };
        let pubsub = match client {
            Ok(c) => tokio::time::timeout(TIMEOUT, c.get_async_pubsub()).await,
            Err(e) => {
                tracing::error!(error = %e, "redis pub/sub client");
                return;
            }
        };
        let mut pubsub = match pubsub {
            Ok(Ok(p)) => p,
            _ => {
                drop(s);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if pubsub.subscribe(CHANNEL).await.is_err() {
            drop(s);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        // Anything cached before the subscription may have missed an invalidation.
        s.cache.clear();
        s.cache_live.store(true, Ordering::Release);
        tracing::debug!("redis invalidation channel live");
        let weak = Arc::downgrade(&s);
        drop(s);
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let Some(s) = weak.upgrade() else { return };
            if let Ok(text) = msg.get_payload::<String>()
                && let Some(key) = unhex(&text)
            {
                s.evict(&key);
            }
        }
        if let Some(s) = weak.upgrade() {
            s.cache_live.store(false, Ordering::Release);
            s.cache.clear();
            tracing::warn!("redis invalidation channel lost; reading through until it is back");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn record_from_hash(
    key: StoreKey,
    mut h: std::collections::HashMap<String, Vec<u8>>,
) -> Option<SessionRecord> {
    let text = |v: Vec<u8>| String::from_utf8(v).ok();
    let num = |v: Option<Vec<u8>>| -> Option<i64> { text(v?)?.parse().ok() };
    Some(SessionRecord {
        key,
        sub: text(h.remove("sub")?)?,
        sid: h.remove("sid").and_then(text),
        claims: text(h.remove("claims")?)?,
        sealed_tokens: h.remove("tok")?,
        created_at: num(h.remove("c"))?,
        last_seen: num(h.remove("l"))?,
        expires_at: num(h.remove("e"))?,
        version: num(h.remove("v"))? as u64,
        frontend: h.remove("fe").and_then(text).unwrap_or_default(),
    })
}

fn hash_fields(r: &SessionRecord) -> Vec<(&'static str, Vec<u8>)> {
    let mut f = vec![
        ("sub", r.sub.as_bytes().to_vec()),
        ("claims", r.claims.as_bytes().to_vec()),
        ("tok", r.sealed_tokens.clone()),
        ("c", r.created_at.to_string().into_bytes()),
        ("l", r.last_seen.to_string().into_bytes()),
        ("e", r.expires_at.to_string().into_bytes()),
        ("v", r.version.to_string().into_bytes()),
    ];
    if let Some(sid) = &r.sid {
        f.push(("sid", sid.as_bytes().to_vec()));
    }
    if !r.frontend.is_empty() {
        f.push(("fe", r.frontend.as_bytes().to_vec()));
    }
    f
}

async fn read_record(conn: &mut Conn, key: &StoreKey) -> redis::RedisResult<Option<SessionRecord>> {
    let h: std::collections::HashMap<String, Vec<u8>> = conn.hgetall(session_key(key)).await?;
    if h.is_empty() {
        return Ok(None);
    }
    Ok(record_from_hash(*key, h))
}

/// Replaces a session only if it exists; the expiry follows the new deadlines.
static UPDATE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
          redis.call('DEL', KEYS[1])
          for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
          redis.call('EXPIREAT', KEYS[1], ARGV[1])
          return 1",
    )
});

/// Moves `last_seen` forward (never back) and the expiry with it.
static TOUCH: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"local e = redis.call('HGET', KEYS[1], 'e')
          if not e then return 0 end
          local l = tonumber(redis.call('HGET', KEYS[1], 'l'))
          local now = tonumber(ARGV[1])
          if now > l then redis.call('HSET', KEYS[1], 'l', now) else now = l end
          redis.call('EXPIREAT', KEYS[1], math.min(tonumber(e), now + tonumber(ARGV[2])))
          return 1",
    )
});

static UNLOCK: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
          return 0",
    )
});

/// Lua shared by the pending-login scripts (KEYS: z, h, n, o, c): `drop(m)` removes
/// the pending login `m` (hex key) from every structure.
const DROP_PENDING: &str = r"
local function drop(m)
  local om = redis.call('HGET', KEYS[3], m)
  if om then
    local net = string.match(om, '^(.-)|')
    redis.call('ZREM', KEYS[4], om)
    if tonumber(redis.call('ZINCRBY', KEYS[5], -1, net)) <= 0 then
      redis.call('ZREM', KEYS[5], net)
    end
  end
  redis.call('HDEL', KEYS[2], m)
  redis.call('HDEL', KEYS[3], m)
  redis.call('ZREM', KEYS[1], m)
end
";

/// Stores a pending login within the caps (see [`PendingCaps`]); returns how many
/// were evicted, or -1 when the network is full. ARGV: now, total, per_network,
/// expires_at, key, data, network.
static PUT_PENDING: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(&format!(
        r"{DROP_PENDING}
          local now = tonumber(ARGV[1])
          for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do drop(m) end
          -- Our own earlier copy (a resend after a lost answer) counts for nothing.
          if redis.call('HEXISTS', KEYS[2], ARGV[5]) == 1 then drop(ARGV[5]) end
          local net = ARGV[7]
          if redis.call('ZLEXCOUNT', KEYS[4], '[' .. net .. '|', '(' .. net .. '}}')
              >= tonumber(ARGV[3]) then return -1 end
          local evicted = 0
          while redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) do
            local heavy = redis.call('ZREVRANGE', KEYS[5], 0, 0)[1]
            if not heavy then break end
            local oldest = redis.call('ZRANGEBYLEX', KEYS[4], '[' .. heavy .. '|',
              '(' .. heavy .. '}}', 'LIMIT', 0, 1)[1]
            if oldest then
              drop(string.match(oldest, '([^|]*)$'))
              evicted = evicted + 1
            else
              redis.call('ZREM', KEYS[5], heavy)
            end
          end
          local om = net .. '|' .. string.format('%012d', tonumber(ARGV[4])) .. '|' .. ARGV[5]
          redis.call('ZADD', KEYS[1], ARGV[4], ARGV[5])
          redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
          redis.call('HSET', KEYS[3], ARGV[5], om)
          redis.call('ZADD', KEYS[4], 0, om)
          redis.call('ZINCRBY', KEYS[5], 1, net)
          return evicted"
    ))
});

/// Takes a pending login once (KEYS as [`DROP_PENDING`]; ARGV: key).
static TAKE_PENDING: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(&format!(
        r"{DROP_PENDING}
          local d = redis.call('HGET', KEYS[2], ARGV[1])
          if d then drop(ARGV[1]) end
          return d"
    ))
});

const PENDING_Z: &str = "portcullis:{pending}:z";
const PENDING_H: &str = "portcullis:{pending}:h";
const PENDING_N: &str = "portcullis:{pending}:n";
const PENDING_O: &str = "portcullis:{pending}:o";
const PENDING_C: &str = "portcullis:{pending}:c";
const ALL: &str = "portcullis:all";

impl SessionStore for RedisStore {
    async fn get(&self, key: &StoreKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let s = &self.shared;
        let live = s.cache_live.load(Ordering::Acquire);
        if live
            && let Some(entry) = s.cache.get(key)
            && entry.1.elapsed() < CACHE_TTL
        {
            return Ok(Some(entry.0.clone()));
        }
        let before = s.invalidations.load(Ordering::Acquire);
        let record = s
            .run(|mut conn, _| async move { read_record(&mut conn, key).await })
            .await?
            .map(Arc::new);
        if live
            && let Some(r) = &record
            && s.invalidations.load(Ordering::Acquire) == before
        {
            s.cache.insert(*key, (r.clone(), Instant::now()));
        }
        Ok(record)
    }

    async fn insert(&self, record: Arc<SessionRecord>) -> Result<(), StoreError> {
        let s = &self.shared;
        let k = session_key(&record.key);
        let member = hex(&record.key);
        let deadline = s.deadline(&record);
        let mut pipe = redis::pipe();
        pipe.del(&k).ignore();
        pipe.hset_multiple(&k, &hash_fields(&record)).ignore();
        pipe.expire_at(&k, deadline).ignore();
        // The session first, then its indexes: an index member whose session does
        // not exist yet would be dropped as dangling by a concurrent `find`.
        let pipe = &pipe;
        s.run(|mut conn, _| async move { pipe.query_async::<()>(&mut conn).await })
            .await?;
        let mut pipe = redis::pipe();
        let sub_key = format!("{PREFIX}sub:{}", record.sub);
        pipe.sadd(&sub_key, &member).ignore();
        pipe.cmd("EXPIREAT")
            .arg(&sub_key)
            .arg(record.expires_at)
            .arg("GT")
            .ignore();
        pipe.expire_at(&sub_key, record.expires_at)
            .arg("NX")
            .ignore();
        let mut groups = vec![pipe];
        if let Some(sid) = &record.sid {
            let mut pipe = redis::pipe();
            let sid_key = format!("{PREFIX}sid:{sid}");
            pipe.sadd(&sid_key, &member).ignore();
            pipe.cmd("EXPIREAT")
                .arg(&sid_key)
                .arg(record.expires_at)
                .arg("GT")
                .ignore();
            pipe.expire_at(&sid_key, record.expires_at)
                .arg("NX")
                .ignore();
            groups.push(pipe);
        }
        let mut pipe = redis::pipe();
        pipe.zadd(ALL, &member, record.expires_at).ignore();
        groups.push(pipe);
        s.send_each(&groups).await?;
        s.evict(&record.key);
        s.publish_invalidation(&mut s.conn().await?, &record.key)
            .await;
        Ok(())
    }

    async fn update(&self, record: Arc<SessionRecord>) -> Result<bool, StoreError> {
        let s = &self.shared;
        let mut invocation = UPDATE.key(session_key(&record.key));
        invocation.arg(s.deadline(&record));
        for (field, value) in hash_fields(&record) {
            invocation.arg(field).arg(value);
        }
        let invocation = &invocation;
        // Replacing with the same fields again is the same replacement.
        let updated: i64 = s
            .run(|mut conn, _| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        s.evict(&record.key);
        s.publish_invalidation(&mut s.conn().await?, &record.key)
            .await;
        Ok(updated == 1)
    }

    async fn touch(&self, key: &StoreKey, last_seen: i64) -> Result<(), StoreError> {
        let s = &self.shared;
        let mut invocation = TOUCH.key(session_key(key));
        invocation.arg(last_seen).arg(s.idle);
        let invocation = &invocation;
        let _: i64 = s
            .run(|mut conn, _| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        // Our own cached copy learns the new last_seen; others re-read within CACHE_TTL.
        if let Some(mut entry) = s.cache.get_mut(key) {
            let r = Arc::make_mut(&mut entry.0);
            r.last_seen = r.last_seen.max(last_seen);
        }
        Ok(())
    }

    async fn remove(&self, key: &StoreKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let s = &self.shared;
        let record = s
            .run(|mut conn, _| async move { read_record(&mut conn, key).await })
            .await?;
        let k = &session_key(key);
        // A resend that finds the key gone after the first send's answer was lost:
        // the first send deleted it.
        let deleted: bool = s
            .run(|mut conn, resent| async move {
                let n: i64 = conn.del(k).await?;
                Ok(n == 1 || resent)
            })
            .await?;
        s.evict(key);
        s.publish_invalidation(&mut s.conn().await?, key).await;
        let Some(record) = record.filter(|_| deleted) else {
            return Ok(None);
        };
        let member = hex(key);
        let mut groups = Vec::with_capacity(3);
        let mut pipe = redis::pipe();
        pipe.srem(format!("{PREFIX}sub:{}", record.sub), &member)
            .ignore();
        groups.push(pipe);
        if let Some(sid) = &record.sid {
            let mut pipe = redis::pipe();
            pipe.srem(format!("{PREFIX}sid:{sid}"), &member).ignore();
            groups.push(pipe);
        }
        let mut pipe = redis::pipe();
        pipe.zrem(ALL, &member).ignore();
        groups.push(pipe);
        s.send_each(&groups).await?;
        Ok(Some(Arc::new(record)))
    }

    async fn find(&self, filter: &SessionFilter) -> Result<Vec<Arc<SessionRecord>>, StoreError> {
        let s = &self.shared;
        let (index, members): (Option<String>, Vec<String>) = match filter {
            SessionFilter::All => {
                let now = super::now_secs();
                let members = s
                    .run(|mut conn, _| async move {
                        let _: i64 = conn.zrembyscore(ALL, "-inf", now).await?;
                        conn.zrange(ALL, 0, -1).await
                    })
                    .await?;
                (None, members)
            }
            SessionFilter::Sid(sid) => {
                let k = format!("{PREFIX}sid:{sid}");
                let m = s
                    .run(|mut conn, _| {
                        let k = &k;
                        async move { conn.smembers(k).await }
                    })
                    .await?;
                (Some(k), m)
            }
            SessionFilter::Sub(sub) => {
                let k = format!("{PREFIX}sub:{sub}");
                let m = s
                    .run(|mut conn, _| {
                        let k = &k;
                        async move { conn.smembers(k).await }
                    })
                    .await?;
                (Some(k), m)
            }
        };
        let mut found = Vec::with_capacity(members.len());
        for member in members {
            let Some(key) = unhex(&member) else { continue };
            let key = &key;
            match s
                .run(|mut conn, _| async move { read_record(&mut conn, key).await })
                .await?
            {
                Some(r) if filter.matches(&r) => found.push(Arc::new(r)),
                Some(_) => {}
                None => {
                    // Expired by Redis: drop the dangling index entry.
                    if let Some(index) = &index {
                        let _: redis::RedisResult<i64> = s.conn().await?.srem(index, &member).await;
                    }
                }
            }
        }
        Ok(found)
    }

    async fn remove_expired(&self, now: i64, _idle: i64) -> Result<usize, StoreError> {
        // Redis expires sessions itself; only the `all` index needs trimming.
        let n: i64 = self
            .shared
            .run(|mut conn, _| async move { conn.zrembyscore(ALL, "-inf", now).await })
            .await?;
        Ok(n as usize)
    }

    async fn put_pending(
        &self,
        key: StoreKey,
        pending: PendingLogin,
        caps: PendingCaps,
    ) -> Result<usize, StoreError> {
        let data = serde_json::to_string(&pending).expect("pending login serializes");
        let mut invocation = PUT_PENDING.prepare_invoke();
        invocation
            .key(PENDING_Z)
            .key(PENDING_H)
            .key(PENDING_N)
            .key(PENDING_O)
            .key(PENDING_C)
            .arg(super::now_secs())
            .arg(caps.total)
            .arg(caps.per_network)
            .arg(pending.expires_at)
            .arg(hex(&key))
            .arg(data)
            .arg(&pending.network);
        let invocation = &invocation;
        // A resend drops the first send's copy before the caps are checked.
        let evicted: i64 = self
            .shared
            .run(|mut conn, _| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        usize::try_from(evicted).map_err(|_| StoreError::PendingFull)
    }

    async fn take_pending(
        &self,
        key: &StoreKey,
        now: i64,
    ) -> Result<Option<PendingLogin>, StoreError> {
        let mut invocation = TAKE_PENDING.prepare_invoke();
        invocation
            .key(PENDING_Z)
            .key(PENDING_H)
            .key(PENDING_N)
            .key(PENDING_O)
            .key(PENDING_C)
            .arg(hex(key));
        let invocation = &invocation;
        // Single use: a resend after a lost answer finds nothing (an unknown state,
        // the login fails cleanly), which is no worse than failing without it.
        let data: Option<String> = self
            .shared
            .run(|mut conn, _| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(data
            .and_then(|d| serde_json::from_str::<PendingLogin>(&d).ok())
            .filter(|p| now < p.expires_at))
    }

    async fn try_lock_refresh(
        &self,
        key: &StoreKey,
        owner: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let k = &format!("{PREFIX}lock:{}", hex(key));
        self.shared
            .run(|mut conn, resent| async move {
                let set: Option<String> = redis::cmd("SET")
                    .arg(k)
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease_ms)
                    .query_async(&mut conn)
                    .await?;
                if set.is_some() {
                    return Ok(true);
                }
                // Taken: by us, if the first send set it and its answer was lost.
                if resent {
                    let holder: Option<String> = conn.get(k).await?;
                    return Ok(holder.as_deref() == Some(owner));
                }
                Ok(false)
            })
            .await
            .inspect(|&taken| {
                if taken {
                    // The holder re-reads the session next: never from this instance's
                    // cache, which may not have seen another instance's refresh yet (its
                    // invalidation travels over pub/sub) — a stale copy would spend a
                    // rotated refresh token, and the provider revokes the grant on reuse.
                    self.shared.evict(key);
                }
            })
    }

    async fn unlock_refresh(&self, key: &StoreKey, owner: &str) -> Result<(), StoreError> {
        let mut invocation = UNLOCK.key(format!("{PREFIX}lock:{}", hex(key)));
        invocation.arg(owner);
        let invocation = &invocation;
        let _: i64 = self
            .shared
            .run(|mut conn, _| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    async fn remember_once(&self, key: StoreKey, expires_at: i64) -> Result<bool, StoreError> {
        if expires_at <= super::now_secs() {
            return Ok(true); // already past its memory: nothing to remember
        }
        let k = &format!("{PREFIX}once:{}", hex(&key));
        // A value of this call's own, so that a resend can tell its own first send
        // from a replay.
        let mark = &hex(&super::SessionId::generate().key());
        self.shared
            .run(|mut conn, resent| async move {
                let set: Option<String> = redis::cmd("SET")
                    .arg(k)
                    .arg(mark)
                    .arg("NX")
                    .arg("EXAT")
                    .arg(expires_at)
                    .query_async(&mut conn)
                    .await?;
                if set.is_some() {
                    return Ok(true);
                }
                if resent {
                    let seen: Option<String> = conn.get(k).await?;
                    return Ok(seen.as_deref() == Some(mark));
                }
                Ok(false)
            })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self
            .shared
            .run(|mut conn, _| async move { redis::cmd("PING").query_async(&mut conn).await })
            .await?;
        Ok(())
    }

    async fn count(&self, now: i64) -> Result<u64, StoreError> {
        let since = &format!("({now}");
        self.shared
            .run(|mut conn, _| async move { conn.zcount(ALL, since, "+inf").await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        assert_eq!(
            RedisAddress::parse("redis://127.0.0.1:6379/0").unwrap(),
            RedisAddress::Single("redis://127.0.0.1:6379/0".into())
        );
        assert!(matches!(
            RedisAddress::parse("rediss://user:pw@h:6380").unwrap(),
            RedisAddress::Single(_)
        ));
        assert_eq!(
            RedisAddress::parse("redis+cluster://a:7000,b:7001").unwrap(),
            RedisAddress::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()])
        );
        assert_eq!(
            RedisAddress::parse("redis+sentinel://s1:26379,s2:26379/mymaster/2").unwrap(),
            RedisAddress::Sentinel {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
                master: "mymaster".into(),
                db: 2,
                tls: false
            }
        );
        for bad in [
            "http://x",
            "redis+sentinel://s1:26379",
            "redis+cluster://",
            "nope",
        ] {
            assert!(RedisAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let k = StoreKey::hash(b"x");
        assert_eq!(unhex(&hex(&k)), Some(k));
        assert_eq!(unhex("zz"), None);
    }
}
