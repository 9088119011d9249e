use std::sync::RwLock;
use std::time::Instant;

use axum::http::HeaderValue;

use crate::error::ApiError;
use crate::oidc::Oidc;

/// A cached client-credentials token for one (scopes, resource) pair, shared by
/// every route that asks for the same. Refreshed ahead of expiry, one fetch at a time.
pub struct ClientSlot {
    scope: Option<String>,
    resource: Option<String>,
    current: RwLock<Option<Cached>>,
    fetch: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Cached {
    header: HeaderValue,
    refresh_at: Instant,
    expires_at: Instant,
}

impl ClientSlot {
    pub fn new(scope: Option<String>, resource: Option<String>) -> Self {
        Self {
            scope,
            resource,
            current: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    pub fn matches(&self, scope: &Option<String>, resource: &Option<String>) -> bool {
        self.scope == *scope && self.resource == *resource
    }

    fn cached(&self) -> Option<Cached> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `Authorization` value for this slot's client token.
    pub async fn authorization(
        &self,
        oidc: &Oidc,
        refresh_before: std::time::Duration,
    ) -> Result<HeaderValue, ApiError> {
        if let Some(c) = self.cached().filter(|c| Instant::now() < c.refresh_at) {
            return Ok(c.header);
        }
        // Boxed: the provider call's future is large, and the cached answer above is
        // what nearly every request takes (see `proxy::proxy`).
        crate::primitives::pin_in_place(|| self.obtain(oidc, refresh_before)).await
    }

    /// The token from the provider, one fetch at a time.
    async fn obtain(
        &self,
        oidc: &Oidc,
        refresh_before: std::time::Duration,
    ) -> Result<HeaderValue, ApiError> {
        let _one_fetch = self.fetch.lock().await;
        if let Some(c) = self.cached().filter(|c| Instant::now() < c.refresh_at) {
            return Ok(c.header);
        }
        match oidc
            .client_credentials(self.scope.as_deref(), self.resource.as_deref())
            .await
        {
            Ok(response) => {
                let now = Instant::now();
                let lifetime =
                    std::time::Duration::from_secs(response.expires_in.unwrap_or(60).max(1) as u64);
                let ahead = refresh_before.min(lifetime / 2);
                let mut header = HeaderValue::try_from(format!("Bearer {}", response.access_token))
                    .map_err(|_| ApiError::Internal("client token is not a header value".into()))?;
                header.set_sensitive(true);
                let cached = Cached {
                    header: header.clone(),
                    refresh_at: now + lifetime - ahead,
                    expires_at: now + lifetime,
                };
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(cached);
                tracing::info!(
                    scope = self.scope.as_deref().unwrap_or(""),
                    "client token obtained"
                );
                Ok(header)
            }
            Err(e) => match self.cached().filter(|c| Instant::now() < c.expires_at) {
                Some(c) => {
                    tracing::warn!(error = %e, "client token refresh failed; using the current one");
                    Ok(c.header)
                }
                None => Err(ApiError::IdpUnavailable(format!("client credentials: {e}"))),
            },
        }
    }
}
