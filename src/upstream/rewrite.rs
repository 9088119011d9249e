//! Header hygiene between the browser and upstreams.
//!
//! Dropped on the way up: hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and what
//! it names, `Keep-Alive`, `TE` — except `TE: trailers` to `https://` and `h2c://` upstreams, kept for gRPC —,
//! `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-*`), the browser's `Authorization` (only Portcullis decides what token an
//! upstream sees), Portcullis's own cookies, and — unless the peer is a trusted proxy
//! — every header that only a proxy in front of the upstream should set, because
//! upstreams believe it (see [`is_proxy_set`]: forwarding, client address, URL and
//! method overrides, TLS and client-certificate, identity headers of auth proxies, CDN
//! headers, and any name with `_`, which CGI, WSGI and PHP fold into the same variable
//! as its `-` spelling). `X-Forwarded-For` is then the peer, `X-Forwarded-Proto` and
//! `X-Forwarded-Host` the frontend's public origin — never the request's `Host`. A
//! trusted proxy's own `X-Forwarded-*` are kept and extended. Dropped on the way
//! down: hop-by-hop headers (the rest of the answer's rules are in `proxy::answer`).

use std::net::IpAddr;

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::uri::{PathAndQuery, Uri};
use ipnet::IpNet;

use super::Route;
use crate::error::ApiError;
use crate::session::cookie;

/// What the rewrite needs from the configuration, prepared once.
#[derive(Debug, Clone)]
pub struct RewriteConfig {
    pub trusted_proxies: Vec<IpNet>,
    /// Every frontend's session and login-binding cookie names: none goes upstream.
    pub own_cookies: Vec<String>,
    /// `http` or `https`: the scheme the browser used.
    pub public_proto: HeaderValue,
    pub public_host: HeaderValue,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Is `name` hop-by-hop by itself (not only because `Connection` names it)?
/// Decided by the (lowercase) name's first letter first: most names take one
/// comparison, not eight.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let text = name.as_str();
    match text.as_bytes().first() {
        Some(b'c') => name == header::CONNECTION,
        Some(b't') => {
            name == header::TE || name == header::TRAILER || name == header::TRANSFER_ENCODING
        }
        Some(b'u') => name == header::UPGRADE,
        Some(b'k') => name == KEEP_ALIVE,
        Some(b'p') => text == "proxy" || text.starts_with("proxy-"),
        _ => false,
    }
}

/// Removes hop-by-hop headers, including those `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none, or only `Connection`: one look at every line decides,
    // instead of a lookup per hop-by-hop name, and counts `Connection`'s lines.
    let (mut connections, mut others) = (0usize, false);
    for (name, _) in headers.iter() {
        if name == header::CONNECTION {
            connections += 1;
        } else {
            others |= is_hop_by_hop(name);
        }
    }
    if connections == 0 && !others {
        return;
    }
    if connections == 1 {
        // One `Connection` line (the usual `keep-alive` or `close`): taken out, then
        // what it names removed by name, with nothing collected on the way.
        if let Some(value) = headers.remove(header::CONNECTION) {
            for name in value.as_bytes().split(|&b| b == b',') {
                let name = name.trim_ascii();
                // A `Keep-Alive` header is hop-by-hop itself: if there is one, the
                // rest below removes it (no lookup by this name needed).
                if name.eq_ignore_ascii_case(b"keep-alive") {
                    continue;
                }
                // By `&str`, looked up without an allocation (any casing; a name that
                // isn't one finds nothing).
                match std::str::from_utf8(name) {
                    Ok(name) => drop(headers.remove(name)),
                    Err(_) => {
                        if let Ok(name) = HeaderName::from_bytes(name) {
                            headers.remove(name);
                        }
                    }
                }
            }
        }
    } else if connections > 1 {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            // As bytes: a value with obs-text (which `to_str` refuses) still names headers.
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if !others {
        // `Connection` was the only hop-by-hop header, and it is gone.
        return;
    }
    // The rest of [`is_hop_by_hop`]: `Proxy-*` (Proxy-Authorization, Proxy-Connection,
    // …) is for the proxy, never the upstream; a bare `Proxy` header is the "httpoxy"
    // vector (CGI's HTTP_PROXY).
    let rest: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in rest {
        headers.remove(name);
    }
}

