//! The plaintext that [`super::cipher`] seals: a session's [`Tokens`], packed.
//!
//! Two formats open; the newer one is written:
//! - **JSON** (`{…}`, what every version before this one sealed): still read, so a
//!   record written before an upgrade opens after it.
//! - **Packed** (first byte [`PACKED`]): the fields in a fixed order, lengths as
//!   LEB128 varints, and every token that is base64url (a JWT's dot-separated
//!   segments, an opaque base64url refresh token) kept as its decoded bytes: a
//!   quarter smaller, and no JSON keys or escapes. A token is packed only if encoding
//!   the decoded bytes again gives it back byte for byte (canonical base64url without
//!   padding, segment by segment); anything else is kept as its text. Opening
//!   re-encodes, so what a provider issued is what the upstream and the provider get.
//!
//! The first byte tells them apart: JSON starts with `{`, packed with [`PACKED`].

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{RouteToken, Tokens};

/// First byte of a packed plaintext (format 2; JSON, format 1, starts with `{`).
pub const PACKED: u8 = 2;

/// A token kept as text.
const TEXT: u8 = 1;
/// A token kept as the decoded bytes of its base64url segments.
const SEGMENTS: u8 = 2;
/// An absent optional value.
const NONE: u8 = 0;
const SOME: u8 = 1;

/// Why a plaintext doesn't open.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// The plaintext to seal for `tokens`.
pub fn pack(tokens: &Tokens) -> Vec<u8> {
    // Every field named: a field added to `Tokens` doesn't compile until it is packed.
    let Tokens {
        access_token,
        token_type,
        access_expires_at,
        access_issued_at,
        refresh_token,
        id_token,
        scope,
        dpop_key,
        route_tokens,
    } = tokens;
    let mut out =
        Vec::with_capacity(64 + access_token.len() + id_token.as_ref().map_or(0, String::len));
    out.push(PACKED);
    token(&mut out, access_token);
    text(&mut out, token_type);
    opt_int(&mut out, *access_expires_at);
    opt_int(&mut out, *access_issued_at);
    opt_token(&mut out, refresh_token.as_deref());
    opt_token(&mut out, id_token.as_deref());
    match scope {
        Some(s) => {
            out.push(SOME);
            text(&mut out, s);
        }
        None => out.push(NONE),
    }
    opt_token(&mut out, dpop_key.as_deref());
    varint(&mut out, route_tokens.len() as u64);
    for RouteToken {
        key,
        access_token,
        expires_at,
        issued_at,
    } in route_tokens
    {
        text(&mut out, key);
        token(&mut out, access_token);
        opt_int(&mut out, *expires_at);
        opt_int(&mut out, *issued_at);
    }
    out
}

