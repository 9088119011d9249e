//! The `Cookie` request header parser (`session::cookie::find`) and the session id
//! parser (`SessionId::parse`).
//!
//! Input: arbitrary bytes; each line (split on `\n`) is one `Cookie` header value
//! (values `HeaderValue::from_bytes` refuses are skipped, as hyper would refuse them).
//! Properties: never panics; a found value is a slice of one of the header values,
//! of a pair whose trimmed name is the one asked for, and holds no `;`; a session id
//! parses only from 43 base64url characters that decode to 32 bytes, and round-trips.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use portcullis::session::SessionId;
use portcullis::session::cookie::{LOGIN_COOKIE, find};

const NAMES: [&str; 5] = ["__Host-portcullis", LOGIN_COOKIE, "a", "", "__Host-"];

fn check_session_id(s: &str) {
    let parsed = SessionId::parse(s);
    let mut buf = [0u8; 48];
    let decodes_to_32 = s.len() == 43 && URL_SAFE_NO_PAD.decode_slice(s, &mut buf) == Ok(32);
    assert_eq!(
        parsed.is_some(),
        decodes_to_32,
        "SessionId::parse({s:?}) disagrees with the base64url model"
    );
    if let Some(id) = parsed {
        assert_eq!(id.to_cookie_value(), s, "session id does not round-trip");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
}

/// `inner` lies inside `outer` (same allocation, by address).
fn is_slice_of(inner: &str, outer: &[u8]) -> bool {
    let start = outer.as_ptr() as usize;
    let p = inner.as_ptr() as usize;
    p >= start && p + inner.len() <= start + outer.len()
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(header::COOKIE, v);
        }
    }

    // Names to look up: fixed ones, plus every name present in the headers.
    let mut names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    for v in headers.get_all(header::COOKIE) {
        if let Ok(s) = v.to_str() {
            for pair in s.split(';') {
                if let Some((n, _)) = pair.split_once('=') {
                    names.push(n.trim().to_owned());
                }
            }
        }
    }

    for name in &names {
        let Some(found) = find(&headers, name) else {
            continue;
        };
        let owner = headers
            .get_all(header::COOKIE)
            .iter()
            .find(|v| is_slice_of(found, v.as_bytes()))
            .expect("found value is not a slice of any Cookie header");
        let text = owner.to_str().expect("found in a non-ASCII header value");
        assert!(text.contains(found));
        assert!(!found.contains(';'), "value {found:?} spans pairs");
        // The pair the value came from has exactly the asked-for name.
        let offset = found.as_ptr() as usize - text.as_ptr() as usize;
        let pair_start = text[..offset].rfind(';').map_or(0, |i| i + 1);
        let pair = &text[pair_start..];
        let (n, _) = pair.split_once('=').expect("found value without '='");
        assert_eq!(n.trim(), name.as_str(), "value of another cookie returned");
        check_session_id(found);
    }

    if let Ok(s) = std::str::from_utf8(data) {
        check_session_id(s);
        check_session_id(s.trim());
    }
});
