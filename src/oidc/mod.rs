//! The OpenID Connect client: discovery, the JWKS cache, the authorization request,
//! the code exchange, ID token validation, userinfo, RP-initiated logout and token
//! revocation.
//!
//! Portcullis is a confidential client: it authenticates at the token endpoint and
//! is the only party that ever sees tokens. Provider calls go through `reqwest`;
//! JWT signatures through `jsonwebtoken` (aws-lc-rs). Only asymmetric algorithms from
//! an allow-list are accepted — never `none`, never an HMAC keyed with the client
//! secret. Every validation failure names what failed, for the log; the browser sees
//! only a generic `invalid_request`.

mod assertion;
mod discovery;
pub mod dpop;
mod jwks;
mod logout;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

pub use assertion::ClientKey;
pub use discovery::{ProviderMetadata, RevocationSource};
pub use dpop::DpopKey;
pub use jwks::JwksCache;
pub use logout::{BACKCHANNEL_LOGOUT_EVENT, LogoutRequest, check_logout_claims};
pub use tokens::{IdTokenClaims, TokenResponse};

use crate::config::{AuthMethod, OidcConfig, ParMode, Secret};

pub use crate::config::values::parse_asymmetric_algorithm;

/// Verifies and decodes a JWT with the first of `keys` that validates it (several
/// candidates exist when a token names no `kid`). The error is the last failure.
fn decode_with_any(
    token: &str,
    keys: &[jsonwebtoken::DecodingKey],
    validation: &jsonwebtoken::Validation,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut last_error = "no usable key".to_owned();
    for key in keys {
        match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token, key, validation,
        ) {
            Ok(data) => return Ok(data.claims),
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(last_error)
}

/// A failed exchange with the provider, by who is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// Network failure, timeout or a 5xx: the provider is unavailable; retry later.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The provider refused with an OAuth error (`invalid_grant`, …).
    #[error("provider refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        error: String,
        description: Option<String>,
    },
    /// The provider answered something that breaks the protocol.
    #[error("invalid provider response: {0}")]
    InvalidResponse(String),
    /// A token failed validation; the text says which check.
    #[error("invalid token: {0}")]
    InvalidToken(String),
}

impl OidcError {
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Self::Refused { error, .. } if error == "invalid_grant")
    }
}

impl From<reqwest::Error> for OidcError {
    /// Names the URL (without its query: tokens go in bodies and headers, but keep it
    /// short) and the whole cause ("tcp connect error: Connection refused"), so an
    /// operator sees which endpoint failed and why.
    fn from(e: reqwest::Error) -> Self {
        let url = e.url().map(|u| {
            let mut u = u.clone();
            u.set_query(None);
            u.set_fragment(None);
            u
        });
        let timeout = e.is_timeout();
        let e = e.without_url();
        let mut text = match &url {
            Some(u) => format!("{u}: {e}"),
            None => e.to_string(),
        };
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let part = c.to_string();
            if !text.contains(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
            cause = c.source();
        }
        if timeout && !text.contains("timed out") {
            text.push_str(" (timed out: see oidc.http_timeout)");
        }
        Self::Unavailable(text)
    }
}

