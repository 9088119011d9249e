//! The upstream path rule (`path::check`, applied by `rewrite::upstream_uri`):
//! the path an upstream receives can't leave the route's upstream base, however the
//! upstream decodes it.
//!
//! Input format (so that seeds can be written by hand):
//!   byte 0   the route whose prefix starts the path: 0 `/pub2` (→ `/public`, stripped),
//!            1 `/partner` (→ `/v1/partner/`, stripped), 2 `/api` (→ root, kept),
//!            3 `/api/admin` (→ `/base/`, kept), 4 `/files` (→ root, stripped); any
//!            other value: no prefix (the rest must start the path itself)
//!   then     the rest of the request target, raw bytes (a `?` starts the query)
//! The request is routed like the gateway does (`RouteTable::matching`).
//!
//! Properties: never panics; when `upstream_uri` accepts the path, the upstream URI
//! keeps the route's scheme, authority and the request's query, and every model in
//! `portcullis::path::models` (nginx, Tomcat defaults, permissive Tomcat/Jetty,
//! Spring, IIS, a paranoid decoder) resolves its path under the route's base path
//! (plus the prefix when it is not stripped).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;
use portcullis::upstream::RouteTable;
use portcullis::path::models::confined;
use portcullis::upstream::rewrite::upstream_uri;

const PREFIXES: [&str; 5] = ["/pub2", "/partner", "/api", "/api/admin", "/files"];

const CONFIG: &str = r#"
[server]
public_origin = "https://app.example.com"
[oidc]
issuer = "https://idp.example.com"
client_id = "c"
client_secret = "s"
[session]
keys = ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]
[[routes]]
prefix = "/pub2"
upstream = "http://up:9100/public"
token = "none"
strip_prefix = true
[[routes]]
prefix = "/partner"
upstream = "http://up:9100/v1/partner/"
token = "client"
strip_prefix = true
[[routes]]
prefix = "/api"
upstream = "http://up:9100"
[[routes]]
prefix = "/api/admin"
upstream = "http://10.0.0.7:9200/base/"
token = "none"
[[routes]]
prefix = "/files"
upstream = "http://files.internal/"
strip_prefix = true
"#;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let config = Config::from_toml(CONFIG, std::iter::empty()).expect("fuzz config");
        RouteTable::from_config(&config.frontend().routes).expect("fuzz routes")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut target = Vec::with_capacity(rest.len() + 16);
    if let Some(prefix) = PREFIXES.get(usize::from(which)) {
        target.extend_from_slice(prefix.as_bytes());
    }
    target.extend_from_slice(rest);
    let Ok(uri) = http::Uri::try_from(target.as_slice()) else {
        return;
    };
    let Some(route) = table().matching(uri.path()) else {
        return;
    };
    let Ok(up) = upstream_uri(&uri, route) else {
        return;
    };
    assert_eq!(
        up.scheme(),
        Some(&route.scheme),
        "scheme is not the route's"
    );
    assert_eq!(
        up.authority(),
        Some(&route.authority),
        "authority is not the route's"
    );
    assert_eq!(up.query(), uri.query(), "query altered");
    let mut root = route.base_path.clone();
    if !route.strip_prefix {
        root.push_str(&route.prefix);
    }
    if root.is_empty() {
        root.push('/');
    }
    if let Err(e) = confined(up.path().as_bytes(), root.as_bytes()) {
        panic!("{uri} accepted, but {e}");
    }
});
