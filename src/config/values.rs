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