/// The OAuth error body of a 4xx answer.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// The grant type of token exchange (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3: the token type of an OAuth 2.0 access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The OIDC client of one provider registration.
pub struct Oidc {
    issuer: String,
    /// `oidc.allowed_tenants` (Entra ID multi-tenant issuers).
    tenants: Vec<String>,
    client_id: String,
    client_secret: Option<Secret>,
    client_key: Option<ClientKey>,
    auth_method: AuthMethod,
    scopes: String,
    /// Sent in every authorization request: `audience` (Auth0) and the routes'
    /// `resource`s (RFC 8707 §2.1, `oidc.resource_at_login`).
    login_extra: Vec<(&'static str, String)>,
    redirect_uri: String,
    post_logout_redirect_uri: Option<String>,
    userinfo: bool,
    par: ParMode,
    /// DPoP-bound user tokens (RFC 9449), and the provider's latest DPoP nonce.
    dpop: bool,
    dpop_nonce: dpop::NonceSlot,
    require_logout_token_typ: bool,
    /// What the end-session request carries (`oidc.logout_hint`).
    logout_hint: crate::config::LogoutHint,
    algorithms: Vec<Algorithm>,
    skew: Duration,
    http: reqwest::Client,
    metadata: discovery::MetadataCache,
    jwks: JwksCache,
}

impl Oidc {
    pub fn new(config: &OidcConfig, redirect_uri: String) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .connect_timeout(config.http_timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let algorithms = config
            .id_token_algorithms
            .iter()
            .map(|a| {
                parse_asymmetric_algorithm(a)
                    .map_err(|e| format!("oidc.id_token_algorithms: {a}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            issuer: config.issuer.clone(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            client_key: match (&config.private_key_file, config.auth_method) {
                (Some(path), AuthMethod::PrivateKeyJwt) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        format!("oidc.private_key_file: cannot read {}: {e}", path.display())
                    })?;
                    Some(
                        ClientKey::from_pem(
                            &pem,
                            &config.private_key_alg,
                            config.private_key_id.clone(),
                        )
                        .map_err(|e| format!("oidc.private_key_file: {e}"))?,
                    )
                }
                _ => None,
            },
            auth_method: config.auth_method,
            scopes: config.scopes.join(" "),
            login_extra: config
                .audience
                .iter()
                .map(|a| ("audience", a.clone()))
                .collect(),
            redirect_uri,
            post_logout_redirect_uri: config
                .post_logout_redirect_uri
                .as_ref()
                .map(|u| u.to_string()),
            userinfo: config.userinfo,
            require_logout_token_typ: config.require_logout_token_typ,
            logout_hint: config.logout_hint,
            par: config.par,
            dpop: config.dpop,
            dpop_nonce: dpop::NonceSlot::default(),
            algorithms,
            skew: config.clock_skew,
            tenants: config.allowed_tenants.clone(),
            http: http.clone(),
            metadata: discovery::MetadataCache::new(
                config.revocation_endpoint.as_ref().map(|u| u.to_string()),
            ),
            jwks: JwksCache::new(http),
        })
    }

    /// Asks for these resources at every authorization request too (RFC 8707 §2.1).
    pub fn add_login_resources<'a>(&mut self, resources: impl IntoIterator<Item = &'a str>) {
        for r in resources {
            if !self
                .login_extra
                .iter()
                .any(|(k, v)| *k == "resource" && v == r)
            {
                self.login_extra.push(("resource", r.to_owned()));
            }
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Is `iss` this client's issuer: the configured one, or with a multi-tenant
    /// template issuer (Entra ID) the template filled with an allowed tenant?
    pub async fn is_own_issuer(&self, iss: &str) -> bool {
        if iss == self.issuer {
            return true;
        }
        match self.metadata.get_or_fetch(&self.http, &self.issuer).await {
            Ok(meta) if meta.issuer.contains(discovery::TENANT_PLACEHOLDER) => self
                .tenants
                .iter()
                .any(|t| meta.issuer.replace(discovery::TENANT_PLACEHOLDER, t) == iss),
            _ => false,
        }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn wants_userinfo(&self) -> bool {
        self.userinfo
    }

    /// Whether user tokens are DPoP-bound (`oidc.dpop`).
    pub fn dpop_enabled(&self) -> bool {
        self.dpop
    }

    /// The provider's metadata, fetched on first use and kept. Concurrent first uses
    /// share one fetch.
    pub async fn metadata(&self) -> Result<Arc<ProviderMetadata>, OidcError> {
        self.metadata.get_or_fetch(&self.http, &self.issuer).await
    }

    /// Whether metadata and keys have been loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.metadata.loaded() && self.jwks.loaded()
    }

    /// Fetches discovery and the JWKS now (startup, readiness, `portcullis check`).
    pub async fn load(&self) -> Result<Arc<ProviderMetadata>, OidcError> {
        let meta = self.metadata().await?;
        self.jwks.refresh(&meta.jwks_uri).await?;
        Ok(meta)
    }

    pub fn jwks(&self) -> &JwksCache {
        &self.jwks
    }

    /// The authorization request's parameters (code flow, PKCE S256, state, nonce,
    /// plus the login parameters the caller passes on).
    fn authorization_params(
        &self,
        state: &str,
        nonce: &str,
        code_challenge: &str,
        extra: &[(&'static str, String)],
    ) -> Vec<(&'static str, String)> {
        let mut params = vec![
            ("response_type", "code".to_owned()),
            ("client_id", self.client_id.clone()),
            ("redirect_uri", self.redirect_uri.clone()),
            ("scope", self.scopes.clone()),
            ("state", state.to_owned()),
            ("nonce", nonce.to_owned()),
            ("code_challenge", code_challenge.to_owned()),
            ("code_challenge_method", "S256".to_owned()),
        ];
        params.extend(self.login_extra.iter().cloned());
        params.extend(extra.iter().cloned());
        params
    }

    /// Refuses to run against a provider that lacks what the configuration demands.
    pub fn check_requirements(&self, meta: &ProviderMetadata) -> Result<(), String> {
        if self.par == ParMode::Always && meta.pushed_authorization_request_endpoint.is_none() {
            return Err("oidc.par: \"always\", but the provider advertises no pushed_authorization_request_endpoint".into());
        }
        if self.dpop
            && let Some(algs) = &meta.dpop_signing_alg_values_supported
            && !algs.iter().any(|a| a == "ES256")
        {
            return Err(format!(
                "oidc.dpop: the provider's DPoP algorithms {algs:?} don't include ES256"
            ));
        }
        Ok(())
    }

    /// `oidc.par = "always"` can't be checked without the provider: it must be up at start.
    pub fn requires_provider_at_start(&self) -> bool {
        self.par == ParMode::Always
    }

    /// Whether logins go through a pushed authorization request (RFC 9126).
    pub fn uses_par(&self, meta: &ProviderMetadata) -> bool {
        match self.par {
            ParMode::Never => false,
            ParMode::Always => true,
            ParMode::Auto => meta.pushed_authorization_request_endpoint.is_some(),
        }
    }

    /// Where to send the browser to log in. With PAR the parameters are pushed to the
    /// provider first, and only `client_id` and `request_uri` travel through the browser.
    pub async fn authorization_redirect(
        &self,
        meta: &ProviderMetadata,
        state: &str,
        nonce: &str,
        code_challenge: &str,
        extra: &[(&'static str, String)],
    ) -> Result<String, OidcError> {
        let params = self.authorization_params(state, nonce, code_challenge, extra);
        let mut url =
            url::Url::parse(&meta.authorization_endpoint).expect("validated at discovery");
        if !self.uses_par(meta) {
            url.query_pairs_mut()
                .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
            return Ok(url.into());
        }
        let endpoint = meta
            .pushed_authorization_request_endpoint
            .as_deref()
            .ok_or_else(|| {
                OidcError::InvalidResponse(
                    "oidc.par = \"always\" but the provider has no PAR endpoint".into(),
                )
            })?;
        let mut form: Vec<(&'static str, String)> = params
            .into_iter()
            .filter(|(k, _)| *k != "client_id")
            .collect();
        let request = self.authenticate(
            self.http
                .post(endpoint)
                .header("accept", "application/json"),
            &mut form,
        );
        let form = if form.iter().any(|(k, _)| *k == "client_id") {
            form
        } else {
            let mut f = form;
            f.push(("client_id", self.client_id.clone()));
            f
        };
        #[derive(Deserialize)]
        struct Pushed {
            request_uri: String,
        }
        let pushed: Pushed = parse_json_answer(request.form(&form).send().await?).await?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("request_uri", &pushed.request_uri);
        Ok(url.into())
    }

    /// Adds client authentication to a request to the token, PAR or revocation endpoint.
    fn authenticate(
        &self,
        request: reqwest::RequestBuilder,
        form: &mut Vec<(&'static str, String)>,
    ) -> reqwest::RequestBuilder {
        let secret = self
            .client_secret
            .as_ref()
            .map(Secret::expose)
            .unwrap_or_default();
        match self.auth_method {
            AuthMethod::ClientSecretBasic => {
                // RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
                let id: String =
                    form_urlencoded::byte_serialize(self.client_id.as_bytes()).collect();
                let secret: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
                request.basic_auth(id, Some(secret))
            }
            AuthMethod::ClientSecretPost => {
                form.push(("client_id", self.client_id.clone()));
                form.push(("client_secret", secret.to_owned()));
                request
            }
            AuthMethod::PrivateKeyJwt => {
                form.push(("client_id", self.client_id.clone()));
                if let Some(key) = &self.client_key {
                    match key.assertion(&self.client_id, &self.issuer) {
                        Ok(jwt) => {
                            form.push((
                                "client_assertion_type",
                                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                            ));
                            form.push(("client_assertion", jwt));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "client assertion could not be signed")
                        }
                    }
                }
                request
            }
        }
    }

    /// The client's public key as a JWK (private_key_jwt), to register at the provider.
    pub fn client_public_jwk(&self) -> Option<Result<serde_json::Value, String>> {
        self.client_key.as_ref().map(ClientKey::public_jwk)
    }

    async fn token_request(
        &self,
        form: Vec<(&'static str, String)>,
        timeout: Option<Duration>,
        dpop: Option<&DpopKey>,
    ) -> Result<TokenResponse, OidcError> {
        let meta = self.metadata().await?;
        let endpoint = match form.first().map(|(_, grant)| grant.as_str()) {
            Some("refresh_token") => "token_refresh",
            Some("client_credentials") => "token_client_credentials",
            Some(TOKEN_EXCHANGE) => "token_exchange",
            _ => "token_code",
        };
        let htu = match dpop {
            Some(_) => {
                Some(dpop::htu_of_url(&meta.token_endpoint).map_err(OidcError::InvalidResponse)?)
            }
            None => None,
        };
        // At most two tries: the second only when the provider asks for a DPoP nonce
        // (RFC 9449 §8), which it does before looking at the grant, so a refresh
        // token is not spent by the first.
        let (form, meta, htu) = (&form, &meta, &htu);
        // `?`: the request failed; what remains is the provider's answer.
        dpop::with_nonce_retry("provider", || async move {
            let mut request = self
                .http
                .post(&meta.token_endpoint)
                .header("accept", "application/json");
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            if let (Some(key), Some(htu)) = (dpop, htu) {
                let proof = key
                    .proof("POST", htu, self.dpop_nonce.get().as_deref(), None)
                    .map_err(|e| OidcError::InvalidResponse(format!("DPoP proof: {e}")))?;
                request = request.header(dpop::DPOP_HEADER, proof);
            }
            let mut form = form.clone();
            let request = self.authenticate(request, &mut form);
            let response =
                crate::telemetry::provider_call(endpoint, request.form(&form).send()).await?;
            let new_nonce = dpop.is_some() && self.dpop_nonce.update_from(response.headers());
            let status = response.status();
            let answer = parse_json_answer(response).await;
            let asked = new_nonce
                && status == reqwest::StatusCode::BAD_REQUEST
                && matches!(&answer, Err(OidcError::Refused { error, .. }) if error == "use_dpop_nonce");
            Ok::<_, OidcError>(dpop::Sent::of(answer, asked))
        })
        .await?
    }

    /// Checks the token type: `DPoP` when a proof was sent (a provider that answers
    /// `Bearer` did not bind the token, and Portcullis refuses the downgrade), else `Bearer`.
    fn check_token_type(tokens: &TokenResponse, dpop: bool) -> Result<(), OidcError> {
        if !dpop {
            return tokens.check_bearer();
        }
        if !tokens.token_type.eq_ignore_ascii_case("dpop") {
            tracing::error!(
                token_type = %tokens.token_type,
                "oidc.dpop: the provider did not bind the token to the DPoP key (is DPoP enabled for this client?); refusing the unbound token"
            );
            return Err(OidcError::InvalidResponse(format!(
                "token_type {:?} is not DPoP although a DPoP proof was sent",
                tokens.token_type
            )));
        }
        if tokens.access_token.is_empty() {
            return Err(OidcError::InvalidResponse("empty access_token".into()));
        }
        Ok(())
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    /// With `dpop`, the token is bound to that key (the session's).
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        dpop: Option<&DpopKey>,
    ) -> Result<TokenResponse, OidcError> {
        let tokens = self
            .token_request(
                vec![
                    ("grant_type", "authorization_code".into()),
                    ("code", code.into()),
                    ("redirect_uri", self.redirect_uri.clone()),
                    ("code_verifier", verifier.into()),
                ],
                None,
                dpop,
            )
            .await?;
        Self::check_token_type(&tokens, dpop.is_some())?;
        Ok(tokens)
    }

    /// Uses a refresh token. The caller must make sure a refresh token is sent once.
    ///
    /// `timeout` is deliberately separate from `oidc.http_timeout`: once a refresh
    /// request may have reached the provider, giving up on its answer risks losing a
    /// rotated refresh token (the next attempt would reuse the old one, and the
    /// provider would revoke the grant). So the refresh waits long for its answer,
    /// while the requests that need it wait only `http_timeout`.
    ///
    /// With `dpop` (the session's key), the new access token is bound to it again.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        timeout: Duration,
        dpop: Option<&DpopKey>,
    ) -> Result<TokenResponse, OidcError> {
        let tokens = self
            .token_request(
                vec![
                    ("grant_type", "refresh_token".into()),
                    ("refresh_token", refresh_token.into()),
                ],
                Some(timeout),
                dpop,
            )
            .await?;
        Self::check_token_type(&tokens, dpop.is_some())?;
        Ok(tokens)
    }

    /// A refresh-token grant for one API (a per-route user token): `resource`
    /// (RFC 8707) and/or `scope` narrow the new access token. The answer's refresh
    /// token, when the provider rotated it, is the session's only valid one from
    /// now on. Never DPoP (a route's own token goes as Bearer). `timeout` as in
    /// [`Self::refresh`].
    pub async fn refresh_for(
        &self,
        refresh_token: &str,
        resource: Option<&str>,
        scope: Option<&str>,
        timeout: Duration,
    ) -> Result<TokenResponse, OidcError> {
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token.to_owned()),
        ];
        if let Some(resource) = resource {
            form.push(("resource", resource.to_owned()));
        }
        if let Some(scope) = scope {
            form.push(("scope", scope.to_owned()));
        }
        let tokens = self.token_request(form, Some(timeout), None).await?;
        tokens.check_bearer()?;
        Ok(tokens)
    }

    /// Token exchange (RFC 8693 §2.1): the session's access token (`subject_token`,
    /// of type `access_token`) for an access token for `audience` / `resource` /
    /// `scope`. The answer must say it issued an access token (§2.2.1
    /// `issued_token_type`) of type Bearer.
    pub async fn exchange_token(
        &self,
        subject_token: &str,
        audience: Option<&str>,
        resource: Option<&str>,
        scope: Option<&str>,
    ) -> Result<TokenResponse, OidcError> {
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE.to_owned()),
            ("subject_token", subject_token.to_owned()),
            ("subject_token_type", ACCESS_TOKEN_TYPE.to_owned()),
            ("requested_token_type", ACCESS_TOKEN_TYPE.to_owned()),
        ];
        if let Some(audience) = audience {
            form.push(("audience", audience.to_owned()));
        }
        if let Some(resource) = resource {
            form.push(("resource", resource.to_owned()));
        }
        if let Some(scope) = scope {
            form.push(("scope", scope.to_owned()));
        }
        let tokens = self.token_request(form, None, None).await?;
        match tokens.issued_token_type.as_deref() {
            Some(ACCESS_TOKEN_TYPE) => {}
            other => {
                return Err(OidcError::InvalidResponse(format!(
                    "token exchange issued_token_type {other:?}, not an access token"
                )));
            }
        }
        tokens.check_bearer()?;
        Ok(tokens)
    }

    /// Proves the client's credentials at the token endpoint (`portcullis check`):
    /// an authorization-code grant with a made-up code, the real redirect URI and a
    /// made-up PKCE verifier. Providers authenticate the client before they look at
    /// the grant (RFC 6749 §5.2), so bad credentials are answered `invalid_client`
    /// and good ones `invalid_grant` (no such code). Nothing is issued or spent.
    pub async fn probe_client_credentials(&self) -> Result<CredentialProbe, OidcError> {
        let made_up = || crate::primitives::random_token();
        let answer = self
            .token_request(
                vec![
                    ("grant_type", "authorization_code".into()),
                    ("code", made_up()),
                    ("redirect_uri", self.redirect_uri.clone()),
                    ("code_verifier", made_up()),
                ],
                None,
                None,
            )
            .await;
        Ok(match answer {
            Err(OidcError::Refused { error, .. }) if error == "invalid_grant" => {
                CredentialProbe::Accepted
            }
            // RFC 6749 §5.2: invalid_client, with 401 when the client used Basic.
            Err(OidcError::Refused { error, description })
                if error == "invalid_client" || error == "http_401" =>
            {
                CredentialProbe::Refused { error, description }
            }
            Err(OidcError::Refused { error, description }) => CredentialProbe::Unproven(format!(
                "the provider answered {error}{}",
                description.map(|d| format!(" ({d})")).unwrap_or_default()
            )),
            Err(e) => return Err(e),
            Ok(_) => CredentialProbe::Unproven(
                "the provider issued tokens for a made-up authorization code".into(),
            ),
        })
    }

    /// A client-credentials token (RFC 6749 §4.4), optionally for a scope and a
    /// resource (RFC 8707).
    pub async fn client_credentials(
        &self,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<TokenResponse, OidcError> {
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        if let Some(scope) = scope {
            form.push(("scope", scope.to_owned()));
        }
        if let Some(resource) = resource {
            form.push(("resource", resource.to_owned()));
        }
        // Client tokens are the gateway's own, not a session's: Bearer, never DPoP.
        let tokens = self.token_request(form, None, None).await?;
        tokens.check_bearer()?;
        Ok(tokens)
    }

    /// Validates an ID token (OIDC Core §3.1.3.7) and returns its claims.
    pub async fn validate_id_token(
        &self,
        id_token: &str,
        expected_nonce: &str,
    ) -> Result<IdTokenClaims, OidcError> {
        tokens::validate_id_token(self, id_token, expected_nonce).await
    }

    /// Validates the ID token a refresh returned before it may replace `previous`
    /// (OIDC Core §12.2): same user (`session_sub`), same login, newly issued.
    pub async fn validate_refreshed_id_token(
        &self,
        id_token: &str,
        previous: Option<&str>,
        session_sub: &str,
    ) -> Result<IdTokenClaims, OidcError> {
        tokens::validate_refreshed_id_token(self, id_token, previous, session_sub).await
    }

    /// Fetches userinfo with the access token. Its `sub` must equal the ID token's.
    /// A DPoP-bound token goes with a proof of `dpop` (and the provider's nonce).
    pub async fn userinfo(
        &self,
        access_token: &str,
        sub: &str,
        dpop: Option<&DpopKey>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
        let meta = self.metadata().await?;
        let Some(endpoint) = &meta.userinfo_endpoint else {
            return Ok(Default::default());
        };
        let htu = match dpop {
            Some(_) => Some(dpop::htu_of_url(endpoint).map_err(OidcError::InvalidResponse)?),
            None => None,
        };
        let htu = &htu;
        let response = dpop::with_nonce_retry("provider", || async move {
            let request = self.http.get(endpoint).header("accept", "application/json");
            let request = match (dpop, htu) {
                (Some(key), Some(htu)) => {
                    let proof = key
                        .proof(
                            "GET",
                            htu,
                            self.dpop_nonce.get().as_deref(),
                            Some(access_token),
                        )
                        .map_err(|e| OidcError::InvalidResponse(format!("DPoP proof: {e}")))?;
                    request
                        .header("authorization", format!("DPoP {access_token}"))
                        .header(dpop::DPOP_HEADER, proof)
                }
                _ => request.bearer_auth(access_token),
            };
            let response = crate::telemetry::provider_call("userinfo", request.send()).await?;
            let asked = dpop.is_some()
                && self
                    .dpop_nonce
                    .asked_by(response.status(), response.headers());
            Ok::<_, OidcError>(dpop::Sent::of(response, asked))
        })
        .await?;
        let claims: serde_json::Map<String, serde_json::Value> =
            parse_json_answer(response).await?;
        match claims.get("sub").and_then(|s| s.as_str()) {
            Some(s) if s == sub => Ok(claims),
            _ => Err(OidcError::InvalidResponse(
                "userinfo sub does not match the ID token".into(),
            )),
        }
    }

    /// The provider's end-session URL for RP-initiated logout, if it has one.
    /// `id_token` is the session's (validated when it was stored); whether it goes
    /// into the URL as `id_token_hint` is `oidc.logout_hint`'s choice.
    pub async fn end_session_url(&self, id_token: Option<&str>) -> Option<String> {
        let meta = self.metadata().await.ok()?;
        self.end_session_url_at(meta.end_session_endpoint.as_deref()?, id_token)
    }

    /// The end-session request (RP-Initiated Logout 1.0 §2) at `endpoint`, whose own
    /// query is kept. It always carries a fresh random `state`: the specification
    /// makes it optional, but some providers (Glewlwyd) send the browser back to
    /// `post_logout_redirect_uri` only with one. Portcullis keeps nothing to check it
    /// against — the session is already gone when the browser leaves — so it is a
    /// value that means nothing to anyone else, and costs nothing.
    ///
    /// With `oidc.logout_hint = "id_token_hint"` the ID token goes along as
    /// `id_token_hint`: it passes through the browser (the one token that does — it
    /// grants no access, but it names the user). With `"client_id"` it doesn't;
    /// `logout_hint` then carries the ID token's `login_hint` claim if it has one
    /// (Entra ID's optional claim of that name is made for this).
    fn end_session_url_at(&self, endpoint: &str, id_token: Option<&str>) -> Option<String> {
        use crate::config::LogoutHint;
        let mut url = url::Url::parse(endpoint).ok()?;
        {
            let mut q = url.query_pairs_mut();
            match (self.logout_hint, id_token) {
                (LogoutHint::IdTokenHint, Some(token)) => {
                    q.append_pair("id_token_hint", token);
                }
                (LogoutHint::ClientId, Some(token)) => {
                    let claims = tokens::unverified_claims(token).ok();
                    let hint = claims
                        .as_ref()
                        .and_then(|c| c.get("login_hint"))
                        .and_then(serde_json::Value::as_str)
                        .filter(|h| !h.is_empty());
                    if let Some(hint) = hint {
                        q.append_pair("logout_hint", hint);
                    }
                }
                (_, None) => {}
            }
            q.append_pair("client_id", &self.client_id);
            if let Some(uri) = &self.post_logout_redirect_uri {
                q.append_pair("post_logout_redirect_uri", uri);
            }
            q.append_pair("state", &crate::primitives::random_token());
        }
        Some(url.into())
    }

    pub fn post_logout_redirect_uri(&self) -> Option<&str> {
        self.post_logout_redirect_uri.as_deref()
    }

    /// Revokes a refresh token (RFC 7009) when the provider has a revocation endpoint.
    /// Returns `Ok(false)` when there is none.
    pub async fn revoke_refresh_token(&self, refresh_token: &str) -> Result<bool, OidcError> {
        let meta = self.metadata().await?;
        let Some(endpoint) = &meta.revocation_endpoint else {
            return Ok(false);
        };
        let mut form = vec![
            ("token", refresh_token.to_owned()),
            ("token_type_hint", "refresh_token".to_owned()),
        ];
        let request = self.authenticate(self.http.post(endpoint), &mut form);
        let response =
            crate::telemetry::provider_call("revocation", request.form(&form).send()).await?;
        let status = response.status();
        if status.is_success() {
            Ok(true)
        } else if status.is_server_error() {
            Err(OidcError::Unavailable(format!(
                "revocation answered {status}"
            )))
        } else {
            Err(error_from_body(status, response).await)
        }
    }
}

/// What [`Oidc::probe_client_credentials`] learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialProbe {
    /// The provider authenticated the client (it answered `invalid_grant`).
    Accepted,
    /// The provider refused the client's credentials (`invalid_client`).
    Refused {
        error: String,
        description: Option<String>,
    },
    /// Neither: the text says what the provider answered instead.
    Unproven(String),
}

/// Reads a JSON answer: 2xx → `T`; 4xx with an OAuth error → `Refused`; 5xx → `Unavailable`.
async fn parse_json_answer<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, OidcError> {
    let status = response.status();
    if status.is_server_error() {
        return Err(OidcError::Unavailable(format!("answered {status}")));
    }
    if !status.is_success() {
        return Err(error_from_body(status, response).await);
    }
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| OidcError::InvalidResponse(format!("malformed JSON: {e}")))
}

async fn error_from_body(status: reqwest::StatusCode, response: reqwest::Response) -> OidcError {
    match response.json::<ErrorBody>().await {
        Ok(body) => OidcError::Refused {
            error: body.error,
            description: body.error_description,
        },
        Err(_) => OidcError::Refused {
            error: format!("http_{}", status.as_u16()),
            description: None,
        },
    }
}

#[cfg(test)]
mod tests;
