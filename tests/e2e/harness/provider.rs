//! The test OpenID provider: npm `oidc-provider`, started from
//! `demo/provider/provider.mjs` as a child process, and the test-only endpoints it
//! adds (grant counts, signing, revocation).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::{API_CLIENT_ID, API_CLIENT_SECRET, CLIENT_ID, repo_root, signal};

/// The test OpenID provider, a child process stopped on drop.
pub struct Provider {
    pub issuer: String,
    child: Child,
}

impl Provider {
    pub fn start(config: Value) -> Self {
        let root = repo_root();
        assert!(
            root.join("demo/provider/node_modules/oidc-provider")
                .is_dir(),
            "demo/provider/node_modules is missing: run ./scripts/test.sh (or `npm ci` in demo/provider)"
        );
        let mut child = Command::new("node")
            .arg(root.join("demo/provider/provider.mjs"))
            .env("PROVIDER_CONFIG", config.to_string())
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node must be installed to run the test provider");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = tx.send(issuer.trim().to_owned());
                }
            }
        });
        let issuer = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the test provider did not print READY within 20 s"));
        Self { issuer, child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The provider's discovery document.
    pub async fn discovery(&self) -> Value {
        reqwest::get(self.url("/.well-known/openid-configuration"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// RFC 7662 introspection as the API client: is this access token active?
    pub async fn introspect(&self, token: &str) -> Value {
        let endpoint = self.discovery().await["introspection_endpoint"]
            .as_str()
            .unwrap()
            .to_owned();
        introspect_at(&endpoint, token).await
    }

    /// Token endpoint grants of `client_id`, counted by the provider itself:
    /// `{"refresh_token": {"success": n, "error": m, "errors": {...}}, ...}`.
    pub async fn grants(&self, client_id: &str) -> Value {
        reqwest::get(self.url(&format!("/test/grants?client_id={client_id}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Successful grants of `client_id` by grant type and target (`resource` or
    /// `audience`), counted by the provider: `{"refresh_token": {"https://a/": 2}}`.
    pub async fn grants_by_target(&self, client_id: &str) -> Value {
        reqwest::get(self.url(&format!("/test/grants-by-target?client_id={client_id}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// How many grants of `grant_type` succeeded / failed for our client.
    pub async fn grant_count(&self, grant_type: &str) -> (u64, u64) {
        let g = self.grants(CLIENT_ID).await;
        (
            g[grant_type]["success"].as_u64().unwrap_or(0),
            g[grant_type]["error"].as_u64().unwrap_or(0),
        )
    }

    /// Freezes the provider (SIGSTOP): connections are accepted by the kernel but
    /// never answered — an unreachable, timing-out provider.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }

    /// Revokes every grant of `sub` at the provider (an administrator ends the user's access).
    pub async fn revoke_grants(&self, sub: &str) {
        let r = reqwest::Client::new()
            .post(self.url(&format!("/test/revoke-grants?sub={sub}")))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// `claims` signed with the provider's own signing key (RS256), `typ` in the
    /// header when given: a token shaped like another provider's.
    pub async fn sign(&self, claims: &Value, typ: Option<&str>) -> String {
        let answer: Value = reqwest::Client::new()
            .post(self.url("/test/sign"))
            .json(&json!({ "claims": claims, "typ": typ }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["jwt"].as_str().unwrap().to_owned()
    }

    /// From now on the ID tokens of refreshes have these claims replaced (`null`
    /// removes one), re-signed with the provider's key; `{}` turns it off.
    pub async fn tamper_refreshed_id_tokens(&self, claims: Value) {
        let r = reqwest::Client::new()
            .post(self.url("/test/refresh-id-token"))
            .json(&claims)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Every opaque token and code the provider issued for `sub`.
    pub async fn issued_values(&self, sub: &str) -> Vec<String> {
        let v: Value = reqwest::get(self.url(&format!("/test/issued?sub={sub}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_object()
            .unwrap()
            .values()
            .flat_map(|list| list.as_array().cloned().unwrap_or_default())
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        signal(self.child.id(), "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RFC 7662 introspection of `token` at `endpoint`, as the API client (what a test
/// API does with the bearer token it was sent).
pub async fn introspect_at(endpoint: &str, token: &str) -> Value {
    reqwest::Client::new()
        .post(endpoint)
        .basic_auth(API_CLIENT_ID, Some(API_CLIENT_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
