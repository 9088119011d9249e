//! The whole story against OpenID providers nobody here wrote: login, `/bff/user`, an
//! API call with a token the provider accepts, two refreshes (one under parallel load),
//! logout with revocation, end-session back to the SPA, and `prompt=none` without a
//! provider session.
//!
//! - django-oauth-toolkit 3.4 (`tests/providers/dot/`, in the venv `target/venv-dot`
//!   that scripts/test.sh makes from its requirements.txt): PKCE required, refresh
//!   tokens rotating with reuse protection, RP-initiated logout, and its revocation
//!   endpoint advertised only in RFC 8414 metadata.
//! - Glewlwyd 2.7 (Debian's `glewlwyd`, which scripts/test.sh installs;
//!   `tests/providers/glewlwyd/start.sh` plus its admin REST API): one-use refresh
//!   tokens, end-session through its logout page's REST calls (with `state`), and
//!   back-channel logout tokens typed `JWT`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::Value;

use crate::harness::*;

const USER: &str = "alice";
const PASSWORD: &str = "alice-dot-password";

// ---------------------------------------------------------------- django-oauth-toolkit

/// A django-oauth-toolkit provider of the test's own (fresh DB, fresh RSA key) on
/// `http://localhost:PORT`, stopped on drop.
struct Dot {
    issuer: String,
    child: Child,
    _data: tempfile::TempDir,
}

