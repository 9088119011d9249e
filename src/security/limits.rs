//! Rate limits: logins and callbacks per client network, and logins started per browser.
//!
//! **Networks, not addresses.** An IPv6 subscriber gets a whole /64 (often a /56 or
//! /48), so an address-keyed limit gives one attacker 2^64 budgets. Every per-client
//! limit here, and the per-network cap on pending logins, keys on
//! [`client_network`]: the IPv4 address, or the IPv6 /64 (an IPv4-mapped IPv6
//! address counts as its IPv4 address).
//!
//! **No login kill switch.** Pending logins are bounded three ways: the rate per
//! network (here), the pending logins one network may hold
//! (`security.pending_logins_per_network`), and a total that is a memory bound only:
//! when it is full the store evicts the oldest pending login of the heaviest network
//! ([`crate::session::PendingCaps`]). A flood from a few networks therefore meets
//! its own limits and pushes out its own logins, while a user on another network
//! keeps logging in. A client that sends no binding cookie meets all three.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;

use crate::error::ApiError;

pub struct Limits {
    login_by_network: DefaultKeyedRateLimiter<IpNet>,
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
            .unwrap_or_default();
        Self::with(per_minute, per_browser, window)
    }

    /// `per_minute` logins per network; `per_browser` logins per browser in `window`.
    fn with(per_minute: NonZeroU32, per_browser: NonZeroU32, window: Duration) -> Self {
        let window = window.max(Duration::from_secs(1));
        let browser_quota = Quota::with_period(window / per_browser.get())
            .unwrap_or(Quota::per_minute(per_browser))
            .allow_burst(per_browser);
        Self {
            login_by_network: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute)),
            login_by_browser: DefaultKeyedRateLimiter::keyed(browser_quota),
            checks: AtomicU64::new(0),
        }
    }

    fn housekeeping(&self) {
        // Keyed limiters keep a cell per key: forget idle ones now and then.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.login_by_network.retain_recent();
            self.login_by_browser.retain_recent();
        }
    }

    /// One more `/bff/login` or `/bff/callback` from this client network.
    pub fn check_login_network(&self, network: IpNet) -> Result<(), ApiError> {
        self.housekeeping();
        self.login_by_network
            .check_key(&network)
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                refused("client network", wait)
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

/// The network a client address stands for in limits: an IPv4 address alone (/32),
/// an IPv6 address's /64. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
/// dual-stack socket reports) is its IPv4 address.
pub fn client_network(ip: IpAddr) -> IpNet {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpNet::V4(ipnet::Ipv4Net::new(v4, 32).expect("32 is a valid prefix")),
        IpAddr::V6(v6) => IpNet::V6(
            ipnet::Ipv6Net::new(v6, 64)
                .expect("64 is a valid prefix")
                .trunc(),
        ),
    }
}

/// The client network of a login request, found by `bff::login_rate_limit` (from the
/// peer, or `X-Forwarded-For` from a trusted proxy) and handed to the login handler
/// as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientNetwork(pub IpNet);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_grouped_by_slash_64_and_ipv4_by_address() {
        let net = |s: &str| client_network(s.parse().unwrap()).to_string();
        // One /64, however the interface id is spelled.
        for same in [
            "2001:db8:1:2::1",
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
            "2001:0db8:0001:0002:abcd:0:0:1",
            "2001:DB8:1:2::dead:beef",
        ] {
            assert_eq!(net(same), "2001:db8:1:2::/64", "{same}");
        }
        // Neighbouring /64s are other networks.
        assert_eq!(net("2001:db8:1:3::1"), "2001:db8:1:3::/64");
        assert_eq!(net("2001:db8:1:1:ffff::1"), "2001:db8:1:1::/64");
        assert_eq!(net("::1"), "::/64");
        // IPv4: each address its own network; a mapped address is the IPv4 address.
        assert_eq!(net("203.0.113.7"), "203.0.113.7/32");
        assert_eq!(net("203.0.113.8"), "203.0.113.8/32");
        assert_eq!(net("::ffff:203.0.113.7"), "203.0.113.7/32");
        assert_eq!(net("::ffff:cb00:7107"), "203.0.113.7/32");
    }

    #[test]
    fn the_login_rate_limit_is_shared_by_a_slash_64() {
        let n = |n| NonZeroU32::new(n).unwrap();
        let limits = Limits::with(n(3), n(10), Duration::from_secs(600));
        let check = |s: &str| {
            limits
                .check_login_network(client_network(s.parse().unwrap()))
                .is_ok()
        };
        assert!(check("2001:db8:1:2::1"));
        assert!(check("2001:db8:1:2::2"));
        assert!(check("2001:db8:1:2:1:2:3:4"));
        // A fourth address of the same /64 shares its budget: refused.
        assert!(!check("2001:db8:1:2::ffff"));
        // Another /64, an IPv4 address: their own budgets.
        assert!(check("2001:db8:1:3::1"));
        assert!(check("192.0.2.1"));
        assert!(check("192.0.2.2"));
    }

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
