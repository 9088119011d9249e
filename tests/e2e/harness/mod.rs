//! The end-to-end harness: a real OpenID provider (npm `oidc-provider`, started from
//! `demo/provider/provider.mjs`), a real HTTP upstream that records what it receives,
//! the real `portcullis` binary, and a cookie-keeping "browser" with redirects off.
//!
//! ```ignore
//! let env = Env::builder().store("sqlite").start().await;
//! let browser = env.browser();
//! browser.login(&env, "alice", "alice", "/").await;
//! ```

//! One file a concern:
//! - [`provider`]: the OpenID provider (a node child process);
//! - [`upstream`]: the recording HTTP upstream;
//! - [`gateway`]: the `portcullis` process;
//! - [`redis`]: Redis server, Cluster and Sentinel (from tests/support/);
//! - [`env`]: [`Env`] and its builder, which start all of the above together;
//! - [`client`]: the cookie-keeping [`Browser`] and URL helpers;
//! - [`load`]: a storm of concurrent calls;
//! - [`signing`]: tokens the test signs itself.
//!
//! Test files `use crate::harness::*;`: everything public is re-exported here.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

mod client;
mod env;
mod gateway;
mod load;
mod provider;
mod redis;
mod signing;
mod upstream;

pub use client::*;
pub use env::*;
pub use gateway::*;
pub use load::*;
pub use provider::*;
pub use redis::*;
pub use signing::*;
pub use upstream::*;

pub const CLIENT_ID: &str = "portcullis-test";
pub const CLIENT_SECRET: &str = "portcullis-test-secret-0123456789";
pub const API_CLIENT_ID: &str = "test-api";
pub const API_CLIENT_SECRET: &str = "test-api-secret";
pub const COOKIE: &str = "__Host-portcullis";
/// The headers Chromium sends with a top-level navigation.
pub const NAVIGATE: &[(&str, &str)] = &[
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-dest", "document"),
    ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
];

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn random_key() -> String {
    portcullis::session::cipher::generate_key()
}
fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}
