//! Micro-benchmarks of the proxy hot path, phase by phase, through the library's public
//! API: cookie → session id → store key (SHA-256) → memory-store lookup → token
//! decryption → the whole `authorize` phase → request rewrite → route match.
//!
//!     cargo bench --bench hot_path                 # all (about 1 minute)
//!     cargo bench --bench hot_path -- authorize    # a filter
//!
//! The sessions hold realistic tokens (see `common::tokens`); the memory store holds
//! 100,000 of them so the lookup is not a cache-friendly toy. The SQLite store's load
//! is measured answered from its in-process cache and, for comparison, with the cache
//! off (a query on tokio's blocking pool).

mod common;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Request, header};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use portcullis::config::Config;
use portcullis::gateway::Gateway;
use portcullis::session::{SessionId, SqliteOptions, SqliteStore, Store, cookie};
use portcullis::upstream::RouteTable;
use portcullis::upstream::rewrite::{RewriteConfig, clean_response, rewrite_request};

const COOKIE_NAME: &str = "__Host-portcullis";
const POPULATION: u64 = 100_000;

fn config_toml(extra_routes: usize) -> String {
    let mut toml = String::from(
        r#"
[server]
listen = "127.0.0.1:0"
public_origin = "http://127.0.0.1:8080"

[oidc]
issuer = "http://127.0.0.1:9"
client_id = "bench"
client_secret = "bench-secret"

[session]
store = "memory"
keys = ["BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"]

[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:9100"
token = "user"
"#,
    );
    for i in 0..extra_routes {
        toml.push_str(&format!(
            "\n[[routes]]\nprefix = \"/svc{i}/v1\"\nupstream = \"http://127.0.0.1:{}/base\"\ntoken = \"none\"\nstrip_prefix = true\n",
            9200 + i
        ));
    }
    toml
}

fn config(extra_routes: usize) -> Config {
    Config::from_toml(&config_toml(extra_routes), []).expect("bench config")
}

/// What a browser sends with an SPA's `fetch('/api/…')`.
fn browser_headers(session_cookie: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |k: &'static str, v: &str| {
        h.append(k, HeaderValue::from_str(v).unwrap());
    };
    put("host", "app.example.com");
    put("connection", "keep-alive");
    put(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    );
    put("accept", "application/json, text/plain, */*");
    put("accept-language", "en-GB,en;q=0.9");
    put("accept-encoding", "gzip, deflate, br, zstd");
    put("referer", "https://app.example.com/dashboard");
    put("sec-fetch-site", "same-origin");
    put("sec-fetch-mode", "cors");
    put("sec-fetch-dest", "empty");
    put("x-csrf", "1");
    put(
        "cookie",
        &format!(
            "theme=dark; _ga=GA1.1.1234567890.1700000000; {COOKIE_NAME}={session_cookie}; lang=en-GB"
        ),
    );
    h
}

struct Fixture {
    gw: Arc<Gateway>,
    headers: HeaderMap,
    rewrite: RewriteConfig,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gw = Arc::new(rt.block_on(Gateway::new(config(0))).expect("gateway"));
    let mut id = None;
    for n in 0..POPULATION {
        let (sid, _) = common::now(gw.sessions.create(common::new_session(n))).unwrap();
        if n == POPULATION / 2 {
            id = Some(sid);
        }
    }
    let headers = browser_headers(&id.unwrap().to_cookie_value());
    let rewrite = gw.frontends.named("").unwrap().rewrite.clone();
    Fixture {
        gw,
        headers,
        rewrite,
    }
}