/// The tokens of a sealed plaintext, in either format.
pub fn unpack(plain: &[u8]) -> Result<Tokens, Malformed> {
    match plain.first() {
        Some(b'{') => serde_json::from_slice(plain).map_err(|_| Malformed),
        Some(&PACKED) => {
            let mut r = Reader(&plain[1..]);
            let tokens = r.tokens()?;
            if r.0.is_empty() {
                Ok(tokens)
            } else {
                Err(Malformed)
            }
        }
        _ => Err(Malformed),
    }
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn text(out: &mut Vec<u8>, s: &str) {
    bytes(out, s.as_bytes());
}

fn opt_int(out: &mut Vec<u8>, n: Option<i64>) {
    match n {
        // Zigzag: small magnitudes either side of 0 stay short.
        Some(n) => {
            out.push(SOME);
            varint(out, ((n << 1) ^ (n >> 63)) as u64);
        }
        None => out.push(NONE),
    }
}

fn opt_token(out: &mut Vec<u8>, t: Option<&str>) {
    match t {
        Some(t) => token(out, t),
        None => out.push(NONE),
    }
}

/// `t` as its decoded base64url segments when that gives it back exactly, else as text.
fn token(out: &mut Vec<u8>, t: &str) {
    let start = out.len();
    out.push(SEGMENTS);
    varint(out, t.split('.').count() as u64);
    let mut decoded = Vec::new();
    for segment in t.split('.') {
        decoded.clear();
        // The engine refuses padding and non-zero trailing bits; the comparison
        // below is what guarantees the round trip.
        let canonical = URL_SAFE_NO_PAD.decode_vec(segment, &mut decoded).is_ok()
            && URL_SAFE_NO_PAD.encode(&decoded) == segment;
        if !canonical {
            out.truncate(start);
            out.push(TEXT);
            text(out, t);
            return;
        }
        bytes(out, &decoded);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Malformed> {
        let (&b, rest) = self.0.split_first().ok_or(Malformed)?;
        self.0 = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(Malformed)
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let len = usize::try_from(self.varint()?).map_err(|_| Malformed)?;
        if len > self.0.len() {
            return Err(Malformed);
        }
        let (b, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(b)
    }

    fn text(&mut self) -> Result<String, Malformed> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| Malformed)
    }

    fn opt_int(&mut self) -> Result<Option<i64>, Malformed> {
        match self.byte()? {
            NONE => Ok(None),
            SOME => {
                let z = self.varint()?;
                Ok(Some(((z >> 1) as i64) ^ -((z & 1) as i64)))
            }
            _ => Err(Malformed),
        }
    }

    fn opt_text(&mut self) -> Result<Option<String>, Malformed> {
        match self.byte()? {
            NONE => Ok(None),
            SOME => self.text().map(Some),
            _ => Err(Malformed),
        }
    }

    fn token_tagged(&mut self, tag: u8) -> Result<String, Malformed> {
        match tag {
            TEXT => self.text(),
            SEGMENTS => {
                let n = self.varint()?;
                let mut segments = Vec::new();
                for _ in 0..n {
                    segments.push(self.bytes()?);
                }
                let len = segments
                    .iter()
                    .map(|s| s.len().div_ceil(3) * 4)
                    .sum::<usize>()
                    + segments.len().saturating_sub(1);
                let mut t = String::with_capacity(len);
                for (i, s) in segments.iter().enumerate() {
                    if i > 0 {
                        t.push('.');
                    }
                    URL_SAFE_NO_PAD.encode_string(s, &mut t);
                }
                Ok(t)
            }
            _ => Err(Malformed),
        }
    }

    fn token(&mut self) -> Result<String, Malformed> {
        let tag = self.byte()?;
        self.token_tagged(tag)
    }

    fn opt_token(&mut self) -> Result<Option<String>, Malformed> {
        match self.byte()? {
            NONE => Ok(None),
            tag => self.token_tagged(tag).map(Some),
        }
    }

    fn tokens(&mut self) -> Result<Tokens, Malformed> {
        // Fields are read in the order written (a struct literal evaluates in order).
        Ok(Tokens {
            access_token: self.token()?,
            token_type: self.text()?,
            access_expires_at: self.opt_int()?,
            access_issued_at: self.opt_int()?,
            refresh_token: self.opt_token()?,
            id_token: self.opt_token()?,
            scope: self.opt_text()?,
            dpop_key: self.opt_token()?,
            route_tokens: self.route_tokens()?,
        })
    }

    fn route_tokens(&mut self) -> Result<Vec<RouteToken>, Malformed> {
        let n = self.varint()?;
        // Each route token takes at least 5 bytes: a count beyond that is a lie.
        if n > self.0.len() as u64 / 5 {
            return Err(Malformed);
        }
        (0..n)
            .map(|_| {
                Ok(RouteToken {
                    key: self.text()?,
                    access_token: self.token()?,
                    expires_at: self.opt_int()?,
                    issued_at: self.opt_int()?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            access_token: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl".into(),
            token_type: "Bearer".into(),
            access_expires_at: Some(1_767_229_200),
            access_issued_at: Some(-5),
            refresh_token: Some("opaque-refresh_token".into()),
            id_token: Some("eyJhbGciOiJSUzI1NiJ9.eyJub25jZSI6Im4ifQ.aWQtc2ln".into()),
            scope: Some("openid profile".into()),
            dpop_key: None,
            route_tokens: vec![RouteToken {
                key: "resource:https://api.example".into(),
                access_token: "route AT (not base64)".into(),
                expires_at: None,
                issued_at: Some(i64::MIN),
            }],
        }
    }

    #[test]
    fn packed_tokens_open_to_the_same_tokens_and_are_smaller_than_json() {
        let t = tokens();
        let packed = pack(&t);
        assert_eq!(packed[0], PACKED);
        assert_eq!(unpack(&packed).unwrap(), t);
        let json = serde_json::to_vec(&t).unwrap();
        assert!(
            packed.len() < json.len(),
            "{} vs {}",
            packed.len(),
            json.len()
        );
        // JSON written by earlier versions opens too.
        assert_eq!(unpack(&json).unwrap(), t);
    }

    #[test]
    fn every_token_shape_round_trips_byte_for_byte() {
        let shapes = [
            "",
            ".",
            "a..b",
            "abc.",
            // Non-canonical: trailing bits set (`B` ends in 01), padding, `+/`.
            "AB",
            "AA==",
            "ab+/cd",
            "a",
            "AAAA",
            "héllo.wörld",
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.",
            "x.y.z.w.v",
        ];
        for s in shapes {
            let mut t = tokens();
            t.access_token = s.into();
            t.refresh_token = Some(s.into());
            t.dpop_key = Some(s.into());
            t.route_tokens[0].access_token = s.into();
            assert_eq!(unpack(&pack(&t)).unwrap(), t, "{s:?}");
        }
    }

    /// A blob sealed by the version before the packed format (JSON plaintext), under
    /// key `[0x5a; 32]` for the session key SHA-256("fixture session"): what SQLite
    /// files and Redis databases written before the upgrade hold.
    #[test]
    fn a_record_sealed_by_the_json_version_still_opens() {
        use crate::session::{MemoryStore, SessionRecord, Sessions, Store, StoreKey};
        let hex = include_str!("fixtures/tokens_v1_json.hex").trim();
        let blob: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let cipher = crate::session::cipher::TokenCipher::new(&[[0x5a; 32]]);
        let sessions = Sessions::new(
            Store::Memory(MemoryStore::new()),
            cipher,
            &Default::default(),
        );
        let record = SessionRecord {
            key: StoreKey::hash(b"fixture session"),
            sub: "alice".into(),
            sid: None,
            frontend: String::new(),
            claims: "{}".into(),
            sealed_tokens: blob,
            created_at: 0,
            last_seen: 0,
            expires_at: i64::MAX,
            version: 1,
        };
        let opened = sessions.open_tokens(&record).unwrap();
        let expected = Tokens {
            access_token: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl".into(),
            token_type: "Bearer".into(),
            access_expires_at: Some(1_767_229_200),
            access_issued_at: Some(1_767_225_600),
            refresh_token: Some("opaque-refresh_token".into()),
            id_token: Some(
                "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsIm5vbmNlIjoibiJ9.aWQtc2ln".into(),
            ),
            scope: Some("openid profile offline_access".into()),
            dpop_key: Some("MC4CAQAwBQYDK2VwBCIEIA".into()),
            route_tokens: vec![RouteToken {
                key: "resource:https://api.example".into(),
                access_token: "route-AT".into(),
                expires_at: Some(1_767_229_000),
                issued_at: None,
            }],
        };
        assert_eq!(opened, expected);
        assert_eq!(&**sessions.open_tokens_cached(&record).unwrap(), &expected);
        // Refreshed, the same tokens are sealed packed, and open the same.
        let refreshed = sessions.with_tokens(&record, &opened, None);
        let plain = sessions
            .cipher
            .open(&refreshed.sealed_tokens, record.key.as_bytes())
            .unwrap();
        assert_eq!(plain[0], PACKED);
        assert!(refreshed.sealed_tokens.len() < record.sealed_tokens.len());
        assert_eq!(sessions.open_tokens(&refreshed).unwrap(), expected);
    }

    #[test]
    fn damaged_plaintexts_are_refused_not_misread() {
        let packed = pack(&tokens());
        for cut in 0..packed.len() {
            assert_eq!(unpack(&packed[..cut]), Err(Malformed), "cut at {cut}");
        }
        let mut longer = packed.clone();
        longer.push(0);
        assert_eq!(unpack(&longer), Err(Malformed));
        assert_eq!(unpack(&[9, 1, 2]), Err(Malformed));
        assert_eq!(
            unpack(&[
                PACKED, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ]),
            Err(Malformed)
        );
    }
}
