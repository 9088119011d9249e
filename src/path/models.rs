//! Models of how upstream servers turn a request path into a file-system path, for the
//! property test of [`super::check`] (its unit tests and
//! `fuzz/fuzz_targets/upstream_path.rs`). Not used by the gateway.
//!
//! Each model takes the path bytes the upstream receives and returns the segments it
//! resolves to, or `None` when that upstream refuses the request (400). They are small
//! and deliberately on the credulous side of each server (the options that resolve the
//! most), so that a path confined in every model is confined in the real servers:
//!
//! - [`nginx`]: decodes every `%XX` once (so `%2F` is a separator and `%2E` a dot),
//!   merges slashes, resolves dot segments, answers 400 above the root or for a
//!   malformed escape or a NUL; `\` and `;` are ordinary bytes (Linux).
//! - [`tomcat`]: Tomcat's defaults: strips `;parameters` from each segment of the raw
//!   path, decodes UTF-8 strictly, refuses `%2F` (`ALLOW_ENCODED_SLASH=false`) and NUL,
//!   keeps `\` (`ALLOW_BACKSLASH=false`), normalises, 400 above the root.
//! - [`tomcat_permissive`]: Tomcat/Jetty with `ALLOW_ENCODED_SLASH` and `ALLOW_BACKSLASH`,
//!   old Tomcat's overlong UTF-8 (CVE-2008-2938), Jetty's `%uXXXX` (CVE-2021-34429).
//! - [`spring`]: decodes first (`%3B` becomes `;`), then strips `;…` per segment, `\` as
//!   `/`, resolves like RFC 3986 (`..` at the root stays there).
//! - [`iis`]: decodes `%uXXXX` and `%XX`, twice (CVE-2001-0333), overlong UTF-8
//!   (CVE-2000-0884), Windows best-fit (`U+FF0E` → `.`, `U+2215` → `/`, `¥` → `\`),
//!   `\` as `/`, NUL ends the path, `name:stream` is `name`, trims trailing spaces
//!   (then dots) of each segment.
//! - [`paranoid`]: every trick at once: decodes to the fixpoint (`+` as space),
//!   NFKC-like folding, drops invisible characters, trims whitespace on both sides,
//!   stops a segment at `;`, `?`, `#` or `:`.

/// A model: the upstream's resolved segments, or `None` when it refuses the path.
pub type Model = fn(&[u8]) -> Option<Vec<Vec<u8>>>;

/// Every model, by name.
pub const MODELS: [(&str, Model); 6] = [
    ("nginx", nginx),
    ("tomcat", tomcat),
    ("tomcat_permissive", tomcat_permissive),
    ("spring", spring),
    ("iis", iis),
    ("paranoid", paranoid),
];

/// Whether `path` resolves under `root` (an upstream base such as `/public`) in every
/// model; the error names the model and what it resolved.
pub fn confined(path: &[u8], root: &[u8]) -> Result<(), String> {
    Confinement::new(root).check(path)
}

/// A root resolved once by every model, to check many paths against.
pub struct Confinement {
    bases: Vec<Vec<Vec<u8>>>,
}

impl Confinement {
    pub fn new(root: &[u8]) -> Self {
        let bases = MODELS
            .iter()
            .map(|(_, model)| model(root).unwrap_or_default())
            .collect();
        Self { bases }
    }

    /// Like [`confined`].
    pub fn check(&self, path: &[u8]) -> Result<(), String> {
        for ((name, model), base) in MODELS.iter().zip(&self.bases) {
            let Some(resolved) = model(path) else {
                continue; // refused by that upstream: nothing served
            };
            if !resolved.starts_with(base) {
                return Err(format!(
                    "{name} resolves {:?} to /{} outside /{}",
                    String::from_utf8_lossy(path),
                    join(&resolved),
                    join(base),
                ));
            }
        }
        Ok(())
    }
}

