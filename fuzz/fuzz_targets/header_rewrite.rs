//! The upstream request rewriter (`upstream::rewrite`): what a browser's request becomes
//! on its way to an API upstream.
//!
//! Input format (so that seeds can be written by hand):
//!   byte 0   flags: bit 0 = a user token is injected; bits 1-2 = the peer
//!            (0 none, 1 untrusted IPv4, 2 trusted proxy, 3 untrusted IPv6)
//!   then     lines separated by `\n`: the first is the request target (path and
//!            query, or absolute form); each further line is a header `name:value`
//!            (optional whitespace around the value is trimmed, as hyper does).
//!            Names or values `http` refuses are skipped.
//! The request is routed like the gateway does (`RouteTable::matching` on the path,
//! no match = not proxied) over a table with plain, `strip_prefix` and base-path routes.
//!
//! Properties: never panics; afterwards no hop-by-hop header remains (`Connection`,
//! `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-*`, and any
//! header the original `Connection` names, except the ones Portcullis sets itself); no
//! `Host`; `Authorization` only the injected token; no `Cookie` pair named after the
//! session or login cookie; `X-Forwarded-*` only Portcullis's own unless the peer is a
//! trusted proxy, and then its whole `X-Forwarded-For` chain (all field lines) plus the
//! peer; the URI has the route's scheme and authority and the request's query, and its
//! path stays under the route (base path, plus the prefix when it is not stripped) also
//! once dot segments are resolved, as the upstream will. `remove_hop_by_hop`,
//! `clean_response` and `strip_own_cookies` are also checked on their own.
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;
use portcullis::upstream::RouteTable;
use portcullis::upstream::rewrite::{
    RewriteConfig, clean_response, remove_hop_by_hop, rewrite_request, strip_own_cookies,
};
use portcullis::session::cookie::{LOGIN_COOKIE, find};

const SESSION_COOKIE: &str = "__Host-portcullis";
const TOKEN: &str = "Bearer injected-AT";
const PUBLIC_HOST: &str = "app.example.com";

const CONFIG: &str = r#"
[server]
public_origin = "https://app.example.com"
trusted_proxies = ["10.0.0.0/8"]
[oidc]
issuer = "https://idp.example.com"
client_id = "c"
client_secret = "s"
[session]
keys = ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]
[[routes]]
prefix = "/api"
upstream = "http://up:9100"
[[routes]]
prefix = "/api/admin"
upstream = "http://10.0.0.7:9200/base/"
token = "none"
strip_prefix = true
[[routes]]
prefix = "/v1"
upstream = "http://[::1]:8080/inner"
[[routes]]
prefix = "/files"
upstream = "http://files.internal/"
strip_prefix = true
"#;

fn setup() -> &'static (RouteTable, RewriteConfig) {
    static SETUP: OnceLock<(RouteTable, RewriteConfig)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let config = Config::from_toml(CONFIG, std::iter::empty()).expect("fuzz config");
        let table = RouteTable::from_config(&config.frontend().routes).expect("fuzz routes");
        let rewrite = RewriteConfig {
            trusted_proxies: config.server.trusted_proxies.clone(),
            own_cookies: vec![SESSION_COOKIE.into(), LOGIN_COOKIE.into()],
            public_proto: HeaderValue::from_static("https"),
            public_host: HeaderValue::from_static(PUBLIC_HOST),
        };
        (table, rewrite)
    })
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers Portcullis sets itself after removing the hop-by-hop ones.
const SET_BY_PORTCULLIS: [&str; 4] = [
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Header names listed in `Connection`, read as bytes (RFC 9110 §7.6.1).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|n| HeaderName::from_bytes(trim_ows(n)).ok())
        .collect()
}

fn assert_no_hop_by_hop(after: &HeaderMap, named: &[HeaderName], exempt: &[&str]) {
    for name in after.keys() {
        let n = name.as_str();
        assert!(!HOP_BY_HOP.contains(&n), "hop-by-hop header {n:?} kept");
        // `Proxy-*`, and a bare `Proxy` ("httpoxy": CGI upstreams read it as HTTP_PROXY).
        assert!(
            n != "proxy" && !n.starts_with("proxy-"),
            "hop-by-hop header {n:?} kept (Proxy-*)"
        );
        assert!(
            !named.contains(name) || exempt.contains(&n),
            "header {n:?} named by Connection kept"
        );
    }
}

fn assert_no_own_cookies(headers: &HeaderMap) {
    assert!(
        find(headers, SESSION_COOKIE).is_none(),
        "session cookie forwarded"
    );
    assert!(
        find(headers, LOGIN_COOKIE).is_none(),
        "login cookie forwarded"
    );
    for v in headers.get_all(header::COOKIE) {
        let text = v.to_str().expect("a non-ASCII Cookie header forwarded");
        for pair in text.split(';') {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
            assert!(
                name != SESSION_COOKIE && name != LOGIN_COOKIE,
                "cookie {name:?} forwarded in {text:?}"
            );
        }
    }
}

