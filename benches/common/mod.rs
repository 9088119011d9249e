//! Fixtures shared by the benchmarks: realistic tokens and sessions, built only through
//! the library's public API.

#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use portcullis::config::SessionConfig;
use portcullis::session::cipher::TokenCipher;
use portcullis::session::{NewSession, Sessions, Store, Tokens};

/// Sizes of the tokens in a "typical" session: a 900-byte JWT access token (what an
/// RS256 access token with a few claims weighs; the load test's provider issues about
/// that much), a 43-byte opaque refresh token (oidc-provider's) and a 1,000-byte ID
/// token. `BENCH_TOKEN_BYTES=access,refresh,id` overrides them.
pub fn token_sizes() -> (usize, usize, usize) {
    let default = (900, 43, 1000);
    let Ok(v) = std::env::var("BENCH_TOKEN_BYTES") else {
        return default;
    };
    let n: Vec<usize> = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    match n.as_slice() {
        [a, r, i] => (*a, *r, *i),
        _ => default,
    }
}

/// A deterministic base64url-looking string of `len` bytes.
pub fn filler(len: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

pub fn tokens(seed: u64) -> Tokens {
    let (access, refresh, id) = token_sizes();
    let now = portcullis::primitives::now_secs();
    Tokens {
        access_token: filler(access, seed),
        token_type: "Bearer".into(),
        access_expires_at: Some(now + 3600),
        access_issued_at: Some(now),
        refresh_token: (refresh > 0).then(|| filler(refresh, seed ^ 0x5555)),
        id_token: (id > 0).then(|| filler(id, seed ^ 0xaaaa)),
        scope: Some("openid profile email offline_access".into()),
        dpop_key: None,
        route_tokens: Vec::new(),
    }
}

/// The claims of a typical user (ID token + userinfo), as the callback stores them.
pub fn new_session(n: u64) -> NewSession {
    let sub = format!("user-{n:08}");
    let claims = serde_json::json!({
        "sub": sub,
        "name": "Alice Liddell",
        "given_name": "Alice",
        "family_name": "Liddell",
        "email": format!("user{n}@example.com"),
        "email_verified": true,
        "preferred_username": format!("user{n}"),
        "auth_time": 1_767_225_600,
    });
    let serde_json::Value::Object(claims) = claims else {
        unreachable!()
    };
    NewSession {
        frontend: String::new(),
        sub,
        sid: Some(filler(21, n ^ 0x77)),
        claims,
        tokens: tokens(n),
        refresh_expires_at: None,
    }
}

/// A fixed benchmark key (never use it for anything else).
pub fn cipher() -> TokenCipher {
    TokenCipher::new(&[[7u8; 32]])
}

/// `Sessions` over `store` with the default timeouts (30 min idle, 12 h absolute).
pub fn sessions(store: Store) -> Sessions {
    Sessions::new(store, cipher(), &SessionConfig::default())
}

/// Polls a future that is ready at once (the memory store never waits).
pub fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("expected a future that completes at once"),
    }
}

/// This process's resident set size in bytes (`VmRSS` in /proc/self/status).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Whether a test runner only asks for this target's tests (`--list`: cargo-nextest
/// asks every target, benchmarks included). These benchmarks have none to list, and
/// must not run then.
pub fn only_listing() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// Percentile (0–100) of sorted nanosecond samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// An env var parsed as a number (underscores allowed: `1_000_000`), or `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}
