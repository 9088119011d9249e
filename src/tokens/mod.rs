//! The token manager: hands out the access token a request should carry.
//!
//! This is where the token lifecycle lives: the user's token from the session, and
//! (as the lifecycle grows) refresh ahead of expiry — single-flight per session and
//! across instances — and client-credentials tokens. Callers ask for "the token of
//! this session"; they never look at expiry or refresh themselves.

use crate::error::ApiError;
use crate::session::{SessionRecord, Sessions, Tokens, now_secs};

/// The token manager.
pub struct TokenManager {}

impl TokenManager {
    pub fn new() -> Self {
        Self {}
    }

    /// The user's current tokens for `record`, or why there are none.
    ///
    /// An access token past its expiry is never forwarded: the session can't be
    /// used for API calls any more and the client gets `session_expired`.
    pub fn user_tokens(
        &self,
        sessions: &Sessions,
        record: &SessionRecord,
    ) -> Result<Tokens, ApiError> {
        let tokens = sessions.open_tokens(record).map_err(|e| {
            tracing::warn!(session = %record.key.log_label(), error = %e, "session tokens can't be opened");
            ApiError::SessionExpired
        })?;
        if tokens.access_expires_at.is_some_and(|t| t <= now_secs()) {
            return Err(ApiError::SessionExpired);
        }
        Ok(tokens)
    }
}

impl Default for TokenManager {
    fn default() -> Self {
        Self::new()
    }
}
