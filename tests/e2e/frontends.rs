//! Several frontends on one gateway (`[[frontends]]`): three SPAs, three OIDC
//! clients at the real provider, one shared store. Sessions stay within their
//! frontend: a cookie of one is never accepted by another, logout and back-channel
//! logout end only their own frontend's sessions.

use serde_json::{Value, json};

use crate::harness::*;

const SHOP: (&str, &str) = ("shop-bff", "shop-secret-0123456789abcdef");
const ADMIN: (&str, &str) = ("admin-bff", "admin-secret-0123456789abcdef");
const PARTNER: (&str, &str) = ("partner-bff", "partner-secret-0123456789abcdef");

struct Multi {
    _files: tempfile::TempDir,
    /// A key published in the provider's JWKS: tokens it signs verify as the provider's.
    signer: TestSigner,
    provider: Provider,
    upstream: Upstream,
    gateway: Gateway,
    /// `http://127.0.0.1:PORT`: the shop (root) and admin (`/admin`) frontends.
    origin: String,
    /// `http://localhost:PORT`: the partner frontend, chosen by its host.
    partner: String,
    /// The admin listener's port (`/metrics`).
    admin_port: u16,
}

impl Multi {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// The provider sends `client_id` a back-channel logout token for `sub`'s sessions.
    async fn provider_logs_out(&self, sub: &str, client_id: &str) {
        let sent: Value = reqwest::Client::new()
            .post(self.provider.url(&format!(
                "/test/backchannel-logout?sub={sub}&client_id={client_id}"
            )))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(sent["sent"].as_u64().unwrap() >= 1, "{sent}");
        assert_eq!(sent["failed"], 0, "{sent}");
    }

    fn partner_url(&self, path: &str) -> String {
        format!("{}{path}", self.partner)
    }

    /// Logs `user` in at the frontend whose `/bff` is `bff` (a full URL prefix),
    /// signing in afresh at the provider (`prompt=login`).
    async fn login(&self, browser: &Browser, bff: &str, user: &str) -> Answer {
        let r = browser.get(&format!("{bff}/bff/login?prompt=login")).await;
        assert_eq!(r.status, 302, "login: {}", r.text());
        let authorize = r.location();
        assert!(authorize.starts_with(&self.provider.issuer), "{authorize}");
        let callback = browser.provider_login(&authorize, user, user).await;
        assert!(
            callback.starts_with(&format!("{bff}/bff/callback?")),
            "{callback}"
        );
        browser.get(&callback).await
    }
}

fn client(id_secret: (&str, &str), origin: &str, prefix: &str) -> Value {
    json!({
        "client_id": id_secret.0,
        "client_secret": id_secret.1,
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [format!("{origin}{prefix}/bff/callback")],
        "post_logout_redirect_uris": [format!("{origin}{prefix}/")],
        "backchannel_logout_uri": format!("{origin}{prefix}/bff/backchannel-logout"),
        "backchannel_logout_session_required": true
    })
}

async fn start(store: &str) -> Multi {
    let port = free_port();
    let admin_port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let partner = format!("http://localhost:{port}");
    let signer = TestSigner::new("test-logout-key");
    let provider = Provider::start(json!({
        "extraJwks": [signer.public_jwk()],
        "port": 0,
        "host": "127.0.0.1",
        "issuerHost": "localhost",
        "accessTokenTTL": 300,
        "clients": [
            client(SHOP, &origin, ""),
            client(ADMIN, &origin, "/admin"),
            client(PARTNER, &partner, ""),
            // The resource server's own client, for introspection.
            {
                "client_id": API_CLIENT_ID,
                "client_secret": API_CLIENT_SECRET,
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["client_credentials"],
                "response_types": [],
                "redirect_uris": []
            },
        ]
    }));
    let upstream = Upstream::start().await;
    let files = tempfile::tempdir().unwrap();
    for (app, body) in [("shop", "<h1>shop</h1>"), ("admin", "<h1>admin</h1>")] {
        let dir = files.path().join(app);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), body).unwrap();
        std::fs::write(dir.join("app.js"), format!("// {app}")).unwrap();
    }
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_origin = "{origin}"
admin_listen = "127.0.0.1:{admin_port}"

