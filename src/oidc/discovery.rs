//! Provider metadata: OIDC Discovery 1.0, with the revocation endpoint completed
//! from RFC 8414 metadata when discovery lacks it (django-oauth-toolkit lists it only
//! there), or set by `oidc.revocation_endpoint`.

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
    /// RFC 7009. Completed from RFC 8414 metadata or `oidc.revocation_endpoint`;
    /// where it came from is `revocation_endpoint_source`.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(skip)]
    pub revocation_endpoint_source: RevocationSource,
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
    /// Grant types the provider supports (token exchange is checked by `portcullis check`).
    #[serde(default)]
    pub grant_types_supported: Option<Vec<String>>,
    /// The ACR values the provider supports (`None`: not advertised); `portcullis
    /// check` compares the routes' step-up `acr_values` with them.
    #[serde(default)]
    pub acr_values_supported: Option<Vec<String>>,
}

/// Where the revocation endpoint in use was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RevocationSource {
    /// Nowhere: refresh tokens are not revoked at logout.
    #[default]
    None,
    /// OIDC discovery (`/.well-known/openid-configuration`).
    Discovery,
    /// RFC 8414 authorization server metadata, at `url`.
    Rfc8414 { url: String },
    /// `oidc.revocation_endpoint`.
    Config,
}

impl RevocationSource {
    pub fn describe(&self) -> String {
        match self {
            Self::None => "not advertised".into(),
            Self::Discovery => "from OIDC discovery".into(),
            Self::Rfc8414 { url } => format!("from RFC 8414 metadata at {url}"),
            Self::Config => "from oidc.revocation_endpoint".into(),
        }
    }
}

/// The RFC 8414 metadata URLs to try for `issuer`, best first: the path-inserted
/// form of RFC 8414 §3.1 (`https://h/.well-known/oauth-authorization-server/tenant`),
/// then, for an issuer with a path, the appended form some providers serve instead
/// (`https://h/tenant/.well-known/oauth-authorization-server`, like OIDC discovery).
pub fn rfc8414_urls(issuer: &str) -> Vec<String> {
    const WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";
    let Ok(url) = url::Url::parse(issuer) else {
        return Vec::new();
    };
    let path = url.path().trim_end_matches('/');
    let mut origin = url.clone();
    origin.set_path("");
    origin.set_query(None);
    origin.set_fragment(None);
    let origin = origin.as_str().trim_end_matches('/').to_owned();
    let mut urls = vec![format!("{origin}{WELL_KNOWN}{path}")];
    if !path.is_empty() {
        urls.push(format!("{origin}{path}{WELL_KNOWN}"));
    }
    urls
}

/// What Portcullis reads from RFC 8414 metadata.
#[derive(Debug, Deserialize)]
struct AuthorizationServerMetadata {
    issuer: String,
    #[serde(default)]
    revocation_endpoint: Option<String>,
}