fn join(segments: &[Vec<u8>]) -> String {
    segments
        .iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

// ------------------------------------------------------------------ the models

pub fn nginx(path: &[u8]) -> Option<Vec<Vec<u8>>> {
    let decoded = decode(path, Strict::Yes, false)?;
    if decoded.contains(&0) {
        return None;
    }
    resolve(decoded.split(|&b| b == b'/'), AboveRoot::Refuse)
}

pub fn tomcat(path: &[u8]) -> Option<Vec<Vec<u8>>> {
    let stripped = strip_params(path);
    let decoded = decode(&stripped, Strict::Yes, false)?;
    std::str::from_utf8(&decoded).ok()?;
    if decoded.contains(&0) {
        return None;
    }
    // Where the raw path had no `/`, a decoded one is refused (ALLOW_ENCODED_SLASH=false).
    if decoded.iter().filter(|&&b| b == b'/').count()
        != stripped.iter().filter(|&&b| b == b'/').count()
    {
        return None;
    }
    resolve(decoded.split(|&b| b == b'/'), AboveRoot::Refuse)
}

pub fn tomcat_permissive(path: &[u8]) -> Option<Vec<Vec<u8>>> {
    let stripped = strip_params(path);
    let decoded = decode(&stripped, Strict::Yes, true)?;
    let text = utf8_lenient(&decoded);
    let text = text.replace('\\', "/");
    resolve(text.as_bytes().split(|&b| b == b'/'), AboveRoot::Refuse)
}

pub fn spring(path: &[u8]) -> Option<Vec<Vec<u8>>> {
    let decoded = decode(path, Strict::No, false)?;
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let segments = text
        .split('/')
        .map(|s| s.split(';').next().unwrap_or("").as_bytes().to_vec())
        .collect::<Vec<_>>();
    resolve(segments.iter().map(Vec::as_slice), AboveRoot::Stay)
}

pub fn iis(path: &[u8]) -> Option<Vec<Vec<u8>>> {
    let once = decode(path, Strict::No, true)?;
    let twice = decode(&once, Strict::No, true)?;
    let end = twice.iter().position(|&b| b == 0).unwrap_or(twice.len());
    let text: String = utf8_lenient(&twice[..end])
        .chars()
        .map(|c| best_fit(c).unwrap_or(c))
        .collect();
    let text = text.replace('\\', "/");
    let segments: Vec<Vec<u8>> = text
        .split('/')
        .map(|s| {
            let s = s.split(':').next().unwrap_or("");
            windows_name(s.trim_end_matches(' ')).as_bytes().to_vec()
        })
        .collect();
    resolve(segments.iter().map(Vec::as_slice), AboveRoot::Stay)
}

pub fn paranoid(path: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut bytes: Vec<u8> = path
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    loop {
        let next = decode(&bytes, Strict::No, true)?;
        if next == bytes {
            break;
        }
        bytes = next;
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let mut text = String::new();
    for c in utf8_lenient(&bytes[..end]).chars() {
        match nfkc_like(c) {
            Some(s) => text.push_str(s),
            None if invisible(c) => {}
            None => text.push(c),
        }
    }
    let text = text.replace('\\', "/");
    let segments: Vec<Vec<u8>> = text
        .split('/')
        .map(|s| {
            let s = s.split([';', '?', '#', ':']).next().unwrap_or("");
            windows_name(s.trim()).as_bytes().to_vec()
        })
        .collect();
    resolve(segments.iter().map(Vec::as_slice), AboveRoot::Stay)
}

// ------------------------------------------------------------------ pieces

#[derive(Clone, Copy, PartialEq)]
enum Strict {
    /// A `%` without two hex digits: the upstream answers 400.
    Yes,
    /// It stays a literal `%`.
    No,
}

#[derive(Clone, Copy, PartialEq)]
enum AboveRoot {
    /// `..` at the root: 400 (nginx, Tomcat).
    Refuse,
    /// `..` at the root stays at the root (RFC 3986 §5.2.4).
    Stay,
}

/// One level of percent-decoding; with `percent_u`, `%uXXXX` is a UTF-16 unit (IIS, Jetty).
fn decode(input: &[u8], strict: Strict, percent_u: bool) -> Option<Vec<u8>> {
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            if let (Some(h), Some(l)) = (hex(input.get(i + 1)), hex(input.get(i + 2))) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
            if percent_u && matches!(input.get(i + 1), Some(b'u' | b'U')) {
                let digits: Option<Vec<u32>> = (2..6).map(|k| hex(input.get(i + k))).collect();
                if let Some(d) = digits {
                    let unit = d.iter().fold(0, |acc, d| acc * 16 + d);
                    let c = char::from_u32(unit).unwrap_or('\u{FFFD}');
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    i += 6;
                    continue;
                }
            }
            if strict == Strict::Yes {
                return None;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    Some(out)
}

/// Tomcat's `;parameter` removal: from each `;` to the end of its segment, on the raw path.
fn strip_params(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut skipping = false;
    for &b in path {
        match b {
            b'/' => {
                skipping = false;
                out.push(b);
            }
            b';' => skipping = true,
            _ if !skipping => out.push(b),
            _ => {}
        }
    }
    out
}

/// UTF-8 that also accepts overlong forms (`C0 AE` is `.`), as old decoders did; other
/// invalid bytes become U+FFFD.
fn utf8_lenient(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (len, init) = match b {
            0x00..=0x7f => (1, u32::from(b)),
            0xc0..=0xdf => (2, u32::from(b & 0x1f)),
            0xe0..=0xef => (3, u32::from(b & 0x0f)),
            0xf0..=0xf7 => (4, u32::from(b & 0x07)),
            _ => (0, 0),
        };
        let tail = bytes.get(i + 1..i + len.max(1));
        let c = match tail {
            Some(tail) if len > 0 && tail.iter().all(|&t| t & 0xc0 == 0x80) => {
                let v = tail
                    .iter()
                    .fold(init, |acc, &t| acc << 6 | u32::from(t & 0x3f));
                i += len;
                char::from_u32(v).unwrap_or('\u{FFFD}')
            }
            _ => {
                i += 1;
                '\u{FFFD}'
            }
        };
        out.push(c);
    }
    out
}

/// Windows "best fit" mappings that make a separator or a dot (the WorstFit research).
fn best_fit(c: char) -> Option<char> {
    Some(match c {
        '\u{FF0E}' | '\u{2024}' | '\u{FE52}' => '.',
        '\u{FF0F}' | '\u{2215}' | '\u{2044}' => '/',
        '\u{FF3C}' | '\u{2216}' | '\u{FE68}' | '\u{00A5}' | '\u{20A9}' => '\\',
        _ => return None,
    })
}

/// NFKC (and best fit) for the characters that matter to paths.
fn nfkc_like(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{FF0E}' | '\u{2024}' | '\u{FE52}' | '\u{3002}' | '\u{FF61}' => ".",
        '\u{2025}' | '\u{FE30}' => "..",
        '\u{2026}' | '\u{FE19}' => "...",
        '\u{FF0F}' | '\u{2215}' | '\u{2044}' | '\u{29F8}' | '\u{2571}' => "/",
        '\u{FF3C}' | '\u{2216}' | '\u{FE68}' | '\u{29F5}' | '\u{29F9}' | '\u{2572}' => "\\",
        '\u{00A5}' | '\u{20A9}' => "\\",
        _ => return None,
    })
}