/// RFC 3986 §5.2.4, on the path an upstream sees once it decoded `%2e` (many do).
fn resolve_dot_segments(path: &str) -> String {
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn under(path: &str, base: &str) -> bool {
    base.is_empty() || path == base || path.strip_prefix(base).is_some_and(|r| r.starts_with('/'))
}

fn parse(data: &[u8]) -> Option<(u8, http::request::Parts)> {
    let (&flags, rest) = data.split_first()?;
    let mut lines = rest.split(|&b| b == b'\n');
    let target = lines.next()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(trim_ows(&line[colon + 1..])),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let (mut parts, ()) = http::Request::builder()
        .uri(target)
        .body(())
        .ok()?
        .into_parts();
    parts.headers = headers;
    Some((flags, parts))
}

fuzz_target!(|data: &[u8]| {
    let Some((flags, mut parts)) = parse(data) else {
        return;
    };
    let (table, config) = setup();
    let token = (flags & 1 == 1).then(|| HeaderValue::from_static(TOKEN));
    let peer: Option<IpAddr> = match (flags >> 1) & 3 {
        0 => None,
        1 => Some("192.0.2.1".parse().unwrap()),
        2 => Some("10.1.2.3".parse().unwrap()),
        _ => Some("2001:db8::1".parse().unwrap()),
    };
    let trusted = (flags >> 1) & 3 == 2;
    let original = parts.headers.clone();
    let original_uri = parts.uri.clone();
    let named = connection_named(&original);

    // The pieces on their own.
    let mut h = original.clone();
    remove_hop_by_hop(&mut h);
    assert_no_hop_by_hop(&h, &named, &[]);
    let mut h = original.clone();
    clean_response(&mut h);
    assert_no_hop_by_hop(&h, &named, &[]);
    let mut h = original.clone();
    strip_own_cookies(&mut h, &[SESSION_COOKIE.into(), LOGIN_COOKIE.into()]);
    assert_no_own_cookies(&h);

    let Some(route) = table.matching(original_uri.path()) else {
        return;
    };
    if rewrite_request(&mut parts, route, token.clone(), peer, config).is_err() {
        return;
    }
    let after = &parts.headers;
    assert_no_hop_by_hop(after, &named, &SET_BY_PORTCULLIS);
    assert!(!after.contains_key(header::HOST), "Host forwarded");
    let auth: Vec<_> = after.get_all(header::AUTHORIZATION).iter().collect();
    match &token {
        Some(t) => assert_eq!(auth, [t], "Authorization is not the injected token"),
        None => assert!(auth.is_empty(), "the browser's Authorization forwarded"),
    }
    assert_no_own_cookies(after);
    let xff_elements = |h: &HeaderMap| -> Option<Vec<String>> {
        h.get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().ok())
            .collect::<Option<Vec<_>>>()
            .map(|values| {
                values
                    .iter()
                    .flat_map(|v| v.split(','))
                    .map(|e| e.trim().to_owned())
                    .filter(|e| !e.is_empty())
                    .collect()
            })
    };
    if trusted {
        // A trusted proxy's chain is kept whole (several field lines are one list,
        // RFC 9110 §5.3) and the peer appended: the upstream finds the client there.
        let mut before = original.clone();
        remove_hop_by_hop(&mut before);
        let after_chain = xff_elements(after).expect("unreadable X-Forwarded-For sent");
        let peer = peer.unwrap().to_string();
        assert_eq!(
            after_chain.last(),
            Some(&peer),
            "the peer is not the last hop"
        );
        if let Some(mut chain) = xff_elements(&before) {
            chain.push(peer);
            assert_eq!(after_chain, chain, "X-Forwarded-For chain altered");
        }
    } else {
        assert!(
            !after.contains_key(header::FORWARDED),
            "Forwarded from an untrusted peer"
        );
        let xff: Vec<_> = after.get_all("x-forwarded-for").iter().collect();
        match peer {
            Some(ip) => assert_eq!(xff, [ip.to_string().as_str()], "X-Forwarded-For"),
            None => assert!(xff.is_empty(), "X-Forwarded-For without a peer"),
        }
        assert_eq!(
            after
                .get_all("x-forwarded-proto")
                .iter()
                .collect::<Vec<_>>(),
            ["https"]
        );
        assert_eq!(after.get_all("x-forwarded-host").iter().count(), 1);
    }

    let uri = &parts.uri;
    assert_eq!(
        uri.scheme(),
        Some(&route.scheme),
        "scheme is not the route's"
    );
    assert_eq!(
        uri.authority(),
        Some(&route.authority),
        "authority is not the route's"
    );
    assert_eq!(uri.query(), original_uri.query(), "query altered");
    assert!(
        under(uri.path(), &route.base_path),
        "{} is outside the base path {:?}",
        uri.path(),
        route.base_path
    );
    let mut confined_to = route.base_path.clone();
    if !route.strip_prefix {
        confined_to.push_str(&route.prefix);
    }
    let resolved = resolve_dot_segments(uri.path());
    assert!(
        under(&resolved, &confined_to),
        "request {original_uri} reaches {resolved} upstream, outside {confined_to:?}"
    );
});