# Shared by every frontend; each names its own client.
[oidc]
issuer = "{issuer}"
scopes = ["openid", "profile", "offline_access"]

[session]
store = "{store}"
sqlite_path = "sessions.db"
keys = ["{key}"]

[[frontends]]
name = "shop"
[frontends.oidc]
client_id = "{shop_id}"
client_secret = "{shop_secret}"
[[frontends.routes]]
prefix = "/api"
upstream = "{upstream}"
[frontends.static]
dir = "{files}/shop"

[[frontends]]
name = "admin"
path_prefix = "/admin"
[frontends.oidc]
client_id = "{admin_id}"
client_secret = "{admin_secret}"
[[frontends.routes]]
prefix = "/admin/api"
upstream = "{upstream}"
strip_prefix = true
[frontends.static]
dir = "{files}/admin"

[[frontends]]
name = "partner"
host = "localhost:{port}"
[frontends.oidc]
client_id = "{partner_id}"
client_secret = "{partner_secret}"
[[frontends.routes]]
prefix = "/api"
upstream = "{upstream}/partner"
"#,
        issuer = provider.issuer,
        key = random_key(),
        upstream = upstream.url(),
        files = files.path().display(),
        shop_id = SHOP.0,
        shop_secret = SHOP.1,
        admin_id = ADMIN.0,
        admin_secret = ADMIN.1,
        partner_id = PARTNER.0,
        partner_secret = PARTNER.1,
    );
    let gateway = Gateway::start(port, &config);
    Multi {
        _files: files,
        signer,
        provider,
        upstream,
        gateway,
        origin,
        partner,
        admin_port,
    }
}

const SHOP_COOKIE: &str = "__Host-portcullis-shop";
const ADMIN_COOKIE: &str = "__Host-portcullis-admin";
const PARTNER_COOKIE: &str = "__Host-portcullis-partner";

