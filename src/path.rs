//! The path rule of API routes: **the upstream path can't leave the route's upstream
//! base, however the upstream decodes it.**
//!
//! Portcullis forwards the request path byte for byte (re-encoding would change what
//! some upstream sees), so the rule is enforced by refusing, not by normalising: no
//! normal form is every upstream's view. [`check`] refuses any path that some common
//! upstream would resolve upward — as the same path without a dot segment, after its
//! own decoding — and lets every other path through unchanged. Each refused spelling,
//! and who resolves it:
//!
//! | Refused | Why (which upstream resolves it) |
//! |---|---|
//! | `.` / `..` segments, any dot `%2e`/`%2E` | every server resolves dot segments (RFC 3986 §5.2.4); nginx, Tomcat, Jetty, IIS, WSGI decode `%2e` first |
//! | a dot segment before `;…` (`..;`, `.%2e;x`, `..;jsessionid=1`) or before `%3b`, `%3f`, `%23`, `:` | Tomcat, Jetty and Spring strip `;parameters` per segment before resolving (some after decoding, so `%3b` too); decoders that re-parse stop at a decoded `?`/`#`; Windows reads `name:stream` (`..::$DATA`) |
//! | encoded `/` (`%2f`, `%2F`) | nginx (and WSGI/CGI, Jetty, Tomcat with `ALLOW_ENCODED_SLASH`) decode it into a separator before resolving |
//! | `\` and `%5c` | IIS/Windows, Tomcat `ALLOW_BACKSLASH`, Jetty and Spring treat it as `/` |
//! | `%u` escapes (`%u002e`, `%u2215`) | IIS and Jetty (CVE-2021-34429) decode `%uXXXX` |
//! | double encoding (`%252e`, `%25%32%65`, `%%32%65`…) | an upstream that decodes twice (IIS CVE-2001-0333, nginx in front of a decoding app): every decoding level is checked — the rule looks at the fixpoint of repeated decoding, where every character a decoder could produce is still there |
//! | NUL and control bytes (`%00`, `%0a`, C1) | C-string truncation (`..%00x` is `..`), log and header injection |
//! | bytes that aren't UTF-8 (overlong `%c0%ae`, `%c0%af`, `%e0%80%ae`) | lenient UTF-8 decoders (IIS CVE-2000-0884, Tomcat CVE-2008-2938) read them as `.` and `/` |
//! | malformed escapes (`%`, `%zz`) | nginx and Tomcat answer 400 anyway; others guess |
//! | a segment of dots and "invisible" characters (`.. `, `..%20`, `.%09`, `..+`, `..%c2%a0`, `..%e2%80%8b`) | Windows/IIS trims trailing spaces and dots; form decoders read `+` as a space; some stacks trim whitespace or drop default-ignorable and combining characters |
//! | Unicode dots (`%ef%bc%8e` U+FF0E, U+2024, U+2025, U+FE52, U+3002…) | NFKC and Windows "best fit" fold them into `.` |
//!
//! Unicode slashes (U+2215, U+FF0F, U+FF3C, `¥` in cp932, `₩` in cp949…), which
//! best-fit folds into `/` or `\`, end a piece of a segment like `;` does: a name around
//! them is fine, a dot piece between them is refused.
//!
//! Allowed, and forwarded unchanged: `%20`, `%41` and any other escape of a harmless
//! character, UTF-8 names, `a.b`, `.x`, `x..`, `...` and longer runs of plain dots (a
//! normal name to RFC 3986, nginx, Tomcat and Windows, whose trimming turns it into
//! the current directory at worst, never the parent), `;parameters` that are not on a
//! dot segment, empty segments (merged or kept: either stays under the base). The query
//! is not part of path resolution and is never looked at.
//!
//! `path::models` holds small models of how nginx, Tomcat/Jetty/Spring, IIS and a
//! "paranoid" decoder resolve a path; a unit test and `fuzz/fuzz_targets/upstream_path.rs`
//! check that every path [`check`] accepts stays under the base in every model.

/// Why a request path was refused: the log and the error text name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    DotSegment,
    EncodedSeparator,
    Backslash,
    Control,
    PercentU,
    MalformedEscape,
    NotUtf8,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DotSegment => "a dot segment (\".\" or \"..\" in some spelling)",
            Self::EncodedSeparator => "an encoded \"/\" or \"\\\"",
            Self::Backslash => "a backslash",
            Self::Control => "a NUL or control character",
            Self::PercentU => "a %u escape",
            Self::MalformedEscape => "a malformed percent-escape",
            Self::NotUtf8 => "bytes that are not UTF-8 (overlong or invalid)",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks the path an upstream will receive (see the module documentation). Allocates
/// only for a segment with a percent-escape.
pub fn check(path: &[u8]) -> Result<(), Refusal> {
    let mut buf = Vec::new();
    path.split(|&b| b == b'/')
        .try_for_each(|segment| check_segment(segment, &mut buf))
}

