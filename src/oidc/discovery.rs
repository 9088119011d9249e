use std::sync::{Arc, RwLock};

use serde::Deserialize;

use super::{OidcError, parse_json_answer};

/// The parts of the provider's discovery document Portcullis uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    #[serde(default)]
    pub pushed_authorization_request_endpoint: Option<String>,
    /// RFC 9207: the provider puts `iss` in authorization responses.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    pub backchannel_logout_supported: bool,
    #[serde(default)]
    pub backchannel_logout_session_supported: bool,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub require_pushed_authorization_requests: bool,
    /// OIDC prompt values the provider supports (when it says).
    #[serde(default)]
    pub prompt_values_supported: Option<Vec<String>>,
    /// RFC 9449 §5.1: the DPoP proof algorithms the provider accepts (when it says).
    #[serde(default)]
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
}

impl ProviderMetadata {
    fn check(&self, issuer: &str) -> Result<(), OidcError> {
        // OIDC Discovery §4.3: the issuer in the document must be identical to the one asked.
        if self.issuer != issuer {
            return Err(OidcError::InvalidResponse(format!(
                "discovery names issuer {:?}, configured is {:?}",
                self.issuer, issuer
            )));
        }
        for (name, value) in [
            ("authorization_endpoint", &self.authorization_endpoint),
            ("token_endpoint", &self.token_endpoint),
            ("jwks_uri", &self.jwks_uri),
        ] {
            url::Url::parse(value).map_err(|e| {
                OidcError::InvalidResponse(format!("discovery {name} is not a URL: {e}"))
            })?;
        }
        if !self.code_challenge_methods_supported.is_empty()
            && !self
                .code_challenge_methods_supported
                .iter()
                .any(|m| m == "S256")
        {
            return Err(OidcError::InvalidResponse(
                "provider does not support PKCE S256".into(),
            ));
        }
        Ok(())
    }
}

/// Metadata fetched once and kept; a failed fetch is retried on the next use.
pub(super) struct MetadataCache {
    value: RwLock<Option<Arc<ProviderMetadata>>>,
    fetching: tokio::sync::Mutex<()>,
}

impl MetadataCache {
    pub fn new() -> Self {
        Self {
            value: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn loaded(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Arc<ProviderMetadata>> {
        self.value.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn get_or_fetch(
        &self,
        http: &reqwest::Client,
        issuer: &str,
    ) -> Result<Arc<ProviderMetadata>, OidcError> {
        if let Some(meta) = self.current() {
            return Ok(meta);
        }
        let _one_fetch = self.fetching.lock().await;
        if let Some(meta) = self.current() {
            return Ok(meta);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let response = crate::telemetry::provider_call(
            "discovery",
            http.get(&url).header("accept", "application/json").send(),
        )
        .await?;
        let meta: ProviderMetadata = parse_json_answer(response).await.map_err(|e| match e {
            OidcError::Refused { error, .. } => {
                OidcError::Unavailable(format!("discovery at {url}: {error}"))
            }
            other => other,
        })?;
        meta.check(issuer)?;
        let meta = Arc::new(meta);
        *self.value.write().unwrap_or_else(|p| p.into_inner()) = Some(meta.clone());
        Ok(meta)
    }
}