fn hot_path(c: &mut Criterion) {
    let f = fixture();
    let fe = f.gw.frontends.named("").unwrap().clone();
    let route_table = &fe.routes;
    let route = route_table.matching("/api/items/42").unwrap();
    let id = SessionId::parse(cookie::find(&f.headers, COOKIE_NAME).unwrap()).unwrap();
    let record = common::now(f.gw.sessions.load(&id, "")).unwrap().unwrap();

    c.bench_function("cookie: find + SessionId::parse", |b| {
        b.iter(|| {
            let value = cookie::find(black_box(&f.headers), COOKIE_NAME).unwrap();
            SessionId::parse(value).unwrap()
        })
    });
    c.bench_function("cookie: find + parse + key (SHA-256)", |b| {
        b.iter(|| {
            let value = cookie::find(black_box(&f.headers), COOKIE_NAME).unwrap();
            SessionId::parse(value).unwrap().key()
        })
    });
    c.bench_function("session: Sessions::load (memory, 100k sessions)", |b| {
        b.iter(|| common::now(f.gw.sessions.load(black_box(&id), "")).unwrap())
    });
    c.bench_function("session: MemoryStore get by key (100k sessions)", |b| {
        use portcullis::session::SessionStore;
        let key = id.key();
        b.iter(|| common::now(f.gw.sessions.store().get(black_box(&key))).unwrap())
    });
    c.bench_function("tokens: TokenCipher::open (sealed tokens)", |b| {
        // The gateway's key is [7; 32], as `common::cipher()`'s.
        let cipher = common::cipher();
        b.iter(|| {
            cipher
                .open(black_box(&record.sealed_tokens), record.key.as_bytes())
                .unwrap()
        })
    });
    c.bench_function("tokens: Sessions::open_tokens (decrypt + JSON)", |b| {
        b.iter(|| f.gw.sessions.open_tokens(black_box(&record)).unwrap())
    });
    c.bench_function(
        "authorize: proxy::authorize, user route (cookie..Bearer header)",
        |b| {
            b.iter(|| {
                common::now(portcullis::proxy::authorize(
                    &f.gw,
                    &fe,
                    route,
                    black_box(&f.headers),
                ))
                .unwrap()
            })
        },
    );

    let parts = Request::builder()
        .uri("/api/items/42?expand=owner&limit=20")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let mut parts = parts;
    parts.headers = f.headers.clone();
    let token = common::now(portcullis::proxy::authorize(&f.gw, &fe, route, &f.headers))
        .unwrap()
        .unwrap();
    let peer = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    c.bench_function("rewrite: rewrite_request (12 browser headers)", |b| {
        b.iter_batched(
            || (parts.clone(), token.clone()),
            |(mut p, t)| {
                rewrite_request(&mut p, route, Some(t), peer, &f.rewrite).unwrap();
                p
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("rewrite: clean_response (upstream headers)", |b| {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("68"));
        h.insert(
            header::DATE,
            HeaderValue::from_static("Mon, 01 Jun 2026 00:00:00 GMT"),
        );
        h.insert(header::SERVER, HeaderValue::from_static("nginx"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        b.iter_batched(
            || h.clone(),
            |mut h| {
                clean_response(&mut h);
                h
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("pipeline: authorize + rewrite_request", |b| {
        b.iter_batched(
            || parts.clone(),
            |mut p| {
                let t = common::now(portcullis::proxy::authorize(&f.gw, &fe, route, &p.headers))
                    .unwrap();
                rewrite_request(&mut p, route, t, peer, &f.rewrite).unwrap();
                p
            },
            BatchSize::SmallInput,
        )
    });

    let one = RouteTable::from_config(&config(0).routes).unwrap();
    let eleven = RouteTable::from_config(&config(10).routes).unwrap();
    c.bench_function("routes: matching, 1 route, hit", |b| {
        b.iter(|| one.matching(black_box("/api/items/42")).is_some())
    });
    c.bench_function("routes: matching, 11 routes, hit on the last", |b| {
        b.iter(|| eleven.matching(black_box("/api/items/42")).is_some())
    });
    c.bench_function("routes: matching, 11 routes, miss", |b| {
        b.iter(|| eleven.matching(black_box("/static/app.js")).is_some())
    });
}

/// Sessions in the SQLite benchmarks' file (created at login speed, so fewer).
const SQLITE_POPULATION: u64 = 2_000;

fn sqlite_load(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let open = |cache_size| {
        let options = SqliteOptions {
            cache_size,
            ..SqliteOptions::default()
        };
        let store = rt.block_on(SqliteStore::open_with(&path, options)).unwrap();
        common::sessions(Store::Sqlite(store))
    };
    let cached = open(SqliteOptions::DEFAULT_CACHE_SIZE);
    let ids: Vec<SessionId> = rt.block_on(async {
        let mut ids = Vec::new();
        for n in 0..SQLITE_POPULATION {
            ids.push(cached.create(common::new_session(n)).await.unwrap().0);
        }
        ids
    });
    let id = &ids[ids.len() / 2];
    c.bench_function("session: Sessions::load (sqlite, cached)", |b| {
        b.iter(|| common::now(cached.load(black_box(id), "")).unwrap())
    });
    let uncached = open(0);
    c.bench_function(
        "session: Sessions::load (sqlite, cache off: the file)",
        |b| b.iter(|| rt.block_on(uncached.load(black_box(id), "")).unwrap()),
    );
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = short();
    targets = hot_path, sqlite_load
}
criterion_main!(benches);
