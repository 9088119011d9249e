//! The value parsers and constants `validate()` needs, kept here so `config` names no
//! module above it: the modules that use the values (`session`, `oidc`) take them
//! from here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;

/// The login-binding cookie's name without `[[frontends]]` (the contract's).
pub const LOGIN_COOKIE: &str = "__Host-portcullis-login";

/// Default of `session.sqlite_cache_size`.
pub const DEFAULT_SQLITE_CACHE_SIZE: usize = 100_000;

/// Decodes one configured session key: base64url (padding optional) of exactly 32 bytes.
pub fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .map_err(|_| "is not base64url".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("must be 32 bytes, is {}", bytes.len()))
}

/// Parses an algorithm name from the allow-list. Symmetric and `none` are refused.
pub fn parse_asymmetric_algorithm(name: &str) -> Result<Algorithm, &'static str> {
    let alg: Algorithm = name.parse().map_err(|_| "unknown algorithm")?;
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            Err("HMAC algorithms are not accepted (they would be keyed with the client secret)")
        }
        _ => Ok(alg),
    }
}

/// How the Redis URL addresses the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisAddress {
    /// `redis://[user:pass@]host:port[/db]` or `rediss://…` (TLS).
    Single(String),
    /// `redis+cluster://host:port,host:port` (or `rediss+cluster://`): seed nodes.
    Cluster(Vec<String>),
    /// `redis+sentinel://host:port,host:port/master_name[/db]` (or `rediss+sentinel://`).
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        db: i64,
        tls: bool,
    },
}

impl RedisAddress {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
        let split_hosts = |hosts: &str, tls: bool| -> Vec<String> {
            hosts
                .split(',')
                .map(|h| format!("{}://{h}", if tls { "rediss" } else { "redis" }))
                .collect()
        };
        match scheme {
            "redis" | "rediss" => {
                redis::parse_redis_url(url).ok_or("not a valid redis URL")?;
                Ok(Self::Single(url.to_owned()))
            }
            "redis+cluster" | "rediss+cluster" => {
                let hosts = rest.split('/').next().unwrap_or_default();
                if hosts.is_empty() {
                    return Err("names no node".into());
                }
                Ok(Self::Cluster(split_hosts(
                    hosts,
                    scheme.starts_with("rediss"),
                )))
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let mut parts = rest.splitn(3, '/');
                let hosts = parts.next().unwrap_or_default();
                let master = parts
                    .next()
                    .filter(|m| !m.is_empty())
                    .ok_or("names no master (…/master_name)")?;
                let db = parts
                    .next()
                    .map(|d| d.parse().map_err(|_| "db is not a number"))
                    .transpose()?
                    .unwrap_or(0);
                if hosts.is_empty() {
                    return Err("names no sentinel".into());
                }
                let tls = scheme.starts_with("rediss");
                Ok(Self::Sentinel {
                    sentinels: split_hosts(hosts, false),
                    master: master.to_owned(),
                    db,
                    tls,
                })
            }
            other => Err(format!(
                "unknown scheme {other:?} (redis, rediss, redis+cluster, redis+sentinel)"
            )),
        }
    }
}
