use axum::http::Uri;

use super::Route;
use super::rewrite::upstream_uri;
use crate::config::TokenKind;
use crate::path::models::Confinement;
use crate::path::{Refusal, check};

fn route(prefix: &str, upstream: &str, strip: bool) -> Route {
    crate::upstream::routes::test_route(prefix, upstream, strip, TokenKind::None)
}

/// The routes of the property test: stripped and kept prefixes, root and deep bases.
fn routes() -> Vec<Route> {
    vec![
        route("/pub2", "http://up:1/public", true),
        route("/partner", "http://up:1/v1/partner/", true),
        route("/api", "http://up:1", false),
        route("/api/admin", "http://up:1/base/", false),
        route("/files", "http://up:1/", true),
    ]
}

/// Where a route's upstream paths must stay: the base, plus the prefix when it is kept.
fn root(r: &Route) -> String {
    let mut root = r.base_path.clone();
    if !r.strip_prefix {
        root.push_str(&r.prefix);
    }
    if root.is_empty() {
        root.push('/');
    }
    root
}

fn refusal(path: &str) -> Option<Refusal> {
    check(path.as_bytes()).err()
}

#[test]
fn refuses_every_spelling_that_some_upstream_resolves() {
    use Refusal::*;
    let cases: &[(&str, Refusal)] = &[
        ("/..", DotSegment),
        ("/.", DotSegment),
        ("/a/./b", DotSegment),
        ("/%2e%2e/x", DotSegment),
        ("/%2E%2e/x", DotSegment),
        ("/.%2E/x", DotSegment),
        ("/%2e./x", DotSegment),
        // `;parameters` (Tomcat, Jetty, Spring strip them per segment)
        ("/..;/admin", DotSegment),
        ("/..;jsessionid=1/admin", DotSegment),
        ("/.%2e;x/admin", DotSegment),
        ("/%2e%2e;/admin", DotSegment),
        ("/.;/admin", DotSegment),
        ("/..%3b/admin", DotSegment),
        ("/..%3Bx/admin", DotSegment),
        ("/..%3f/admin", DotSegment),
        ("/..%23/admin", DotSegment),
        ("/..:x/admin", DotSegment),
        ("/..::$DATA/admin", DotSegment),
        ("/a;..", DotSegment),
        // double encoding, at any depth
        ("/%252e%252e/admin", DotSegment),
        ("/%25%32%65%25%32%65/admin", DotSegment),
        ("/%25%32%45./admin", DotSegment),
        ("/%%32%65%%32%65/admin", MalformedEscape),
        ("/%25252e%25252e/admin", DotSegment),
        ("/%252e%252e%253b/admin", DotSegment),
        // trimmed or folded by some upstream
        ("/..%20/admin", DotSegment),
        ("/.%20./admin", DotSegment),
        ("/%20../admin", DotSegment),
        ("/..+/admin", DotSegment),
        ("/..%2b/admin", DotSegment),
        ("/..%c2%a0/admin", DotSegment),
        ("/..%e2%80%8b/admin", DotSegment),
        ("/..%ef%bb%bf/admin", DotSegment),
        ("/.%cc%81./admin", DotSegment),
        ("/%ef%bc%8e%ef%bc%8e/admin", DotSegment),
        ("/.%ef%bc%8e/admin", DotSegment),
        ("/%e2%80%a5/admin", DotSegment),
        ("/%e2%80%a4%e2%80%a4/admin", DotSegment),
        ("/%e2%80%a6/admin", DotSegment),
        ("/%e3%80%82%e3%80%82/admin", DotSegment),
        ("/%ef%b9%92./admin", DotSegment),
        ("/..%e2%88%95admin", DotSegment),
        ("/..%ef%bc%8fadmin", DotSegment),
        ("/..%ef%bc%bcadmin", DotSegment),
        ("/..%c2%a5admin", DotSegment),
        ("/x%e2%88%95..%e2%88%95admin", DotSegment),
        ("/..\u{FF0E}/admin", DotSegment),
        // encoded separators
        ("/..%2fadmin", EncodedSeparator),
        ("/..%2Fadmin", EncodedSeparator),
        ("/%2e%2e%2fadmin", EncodedSeparator),
        ("/a%2fb", EncodedSeparator),
        ("/..%5cadmin", EncodedSeparator),
        ("/%2e%2e%5Cadmin", EncodedSeparator),
        ("/a%5cb", EncodedSeparator),
        ("/..%252fadmin", EncodedSeparator),
        ("/..%255cadmin", EncodedSeparator),
        ("/..%25%32%66admin", EncodedSeparator),
        // backslash
        ("/..\\admin", Backslash),
        ("/a\\b", Backslash),
        // NUL and controls
        ("/..%00/admin", Control),
        ("/a%00.txt", Control),
        ("/a%0d%0aX:1", Control),
        ("/a%09", Control),
        ("/a%7f", Control),
        ("/a%c2%85", Control),
        ("/a%2500", Control),
        // %u (IIS, Jetty)
        ("/%u002e%u002e/admin", PercentU),
        ("/%U002E./admin", PercentU),
        ("/..%u2215admin", PercentU),
        ("/%uff0e%uff0e/admin", PercentU),
        ("/%25u002e%25u002e/admin", PercentU),
        ("/%25%75002e/admin", PercentU),
        // overlong and invalid UTF-8
        ("/%c0%ae%c0%ae/admin", NotUtf8),
        ("/..%c0%afadmin", NotUtf8),
        ("/%e0%80%ae%e0%80%ae/admin", NotUtf8),
        ("/%f0%80%80%ae/admin", NotUtf8),
        ("/..%c1%9cadmin", NotUtf8),
        ("/%c0%2e%c0%2e/admin", NotUtf8),
        ("/caf%e9", NotUtf8),
        ("/%ed%a0%80", NotUtf8),
        ("/%25c0%25ae%25c0%25ae/admin", NotUtf8),
        // malformed escapes
        ("/a%", MalformedEscape),
        ("/a%2", MalformedEscape),
        ("/a%zz", MalformedEscape),
        ("/%%2e%2e/admin", MalformedEscape),
    ];
    for &(path, why) in cases {
        assert_eq!(refusal(path), Some(why), "{path}");
    }
    // Raw bytes a client can put in a request line: the same rules.
    assert_eq!(check(b"/\xc0\xae\xc0\xae/x"), Err(NotUtf8));
    assert_eq!(check(b"/..\x00/x"), Err(Control));
    assert_eq!(check("/\u{FF0E}\u{FF0E}/x".as_bytes()), Err(DotSegment));
}

