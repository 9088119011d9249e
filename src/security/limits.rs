//! Rate limits: logins and callbacks per client IP, and logins started per browser.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;

use crate::error::ApiError;
use crate::server::AppState;

pub struct Limits {
    login_by_ip: DefaultKeyedRateLimiter<IpAddr>,
    login_by_browser: DefaultKeyedRateLimiter<String>,
    checks: AtomicU64,
}

impl Limits {
    pub fn new(config: &crate::config::Config) -> Self {
        let per_minute =
            NonZeroU32::new(config.security.login_rate_per_minute).unwrap_or(NonZeroU32::MIN);
        let per_browser =
            NonZeroU32::new(config.security.pending_logins_per_browser).unwrap_or(NonZeroU32::MIN);
        let window = config
            .frontends
            .iter()
            .map(|f| f.oidc.pending_login_ttl)
            .max()
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        let browser_quota = Quota::with_period(window / per_browser.get())
            .unwrap_or(Quota::per_minute(per_browser))
            .allow_burst(per_browser);
        Self {
            login_by_ip: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute)),
            login_by_browser: DefaultKeyedRateLimiter::keyed(browser_quota),
            checks: AtomicU64::new(0),
        }
    }

    fn housekeeping(&self) {
        // Keyed limiters keep a cell per key: forget idle ones now and then.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.login_by_ip.retain_recent();
            self.login_by_browser.retain_recent();
        }
    }

    pub fn check_login_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.housekeeping();
        self.login_by_ip.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            refused("client IP", wait)
        })
    }

    /// One more login started by the browser with this binding (hash).
    pub fn check_browser(&self, binding: &str) -> Result<(), ApiError> {
        self.login_by_browser
            .check_key(&binding.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                refused("browser", wait)
            })
    }
}

fn refused(what: &str, wait: Duration) -> ApiError {
    super::audit_rate_limited(what);
    ApiError::RateLimited {
        retry_after_secs: wait.as_secs().max(1),
    }
}

/// The client's IP: the peer, or — when the peer is a trusted proxy — the last
/// address in `X-Forwarded-For` that isn't a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !super::is_trusted_proxy(trusted, Some(peer)) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !trusted.iter().any(|n| n.contains(ip)))
        .unwrap_or(peer)
}

/// Middleware on `/bff/login` and `/bff/callback`: per-IP rate limit.
pub async fn login_rate_limit(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(peer) = super::peer_ip(request.extensions()) {
        let ip = client_ip(
            peer,
            request.headers(),
            &state.gw.config.server.trusted_proxies,
        );
        if let Err(e) = state.gw.limits.check_login_ip(ip) {
            return e.into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7, 10.0.0.2".parse().unwrap(),
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("198.51.100.1".parse().unwrap(), &h, &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        let empty = HeaderMap::new();
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &empty, &trusted),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