fn check_segment(raw: &[u8], buf: &mut Vec<u8>) -> Result<(), Refusal> {
    let mut escaped = false;
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'\\' => return Err(Refusal::Backslash),
            0..=0x1f | 0x7f => return Err(Refusal::Control),
            b'%' => match (raw.get(i + 1), raw.get(i + 2)) {
                (Some(b'u' | b'U'), _) => return Err(Refusal::PercentU),
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    escaped = true;
                    i += 2;
                }
                _ => return Err(Refusal::MalformedEscape),
            },
            _ => {}
        }
        i += 1;
    }
    let decoded: &[u8] = if escaped {
        buf.clear();
        buf.extend_from_slice(raw);
        // The fixpoint: what a decoder applied any number of times can produce. Every
        // character that matters below is neither `%` nor a hex digit, so once one
        // level of decoding produced it, it is still here.
        while decode_once(buf) {}
        check_decoded_bytes(buf)?;
        buf
    } else {
        raw
    };
    // The common case: plain ASCII without a dot has no dot segment in any spelling.
    if decoded.is_ascii() && !decoded.contains(&b'.') {
        return Ok(());
    }
    let text = std::str::from_utf8(decoded).map_err(|_| Refusal::NotUtf8)?;
    if text.chars().any(|c| c.is_control()) {
        return Err(Refusal::Control); // C1 controls (U+0080–U+009F)
    }
    if text.split(ends_piece).any(is_dot_name) {
        return Err(Refusal::DotSegment);
    }
    Ok(())
}

/// After decoding: separators and controls that came from escapes, and `%u` from a
/// double-encoded `%25u…`.
fn check_decoded_bytes(decoded: &[u8]) -> Result<(), Refusal> {
    for (i, &b) in decoded.iter().enumerate() {
        match b {
            b'/' | b'\\' => return Err(Refusal::EncodedSeparator),
            0..=0x1f | 0x7f => return Err(Refusal::Control),
            b'%' if matches!(decoded.get(i + 1), Some(b'u' | b'U')) => {
                return Err(Refusal::PercentU);
            }
            _ => {}
        }
    }
    Ok(())
}

/// One level of percent-decoding, in place; a `%` without two hex digits stays. Returns
/// whether anything was decoded.
fn decode_once(buf: &mut Vec<u8>) -> bool {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let (mut read, mut write, mut any) = (0, 0, false);
    while read < buf.len() {
        let b = buf[read];
        let pair = (b == b'%')
            .then(|| Some((hex(*buf.get(read + 1)?)?, hex(*buf.get(read + 2)?)?)))
            .flatten();
        if let Some((h, l)) = pair {
            buf[write] = h << 4 | l;
            read += 3;
            any = true;
        } else {
            buf[write] = b;
            read += 1;
        }
        write += 1;
    }
    buf.truncate(write);
    any
}

/// Where a segment's name ends for some upstream: `;` parameters (also decoded from
/// `%3b`), a decoded `?` or `#`, a Windows stream (`name:stream`), and Unicode slashes
/// that best-fit or NFKC fold into a separator.
fn ends_piece(c: char) -> bool {
    matches!(
        c,
        ';' | '?'
            | '#'
            | ':'
            | '\u{2044}' // fraction slash
            | '\u{2215}' // division slash
            | '\u{2216}' // set minus
            | '\u{2571}'
            | '\u{2572}'
            | '\u{29F5}'
            | '\u{29F8}'
            | '\u{29F9}'
            | '\u{FE68}' // small reverse solidus
            | '\u{FF0F}' // fullwidth solidus
            | '\u{FF3C}' // fullwidth reverse solidus
            | '\u{00A5}' // yen: `\` in code page 932
            | '\u{20A9}' // won: `\` in code page 949
    )
}

/// Characters some upstream folds into `.` (NFKC, Windows best fit, IDNA full stops).
fn is_dot_like(c: char) -> bool {
    matches!(
        c,
        '.' | '\u{2024}'
            | '\u{2025}'
            | '\u{2026}'
            | '\u{3002}'
            | '\u{FE19}'
            | '\u{FE30}'
            | '\u{FE52}'
            | '\u{FF0E}'
            | '\u{FF61}'
    )
}

/// Characters some upstream trims or drops around a name: whitespace (Windows trims
/// trailing spaces), `+` (a space to form decoders), default-ignorable code points and
/// combining marks (dropped by some normalisers and file systems).
fn is_filler(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '+' | '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFF8}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
                | '\u{0300}'..='\u{036F}'
                | '\u{1AB0}'..='\u{1AFF}'
                | '\u{1DC0}'..='\u{1DFF}'
                | '\u{20D0}'..='\u{20FF}'
                | '\u{FE20}'..='\u{FE2F}'
        )
}

/// A name some upstream may read as `.` or `..`: only dot-like and filler characters,
/// at least one dot — except three or more plain dots (`...`), a normal name everywhere.
fn is_dot_name(name: &str) -> bool {
    let (mut dots, mut plain) = (0usize, true);
    for c in name.chars() {
        if c == '.' {
            dots += 1;
        } else if is_dot_like(c) {
            dots += 1;
            plain = false;
        } else if is_filler(c) {
            plain = false;
        } else {
            return false;
        }
    }
    dots > 0 && !(plain && dots >= 3)
}

#[doc(hidden)]
pub mod models;