/// Phase: turn the browser's request into the upstream's.
pub fn rewrite_request(
    parts: &mut Parts,
    route: &Route,
    token: Option<HeaderValue>,
    peer: Option<IpAddr>,
    config: &RewriteConfig,
) -> Result<(), ApiError> {
    parts.uri = upstream_uri(&parts.uri, route)?;
    parts.version = axum::http::Version::HTTP_11;
    let headers = &mut parts.headers;
    // The upstream's Host is its own (set last, below, so no header of the browser's
    // can take it away); the browser's is not the public origin's (a client chooses it
    // freely), so it goes nowhere, not even into X-Forwarded-Host.
    // `TE: trailers` says the client takes trailers: gRPC needs it end to end, and it is
    // the only `TE` HTTP/2 allows. Kept for upstreams that may speak HTTP/2; to an
    // `http://` (HTTP/1.1) upstream `TE` is hop-by-hop like any other, and dropped.
    let trailers = route.protocol != super::UpstreamProtocol::Http1 && accepts_trailers(headers);
    remove_hop_by_hop(headers);
    if trailers {
        headers.insert(header::TE, TRAILERS.clone());
    }
    strip_own_cookies(headers, &config.own_cookies);
    let trusted = crate::security::is_trusted_proxy(&config.trusted_proxies, peer);
    if !trusted {
        // Before the headers set below are added: fewer names to judge.
        remove_proxy_set(headers);
    }
    // The browser's `Authorization` never goes upstream: the route's token replaces
    // every line of it (`insert` drops them all), or it goes.
    match token {
        Some(token) => drop(headers.insert(header::AUTHORIZATION, token)),
        None => drop(headers.remove(header::AUTHORIZATION)),
    }

    if trusted {
        append_forwarded_for(headers, peer);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), config.public_proto.clone());
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST.clone(), config.public_host.clone());
        }
    } else {
        // The client's X-Forwarded-For went with the rest: the peer is the whole chain.
        if let Some(v) = peer.and_then(peer_value) {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        headers.insert(X_FORWARDED_PROTO.clone(), config.public_proto.clone());
        headers.insert(X_FORWARDED_HOST.clone(), config.public_host.clone());
    }
    // An HTTP/1.1 `http://` upstream's, ready-made; the others' comes from the URI (by
    // the pooled client, or HTTP/2's `:authority`).
    // (`insert` replaces every `Host` line the browser sent.)
    if route.protocol == super::UpstreamProtocol::Http1 {
        headers.insert(header::HOST, route.host.clone());
    } else {
        headers.remove(header::HOST);
    }
    Ok(())
}

static TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// Does a `TE` header name `trailers`?
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            let coding = t.split(|&b| b == b';').next().unwrap_or_default();
            coding.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
    })
}

