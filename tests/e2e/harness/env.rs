//! The environment a test starts: provider, upstream, one or more gateways, and
//! the store they share, configured together by [`EnvBuilder`].

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::Method;
use serde_json::{Value, json};

use super::{
    API_CLIENT_ID, API_CLIENT_SECRET, Answer, Browser, CLIENT_ID, CLIENT_SECRET, Gateway, Provider,
    RedisCluster, RedisSentinel, RedisServer, TestSigner, Upstream, free_port, random_key,
};

/// Provider + upstream + Portcullis, configured together.
pub struct Env {
    pub provider: Provider,
    pub upstream: Upstream,
    /// The first instance; its address is the public origin.
    pub gateway: Gateway,
    /// More instances behind the same public origin (as behind a load balancer).
    pub others: Vec<Gateway>,
    pub redis: Option<RedisServer>,
    /// With `store("redis-cluster")`: the real Redis Cluster the instances share.
    pub redis_cluster: Option<RedisCluster>,
    /// With `store("redis-sentinel")`: master, replica and three sentinels.
    pub redis_sentinel: Option<RedisSentinel>,
    pub key: String,
}

pub struct EnvBuilder {
    store: &'static str,
    instances: usize,
    userinfo: bool,
    access_token_ttl: u64,
    extra_routes: String,
    extra_session: String,
    extra_oidc: String,
    extra_tokens: String,
    extra_security: String,
    extra_server: String,
    static_dir: Option<PathBuf>,
    route_timeout: &'static str,
    auth_method: &'static str,
    extra_jwks: Vec<Value>,
    provider_options: serde_json::Map<String, Value>,
    client_key: Option<(Value, PathBuf)>,
    login_scopes: Option<String>,
}

impl Env {
    pub fn builder() -> EnvBuilder {
        EnvBuilder {
            store: "memory",
            instances: 1,
            userinfo: true,
            access_token_ttl: 300,
            extra_routes: String::new(),
            extra_session: String::new(),
            extra_oidc: String::new(),
            extra_tokens: String::new(),
            extra_security: String::new(),
            extra_server: String::new(),
            static_dir: None,
            route_timeout: "30s",
            auth_method: "client_secret_basic",
            extra_jwks: Vec::new(),
            provider_options: serde_json::Map::new(),
            client_key: None,
            login_scopes: None,
        }
    }

    pub fn browser(&self) -> Browser {
        Browser::new()
    }

    pub fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    /// POSTs a logout token to `/bff/backchannel-logout`, as a provider would.
    pub async fn backchannel_logout(&self, token: &str) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("logout_token", token)
            .finish();
        Browser::new()
            .send(
                Method::POST,
                &self.url("/bff/backchannel-logout"),
                &[("content-type", "application/x-www-form-urlencoded")],
                Some(Body::from(body)),
            )
            .await
    }
}

impl EnvBuilder {
    pub fn store(mut self, store: &'static str) -> Self {
        self.store = store;
        self
    }
    /// Several Portcullis instances on one Redis (or one SQLite file), behind one
    /// public origin.
    pub fn instances(mut self, n: usize) -> Self {
        self.instances = n;
        self
    }
    /// `oidc.scopes` instead of openid, profile, email, offline_access (a TOML array body).
    pub fn login_scopes(mut self, scopes: &str) -> Self {
        self.login_scopes = Some(scopes.to_owned());
        self
    }
    pub fn userinfo(mut self, on: bool) -> Self {
        self.userinfo = on;
        self
    }
    pub fn access_token_ttl(mut self, secs: u64) -> Self {
        self.access_token_ttl = secs;
        self
    }
    /// Extra `[[routes]]` TOML appended to the config; `{upstream}` stands for the
    /// test upstream's URL.
    pub fn routes(mut self, toml: &str) -> Self {
        self.extra_routes.push_str(toml);
        self
    }
    /// Extra lines in `[session]`.
    pub fn session(mut self, toml: &str) -> Self {
        self.extra_session.push_str(toml);
        self
    }
    /// Extra lines in `[oidc]`.
    pub fn oidc(mut self, toml: &str) -> Self {
        self.extra_oidc.push_str(toml);
        self
    }
    /// Extra lines in `[tokens]`.
    pub fn tokens(mut self, toml: &str) -> Self {
        self.extra_tokens.push_str(toml);
        self
    }
    pub fn static_dir(mut self, dir: &Path) -> Self {
        self.static_dir = Some(dir.to_owned());
        self
    }
    /// `private_key_jwt`: the client authenticates with `signer`'s key (PEM written
    /// to `dir`), registered at the provider by its public JWK; no client secret.
    pub fn private_key_jwt(mut self, signer: &TestSigner, dir: &Path) -> Self {
        let path = dir.join("client-key.pem");
        std::fs::write(&path, signer.private_pem()).unwrap();
        self.client_key = Some((signer.public_jwk(), path));
        self.auth_method = "private_key_jwt";
        self.extra_oidc.push_str(&format!(
            "private_key_file = {:?}\nprivate_key_alg = \"ES256\"\nprivate_key_id = {:?}\n",
            self.client_key.as_ref().unwrap().1.to_str().unwrap(),
            signer.kid
        ));
        self
    }

    /// No pushed authorization request: the parameters travel in the authorization
    /// URL, where a test can read (and an attacker could alter) them.
    pub fn plain_authorize(mut self) -> Self {
        self.extra_oidc.push_str("par = \"never\"\n");
        self
    }

    /// A setting of the test provider (see demo/provider/provider.mjs), e.g. `requirePAR`.
    pub fn provider_option(mut self, key: &str, value: Value) -> Self {
        self.provider_options.insert(key.to_owned(), value);
        self
    }

