//! The stable JSON error of the interface contract, and who is at fault.
//!
//! Every failure a client can see is one [`ApiError`]. The variant decides the
//! status code and the `error` code; the detail goes to the log (never a token,
//! cookie or secret), the client gets only the stable code and a short text.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Put on a response by `ApiError::into_response`: which contract error it is (the
/// request layer counts it).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// The one not-found answer: a plain 404 that is never cached.
pub fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, "no-store")],
        "not found\n",
    )
        .into_response()
}

/// Who caused a failure: decides the status, the metric label and whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Provider,
    Upstream,
    Store,
    Internal,
}

/// What a `step_up_required` answer tells the SPA (its JSON adds these members).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    /// The ACR values asked for, space-separated (`null` when none).
    pub acr_values: Option<String>,
    /// The greatest age of the authentication asked for, seconds (`null` when none).
    pub max_age: Option<u64>,
    /// A ready `/bff/login?…&returnUrl=…` asking the provider for them.
    pub login_url: String,
    /// For the log: who asked (the route or its upstream) and why.
    pub detail: String,
}

/// A failure answered to the browser with the contract's JSON error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Malformed or unacceptable input (bad `returnUrl`, failed callback, wrong `sid`).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No session, or the cookie does not name a live session.
    #[error("not logged in")]
    Unauthenticated,
    /// The session existed but has ended (timeout, revoked grant).
    #[error("session expired")]
    SessionExpired,
    /// A CSRF defence refused the request; the text names which one.
    #[error("csrf check failed: {0}")]
    Csrf(&'static str),
    /// The request head is larger than `security.max_header_bytes` (431).
    #[error("request head too large")]
    HeadTooLarge,
    /// A method Portcullis never serves (`TRACE`, `TRACK`, `CONNECT`; 405 with `Allow`).
    #[error("method not allowed: {method}")]
    MethodNotAllowed {
        method: axum::http::Method,
        allow: &'static str,
    },
    /// The request is understood but not allowed (403): the provider refused the
    /// route's token (token exchange policy, `invalid_target`, `invalid_scope`), or a
    /// claim requirement of the route failed. Never a logout; the detail (logged)
    /// names the route and the provider's answer or the rule.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The route or its upstream (RFC 9470) wants a stronger or more recent
    /// authentication than the session's: the SPA sends the user to `login_url`.
    #[error("step-up required: {}", .0.detail)]
    StepUpRequired(Box<StepUp>),
    /// Too many requests from one client.
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    /// The upstream could not be reached or broke the connection.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream did not answer within the route's timeout.
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// The identity provider is unreachable, slow or answering 5xx.
    #[error("identity provider unavailable: {0}")]
    IdpUnavailable(String),
    /// The session store is unreachable.
    #[error("session store unavailable: {0}")]
    StoreUnavailable(String),
    /// A bug or an impossible state; logged in full, answered as 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(why: impl Into<String>) -> Self {
        Self::InvalidRequest(why.into())
    }

    /// The stable `error` code of the contract.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::HeadTooLarge => "invalid_request",
            Self::Unauthenticated => "unauthenticated",
            Self::SessionExpired => "session_expired",
            Self::Csrf(_) => "csrf",
            Self::Forbidden(_) => "forbidden",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::StepUpRequired(_) => "step_up_required",
            Self::RateLimited { .. } => "rate_limited",
            Self::UpstreamUnavailable(_) => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::IdpUnavailable(_) => "idp_unavailable",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unauthenticated | Self::SessionExpired | Self::StepUpRequired(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Csrf(_) => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::IdpUnavailable(_) | Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Self::InvalidRequest(_)
            | Self::HeadTooLarge
            | Self::Unauthenticated
            | Self::SessionExpired
            | Self::Csrf(_)
            | Self::Forbidden(_)
            | Self::MethodNotAllowed { .. }
            | Self::StepUpRequired(_)
            | Self::RateLimited { .. } => Fault::Client,
            Self::UpstreamUnavailable(_) | Self::UpstreamTimeout => Fault::Upstream,
            Self::IdpUnavailable(_) => Fault::Provider,
            Self::StoreUnavailable(_) => Fault::Store,
            Self::Internal(_) => Fault::Internal,
        }
    }

    /// The short text the client sees. Details stay in the log.
    fn description(&self) -> &str {
        match self {
            Self::InvalidRequest(why) => why,
            Self::HeadTooLarge => "the request headers are too large",
            Self::Unauthenticated => "no valid session",
            Self::SessionExpired => "the session has ended; log in again",
            Self::Csrf(why) => why,
            Self::Forbidden(_) => "this request is not allowed",
            Self::MethodNotAllowed { .. } => "this method is not allowed",
            Self::StepUpRequired(_) => {
                "a stronger or more recent authentication is required: log in again at login_url"
            }
            Self::RateLimited { .. } => "too many requests",
            Self::UpstreamUnavailable(_) => "the upstream service is unavailable",
            Self::UpstreamTimeout => "the upstream service did not answer in time",
            Self::IdpUnavailable(_) => "the identity provider is unavailable",
            Self::StoreUnavailable(_) => "the session store is unavailable",
            Self::Internal(_) => "internal error",
        }
    }
}

impl ApiError {
    /// Logs the failure with its detail, at the level its fault deserves (what
    /// `into_response` does; for answers that are not the JSON error, such as the
    /// redirect of a failed login navigation).
    pub fn log(&self) {
        match self.fault() {
            Fault::Client => tracing::info!(error = self.code(), detail = %self, "request refused"),
            Fault::Internal => {
                tracing::error!(error = self.code(), detail = %self, "request failed")
            }
            _ => tracing::warn!(error = self.code(), detail = %self, "request failed"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let mut body = serde_json::json!({
            "error": self.code(),
            "error_description": self.description(),
        });
        if let Self::StepUpRequired(step_up) = &self {
            body["acr_values"] = step_up.acr_values.clone().into();
            body["max_age"] = step_up.max_age.into();
            body["login_url"] = step_up.login_url.clone().into();
        }
        let mut response = (self.status(), axum::Json(body)).into_response();
        // For the request layer's metrics and audit events (`telemetry::request`).
        response.extensions_mut().insert(ErrorCode(self.code()));
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Self::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::MethodNotAllowed { allow, .. } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        response
    }
}