#[test]
fn passes_legitimate_paths_unchanged() {
    let r = route("/pub2", "http://up:1/public", true);
    for ok in [
        "/pub2",
        "/pub2/",
        "/pub2/a%20b",
        "/pub2/%41%42c",
        "/pub2/caf%C3%A9/%E6%97%A5%E6%9C%AC",
        "/pub2/café/日本",
        "/pub2/a.b/.hidden/x..",
        "/pub2/...",
        "/pub2/..../a",
        "/pub2/%2e%2e%2e",
        "/pub2/items;v=1.2/x;jsessionid=abc",
        "/pub2/a;b;c",
        "/pub2/v1/projects/p:run",
        "/pub2/100%25",
        "/pub2/price/%C2%A5100",
        "/pub2/a+b/~user/-_.!$&'()*,=@",
        "/pub2//double//slashes/",
        "/pub2/%7e",
    ] {
        for query in ["", "?a=1&b=%2F..%2F&c=..;/x", "?", "?../../etc"] {
            let uri: Uri = format!("{ok}{query}").parse().unwrap();
            let up = upstream_uri(&uri, &r).unwrap_or_else(|e| panic!("{ok}: {e}"));
            let rest = &ok["/pub2".len()..];
            let rest = if rest.is_empty() { "/" } else { rest };
            let expected_path = format!("/public{rest}");
            assert_eq!(
                up.path().as_bytes(),
                expected_path.as_bytes(),
                "{ok} is forwarded unchanged"
            );
            assert_eq!(
                up.query(),
                uri.query(),
                "{ok}{query}: the query is untouched"
            );
        }
    }
}

#[test]
fn a_refusal_is_invalid_request_and_names_the_reason() {
    let r = route("/partner", "http://up:1/v1/partner", true);
    let e = upstream_uri(&"/partner/..;/admin/users".parse().unwrap(), &r).unwrap_err();
    assert_eq!(e.code(), "invalid_request");
    assert_eq!(e.status(), 400);
    assert!(e.to_string().contains("dot segment"), "{e}");
    // A kept prefix is part of what the upstream sees: checked too.
    let kept = route("/api", "http://up:1", false);
    assert!(upstream_uri(&"/api/x/..%2f..%2fadmin".parse().unwrap(), &kept).is_err());
}

// ------------------------------------------------------------------ property test

/// SplitMix64: deterministic, so a failure is reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Tokens some upstream reads as a dot, a separator, a terminator or nothing.
const DANGEROUS: &[&[u8]] = &[
    b".",
    b"..",
    b"%2e",
    b"%2E",
    b"%252e",
    b"%252E",
    b"%25%32%65",
    b"%25%32%45",
    b"%%32%65",
    b"%2525%32%65",
    b"/",
    b"//",
    b"%2f",
    b"%2F",
    b"%252f",
    b"%25%32%66",
    b"%5c",
    b"%5C",
    b"%255c",
    b"\\",
    b";",
    b";x=1",
    b"%3b",
    b"%3B",
    b"%253b",
    b"?",
    b"%3f",
    b"#",
    b"%23",
    b":",
    b"::$DATA",
    b"%u002e",
    b"%U002E",
    b"%u2215",
    b"%uff0e",
    b"%25u002e",
    b"%25%75002e",
    b"%c0%ae",
    b"%C0%AE",
    b"%c0%af",
    b"%c1%9c",
    b"%e0%80%ae",
    b"%f0%80%80%ae",
    b"%c0%2e",
    b"\xc0\xae",
    b"%ef%bc%8e",
    b"\xef\xbc\x8e",
    b"%ef%bc%8f",
    b"%ef%bc%bc",
    b"%e2%88%95",
    b"%e2%80%a4",
    b"%e2%80%a5",
    b"%e2%80%a6",
    b"%e3%80%82",
    b"%ef%b9%92",
    b"%c2%a5",
    b"%e2%82%a9",
    b"%00",
    b"%2500",
    b"%01",
    b"%0a",
    b"%09",
    b"%7f",
    b"%c2%85",
    b"%20",
    b"%2520",
    b"+",
    b"%2b",
    b"%c2%a0",
    b"%e2%80%8b",
    b"%cc%81",
    b"%ef%bb%bf",
    b"%",
    b"%z",
    b"%2",
    b"%e9",
    b"%ed%a0%80",
    b"%25",
];