    /// Publishes `signer`'s public key in the provider's JWKS from the start.
    pub fn publish_key(mut self, signer: &TestSigner) -> Self {
        self.extra_jwks.push(signer.public_jwk());
        self
    }
    pub fn route_timeout(mut self, t: &'static str) -> Self {
        self.route_timeout = t;
        self
    }
    pub fn auth_method(mut self, m: &'static str) -> Self {
        self.auth_method = m;
        self
    }

    /// Extra lines in `[server]` (e.g. `admin_listen`).
    pub fn server(mut self, toml: &str) -> Self {
        self.extra_server.push_str(toml);
        self
    }

    /// Starts with extra lines in `[security]`.
    pub async fn start_with_security(mut self, toml: &str) -> Env {
        self.extra_security.push_str(toml);
        self.start().await
    }

    pub async fn start(self) -> Env {
        let port = free_port();
        let origin = format!("http://127.0.0.1:{port}");
        // The provider lives on `localhost`, Portcullis on `127.0.0.1`: two sites, as in production.
        let mut provider_config = json!({
            "port": 0,
            "host": "127.0.0.1",
            "issuerHost": "localhost",
            "accessTokenTTL": self.access_token_ttl,
            "extraJwks": self.extra_jwks,
            "clients": [
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "token_endpoint_auth_method": self.auth_method,
                    "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
                    "response_types": ["code"],
                    "redirect_uris": [format!("{origin}/bff/callback")],
                    "post_logout_redirect_uris": [format!("{origin}/")],
                    "backchannel_logout_uri": format!("{origin}/bff/backchannel-logout"),
                    "backchannel_logout_session_required": true
                },
                {
                    "client_id": API_CLIENT_ID,
                    "client_secret": API_CLIENT_SECRET,
                    "token_endpoint_auth_method": "client_secret_basic",
                    "grant_types": ["client_credentials"],
                    "response_types": [],
                    "redirect_uris": []
                }
            ]
        });
        if let Some((jwk, _)) = &self.client_key {
            let client = &mut provider_config["clients"][0];
            client.as_object_mut().unwrap().remove("client_secret");
            client["jwks"] = json!({ "keys": [jwk] });
            client["token_endpoint_auth_signing_alg"] = json!("ES256");
        }
        for (k, v) in &self.provider_options {
            provider_config[k] = v.clone();
        }
        let provider = Provider::start(provider_config);
        let redis = (self.store == "redis").then(RedisServer::persistent);
        let redis_cluster = (self.store == "redis-cluster").then(RedisCluster::start);
        let redis_sentinel = (self.store == "redis-sentinel").then(RedisSentinel::start);
        let redis_url = match (&redis, &redis_cluster, &redis_sentinel) {
            (Some(r), _, _) => r.url(),
            (_, Some(c), _) => c.url(),
            (_, _, Some(s)) => s.url(),
            _ => String::new(),
        };
        let upstream = Upstream::start().await;
        let key = random_key();
        let static_section = match &self.static_dir {
            Some(dir) => format!(
                "[static]\ndir = {:?}\nspa_fallback = true\n",
                dir.to_str().unwrap()
            ),
            None => String::new(),
        };
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:LISTEN_PORT"
public_origin = "{origin}"
drain_timeout = "5s"
{extra_server}

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
auth_method = "{auth_method}"
scopes = [{login_scopes}]
post_logout_redirect_uri = "{origin}/"
userinfo = {userinfo}
{extra_oidc}

[session]
store = "{store}"
redis_url = "{redis_url}"
sqlite_path = "sessions.db"
keys = ["{key}"]
{extra_session}

[tokens]
{extra_tokens}

[security]
{extra_security}

[[routes]]
prefix = "/api"
upstream = "{upstream}"
token = "user"
timeout = "{route_timeout}"

[[routes]]
prefix = "/public"
upstream = "{upstream}"
token = "none"
strip_prefix = true

[[routes]]
prefix = "/maybe"
upstream = "{upstream}"
token = "user_or_none"
{extra_routes}
{static_section}
"#,
            issuer = provider.issuer,
            auth_method = self.auth_method,
            login_scopes = self
                .login_scopes
                .as_deref()
                .unwrap_or(r#""openid", "profile", "email", "offline_access""#),
            userinfo = self.userinfo,
            extra_oidc = self.extra_oidc,
            store = if self.store.starts_with("redis-") {
                "redis"
            } else {
                self.store
            },
            extra_session = self.extra_session,
            extra_tokens = self.extra_tokens,
            extra_security = self.extra_security,
            extra_server = self.extra_server,
            upstream = upstream.url(),
            route_timeout = self.route_timeout,
            extra_routes = self.extra_routes.replace("{upstream}", &upstream.url()),
            redis_url = redis_url,
        );
        let gateway = Gateway::start(port, &config.replace("LISTEN_PORT", &port.to_string()));
        // With the SQLite store, the other instances share the first one's file (one host).
        let shared_file = format!(
            "sqlite_path = {:?}",
            gateway.dir.path().join("sessions.db").to_str().unwrap()
        );
        let config = config.replace("sqlite_path = \"sessions.db\"", &shared_file);
        let others = (1..self.instances)
            .map(|_| {
                let p = free_port();
                let mut g = Gateway::start(p, &config.replace("LISTEN_PORT", &p.to_string()));
                g.origin = format!("http://127.0.0.1:{p}");
                g
            })
            .collect();
        Env {
            provider,
            upstream,
            gateway,
            others,
            redis,
            redis_cluster,
            redis_sentinel,
            key,
        }
    }
}