/// An endpoint URL from metadata must be absolute http(s).
fn is_endpoint_url(value: &str) -> bool {
    url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

impl ProviderMetadata {
    fn check(&self, issuer: &str) -> Result<(), OidcError> {
        // OIDC Discovery §4.3: the issuer in the document must be identical to the one asked.
        if self.issuer != issuer && !is_tenant_template_of(&self.issuer, issuer) {
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

/// The placeholder of a multi-tenant issuer (Entra ID).
pub const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// Is `template` (`https://login.microsoftonline.com/{tenantid}/v2.0`) the issuer
/// template of the configured `issuer` (`…/organizations/v2.0`, `…/common/v2.0`): the
/// same URL with one path segment in place of the placeholder? Entra's multi-tenant
/// discovery documents name such a template; ID tokens then carry their tenant's
/// issuer (checked against their `tid`, see `tokens::check_tenant`).
pub fn is_tenant_template_of(template: &str, issuer: &str) -> bool {
    let Some((before, after)) = template.split_once(TENANT_PLACEHOLDER) else {
        return false;
    };
    issuer
        .strip_prefix(before)
        .and_then(|rest| rest.strip_suffix(after))
        .is_some_and(|segment| !segment.is_empty() && !segment.contains(['/', '{', '}']))
}

/// Metadata fetched once and kept; a failed fetch is retried on the next use.
pub(super) struct MetadataCache {
    value: RwLock<Option<Arc<ProviderMetadata>>>,
    fetching: tokio::sync::Mutex<()>,
    /// `oidc.revocation_endpoint`, which wins over anything the provider says.
    revocation_endpoint: Option<String>,
}

impl MetadataCache {
    pub fn new(revocation_endpoint: Option<String>) -> Self {
        Self {
            value: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
            revocation_endpoint,
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
        let mut meta: ProviderMetadata =
            parse_json_answer(response).await.map_err(|e| match e {
                OidcError::Refused { error, .. } => {
                    OidcError::Unavailable(format!("discovery at {url}: {error}"))
                }
                other => other,
            })?;
        meta.check(issuer)?;
        if let Some(configured) = &self.revocation_endpoint {
            meta.revocation_endpoint = Some(configured.clone());
            meta.revocation_endpoint_source = RevocationSource::Config;
        } else if meta
            .revocation_endpoint
            .as_deref()
            .is_some_and(is_endpoint_url)
        {
            meta.revocation_endpoint_source = RevocationSource::Discovery;
        } else {
            meta.revocation_endpoint = None;
            if let Some((endpoint, url)) = rfc8414_revocation_endpoint(http, issuer).await {
                meta.revocation_endpoint = Some(endpoint);
                meta.revocation_endpoint_source = RevocationSource::Rfc8414 { url };
            }
        }
        let meta = Arc::new(meta);
        *self.value.write().unwrap_or_else(|p| p.into_inner()) = Some(meta.clone());
        Ok(meta)
    }
}

/// The revocation endpoint of the provider's RFC 8414 metadata, if it has one, and
/// the metadata's URL. Any failure (no such document, another issuer, not JSON)
/// means none: the login flow does not depend on it, so it is logged, not fatal.
async fn rfc8414_revocation_endpoint(
    http: &reqwest::Client,
    issuer: &str,
) -> Option<(String, String)> {
    for url in rfc8414_urls(issuer) {
        let answer = async {
            let response = crate::telemetry::provider_call(
                "discovery",
                http.get(&url).header("accept", "application/json").send(),
            )
            .await?;
            parse_json_answer::<AuthorizationServerMetadata>(response).await
        }
        .await;
        match answer {
            // RFC 8414 §3.3: the document must name the issuer asked for.
            Ok(doc) if doc.issuer != issuer => {
                tracing::warn!(url, named = %doc.issuer, "RFC 8414 metadata names another issuer; ignored");
            }
            Ok(doc) => match doc.revocation_endpoint {
                Some(endpoint) if is_endpoint_url(&endpoint) => {
                    tracing::info!(
                        url,
                        endpoint,
                        "revocation endpoint found in RFC 8414 metadata"
                    );
                    return Some((endpoint, url));
                }
                Some(_) => tracing::warn!(
                    url,
                    "RFC 8414 revocation_endpoint is not an http(s) URL; ignored"
                ),
                None => tracing::debug!(url, "RFC 8414 metadata has no revocation_endpoint"),
            },
            Err(e) => tracing::debug!(url, error = %e, "no RFC 8414 metadata here"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8414_urls_insert_the_issuer_path() {
        assert_eq!(
            rfc8414_urls("https://idp.example.com"),
            ["https://idp.example.com/.well-known/oauth-authorization-server"]
        );
        assert_eq!(
            rfc8414_urls("https://idp.example.com/"),
            ["https://idp.example.com/.well-known/oauth-authorization-server"]
        );
        assert_eq!(
            rfc8414_urls("http://127.0.0.1:9090"),
            ["http://127.0.0.1:9090/.well-known/oauth-authorization-server"]
        );
        assert_eq!(
            rfc8414_urls("https://idp.example.com/o/tenant1"),
            [
                "https://idp.example.com/.well-known/oauth-authorization-server/o/tenant1",
                "https://idp.example.com/o/tenant1/.well-known/oauth-authorization-server",
            ]
        );
        // A trailing slash of the issuer does not make an empty path segment.
        assert_eq!(
            rfc8414_urls("https://idp.example.com:8443/realms/main/"),
            [
                "https://idp.example.com:8443/.well-known/oauth-authorization-server/realms/main",
                "https://idp.example.com:8443/realms/main/.well-known/oauth-authorization-server",
            ]
        );
        assert!(rfc8414_urls("not a url").is_empty());
    }

    #[test]
    fn endpoint_urls() {
        assert!(is_endpoint_url("https://idp.example.com/revoke"));
        assert!(is_endpoint_url("http://127.0.0.1:1/revoke"));
        assert!(!is_endpoint_url(""));
        assert!(!is_endpoint_url("/revoke"));
        assert!(!is_endpoint_url("javascript:alert(1)"));
    }
}