/// Removes every header [`is_proxy_set`] names. Allocates only when one is there.
pub fn remove_proxy_set(headers: &mut HeaderMap) {
    if !headers.keys().any(|n| is_proxy_set(n.as_str())) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_proxy_set(n.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Name prefixes of headers set by the proxies, CDNs and auth gateways in front of
/// an upstream, which upstreams therefore believe.
const PROXY_SET_PREFIXES: &[&str] = &[
    // Forwarding (RFC 7239 `Forwarded` is matched exactly below), URL and host overrides.
    "x-forwarded",
    "x-original-",
    "x-rewrite-",
    "x-real-",
    "x-proxyuser-",
    "x-cluster-client-",
    // TLS and client certificates (nginx `X-SSL-*`, IIS ARR `X-ARR-*`).
    "x-ssl",
    "ssl-",
    "x-arr-",
    "x-url-scheme",
    "front-end-https",
    // Identity set by auth proxies: oauth2-proxy, AWS ALB, Azure App Service, Google
    // IAP, Cloudflare Access, Apache/mod_auth.
    "x-auth-request-",
    "x-amzn-",
    "x-ms-client-principal",
    "x-goog-authenticated-",
    "x-goog-iap-",
    "x-webauth-",
    "x-authenticated-",
    "x-remote-",
    "remote-",
    // CDN and platform headers (client address, country, scheme).
    "cf-",
    "fastly-",
    "akamai-",
    "x-akamai-",
    "x-azure-",
    "x-appengine-",
    "x-envoy-",
    "x-vercel-",
];

/// Is `name` (lowercase, as `HeaderName` keeps it) a header only a proxy in front of
/// the upstream should set? By rule rather than by list where a rule exists: any name
/// with `_`; `Forwarded` and every `X-Forwarded*`; every name ending in `-ip` or
/// `-ipv6` (`X-Real-IP`, `True-Client-IP`, `CF-Connecting-IP`, `Client-IP`,
/// `X-Originating-IP`, …); the method overrides (`*method-override`, `X-HTTP-Method`,
/// `X-Method`); `X-Host` and `X-HTTP-Host`; every name with `client-cert`/`clientcert`;
/// and the prefixes of [`PROXY_SET_PREFIXES`]. An application's own headers
/// (`X-Payment-Method`, `X-Hostname`, `X-Client-Version`) pass.
pub fn is_proxy_set(name: &str) -> bool {
    let b = name.as_bytes();
    b.contains(&b'_')
        || matches!(
            name,
            "forwarded" | "client-ip" | "x-host" | "x-http-host" | "x-http-method" | "x-method"
        )
        || b.ends_with(b"-ip")
        || b.ends_with(b"-ipv6")
        || has(name, b"method-override")
        || has(name, b"client-cert")
        || has(name, b"clientcert")
        || has_proxy_set_prefix(b)
}

/// Does `name` start with one of [`PROXY_SET_PREFIXES`]? Only the prefixes that share
/// its [`prefix_slot`] are compared (usually none or one, instead of all 33).
fn has_proxy_set_prefix(name: &[u8]) -> bool {
    let Some(slot) = prefix_slot(name) else {
        return false;
    };
    let mut candidates = PREFIXES_BY_SLOT[slot];
    while candidates != 0 {
        let i = candidates.trailing_zeros() as usize;
        if name.starts_with(PROXY_SET_PREFIXES[i].as_bytes()) {
            return true;
        }
        candidates &= candidates - 1;
    }
    false
}

/// Which slot of [`PREFIXES_BY_SLOT`] `bytes` (a name, or a prefix) falls in: its third
/// byte after `x-`, else its first. A name starting with a prefix falls in the prefix's
/// slot (no prefix is `x` or `x-` itself, which the table's construction checks).
const fn prefix_slot(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [b'x', b'-', third, ..] => Some(256 + *third as usize),
        [first, ..] => Some(*first as usize),
        [] => None,
    }
}

/// Per [`prefix_slot`], the indexes in [`PROXY_SET_PREFIXES`] of the prefixes in that
/// slot, as bits (derived from the list at compile time).
const PREFIXES_BY_SLOT: [u64; 512] = {
    assert!(PROXY_SET_PREFIXES.len() <= 64);
    let mut table = [0u64; 512];
    let mut i = 0;
    while i < PROXY_SET_PREFIXES.len() {
        let p = PROXY_SET_PREFIXES[i].as_bytes();
        assert!(
            !matches!(p, [b'x'] | [b'x', b'-']),
            "a prefix `x` or `x-` would need every `x-` slot"
        );
        match prefix_slot(p) {
            Some(slot) => table[slot] |= 1 << i,
            None => panic!("an empty prefix"),
        }
        i += 1;
    }
    table
};

/// `name` contains `part` (names are short: a plain window search beats `str::contains`'s
/// searcher set-up). The part's length is a constant, so each window's comparison is a
/// few loads rather than a call to `memcmp` (which the compiler sometimes emitted for
/// a slice comparison: ~50 calls per request).
fn has<const N: usize>(name: &str, part: &[u8; N]) -> bool {
    name.as_bytes()
        .windows(N)
        .any(|w| w[0] == part[0] && <&[u8; N]>::try_from(w).is_ok_and(|w| w == part))
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: Option<IpAddr>) {
    let Some(ip) = peer else { return };
    // Every field line: several are one comma-separated list (RFC 9110 §5.3). Reading
    // only the first would let a client's line stand where the trusted proxy's was.
    use std::fmt::Write;
    let mut value = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        match v.to_str().map(str::trim) {
            Ok("") => {}
            Ok(v) => {
                value.push_str(v);
                value.push_str(", ");
            }
            // Unreadable: the chain can't be relied on; the peer is all we know.
            Err(_) => {
                value.clear();
                break;
            }
        }
    }
    if value.is_empty() {
        // The usual case: only the peer.
        if let Some(v) = peer_value(ip) {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        return;
    }
    let _ = write!(value, "{ip}");
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

thread_local! {
    /// The last peer's address as a header value: a keep-alive connection's requests
    /// come from one peer, and formatting an address costs ~1,000 instructions.
    static LAST_PEER: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `ip` as a header value (formatted on the stack, or this thread's last one again).
fn peer_value(ip: IpAddr) -> Option<HeaderValue> {
    LAST_PEER.with_borrow_mut(|last| {
        if let Some((seen, v)) = last
            && *seen == ip
        {
            return Some(v.clone());
        }
        use std::fmt::Write;
        // Room for any IP address's text (IPv6 with an embedded IPv4: 45 bytes).
        let mut buf = crate::primitives::StackStr::<48>::new();
        write!(buf, "{ip}").ok()?;
        let v = HeaderValue::from_bytes(buf.as_bytes()).ok()?;
        *last = Some((ip, v.clone()));
        Some(v)
    })
}

/// Removes the session and login-binding cookies (`own`) from `Cookie`, keeping the others.
pub fn strip_own_cookies(headers: &mut HeaderMap, own: &[String]) {
    // One lookup of the lines, for the count and the reading.
    let kept = {
        let lines = headers.get_all(header::COOKIE);
        let mut count = lines.iter();
        let (Some(_), single) = (count.next(), count.next().is_none()) else {
            return;
        };
        let mut kept = Vec::new();
        let mut any_ours = false;
        for value in &lines {
            let line = value.as_bytes();
            // A header value is visible ASCII, blanks or obs-text.
            if !line.is_ascii() {
                any_ours = true; // unreadable: drop rather than forward something we can't inspect
                continue;
            }
            for pair in cookie::pairs(line) {
                let pair = pair.trim_ascii();
                if pair.is_empty() {
                    continue;
                }
                let (name, _) = cookie::name_and_value(pair);
                if own.iter().any(|o| o.as_bytes() == name) {
                    any_ours = true;
                    continue;
                }
                if !kept.is_empty() {
                    kept.extend_from_slice(b"; ");
                }
                kept.extend_from_slice(pair);
            }
        }
        if !any_ours && single {
            return;
        }
        kept
    };
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(kept))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// The upstream URI: the route's scheme and authority, its base path, and the
/// request's path (without the prefix when `strip_prefix`) and query, unchanged.
///
/// The path the upstream receives can't leave the route's upstream base (and prefix,
/// when it is not stripped), however the upstream decodes it: a path that some upstream
/// would resolve upward — a dot segment in any spelling (`..`, `%2e%2e`, `..;`,
/// `%252e`, `%u002e`, `%c0%ae`, `.. `, U+FF0E…), an encoded `/` or `\`, a backslash, a
/// NUL or control character, a `%u` or malformed escape, bytes that are not UTF-8 — is
/// refused with 400 `invalid_request`, the reason in the log. [`super::path`] lists
/// every spelling and the upstream that resolves it. Browsers resolve dot segments
/// before sending, so no page needs them. The query is not part of path resolution
/// and is passed on untouched.
pub fn upstream_uri(uri: &Uri, route: &Route) -> Result<Uri, ApiError> {
    let path = uri.path();
    let rest = if route.strip_prefix {
        &path[route.prefix.len()..]
    } else {
        path
    };
    crate::path::check(rest.as_bytes())
        .map_err(|why| ApiError::invalid(format!("invalid request path: {why}")))?;
    let pq = match uri.path_and_query() {
        // The upstream's path is the browser's (no base path, nothing stripped): the
        // same bytes, shared, not copied and parsed again.
        Some(pq) if route.base_path.is_empty() && !route.strip_prefix && rest.starts_with('/') => {
            pq.clone()
        }
        _ => joined_path(rest, uri.query(), route)?,
    };
    Uri::builder()
        .scheme(route.scheme.clone())
        .authority(route.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| ApiError::invalid("invalid request path"))
}

/// The route's base path, `rest` and the query, in one exact allocation.
fn joined_path(rest: &str, query: Option<&str>, route: &Route) -> Result<PathAndQuery, ApiError> {
    // Exactly the length: a `String` with spare capacity would cost `PathAndQuery`
    // (`Bytes::from`) a second allocation.
    let slash = !rest.starts_with('/');
    let mut pq = String::with_capacity(
        route.base_path.len() + usize::from(slash) + rest.len() + query.map_or(0, |q| 1 + q.len()),
    );
    pq.push_str(&route.base_path);
    if slash {
        pq.push('/');
    }
    pq.push_str(rest);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    PathAndQuery::try_from(pq).map_err(|_| ApiError::invalid("invalid request path"))
}

/// Phase: clean the upstream's response headers.
pub fn clean_response(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenKind;

    /// `Connection: <connection>`, an `x-secret` it may name and an `x-kept` it doesn't.
    fn with_connection(connection: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_str(connection).unwrap(),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h
    }

    #[test]
    fn hop_by_hop_by_first_letter_agrees_with_the_list_over_every_name() {
        let listed = |name: &HeaderName| {
            name == header::CONNECTION
                || name == header::TE
                || name == header::TRAILER
                || name == header::TRANSFER_ENCODING
                || name == header::UPGRADE
                || name == KEEP_ALIVE
                || name.as_str() == "proxy"
                || name.as_str().starts_with("proxy-")
        };
        let mut names: Vec<String> = [
            "connection",
            "Connection",
            "te",
            "TE",
            "trailer",
            "trailers",
            "transfer-encoding",
            "Transfer-Encoding",
            "upgrade",
            "upgrade-insecure-requests",
            "keep-alive",
            "Keep-Alive",
            "keepalive",
            "proxy",
            "Proxy",
            "proxy-",
            "proxy-authorization",
            "Proxy-Authenticate",
            "proxy-connection",
            "proxyx",
            "x-proxy",
            "p",
            "t",
            "c",
            "k",
            "u",
            "content-type",
            "cookie",
            "cache-control",
            "tk",
            "timing-allow-origin",
        ]
        .map(str::to_owned)
        .to_vec();
        // Standard names of every first letter the check dispatches on, and others.
        names.extend(
            [
                "accept",
                "age",
                "allow",
                "authorization",
                "content-length",
                "content-encoding",
                "date",
                "etag",
                "expect",
                "expires",
                "forwarded",
                "from",
                "host",
                "if-match",
                "last-modified",
                "link",
                "location",
                "max-forwards",
                "origin",
                "pragma",
                "range",
                "referer",
                "retry-after",
                "sec-websocket-key",
                "server",
                "set-cookie",
                "strict-transport-security",
                "user-agent",
                "vary",
                "via",
                "warning",
                "www-authenticate",
                "x-forwarded-for",
                "x-csrf",
                "keep-alive-x",
                "teapot",
                "trailer-x",
                "transfer-encodings",
                "connections",
                "connection-x",
            ]
            .map(str::to_owned),
        );
        let mut checked = 0;
        for n in &names {
            if let Ok(name) = HeaderName::from_bytes(n.as_bytes()) {
                assert_eq!(is_hop_by_hop(&name), listed(&name), "{n}");
                checked += 1;
            }
        }
        assert!(checked > 30, "{checked}");
    }

    #[test]
    fn connection_named_headers_go_whatever_their_casing_or_spelling() {
        for connection in [
            "keep-alive",
            "Keep-Alive, X-Secret",
            " x-secret ,close",
            "X-SECRET",
        ] {
            let mut h = with_connection(connection);
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            remove_hop_by_hop(&mut h);
            assert!(!h.contains_key(header::CONNECTION), "{connection}");
            assert!(!h.contains_key("keep-alive"), "{connection}");
            assert_eq!(
                h.contains_key("x-secret"),
                !connection.to_ascii_lowercase().contains("x-secret"),
                "{connection}"
            );
            assert!(h.contains_key("x-kept"), "{connection}");
        }
    }

    /// Every `Connection` line names headers, and every one goes, with or without other
    /// hop-by-hop headers beside them.
    #[test]
    fn every_connection_line_removes_what_it_names() {
        let cases: &[(&[&[u8]], bool)] = &[
            (&[b"keep-alive", b"x-secret"], false),
            (&[b"X-Secret", b"close"], false),
            (&[b"close", b"keep-alive", b" x-secret , x-other"], false),
            (&[b"x-other", b"x-secret"], true),
            (&[b"keep-alive", b"x-\xff, x-secret"], true),
        ];
        for (lines, with_upgrade) in cases {
            let mut h = HeaderMap::new();
            for line in *lines {
                h.append(header::CONNECTION, HeaderValue::from_bytes(line).unwrap());
            }
            h.insert("x-secret", HeaderValue::from_static("1"));
            h.insert("x-other", HeaderValue::from_static("1"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            if *with_upgrade {
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            remove_hop_by_hop(&mut h);
            let named_other = lines
                .iter()
                .any(|l| String::from_utf8_lossy(l).contains("x-other"));
            let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            left.sort_unstable();
            let expected: &[&str] = if named_other {
                &["x-kept"]
            } else {
                &["x-kept", "x-other"]
            };
            assert_eq!(left, expected, "{lines:?}");
        }
    }

    /// With `Connection` the only hop-by-hop header (an upstream's usual
    /// `Connection: keep-alive`), what it names still goes, and nothing else does;
    /// with another hop-by-hop header beside it, that goes too.
    #[test]
    fn a_lone_connection_header_still_removes_what_it_names() {
        for connection in [
            "keep-alive",
            "Keep-Alive",
            "keep-alive, x-secret",
            "KEEP-ALIVE ,\tX-Secret ",
            "close",
            "x-secret, keep-alive",
            "keep-alive,keep-alive",
        ] {
            for other in [
                None,
                Some("proxy-connection"),
                Some("keep-alive"),
                Some("upgrade"),
            ] {
                let mut h = with_connection(connection);
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                if let Some(other) = other {
                    h.insert(other, HeaderValue::from_static("1"));
                }
                remove_hop_by_hop(&mut h);
                let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
                names.sort_unstable();
                let secret = connection.to_ascii_lowercase().contains("x-secret");
                let expected: Vec<&str> = ["content-type", "x-kept", "x-secret"]
                    .into_iter()
                    .filter(|n| !(secret && *n == "x-secret"))
                    .collect();
                assert_eq!(names, expected, "{connection} {other:?}");
            }
        }
    }

    fn route(prefix: &str, upstream: &str, strip: bool) -> Route {
        crate::upstream::routes::test_route(prefix, upstream, strip, TokenKind::User)
    }

    fn config() -> RewriteConfig {
        RewriteConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            own_cookies: vec!["__Host-portcullis".into(), "__Host-portcullis-login".into()],
            public_proto: HeaderValue::from_static("https"),
            public_host: HeaderValue::from_static("app.example.com"),
        }
    }

    /// `request` (`/api/x`, body-less) as rewritten for `upstream`'s `/api` route, from `peer`.
    fn rewritten(
        request: axum::http::request::Builder,
        upstream: &str,
        peer: Option<&str>,
    ) -> Parts {
        let mut parts = request.uri("/api/x").body(()).unwrap().into_parts().0;
        let peer = peer.map(|p| p.parse().unwrap());
        rewrite_request(
            &mut parts,
            &route("/api", upstream, false),
            None,
            peer,
            &config(),
        )
        .unwrap();
        parts
    }

    #[test]
    fn a_route_without_base_path_or_strip_forwards_the_browsers_path_and_query_byte_for_byte() {
        let shared = route("/api", "http://up:9100", false);
        let based = route("/api", "http://up:9100/v1", false);
        for path in [
            "/api",
            "/api/",
            "/api/items/42",
            "/api//a;b=1/%7e",
            "/api/100%25/~u",
        ] {
            for query in ["", "?", "?a=1&b=%2F..%2F", "?../../etc", "?x=%00"] {
                let uri: Uri = format!("{path}{query}").parse().unwrap();
                let up = upstream_uri(&uri, &shared).unwrap();
                assert_eq!(up.to_string(), format!("http://up:9100{path}{query}"));
                // The same path and query after a base path (built, not shared).
                let up = upstream_uri(&uri, &based).unwrap();
                assert_eq!(up.to_string(), format!("http://up:9100/v1{path}{query}"));
            }
        }
        // Checked before it is shared.
        for refused in [
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/api/a%2fb",
            "/api/a\\b",
        ] {
            let uri: Uri = refused.parse().unwrap();
            assert!(upstream_uri(&uri, &shared).is_err(), "{refused} accepted");
        }
    }

    #[test]
    fn uris_keep_path_and_query() {
        let r = route("/api", "http://up:9100", false);
        let u = upstream_uri(&"/api/items?a=1&b=%2F".parse().unwrap(), &r).unwrap();
        assert_eq!(u.to_string(), "http://up:9100/api/items?a=1&b=%2F");
        let s = route("/api", "http://up:9100/v1/", true);
        assert_eq!(
            upstream_uri(&"/api/items".parse().unwrap(), &s)
                .unwrap()
                .to_string(),
            "http://up:9100/v1/items"
        );
        assert_eq!(
            upstream_uri(&"/api".parse().unwrap(), &s)
                .unwrap()
                .to_string(),
            "http://up:9100/v1/"
        );
        assert_eq!(
            upstream_uri(&"/api?x".parse().unwrap(), &s)
                .unwrap()
                .to_string(),
            "http://up:9100/v1/?x"
        );
    }

    #[test]
    fn hygiene_on_the_way_up() {
        let mut req = axum::http::Request::builder()
            .uri("/api/x")
            .header("host", "app.example.com")
            .header("connection", "keep-alive, x-secret-hop")
            .header("x-secret-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("upgrade", "websocket")
            .header("proxy-authorization", "Basic x")
            .header("proxy-anything", "y")
            .header("authorization", "Bearer from-browser")
            .header(
                "cookie",
                "__Host-portcullis=sess; theme=dark; __Host-portcullis-login=b",
            )
            .header("x-forwarded-for", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6")
            .header("x-forwarded-host", "evil.com")
            .header("x-end-to-end", "kept")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let token = HeaderValue::from_static("Bearer AT");
        rewrite_request(
            &mut req,
            &route("/api", "http://up:1", false),
            Some(token),
            Some("192.0.2.1".parse().unwrap()),
            &config(),
        )
        .unwrap();
        let h = &req.headers;
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "proxy-anything",
            "forwarded",
        ] {
            assert!(!h.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(h["host"], "up:1", "the upstream's own");
        assert_eq!(h["authorization"], "Bearer AT");
        assert_eq!(h["cookie"], "theme=dark");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn the_upstream_gets_its_own_host_whatever_the_browser_sends() {
        for (upstream, host) in [
            ("http://up:1", Some("up:1")),
            ("http://up", Some("up")),
            ("http://[::1]:8080/base", Some("[::1]:8080")),
            ("https://up:8443", None),
            ("h2c://up:9", None),
        ] {
            let req = rewritten(
                axum::http::Request::builder()
                    .header("host", "evil.example")
                    .header("connection", "host")
                    .header("x-forwarded-host", "evil.example"),
                upstream,
                None,
            );
            let sent: Vec<_> = req.headers.get_all("host").iter().collect();
            match host {
                Some(host) => assert_eq!(sent, [host], "{upstream}"),
                None => assert!(sent.is_empty(), "{upstream}: {sent:?}"),
            }
        }
    }

    #[test]
    fn every_line_of_the_browsers_host_authorization_and_forwarded_for_is_replaced_or_dropped() {
        for upstream in ["http://up:1", "https://up:8443", "h2c://up:9"] {
            for token in [Some("Bearer AT"), None] {
                for peer in ["192.0.2.1", "10.1.2.3"] {
                    let mut parts = axum::http::Request::builder()
                        .uri("/api/x")
                        .header("host", "evil.example")
                        .header("Host", "evil2.example")
                        .header("authorization", "Bearer from-browser")
                        .header("Authorization", "Basic ZXZpbDpldmls")
                        .header("x-forwarded-for", "6.6.6.6")
                        .header("X-Forwarded-For", "7.7.7.7")
                        .body(())
                        .unwrap()
                        .into_parts()
                        .0;
                    rewrite_request(
                        &mut parts,
                        &route("/api", upstream, false),
                        token.map(HeaderValue::from_static),
                        Some(peer.parse().unwrap()),
                        &config(),
                    )
                    .unwrap();
                    let h = &parts.headers;
                    let all = |name: &str| -> Vec<&str> {
                        h.get_all(name)
                            .iter()
                            .map(|v| v.to_str().unwrap())
                            .collect()
                    };
                    let case = format!("{upstream} {token:?} from {peer}");
                    let host: &[&str] = if upstream == "http://up:1" {
                        &["up:1"]
                    } else {
                        &[]
                    };
                    assert_eq!(all("host"), host, "{case}");
                    assert_eq!(all("authorization"), Vec::from_iter(token), "{case}");
                    // Only a trusted proxy's (10.0.0.0/8) chain is kept.
                    let chain = if peer == "10.1.2.3" {
                        "6.6.6.6, 7.7.7.7, 10.1.2.3"
                    } else {
                        peer
                    };
                    assert_eq!(all("x-forwarded-for"), [chain], "{case}");
                }
            }
        }
    }

    /// What the own-cookie strip did before it read bytes: each line as `str`, split
    /// into pairs, names compared after `str::trim`. The reference for readable lines.
    fn strip_reference(lines: &[&str], own: &[String]) -> Option<String> {
        let mut kept = Vec::new();
        let mut any_ours = false;
        for line in lines {
            for pair in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
                if own.iter().any(|o| o == name) {
                    any_ours = true;
                } else {
                    kept.push(pair);
                }
            }
        }
        if !any_ours && lines.len() == 1 {
            return Some(lines[0].to_owned());
        }
        (!kept.is_empty()).then(|| kept.join("; "))
    }

    #[test]
    fn the_own_cookie_strip_agrees_with_splitting_lines_into_pairs_over_spellings() {
        let own = config().own_cookies;
        let mut names: Vec<String> = own.clone();
        names.extend(own.iter().map(|o| format!("x{o}")));
        names.extend(own.iter().map(|o| format!("{o}x")));
        names.extend(["theme".into(), "a".into(), String::new()]);
        let values = ["v", "", "\"q\"", "a=b", "sp ace"];
        let blanks = ["", " ", "\t", " \t "];
        let mut pairs = Vec::new();
        for (i, n) in names.iter().enumerate() {
            for (j, v) in values.iter().enumerate() {
                let b = blanks[(i + j) % blanks.len()];
                pairs.push(format!("{b}{n}{b}={b}{v}{b}"));
            }
            pairs.push(n.clone());
        }
        let mut checked = 0;
        for (i, first) in pairs.iter().enumerate() {
            for second in pairs.iter().skip(i % 5).step_by(5) {
                let joined = format!("{first};{second}");
                for lines in [vec![joined.as_str()], vec![first.as_str(), second.as_str()]] {
                    let bytes: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
                    let expected = strip_reference(&lines, &own);
                    assert_eq!(cookies_sent(&bytes, &own), expected.as_slice(), "{lines:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 1_000, "{checked}");
    }

    #[test]
    fn own_cookies_are_stripped_from_every_cookie_line() {
        let own = config().own_cookies;
        // The browser's Cookie lines, then the lines sent upstream.
        let cases: &[(&[&[u8]], &[&str])] = &[
            (&[], &[]),
            (&[b"theme=dark"], &["theme=dark"]),
            (&[b"theme=dark;lang=en"], &["theme=dark;lang=en"]),
            (&[b"__Host-portcullis=s"], &[]),
            (&[b" __Host-portcullis = s ; theme=dark"], &["theme=dark"]),
            (&[b"theme=dark", b"lang=en"], &["theme=dark; lang=en"]),
            (
                &[b"theme=dark", b"__Host-portcullis-login=b; lang=en"],
                &["theme=dark; lang=en"],
            ),
            (&[b"__Host-portcullis=s", b"__Host-portcullis-login=b"], &[]),
            // Unreadable: dropped, not forwarded uninspected.
            (&[b"theme=dark", b"x=\xff"], &["theme=dark"]),
            (&[b"x=\xff"], &[]),
        ];
        for (lines, sent) in cases {
            assert_eq!(cookies_sent(lines, &own), *sent, "{lines:?}");
        }
    }

    /// The `Cookie` lines sent upstream for the browser's `lines`.
    fn cookies_sent(lines: &[&[u8]], own: &[String]) -> Vec<String> {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(header::COOKIE, HeaderValue::from_bytes(line).unwrap());
        }
        strip_own_cookies(&mut h, own);
        h.get_all(header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn found_by_fuzzing() {
        // fuzz/fuzz_targets/header_rewrite.rs. Every Proxy-* header and httpoxy's
        // `Proxy`; Connection naming headers in a value with obs-text.
        let mut h = HeaderMap::new();
        h.insert("proxy", HeaderValue::from_static("http://evil:8080"));
        h.insert("proxy-foo", HeaderValue::from_static("1"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-hop, \xff").unwrap(),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);

        // Dot segments, plain or percent-encoded, would leave the route upstream.
        let r = route("/api", "http://up:1/base", false);
        for bad in [
            "/api/../admin",
            "/api/%2e%2E/admin",
            "/api/x/.",
            "/api/.%2e",
        ] {
            assert!(upstream_uri(&bad.parse().unwrap(), &r).is_err(), "{bad}");
        }
        for ok in ["/api/...", "/api/.x/a..b", "/api/%2e%2e%2e"] {
            assert!(upstream_uri(&ok.parse().unwrap(), &r).is_ok(), "{ok}");
        }

        // A trusted proxy's X-Forwarded-For in several field lines is one list.
        let req = rewritten(
            axum::http::Request::builder()
                .header("x-forwarded-for", "198.51.100.7")
                .header("x-forwarded-for", "203.0.113.9"),
            "http://up:1",
            Some("10.1.2.3"),
        );
        assert_eq!(
            req.headers["x-forwarded-for"],
            "198.51.100.7, 203.0.113.9, 10.1.2.3"
        );
    }

    #[test]
    fn proxy_set_headers_are_recognised_by_rule() {
        for name in [
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-server",
            "x-forwarded-scheme",
            "x-forwarded-ssl",
            "x-forwarded-uri",
            "x-forwarded-path",
            "x-forwarded-client-cert",
            "x-forwarded-user",
            "x-forwardedfor",
            "x_forwarded_for",
            "x-forwarded_for",
            "x_real_ip",
            "http_x_forwarded_for",
            "x-real-ip",
            "true-client-ip",
            "x-client-ip",
            "cf-connecting-ip",
            "cf-connecting-ipv6",
            "client-ip",
            "x-originating-ip",
            "x-cluster-client-ip",
            "fastly-client-ip",
            "x-proxyuser-ip",
            "x-remote-ip",
            "x-remote-addr",
            "x-envoy-external-address",
            "x-original-url",
            "x-original-uri",
            "x-original-host",
            "x-original-method",
            "x-rewrite-url",
            "x-host",
            "x-http-host",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "front-end-https",
            "x-url-scheme",
            "x-arr-ssl",
            "x-ssl-client-cert",
            "ssl-client-cert",
            "x-client-cert",
            "x-arr-clientcert",
            "x-auth-request-user",
            "x-auth-request-email",
            "remote-user",
            "x-remote-user",
            "x-amzn-oidc-identity",
            "x-ms-client-principal-name",
            "x-goog-authenticated-user-email",
            "cf-access-authenticated-user-email",
            "cf-visitor",
            "x-azure-clientip",
            "x-appengine-user-ip",
        ] {
            assert!(is_proxy_set(name), "{name}");
        }
        for name in [
            "accept",
            "content-type",
            "cookie",
            "x-csrf",
            "x-request-id",
            "x-client-version",
            "x-payment-method",
            "x-hostname",
            "x-host-id",
            "x-email-address",
            "x-end-to-end",
            "traceparent",
            "if-none-match",
            "access-control-request-method",
            "origin",
            "referer",
            "user-agent",
        ] {
            assert!(!is_proxy_set(name), "{name}");
        }
    }

    #[test]
    fn the_indexed_prefix_check_agrees_with_the_whole_list() {
        let whole = |name: &[u8]| {
            PROXY_SET_PREFIXES
                .iter()
                .any(|p| name.starts_with(p.as_bytes()))
        };
        let mut names: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"x".to_vec(),
            b"x-".to_vec(),
            b"xy".to_vec(),
            b"x-a".to_vec(),
            b"c".to_vec(),
        ];
        for p in PROXY_SET_PREFIXES {
            let p = p.as_bytes();
            names.push(p.to_vec());
            names.push([p, b"anything"].concat());
            // One byte short, and each byte changed in turn: none of these may match
            // unless another prefix says so.
            names.push(p[..p.len() - 1].to_vec());
            for i in 0..p.len() {
                let mut changed = [p, b"-x"].concat();
                changed[i] = if changed[i] == b'q' { b'z' } else { b'q' };
                names.push(changed);
            }
        }
        // Every first byte (with four second bytes), and `x-` + every byte, then a tail.
        for a in 0..=255u8 {
            names.push(vec![b'x', b'-', a, b'-', b'y']);
            for b in [b'-', b'f', b's', b'x'] {
                names.push(vec![a, b, b'-', b'z']);
            }
        }
        let mut matched = 0;
        for name in &names {
            assert_eq!(
                has_proxy_set_prefix(name),
                whole(name),
                "{}",
                String::from_utf8_lossy(name)
            );
            matched += usize::from(whole(name));
        }
        // The comparison saw both answers, many times.
        assert!(matched > 2 * PROXY_SET_PREFIXES.len(), "{matched}");
    }

    #[test]
    fn untrusted_peers_choose_no_forwarding_header() {
        let mut b = axum::http::Request::builder()
            .uri("/api/x")
            .header("host", "evil.example");
        for name in [
            "x-forwarded-host",
            "x-forwarded-port",
            "x-real-ip",
            "x_forwarded_for",
            "x-original-url",
            "x-http-method-override",
            "true-client-ip",
        ] {
            b = b.header(name, "spoofed");
        }
        let mut req = b.header("x-kept", "1").body(()).unwrap().into_parts().0;
        rewrite_request(
            &mut req,
            &route("/api", "http://up:1", false),
            None,
            Some("192.0.2.1".parse().unwrap()),
            &config(),
        )
        .unwrap();
        let mut names: Vec<_> = req.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-kept"
            ]
        );
        assert_eq!(
            req.headers["host"], "up:1",
            "the upstream's, not the browser's"
        );
        assert_eq!(req.headers["x-forwarded-host"], "app.example.com");
        assert_eq!(req.headers["x-forwarded-for"], "192.0.2.1");
    }

    #[test]
    fn trusted_proxies_may_supply_forwarded_headers() {
        let mut req = axum::http::Request::builder()
            .uri("/api/x")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("cookie", "__Host-portcullis=only")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        rewrite_request(
            &mut req,
            &route("/api", "http://up:1", false),
            None,
            Some("10.1.2.3".parse().unwrap()),
            &config(),
        )
        .unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert!(!req.headers.contains_key("cookie"));
        assert!(!req.headers.contains_key("authorization"));
    }
}