/// Ordinary name material.
const BENIGN: &[&[u8]] = &[
    b"a",
    b"b",
    b"x.y",
    b"...",
    b"%41",
    b"%61",
    b"%c3%a9",
    "é".as_bytes(),
    "日".as_bytes(),
    b"~",
    b"-",
    b"_",
    b"%7e",
    b"=",
    b"@",
    b"!",
    b"1",
];

fn generate(rng: &mut Rng, routes: &[Route]) -> Vec<u8> {
    let mut path = Vec::new();
    match rng.below(8) {
        0 => path.push(b'/'),
        _ => path.extend_from_slice(rng.pick(routes).prefix.as_bytes()),
    }
    if rng.below(4) != 0 {
        path.push(b'/');
    }
    for _ in 0..1 + rng.below(9) {
        let token = if rng.below(3) == 0 {
            *rng.pick(BENIGN)
        } else {
            *rng.pick(DANGEROUS)
        };
        path.extend_from_slice(token);
    }
    path
}

/// Routes the path like the gateway does and, when `upstream_uri` accepts it, checks
/// that every upstream model resolves it under the route's base (and kept prefix).
/// Returns whether the path was accepted.
fn property(path: &[u8], routes: &[(Route, Confinement)]) -> Result<bool, String> {
    let Ok(uri) = Uri::try_from(path) else {
        return Ok(false);
    };
    // Longest prefix first, as `RouteTable` does.
    let Some((route, confinement)) = routes.iter().find(|(r, _)| r.serves(uri.path())) else {
        return Ok(false);
    };
    let Ok(up) = upstream_uri(&uri, route) else {
        return Ok(false);
    };
    confinement
        .check(up.path().as_bytes())
        .map_err(|e| format!("{} accepted, but {e}", String::from_utf8_lossy(path)))?;
    Ok(true)
}

/// The routes, longest prefix first, each with its root resolved by every model.
fn confinements() -> Vec<(Route, Confinement)> {
    let mut routes = routes();
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    routes
        .into_iter()
        .map(|r| {
            let c = Confinement::new(root(&r).as_bytes());
            (r, c)
        })
        .collect()
}

#[test]
fn accepted_paths_stay_under_the_base_in_every_upstream_model() {
    let routes = routes();
    let checked = confinements();
    let mut rng = Rng(0x5EED_0016);
    let (mut accepted, mut total) = (0, 0);
    for _ in 0..300_000 {
        let path = generate(&mut rng, &routes);
        total += 1;
        if property(&path, &checked).unwrap_or_else(|e| panic!("{e}")) {
            accepted += 1;
        }
    }
    // The generator must reach both sides of the rule.
    assert!(accepted > total / 50, "only {accepted} of {total} accepted");
    assert!(accepted < total / 2, "{accepted} of {total} accepted");
}

#[test]
fn benign_paths_are_all_accepted() {
    let routes = confinements();
    let mut rng = Rng(7);
    for _ in 0..5_000 {
        let (r, confinement) = rng.pick(&routes);
        let mut path = r.prefix.clone().into_bytes();
        for _ in 0..1 + rng.below(6) {
            path.push(b'/');
            for _ in 0..1 + rng.below(3) {
                let token: &&[u8] = rng.pick(BENIGN);
                path.extend_from_slice(token);
            }
            if rng.below(5) == 0 {
                path.extend_from_slice(b";v=1.2");
            }
        }
        let uri = Uri::try_from(path.as_slice()).unwrap();
        let up = upstream_uri(&uri, r)
            .unwrap_or_else(|e| panic!("{} refused: {e}", String::from_utf8_lossy(&path)));
        confinement.check(up.path().as_bytes()).unwrap();
    }
}

#[test]
fn the_examples_of_issue_16_are_refused() {
    let routes = routes();
    for path in [
        "/pub2/..%2finternal/secret",
        "/partner/..;/admin/users",
        "/partner/..%2f..%2fadmin",
        "/partner/%2e%2e%2fadmin",
        "/partner/..%5cadmin",
        "/partner/%u002e%u002e/admin",
        "/partner/.%2e;/admin",
    ] {
        let uri: Uri = path.parse().unwrap();
        let r = routes.iter().find(|r| r.serves(uri.path())).unwrap();
        assert!(upstream_uri(&uri, r).is_err(), "{path} accepted");
    }
}
