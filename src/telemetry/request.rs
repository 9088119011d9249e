//! What the per-request layer (`server::request`) records: the request id and the
//! request metrics.
//!
//! **Request id.** `X-Request-Id` is believed only from a peer in
//! `server.trusted_proxies` (and only when it is a short token of safe characters),
//! so a browser can't plant ids in the logs; otherwise a random UUID-shaped id is
//! generated. The id is set on the request (so proxied upstreams receive it), on
//! every log line of the request (`telemetry::scope`), and on the response.
//!
//! The log lines carry the method and the path, never the query: `/bff/callback`'s
//! query holds the authorization code and the state.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

use super::metrics::metrics;
use crate::error::ErrorCode;

/// The request id header, in and out.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest inbound request id accepted from a trusted proxy.
const MAX_REQUEST_ID: usize = 128;

/// The metrics of one answered request: its `route` label, its `/bff` endpoint, the
/// answer and how long it took.
pub fn record(route: &'static str, endpoint: Endpoint, response: &Response, took: Duration) {
    let status = response.status().as_u16();
    let m = metrics();
    m.request(route, status, took);
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0);
    // Every refusal is an `ApiError`, so counting here counts each exactly once,
    // whichever layer refused (the audit event is logged where the refusal is decided).
    if let Some(code) = code {
        m.errors.get_or_create(&[("code", code)]).inc();
        match code {
            "csrf" => {
                m.csrf_rejected.inc();
            }
            "rate_limited" => {
                m.rate_limited.inc();
            }
            _ => {}
        }
    }
    let outcome = code.unwrap_or("success");
    match endpoint {
        Endpoint::Callback => {
            m.logins.get_or_create(&[("outcome", outcome)]).inc();
        }
        Endpoint::Logout => {
            m.logouts
                .get_or_create(&[("kind", "rp"), ("outcome", outcome)])
                .inc();
        }
        Endpoint::Backchannel => {
            m.logouts
                .get_or_create(&[("kind", "backchannel"), ("outcome", outcome)])
                .inc();
        }
        Endpoint::Login | Endpoint::User | Endpoint::Other => {}
    }
}

/// The `/bff` endpoints the layers tell apart: the guard protects `/user` and
/// `POST /logout`; the callback and the logouts count their outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Callback,
    User,
    Logout,
    Backchannel,
    Other,
}

impl Endpoint {
    /// `bff_path` is the path after the frontend's `/bff` (`Frontend::bff_path`).
    pub fn of(bff_path: &str) -> Self {
        match bff_path {
            "/login" => Self::Login,
            "/callback" => Self::Callback,
            "/user" => Self::User,
            "/logout" => Self::Logout,
            "/backchannel-logout" => Self::Backchannel,
            _ => Self::Other,
        }
    }
}

/// A request id from a trusted proxy: 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn acceptable_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_REQUEST_ID
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
}

/// A random version-4 UUID.
///
/// Request ids must be unique, not secret: each thread draws a 128-bit seed from the
/// system generator once and derives ids from it with SplitMix64 (a bijection of a
/// counter, so a thread never repeats an id), instead of a call into the CSPRNG per
/// request.
pub fn generate_id() -> HeaderValue {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
    }
    fn splitmix(x: u64) -> u64 {
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let (hi, lo) = STATE.with(|s| {
        let (a, b) = s.get().unwrap_or_else(|| {
            use aws_lc_rs::rand::{SecureRandom, SystemRandom};
            let mut seed = [0u8; 16];
            SystemRandom::new()
                .fill(&mut seed)
                .expect("the system random generator failed");
            let (a, b) = seed.split_at(8);
            (
                u64::from_le_bytes(a.try_into().expect("8 bytes")),
                u64::from_le_bytes(b.try_into().expect("8 bytes")),
            )
        });
        let a = a.wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(Some((a, b)));
        (splitmix(a), splitmix(a ^ b))
    });
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_le_bytes());
    b[8..].copy_from_slice(&lo.to_le_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut at = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[at] = b'-';
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    // One allocation holding the bytes and their count: the id goes on the request,
    // into the log fields and on the response, and a clone is a count, where a
    // `Vec`-backed value would allocate again on its first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out)).expect("hex is a header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_look_like_uuids() {
        let a = generate_id();
        let a = a.to_str().unwrap();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(acceptable_id(a.as_bytes()));
        assert_ne!(a, generate_id().to_str().unwrap());
    }

    #[test]
    fn inbound_ids_are_short_safe_tokens() {
        assert!(acceptable_id(b"lb-1234:abc.def_0"));
        assert!(!acceptable_id(b""));
        assert!(!acceptable_id(b"has space"));
        assert!(!acceptable_id(b"quote\""));
        assert!(!acceptable_id(&[b'a'; 129]));
    }
}
