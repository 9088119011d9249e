use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::{OidcError, parse_json_answer};

/// How often an unknown `kid` may trigger a refetch of the JWKS: a flood of
/// forged tokens with random `kid`s can't turn Portcullis into a DoS on the provider.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// The provider's signing keys, refetched when a token names an unknown `kid`
/// (key rotation), at most once per [`MIN_REFETCH_INTERVAL`].
pub struct JwksCache {
    http: reqwest::Client,
    keys: RwLock<Option<Arc<JwkSet>>>,
    last_fetch: std::sync::Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
}

impl JwksCache {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            keys: RwLock::new(None),
            last_fetch: std::sync::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn loaded(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Arc<JwkSet>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fetches the JWKS now.
    pub async fn refresh(&self, jwks_uri: &str) -> Result<Arc<JwkSet>, OidcError> {
        let _one_fetch = self.fetching.lock().await;
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let response = crate::telemetry::provider_call(
            "jwks",
            self.http
                .get(jwks_uri)
                .header("accept", "application/json")
                .send(),
        )
        .await?;
        let set: JwkSet = parse_json_answer(response).await?;
        let set = Arc::new(set);
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(set.clone());
        Ok(set)
    }

    fn may_refetch(&self) -> bool {
        self.last_fetch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= MIN_REFETCH_INTERVAL)
    }

    /// The keys that may have signed a token with this header: the key named by `kid`
    /// (refetching the set once if it's unknown), or without `kid` every key usable
    /// with `alg`.
    pub async fn keys_for(
        &self,
        jwks_uri: &str,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<DecodingKey>, OidcError> {
        let set = match self.current() {
            Some(set) => set,
            None => self.refresh(jwks_uri).await?,
        };
        let found = select(&set, kid, alg);
        if !found.is_empty() {
            return Ok(found);
        }
        if kid.is_some() && self.may_refetch() {
            tracing::info!(
                kid = kid.unwrap_or_default(),
                "unknown key id, refetching the provider's JWKS"
            );
            let set = self.refresh(jwks_uri).await?;
            let found = select(&set, kid, alg);
            if !found.is_empty() {
                return Ok(found);
            }
        }
        Err(OidcError::InvalidToken(match kid {
            Some(kid) => format!("no provider key with kid {kid:?} for {alg:?}"),
            None => format!("no provider key for {alg:?}"),
        }))
    }
}

fn select(set: &JwkSet, kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
    set.keys
        .iter()
        .filter(|k| kid.is_none_or(|kid| k.common.key_id.as_deref() == Some(kid)))
        .filter(|k| usable_with(k, alg))
        .filter_map(|k| DecodingKey::from_jwk(k).ok())
        .collect()
}

fn usable_with(key: &Jwk, alg: Algorithm) -> bool {
    use jsonwebtoken::jwk::{AlgorithmParameters, PublicKeyUse};
    if matches!(key.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return false;
    }
    if let Some(key_alg) = key.common.key_algorithm
        && key_alg.to_string() != format!("{alg:?}")
    {
        return false;
    }
    matches!(
        (&key.algorithm, alg),
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (
            AlgorithmParameters::EllipticCurve(_),
            Algorithm::ES256 | Algorithm::ES384
        ) | (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
    )
}