/// Characters some normaliser or file system drops: format characters, variation
/// selectors, combining marks.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{E0000}'..='\u{E0FFF}'
        | '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}')
}

/// A Windows path component: `.` and `..` are relative; any other name loses its
/// trailing dots and spaces (three dots become the current directory).
fn windows_name(s: &str) -> &str {
    if s == "." || s == ".." {
        s
    } else {
        s.trim_end_matches(['.', ' '])
    }
}

/// Dot-segment resolution over already split segments; empty segments are merged.
fn resolve<'a>(
    segments: impl Iterator<Item = &'a [u8]>,
    above_root: AboveRoot,
) -> Option<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for s in segments {
        match s {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() && above_root == AboveRoot::Refuse {
                    return None;
                }
            }
            s => out.push(s.to_vec()),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(m: Model, p: &str) -> Option<String> {
        m(p.as_bytes()).map(|s| format!("/{}", join(&s)))
    }

    #[test]
    fn each_model_resolves_as_its_upstream() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(show(nginx, "/public/..%2finternal/x"), some("/internal/x"));
        assert_eq!(show(nginx, "/public/..;/x"), some("/public/..;/x"));
        assert_eq!(show(nginx, "/public/../../x"), None);
        assert_eq!(show(nginx, "/public/%zz"), None);
        assert_eq!(show(tomcat, "/public/..;/admin"), some("/admin"));
        assert_eq!(
            show(tomcat, "/public/..;jsessionid=1/admin"),
            some("/admin")
        );
        assert_eq!(show(tomcat, "/public/..%2fadmin"), None);
        assert_eq!(
            show(tomcat, "/public/..%5cadmin"),
            some("/public/..\\admin")
        );
        assert_eq!(show(tomcat, "/public/%c0%ae%c0%ae/admin"), None);
        assert_eq!(
            show(tomcat_permissive, "/public/%c0%ae%c0%ae/admin"),
            some("/admin")
        );
        assert_eq!(
            show(tomcat_permissive, "/public/%u002e%u002e/a"),
            some("/a")
        );
        assert_eq!(show(tomcat_permissive, "/public/..\\a"), some("/a"));
        assert_eq!(show(spring, "/public/..%3bx/a"), some("/a"));
        assert_eq!(show(iis, "/public/..%5ca"), some("/a"));
        assert_eq!(show(iis, "/public/%u002e%u002e/a"), some("/a"));
        assert_eq!(show(iis, "/public/%252e%252e/a"), some("/a"));
        assert_eq!(show(iis, "/public/%c0%ae%c0%ae%c0%afa"), some("/a"));
        assert_eq!(show(iis, "/public/..%20/a"), some("/a"));
        assert_eq!(show(iis, "/public/%ef%bc%8e%ef%bc%8e/a"), some("/a"));
        assert_eq!(show(iis, "/public/..%c2%a5a"), some("/a"));
        assert_eq!(show(iis, "/public/..%00/a"), some("/"));
        assert_eq!(show(iis, "/public/..::$DATA/a"), some("/a"));
        assert_eq!(show(iis, "/public/.../a"), some("/public/a"));
        assert_eq!(show(paranoid, "/public/%25%32%65%25%32%65/a"), some("/a"));
        assert_eq!(show(paranoid, "/public/..+/a"), some("/a"));
        assert_eq!(show(paranoid, "/public/..%e2%80%8b/a"), some("/a"));
        assert_eq!(show(paranoid, "/public/%e2%80%a5/a"), some("/a"));
        assert_eq!(show(paranoid, "/public/..%3f/a"), some("/a"));
        // A plain path is the same path everywhere (but Windows: `...` is the directory).
        let plain = "/public/a%20b/caf%C3%A9/x.y/.../z";
        for m in [nginx as Model, tomcat, tomcat_permissive, spring] {
            assert_eq!(show(m, plain), some("/public/a b/café/x.y/.../z"));
        }
        for m in [iis as Model, paranoid] {
            assert_eq!(show(m, plain), some("/public/a b/café/x.y/z"));
        }
        assert!(confined(b"/public/a%20b/caf%C3%A9/x.y/.../z;v=1", b"/public").is_ok());
        assert!(confined(b"/public/..;/x", b"/public").is_err());
    }
}