impl Dot {
    /// Starts DOT with the client [`CLIENT_ID`] registered for Portcullis at `origin`,
    /// issuing access tokens that live `access_token_ttl` seconds.
    async fn start(origin: &str, access_token_ttl: u64) -> Self {
        let root = repo_root();
        let python = root.join("target/venv-dot/bin/python");
        assert!(
            python.is_file(),
            "{} is missing: run ./scripts/test.sh (its prerequisites step makes the venv from \
             tests/providers/dot/requirements.txt)",
            python.display()
        );
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(&python)
            .arg(root.join("tests/providers/dot/serve.py"))
            .env("DOT_PORT", port.to_string())
            .env("DOT_DATA", data.path())
            .env("DOT_USER", USER)
            .env("DOT_PASSWORD", PASSWORD)
            .env("DOT_CLIENT_ID", CLIENT_ID)
            .env("DOT_CLIENT_SECRET", CLIENT_SECRET)
            .env("DOT_REDIRECT_URI", format!("{origin}/bff/callback"))
            .env("DOT_POST_LOGOUT_REDIRECT_URI", format!("{origin}/"))
            .env("DOT_ACCESS_TOKEN_TTL", access_token_ttl.to_string())
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python of target/venv-dot");
        let dot = Self {
            issuer: format!("http://localhost:{port}"),
            child,
            _data: data,
        };
        // Ready when discovery answers (migrate + runserver: a few seconds).
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = reqwest::get(dot.url("/.well-known/openid-configuration")).await
                && r.status() == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "django-oauth-toolkit did not answer discovery within 90 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        dot
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The refresh tokens DOT issued to our client, oldest first: (token, revoked).
    async fn refresh_tokens(&self) -> Vec<(String, bool)> {
        let v: Value =
            reqwest::get(self.url(&format!("/test/refresh-tokens?client_id={CLIENT_ID}")))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        v["refresh_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["token"].as_str().unwrap().to_owned(),
                    t["revoked"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    /// A `refresh_token` grant as our client, as an attacker holding the token would try.
    async fn refresh_grant(&self, refresh_token: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(self.url("/token/"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// DOT's userinfo with `access_token`: the provider's own word that the token is good.
    async fn userinfo(&self, access_token: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(self.url("/userinfo/"))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Dot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `<input type="hidden">` fields of an HTML page, unescaped.
fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    fn attr(tag: &str, name: &str) -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = tag[start..].find('"')?;
        Some(
            tag[start..start + len]
                .replace("&quot;", "\"")
                .replace("&#x27;", "'")
                .replace("&#39;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        )
    }
    html.split("<input")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            if !tag.contains("type=\"hidden\"") {
                return None;
            }
            Some((attr(tag, "name")?, attr(tag, "value").unwrap_or_default()))
        })
        .collect()
}

/// Signs in at DOT from an authorization URL as a person would: Django's login form,
/// then DOT's consent form ("Authorize") when it shows one. Returns the URL DOT
/// redirects back to (Portcullis's callback).
async fn dot_login(browser: &Browser, authorize_url: &str) -> String {
    let mut url = authorize_url.to_owned();
    for _ in 0..10 {
        let r = browser.get(&url).await;
        if r.status.is_redirection() {
            let next = resolve(&url, &r.location());
            if next.contains("/bff/callback") {
                return next;
            }
            url = next;
            continue;
        }
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let page = r.text();
        let mut form = hidden_inputs(&page);
        if page.contains("id=\"login-form\"") {
            form.push(("username".into(), USER.into()));
            form.push(("password".into(), PASSWORD.into()));
        } else if page.contains("id=\"authorizationForm\"") {
            form.push(("allow".into(), "Authorize".into()));
        } else {
            panic!("neither DOT's login nor its consent form at {url}: {page}");
        }
        // Both forms post back to the page's own URL.
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let posted = browser.post_form_sized(&url, &pairs).await;
        assert!(
            posted.status.is_redirection(),
            "POST {url}: {} {}",
            posted.status,
            posted.text()
        );
        let next = resolve(&url, &posted.location());
        if next.contains("/bff/callback") {
            return next;
        }
        url = next;
    }
    panic!("DOT's login did not come back to the callback");
}

// ---------------------------------------------------------------- Portcullis in front

/// Portcullis (with an admin listener for `/metrics`) in front of a provider, and an upstream.
struct Front {
    issuer: String,
    upstream: Upstream,
    gateway: Gateway,
    admin: u16,
}

/// Sleeps until just past the refresh point of an access token issued at `issued`
/// with a lifetime of `ttl` seconds (Portcullis refreshes at half its life).
async fn sleep_past_refresh_point(issued: Instant, ttl: u64) {
    tokio::time::sleep_until((issued + Duration::from_millis(ttl * 1000 / 2 + 500)).into()).await;
}

/// A free port for Portcullis and its public origin (the provider needs it first).
fn origin() -> (u16, String) {
    let port = free_port();
    (port, format!("http://127.0.0.1:{port}"))
}

impl Front {
    /// Portcullis on `port` for the provider at `issuer`, with `scopes` (TOML array).
    async fn start(port: u16, issuer: &str, scopes: &str) -> Self {
        let admin = free_port();
        let origin = format!("http://127.0.0.1:{port}");
        let upstream = Upstream::start().await;
        // No `oidc.revocation_endpoint`: Portcullis finds it (for DOT: in its RFC 8414
        // metadata only, its OIDC discovery has none).
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_origin = "{origin}"
admin_listen = "127.0.0.1:{admin}"
drain_timeout = "2s"

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = {scopes}
post_logout_redirect_uri = "{origin}/"

[session]
store = "memory"
keys = ["{key}"]

[[routes]]
prefix = "/api"
upstream = "{upstream}"
token = "user"
"#,
            key = random_key(),
            upstream = upstream.url(),
        );
        let gateway = Gateway::start(port, &config);
        Self {
            issuer: issuer.to_owned(),
            upstream,
            gateway,
            admin,
        }
    }

    fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    async fn api(&self, browser: &Browser, path: &str) -> Answer {
        browser.get_with(&self.url(path), &[("x-csrf", "1")]).await
    }

    /// `/bff/user` with the CSRF header.
    async fn user(&self, browser: &Browser) -> Answer {
        browser
            .get_with(&self.url("/bff/user"), &[("x-csrf", "1")])
            .await
    }

    /// A Portcullis counter from `/metrics` (`name{labels}`), 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.split(' ').next().unwrap().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// `revocations_total{outcome}` of Portcullis.
    async fn revocations(&self, outcome: &str) -> f64 {
        self.metric(&format!(
            "portcullis_revocations_total{{outcome=\"{outcome}\"}}"
        ))
        .await
    }

    /// The bearer token of the upstream's last request.
    fn last_bearer(&self) -> String {
        self.upstream.last().headers["authorization"]
            .to_str()
            .unwrap()
            .strip_prefix("Bearer ")
            .expect("a bearer token upstream")
            .to_owned()
    }

    /// `/bff/login?returnUrl=/app`: Portcullis sends the browser to the provider;
    /// returns the authorization URL.
    async fn begin_login(&self, browser: &Browser) -> String {
        let r = browser.get(&self.url("/bff/login?returnUrl=%2Fapp")).await;
        assert_eq!(r.status, 302, "{}", r.text());
        r.location()
    }

    /// The provider's redirect back: the callback sets the session cookie and sends
    /// the browser to `/app`.
    async fn finish_login(&self, browser: &Browser, callback: &str) {
        let r = browser.get(callback).await;
        assert_eq!(r.status, 302, "callback: {}", r.text());
        assert_eq!(r.location(), "/app");
        assert!(r.sets_cookie(COOKIE), "{:?}", r.set_cookies());
    }

    /// 12 API calls at once (at the refresh point): every one answered, and all 12
    /// carried the one same token upstream.
    async fn parallel_calls_share_one_token(&self, browser: &Browser) {
        let before = self.upstream.requests().len();
        let calls: Vec<_> = (0..12)
            .map(|i| {
                let (browser, url) = (browser.clone(), self.url(&format!("/api/parallel/{i}")));
                tokio::spawn(async move { browser.get_with(&url, &[("x-csrf", "1")]).await })
            })
            .collect();
        for call in calls {
            let r = call.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let mut used: Vec<String> = self.upstream.requests()[before..]
            .iter()
            .map(|s| s.headers["authorization"].to_str().unwrap().to_owned())
            .collect();
        assert_eq!(used.len(), 12);
        used.sort();
        used.dedup();
        assert_eq!(used.len(), 1, "all 12 calls carried the one new token");
    }

    /// `refreshes_total`: `success` successful refreshes, no `invalid_grant`.
    async fn assert_refreshes(&self, success: f64) {
        assert_eq!(
            self.metric("portcullis_refreshes_total{outcome=\"success\"}")
                .await,
            success
        );
        assert_eq!(
            self.metric("portcullis_refreshes_total{outcome=\"invalid_grant\"}")
                .await,
            0.0
        );
    }

    /// Logout through Portcullis (`/bff/user`'s logout URL); returns where it sends
    /// the browser: the provider's end-session URL.
    async fn logout(&self, browser: &Browser) -> String {
        let user = self.user(browser).await;
        let logout_url = user.json()["bff:logout_url"].as_str().unwrap().to_owned();
        let r = browser.get(&self.url(&logout_url)).await;
        assert_eq!(r.status, 302, "{}", r.text());
        r.location()
    }

    /// Revocation runs beside the logout's answer: waits (generously, 20 s) until
    /// Portcullis counts it revoked at `provider`; fails once it counts it
    /// unsupported or failed.
    async fn wait_revoked(&self, provider: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.revocations("revoked").await < 1.0 {
            let (unsupported, failed) = (
                self.revocations("unsupported").await,
                self.revocations("failed").await,
            );
            assert!(
                unsupported == 0.0 && failed == 0.0 && Instant::now() < deadline,
                "no revocation at {provider}: revocations_total unsupported = {unsupported}, failed = {failed}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/bff/login?prompt=none` and the provider's answer to it, followed until it
    /// comes back to the callback (no login form). Returns the callback URL.
    async fn silent_login(&self, browser: &Browser) -> String {
        let r = browser
            .get(&self.url("/bff/login?prompt=none&returnUrl=%2Fapp"))
            .await;
        assert_eq!(r.status, 302, "{}", r.text());
        let url = r.location();
        assert!(url.starts_with(&self.issuer), "{url}");
        browser.follow_to_callback(&url).await
    }

    /// A silent login without a provider session: DOT answers `login_required` and
    /// Portcullis sends the browser back to its `returnUrl`, not logged in.
    async fn assert_silent_login_is_not_logged_in(&self, browser: &Browser, error: &str) {
        let callback = self.silent_login(browser).await;
        assert_eq!(query(&callback)["error"], error, "{callback}");
        let back = browser.get(&callback).await;
        assert_eq!(back.status, 302, "{}", back.text());
        assert_eq!(back.location(), "/app");
        assert!(!back.sets_cookie(COOKIE), "{:?}", back.set_cookies());
        self.user(browser)
            .await
            .assert_error(401, "unauthenticated");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_oauth_toolkit_the_whole_story() {
    // 8 s access tokens: Portcullis refreshes at half their life, 4 s after issue (a
    // margin for a loaded machine between the login and the first checks).
    let ttl = 8;
    let (port, origin) = origin();
    let dot = Dot::start(&origin, ttl).await;
    let env = Front::start(port, &dot.issuer, r#"["openid", "profile", "email"]"#).await;

    // prompt=none in a browser that never signed in at DOT.
    env.assert_silent_login_is_not_logged_in(&Browser::new(), "login_required")
        .await;

    // Login: Portcullis → DOT's login form and consent → callback → the SPA.
    let browser = Browser::new();
    let authorize = env.begin_login(&browser).await;
    assert!(
        authorize.starts_with(&dot.url("/authorize/")),
        "{authorize}"
    );
    let q = query(&authorize);
    assert_eq!(q["code_challenge_method"], "S256", "{authorize}");
    let callback = dot_login(&browser, &authorize).await;
    assert!(query(&callback).contains_key("code"), "{callback}");
    env.finish_login(&browser, &callback).await;
    let logged_in = Instant::now();

    // /bff/user: DOT's claims, no token.
    let user = env.user(&browser).await;
    assert_eq!(user.status, 200, "{}", user.text());
    let claims = user.json();
    assert_eq!(claims["preferred_username"], USER, "{claims}");
    assert_eq!(claims["email"], "alice@example.com", "{claims}");
    let sub = claims["sub"].as_str().unwrap().to_owned();
    let text = user.text();
    assert!(!text.contains("access_token") && !text.contains("refresh_token"));

    // An API call carries an access token DOT itself accepts.
    let r = env.api(&browser, "/api/hello").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = env.last_bearer();
    let (status, info) = dot.userinfo(&first).await;
    assert_eq!(
        status, 200,
        "DOT's userinfo with the upstream's token: {info}"
    );
    assert_eq!(info["sub"], sub.as_str());
    assert_eq!(dot.refresh_tokens().await.len(), 1);

    // First refresh: past the refresh point, one call.
    sleep_past_refresh_point(logged_in, ttl).await;
    let r = env.api(&browser, "/api/after-first-refresh").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let second = env.last_bearer();
    assert_ne!(second, first, "a refreshed access token upstream");
    assert_eq!(dot.userinfo(&second).await.0, 200);
    let tokens = dot.refresh_tokens().await;
    assert_eq!(tokens.len(), 2, "one refresh: {tokens:?}");
    assert!(tokens[0].1, "DOT rotated (revoked) the first refresh token");
    assert_eq!(
        env.metric("portcullis_refreshes_total{outcome=\"success\"}")
            .await,
        1.0
    );
    let refreshed = Instant::now();

    // Second refresh, under parallel load: 12 calls at the refresh point, one refresh.
    sleep_past_refresh_point(refreshed, ttl).await;
    env.parallel_calls_share_one_token(&browser).await;
    let third = env.last_bearer();
    assert!(third != first && third != second);
    assert_eq!(dot.userinfo(&third).await.0, 200);
    let tokens = dot.refresh_tokens().await;
    assert_eq!(
        tokens.len(),
        3,
        "exactly one more refresh at DOT: {tokens:?}"
    );
    assert!(tokens[1].1 && !tokens[2].1, "{tokens:?}");
    env.assert_refreshes(2.0).await;
    // The session survived both refreshes (the refreshed ID tokens passed §12.2).
    assert_eq!(env.user(&browser).await.status, 200);

    // Logout: Portcullis revokes the refresh token at the endpoint DOT lists only in
    // its RFC 8414 metadata, before the browser even reaches DOT's end-session.
    let live = tokens[2].0.clone();
    let end_session = env.logout(&browser).await;
    assert!(
        end_session.starts_with(&dot.url("/logout/")),
        "{end_session}"
    );
    let q = query(&end_session);
    assert!(
        q.contains_key("id_token_hint") && q.contains_key("state"),
        "{end_session}"
    );
    assert_eq!(q["post_logout_redirect_uri"], env.url("/"));
    env.wait_revoked("DOT").await;
    let tokens = dot.refresh_tokens().await;
    assert!(
        tokens.iter().all(|(_, revoked)| *revoked),
        "every refresh token revoked at DOT: {tokens:?}"
    );
    let (status, answer) = dot.refresh_grant(&live).await;
    assert_eq!(
        status, 400,
        "the last refresh token is dead at DOT: {answer}"
    );
    assert_eq!(answer["error"], "invalid_grant", "{answer}");
    env.user(&browser)
        .await
        .assert_error(401, "unauthenticated");

    // End-session at DOT sends the browser back to the SPA, with our state.
    let r = browser.get(&end_session).await;
    assert_eq!(r.status, 302, "DOT's end-session: {}", r.text());
    let back = r.location();
    assert!(back.starts_with(&env.url("/")), "{back}");
    assert_eq!(query(&back).get("state"), q.get("state"), "{back}");

    // DOT's session is gone too: a silent login is a clean "not logged in".
    env.assert_silent_login_is_not_logged_in(&browser, "login_required")
        .await;
}

#[test]
fn hidden_inputs_reads_djangos_forms() {
    let html = r#"<form><input type="hidden" name="csrfmiddlewaretoken" value="abc">
        <input type="hidden" name="redirect_uri" value="http://x/cb?a=1&amp;b=&quot;2&quot;" id="id_redirect_uri">
        <input type="text" name="username"><input type="hidden" name="empty" value=""></form>"#;
    assert_eq!(
        hidden_inputs(html),
        vec![
            ("csrfmiddlewaretoken".into(), "abc".into()),
            ("redirect_uri".into(), "http://x/cb?a=1&b=\"2\"".into()),
            ("empty".into(), String::new()),
        ]
    );
}

// ---------------------------------------------------------------- Glewlwyd

const GLW_PASSWORD: &str = "alice-glewlwyd-password";

/// A Glewlwyd 2.7 of the test's own (`tests/providers/glewlwyd/start.sh`: fresh SQLite DB,
/// fresh RSA key) on `http://localhost:PORT`, configured through its admin REST API:
/// the OIDC plugin (`/api/oidc`, PKCE, one-use refresh tokens, revocation, session
/// management, front- and back-channel logout), the user `alice`, and the confidential
/// client [`CLIENT_ID`] for Portcullis at `origin`. Stopped on drop.
struct Glewlwyd {
    issuer: String,
    api: String,
    child: Child,
    data: tempfile::TempDir,
}

impl Glewlwyd {
    async fn start(origin: &str, access_token_ttl: u64) -> Self {
        let root = repo_root();
        assert!(
            Path::new("/usr/bin/glewlwyd").is_file(),
            "/usr/bin/glewlwyd is missing: run ./scripts/test.sh (its prerequisites step runs \
             apt-get install glewlwyd)"
        );
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(root.join("tests/providers/glewlwyd/start.sh"))
            .arg(port.to_string())
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bash for tests/providers/glewlwyd/start.sh");
        let base = format!("http://localhost:{port}");
        let glw = Self {
            issuer: format!("{base}/api/oidc"),
            api: format!("{base}/api"),
            child,
            data,
        };
        // The administrator, once Glewlwyd answers.
        let admin = Browser::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if reqwest::get(format!("{}/auth/scheme/", glw.api))
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Glewlwyd did not start within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        glw.json(
            &admin,
            Method::POST,
            "/auth/",
            &serde_json::json!({"username": "admin", "password": "password"}),
        )
        .await;
        let key = std::fs::read_to_string(glw.data.path().join("key.pem")).unwrap();
        let cert = std::fs::read_to_string(glw.data.path().join("public.pem")).unwrap();
        let mut parameters = serde_json::json!({
            "iss": glw.issuer,
            "jwt-type": "rsa", "jwt-key-size": "256", "key": key, "cert": cert,
            "access-token-duration": access_token_ttl,
            "refresh-token-duration": 3600, "code-duration": 600,
            "refresh-token-rolling": true, "refresh-token-one-use": "always",
            "allow-non-oidc": false,
            "auth-type-code-enabled": true, "auth-type-refresh-enabled": true,
            "auth-type-token-enabled": false, "auth-type-id-token-enabled": false,
            "auth-type-none-enabled": false, "auth-type-password-enabled": false,
            "auth-type-client-enabled": false, "auth-type-device-enabled": false,
        });
        let more = serde_json::json!({
            "scope": [], "additional-parameters": [], "claims": [],
            "subject-type": "public",
            "name-claim": "mandatory", "email-claim": "mandatory",
            "allowed-scope": ["openid"],
            "pkce-allowed": true, "pkce-method-plain-allowed": false,
            "introspection-revocation-allowed": true,
            "introspection-revocation-allow-target-client": true,
            "introspection-revocation-auth-scope": [],
            "session-management-allowed": true,
            "session-cookie-name": "GLEWLWYD2_OIDC_SID",
            "session-cookie-expiration": 3600,
            // Without it the logout page's session lookup answers 400.
            "front-channel-logout-allowed": true,
            "back-channel-logout-allowed": true,
            "jwks-show": true, "request-parameter-allow": false
        });
        parameters
            .as_object_mut()
            .unwrap()
            .extend(more.as_object().unwrap().clone());
        let plugin = serde_json::json!({
            "module": "oidc", "name": "oidc", "display_name": "OpenID Connect",
            "enabled": true, "parameters": parameters,
        });
        glw.json(&admin, Method::POST, "/mod/plugin/", &plugin)
            .await;
        glw.json(
            &admin,
            Method::POST,
            "/user/",
            &serde_json::json!({
                "username": USER, "password": GLW_PASSWORD, "name": "Alice",
                "email": "alice@example.com", "enabled": true, "scope": ["openid"]
            }),
        )
        .await;
        glw.json(
            &admin,
            Method::POST,
            "/client/",
            &serde_json::json!({
                "client_id": CLIENT_ID, "name": "Portcullis", "confidential": true,
                "password": CLIENT_SECRET, "enabled": true,
                "redirect_uri": [format!("{origin}/bff/callback")],
                "authorization_type": ["code", "refresh_token"],
                "token_endpoint_auth_method": ["client_secret_basic"],
                // Plural: what end-session reads (start.sh adds it to the data format).
                "post_logout_redirect_uris": [format!("{origin}/")],
                "backchannel_logout_uri": format!("{origin}/bff/backchannel-logout"),
                "backchannel_logout_session_required": "true"
            }),
        )
        .await;
        let d = reqwest::get(glw.url("/.well-known/openid-configuration"))
            .await
            .unwrap();
        assert_eq!(d.status(), 200, "Glewlwyd's discovery");
        glw
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// A JSON request to Glewlwyd's REST API (`/api…`) as `browser`; asserts 200.
    async fn json(&self, browser: &Browser, method: Method, path: &str, body: &Value) -> Answer {
        let url = format!("{}{path}", self.api);
        let r = browser
            .send_body(
                method,
                &url,
                &[("content-type", "application/json")],
                Some(reqwest::Body::from(body.to_string())),
            )
            .await;
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        r
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.data.path().join("glewlwyd.db")).unwrap()
    }

    /// Whether each refresh token Glewlwyd issued to our client is still enabled, oldest first.
    fn refresh_tokens(&self) -> Vec<bool> {
        let db = self.db();
        let mut q = db
            .prepare("SELECT gpor_enabled FROM gpo_refresh_token WHERE gpor_client_id = ?1 ORDER BY gpor_id")
            .unwrap();
        q.query_map([CLIENT_ID], |row| row.get::<_, i64>(0))
            .unwrap()
            .map(|e| e.unwrap() == 1)
            .collect()
    }

    /// The `sid` of the last ID token Glewlwyd issued (its OIDC session).
    fn last_sid(&self) -> String {
        self.db()
            .query_row(
                "SELECT gpoi_sid FROM gpo_id_token ORDER BY gpoi_id DESC LIMIT 1",
                [],
                |row| row.get(0),
            )
            .unwrap()
    }

    /// Glewlwyd's userinfo with `access_token`.
    async fn userinfo(&self, access_token: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(self.url("/userinfo"))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Signs in from an authorization URL as Glewlwyd's login page (a JS app) does:
    /// `POST /api/auth/` with the password, `PUT /api/auth/grant/{client}` (consent),
    /// then the authorization URL again with `g_continue`. Returns the callback URL.
    async fn login(&self, browser: &Browser, authorize_url: &str) -> String {
        let r = browser.get(authorize_url).await;
        assert_eq!(r.status, 302, "{}", r.text());
        assert!(r.location().contains("login.html"), "{}", r.location());
        self.json(
            browser,
            Method::POST,
            "/auth/",
            &serde_json::json!({"username": USER, "password": GLW_PASSWORD}),
        )
        .await;
        self.json(
            browser,
            Method::PUT,
            &format!("/auth/grant/{CLIENT_ID}"),
            &serde_json::json!({"scope": "openid"}),
        )
        .await;
        let r = browser.get(&format!("{authorize_url}&g_continue")).await;
        assert_eq!(r.status, 302, "{}", r.text());
        let callback = r.location();
        assert!(callback.contains("/bff/callback"), "{callback}");
        callback
    }

    /// Follows an end-session URL as Glewlwyd's logout page (the JS app at
    /// `login.html?prompt=end_session`) does: look up the session, delete it (which sends
    /// the back-channel logout tokens), end the Glewlwyd login, then go to the
    /// page's `callback_url`. Returns that URL.
    async fn end_session(&self, browser: &Browser, end_session_url: &str) -> String {
        let r = browser.get(end_session_url).await;
        assert_eq!(r.status, 302, "end_session: {}", r.text());
        let page = resolve(end_session_url, &r.location());
        let q = query(&page);
        assert_eq!(
            q.get("prompt").map(String::as_str),
            Some("end_session"),
            "{page}"
        );
        let sid = &q["sid"];
        // Glewlwyd honours post_logout_redirect_uri only with a `state`: without one the
        // page has no `post_redirect_to` and the browser stays on Glewlwyd.
        let post = q
            .get("post_redirect_to")
            .unwrap_or_else(|| panic!("Glewlwyd's logout page has nowhere to go back to: {page}"));
        let lookup = browser
            .get(&format!(
                "{}/oidc/session/{sid}/{CLIENT_ID}?post_redirect_to={}",
                self.api,
                form_urlencoded::byte_serialize(post.as_bytes()).collect::<String>()
            ))
            .await;
        assert_eq!(lookup.status, 200, "session lookup: {}", lookup.text());
        assert_eq!(lookup.json()["post_redirect_to"], post.as_str());
        let deleted = browser
            .send(
                Method::DELETE,
                &format!("{}/oidc/session/{sid}", self.api),
                &[],
                None,
            )
            .await;
        assert_eq!(deleted.status, 200, "{}", deleted.text());
        let ended = browser
            .send(Method::DELETE, &format!("{}/auth/", self.api), &[], None)
            .await;
        assert_eq!(ended.status, 200, "{}", ended.text());
        // Its logout page sends the browser on only with a `callback_url`.
        q.get("callback_url")
            .unwrap_or_else(|| panic!("Glewlwyd's logout page has nowhere to go back to: {page}"))
            .clone()
    }
}

impl Drop for Glewlwyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glewlwyd_the_whole_story_with_back_channel_logout() {
    let ttl = 8;
    let (port, origin) = origin();
    let glw = Glewlwyd::start(&origin, ttl).await;
    let env = Front::start(port, &glw.issuer, r#"["openid"]"#).await;

    // prompt=none without a Glewlwyd session: `interaction_required`, not logged in.
    env.assert_silent_login_is_not_logged_in(&Browser::new(), "interaction_required")
        .await;

    // Login through Glewlwyd's REST login (what its JS login page does).
    let browser = Browser::new();
    let authorize = env.begin_login(&browser).await;
    assert!(authorize.starts_with(&glw.url("/auth")), "{authorize}");
    assert_eq!(query(&authorize)["code_challenge_method"], "S256");
    let callback = glw.login(&browser, &authorize).await;
    env.finish_login(&browser, &callback).await;
    let logged_in = Instant::now();

    let user = env.user(&browser).await;
    assert_eq!(user.status, 200, "{}", user.text());
    let claims = user.json();
    assert_eq!(claims["name"], "Alice", "{claims}");
    let sub = claims["sub"].as_str().unwrap().to_owned();

    let r = env.api(&browser, "/api/hello").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = env.last_bearer();
    let (status, info) = glw.userinfo(&first).await;
    assert_eq!(
        status, 200,
        "Glewlwyd's userinfo with the upstream's token: {info}"
    );
    assert_eq!(info["sub"], sub.as_str());
    assert_eq!(glw.refresh_tokens(), [true]);

    // Two refreshes, the second under 12 parallel calls.
    sleep_past_refresh_point(logged_in, ttl).await;
    let r = env.api(&browser, "/api/after-first-refresh").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let second = env.last_bearer();
    assert_ne!(second, first);
    assert_eq!(glw.userinfo(&second).await.0, 200);
    let refreshed = Instant::now();
    eprintln!(
        "GLW refresh tokens after refresh 1: {:?}",
        glw.refresh_tokens()
    );
    sleep_past_refresh_point(refreshed, ttl).await;
    env.parallel_calls_share_one_token(&browser).await;
    env.assert_refreshes(2.0).await;
    eprintln!(
        "GLW refresh tokens after refresh 2: {:?}",
        glw.refresh_tokens()
    );
    assert_eq!(env.user(&browser).await.status, 200);

    // Logout: revocation at Glewlwyd, then its end-session (with our state) back to the SPA.
    let end_session = env.logout(&browser).await;
    assert!(
        end_session.starts_with(&glw.url("/end_session")),
        "{end_session}"
    );
    let state = query(&end_session).get("state").cloned();
    env.wait_revoked("Glewlwyd").await;
    eprintln!(
        "GLW refresh tokens after logout: {:?}",
        glw.refresh_tokens()
    );
    assert!(
        glw.refresh_tokens().iter().all(|enabled| !enabled),
        "every refresh token disabled at Glewlwyd: {:?}",
        glw.refresh_tokens()
    );
    env.user(&browser)
        .await
        .assert_error(401, "unauthenticated");
    let back = glw.end_session(&browser, &end_session).await;
    assert!(back.starts_with(&env.url("/")), "{back}");
    assert!(state.is_some(), "the end-session request carries a state");
    assert_eq!(query(&back).get("state"), state.as_ref(), "{back}");
    env.assert_silent_login_is_not_logged_in(&browser, "interaction_required")
        .await;

    // Back-channel logout: a new login, ended at Glewlwyd only. Its logout token
    // (`typ: JWT`) reaches Portcullis, which ends the SPA's session.
    let authorize = env.begin_login(&browser).await;
    let callback = glw.login(&browser, &authorize).await;
    assert_eq!(browser.get(&callback).await.status, 302);
    assert_eq!(env.user(&browser).await.status, 200);
    let sid = glw.last_sid();
    let deleted = browser
        .send(
            Method::DELETE,
            &format!("{}/oidc/session/{sid}", glw.api),
            &[],
            None,
        )
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.user(&browser).await.status == 200 {
        assert!(
            Instant::now() < deadline,
            "the back-channel logout did not end the session within 20 s: backchannel logouts {}",
            env.metric("portcullis_logouts_total{kind=\"backchannel\",outcome=\"success\"}")
                .await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.user(&browser)
        .await
        .assert_error(401, "unauthenticated");
}