/// The client the provider issued an upstream call's access token to.
async fn token_client(env: &Multi) -> String {
    let seen = env.upstream.last();
    let bearer = seen.headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    let introspection = env.provider.introspect(&bearer).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    introspection["client_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn each_frontend_logs_in_with_its_own_client() {
    let env = start("memory").await;
    let browser = Browser::new();

    // Each /bff/login sends the browser to the provider as its own client (the
    // provider offers PAR, so the redirect URI went in the pushed request; the
    // callback URL of each login below shows it).
    for (bff, client_id) in [
        (env.url(""), SHOP.0),
        (env.url("/admin"), ADMIN.0),
        (env.partner_url(""), PARTNER.0),
    ] {
        let r = browser.get(&format!("{bff}/bff/login")).await;
        assert_eq!(r.status, 302, "{bff}: {}", r.text());
        let q = query(&r.location());
        assert_eq!(q["client_id"], client_id);
        assert!(q.contains_key("request_uri"), "PAR is used: {q:?}");
    }

    // Three logins in one browser: three sessions, three cookies.
    let shop = env.login(&browser, &env.url(""), "alice").await;
    assert_eq!(shop.status, 302, "{}", shop.text());
    assert_eq!(shop.location(), "/");
    assert!(shop.sets_cookie(SHOP_COOKIE), "{:?}", shop.set_cookies());
    // (One user: at the provider, another account in the same browser session would
    // need a logout confirmation first.)
    let admin = env.login(&browser, &env.url("/admin"), "alice").await;
    assert_eq!(admin.status, 302, "{}", admin.text());
    assert_eq!(admin.location(), "/admin/");
    assert!(admin.sets_cookie(ADMIN_COOKIE), "{:?}", admin.set_cookies());
    let partner = env.login(&browser, &env.partner_url(""), "alice").await;
    assert_eq!(partner.status, 302, "{}", partner.text());
    assert!(partner.sets_cookie(PARTNER_COOKIE));

    let csrf = [("x-csrf", "1")];
    let me = browser.get_with(&env.url("/bff/user"), &csrf).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["sub"], "alice");
    let shop_sid = me.json()["sid"].clone();
    let me = browser.get_with(&env.url("/admin/bff/user"), &csrf).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["sub"], "alice");
    assert_ne!(me.json()["sid"], shop_sid, "two sessions");
    let logout_url = me.json()["bff:logout_url"].as_str().unwrap().to_owned();
    assert!(
        logout_url.starts_with("/admin/bff/logout?sid="),
        "{logout_url}"
    );

    // Each route carries its own frontend's token, and no Portcullis cookie.
    let r = browser.get_with(&env.url("/api/orders"), &csrf).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.upstream.last().path_and_query, "/api/orders");
    assert_eq!(token_client(&env).await, SHOP.0);
    let r = browser.get_with(&env.url("/admin/api/users"), &csrf).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.upstream.last().path_and_query, "/users");
    assert_eq!(token_client(&env).await, ADMIN.0);
    let r = browser
        .get_with(&env.partner_url("/api/deals"), &csrf)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.upstream.last().path_and_query, "/partner/api/deals");
    assert_eq!(token_client(&env).await, PARTNER.0);
    for seen in env.upstream.requests() {
        if let Some(cookie) = seen.headers.get("cookie") {
            assert!(
                !cookie.to_str().unwrap().contains("__Host-portcullis"),
                "a Portcullis cookie reached the upstream: {cookie:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_cookie_of_one_frontend_is_refused_by_another() {
    let env = start("sqlite").await;
    let browser = Browser::new();
    let shop = env.login(&browser, &env.url(""), "alice").await;
    assert_eq!(shop.status, 302, "{}", shop.text());
    let shop_id = browser.cookie(&env.origin, SHOP_COOKIE).unwrap();
    let csrf = [("x-csrf", "1")];

    // The shop's session id replayed under the admin's cookie name, at the admin.
    let thief = Browser::new();
    thief.set_cookie(&env.origin, ADMIN_COOKIE, &shop_id);
    thief
        .get_with(&env.url("/admin/bff/user"), &csrf)
        .await
        .assert_error(401, "unauthenticated");
    let before = env.upstream.requests().len();
    thief
        .get_with(&env.url("/admin/api/users"), &csrf)
        .await
        .assert_error(401, "unauthenticated");
    // And at the partner (another host), under its cookie name.
    thief.set_cookie(&env.partner, PARTNER_COOKIE, &shop_id);
    thief
        .get_with(&env.partner_url("/bff/user"), &csrf)
        .await
        .assert_error(401, "unauthenticated");
    thief
        .get_with(&env.partner_url("/api/deals"), &csrf)
        .await
        .assert_error(401, "unauthenticated");
    assert_eq!(
        env.upstream.requests().len(),
        before,
        "nothing went upstream"
    );
    assert!(
        env.gateway
            .logs()
            .contains("a session cookie was presented to another frontend"),
        "the refusal is logged"
    );

    // The refusals ended nothing: the shop session still works.
    let me = browser.get_with(&env.url("/bff/user"), &csrf).await;
    assert_eq!(me.status, 200, "{}", me.text());

    // A login started at one frontend can't be finished at another's callback.
    let r = browser.get(&env.url("/admin/bff/login")).await;
    let authorize = r.location();
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    let stolen = callback.replace("/admin/bff/callback", "/bff/callback");
    browser
        .get(&stolen)
        .await
        .assert_error(400, "invalid_request");
}

#[tokio::test]
async fn logout_stays_within_its_frontend() {
    let env = start("memory").await;
    let browser = Browser::new();
    let csrf = [("x-csrf", "1")];
    assert_eq!(env.login(&browser, &env.url(""), "alice").await.status, 302);
    assert_eq!(
        env.login(&browser, &env.url("/admin"), "alice")
            .await
            .status,
        302
    );

    // The admin logs out: its session ends, its refresh token is revoked, and the
    // browser goes to the provider as the admin client.
    let me = browser.get_with(&env.url("/admin/bff/user"), &csrf).await;
    let logout_url = me.json()["bff:logout_url"].as_str().unwrap().to_owned();
    let r = browser.get(&env.url(&logout_url)).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let end_session = r.location();
    assert!(
        end_session.starts_with(&env.provider.issuer),
        "{end_session}"
    );
    assert_eq!(query(&end_session)["client_id"], ADMIN.0);
    browser
        .get_with(&env.url("/admin/bff/user"), &csrf)
        .await
        .assert_error(401, "unauthenticated");
    // The shop session lives on.
    let me = browser.get_with(&env.url("/bff/user"), &csrf).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["sub"], "alice");
    let r = browser.get_with(&env.url("/api/x"), &csrf).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// `logins_total` and `logouts_total` count every frontend's callback and logout,
/// the ones under a `path_prefix` too (docs/operations.md).
#[tokio::test]
async fn logins_and_logouts_under_a_path_prefix_are_counted() {
    use crate::ops::{sample, scrape};
    const LOGINS: &str = "portcullis_logins_total{outcome=\"success\"}";
    const LOGOUTS: &str = "portcullis_logouts_total{kind=\"rp\",outcome=\"success\"}";
    let env = start("memory").await;
    let browser = Browser::new();
    let (_, before) = scrape(env.admin_port).await;
    assert_eq!(sample(&before, LOGINS), 0.0, "{before}");

    assert_eq!(
        env.login(&browser, &env.url("/admin"), "alice")
            .await
            .status,
        302
    );
    let (_, m) = scrape(env.admin_port).await;
    assert_eq!(sample(&m, LOGINS), 1.0, "{m}");

    let me = browser
        .get_with(&env.url("/admin/bff/user"), &[("x-csrf", "1")])
        .await;
    let logout_url = me.json()["bff:logout_url"].as_str().unwrap().to_owned();
    assert!(logout_url.starts_with("/admin/bff/logout"), "{logout_url}");
    let r = browser.get(&env.url(&logout_url)).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let (_, m) = scrape(env.admin_port).await;
    assert_eq!(sample(&m, LOGOUTS), 1.0, "{m}");

    // The root frontend's login is counted beside it.
    let other = Browser::new();
    assert_eq!(env.login(&other, &env.url(""), "bob").await.status, 302);
    let (_, m) = scrape(env.admin_port).await;
    assert_eq!(sample(&m, LOGINS), 2.0, "{m}");
}

#[tokio::test]
async fn backchannel_logout_ends_only_its_clients_sessions() {
    let env = start("memory").await;
    let browser = Browser::new();
    let csrf = [("x-csrf", "1")];
    // One user, one browser, two clients.
    assert_eq!(env.login(&browser, &env.url(""), "alice").await.status, 302);
    assert_eq!(
        env.login(&browser, &env.url("/admin"), "alice")
            .await
            .status,
        302
    );

    // The provider logs the admin client out (its logout token goes to the
    // admin's endpoint only).
    env.provider_logs_out("alice", ADMIN.0).await;
    browser
        .get_with(&env.url("/admin/bff/user"), &csrf)
        .await
        .assert_error(401, "unauthenticated");
    let me = browser.get_with(&env.url("/bff/user"), &csrf).await;
    assert_eq!(me.status, 200, "the shop session survives: {}", me.text());

    // Then the shop client: its session ends too.
    env.provider_logs_out("alice", SHOP.0).await;
    browser
        .get_with(&env.url("/bff/user"), &csrf)
        .await
        .assert_error(401, "unauthenticated");
}

/// A logout token that matches a session of another frontend (same `sub` and `sid`)
/// but is for this frontend's client ends nothing there: the provider's own logout
/// tokens name a `sid` per client, so only a signed token can show this.
#[tokio::test]
async fn a_logout_token_for_one_client_never_ends_another_frontends_session() {
    let env = start("sqlite").await;
    let browser = Browser::new();
    let csrf = [("x-csrf", "1")];
    assert_eq!(env.login(&browser, &env.url(""), "alice").await.status, 302);
    let sid = browser.get_with(&env.url("/bff/user"), &csrf).await.json()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = |aud: &str| {
        let mut claims = logout_claims(&env.provider.issuer, Some("alice"), Some(&sid));
        claims["aud"] = json!(aud);
        env.signer.sign(&claims, None)
    };
    let post = |path: &str, token: String| {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("logout_token", &token)
            .finish();
        reqwest::Client::new()
            .post(env.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // For the admin client, at the admin's endpoint: valid, but not the shop's session.
    let r = post("/admin/bff/backchannel-logout", token(ADMIN.0))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let me = browser.get_with(&env.url("/bff/user"), &csrf).await;
    assert_eq!(me.status, 200, "the shop session survives: {}", me.text());
    // The same claims for the shop client, at the shop's endpoint: it ends.
    let r = post("/bff/backchannel-logout", token(SHOP.0))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    browser
        .get_with(&env.url("/bff/user"), &csrf)
        .await
        .assert_error(401, "unauthenticated");
}

#[tokio::test]
async fn frontends_are_chosen_by_host_and_path() {
    let env = start("memory").await;
    let browser = Browser::new();
    // Each frontend serves its own SPA files, under its prefix.
    let page = |r: Answer| (r.status.as_u16(), r.text());
    let html = [("accept", "text/html")];
    assert_eq!(
        page(browser.get(&env.url("/")).await),
        (200, "<h1>shop</h1>".into())
    );
    assert_eq!(
        page(browser.get(&env.url("/app.js")).await),
        (200, "// shop".into())
    );
    assert_eq!(
        page(browser.get(&env.url("/admin/")).await),
        (200, "<h1>admin</h1>".into())
    );
    assert_eq!(
        page(browser.get(&env.url("/admin/app.js")).await),
        (200, "// admin".into())
    );
    assert_eq!(
        page(browser.get_with(&env.url("/admin/users/7"), &html).await),
        (200, "<h1>admin</h1>".into()),
        "SPA fallback within the frontend"
    );
    assert_eq!(
        page(browser.get_with(&env.url("/orders/7"), &html).await),
        (200, "<h1>shop</h1>".into())
    );
    // The partner has no files; an unknown /bff path of the admin is a 404, and its
    // /bff endpoints don't exist at the partner host.
    assert_eq!(browser.get(&env.partner_url("/")).await.status, 404);
    let r = browser.get(&env.url("/admin/bff/nope")).await;
    assert_eq!(r.status, 404);
    let r = browser.get(&env.partner_url("/admin/bff/login")).await;
    assert_eq!(r.status, 404, "the partner host has no /admin frontend");
    // The shop's /bff/login at the partner host is the partner's.
    let r = browser.get(&env.partner_url("/bff/login")).await;
    assert_eq!(query(&r.location())["client_id"], PARTNER.0);
    // `portcullis check` names each frontend's redirect URI.
    let out = std::process::Command::new(binary())
        .args(["check", "--config"])
        .arg(&env.gateway.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for uri in [
        env.url("/bff/callback"),
        env.url("/admin/bff/callback"),
        env.partner_url("/bff/callback"),
    ] {
        assert!(text.contains(&uri), "{uri} missing from:\n{text}");
    }
}

/// `portcullis check` proves each frontend's client credentials and names the one
/// the provider refuses.
#[tokio::test]
async fn check_names_the_frontend_whose_client_secret_is_refused() {
    let env = start("memory").await;
    let check = |path: std::path::PathBuf| {
        let dir = env.gateway.dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(binary())
                .args(["check", "--config"])
                .arg(&path)
                .current_dir(dir)
                .env_remove("PORTCULLIS_CONFIG")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let (ok, out, err) = check(env.gateway.config_path.clone()).await.unwrap();
    assert!(ok, "{err}");
    for (i, id) in [SHOP.0, ADMIN.0, PARTNER.0].iter().enumerate() {
        assert!(
            out.contains(&format!(
                "client credentials:      ok (the provider authenticated frontends[{i}].oidc.client_id {id};"
            )),
            "{out}"
        );
    }

    let text = std::fs::read_to_string(&env.gateway.config_path).unwrap();
    let wrong = env.gateway.dir.path().join("wrong-admin-secret.toml");
    std::fs::write(&wrong, text.replace(ADMIN.1, "not-the-admin-secret")).unwrap();
    let (ok, out, err) = check(wrong).await.unwrap();
    assert!(!ok, "a wrong secret passed: {out}");
    assert!(
        err.contains(&format!(
            "frontend admin: the provider refused the client credentials for frontends[1].oidc.client_id {}: \
             invalid_client — check frontends[1].oidc.client_secret",
            ADMIN.0
        )),
        "{err}"
    );
    assert!(!err.contains(SHOP.0) && !err.contains(PARTNER.0), "{err}");
    // The other frontends are still checked, and pass.
    assert!(
        out.contains("frontends[2].oidc.client_id partner-bff;"),
        "{out}"
    );
}
