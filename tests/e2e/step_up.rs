//! Step-up authentication (RFC 9470) through the real provider: an upstream that
//! checks the user's token itself (introspection at the provider: `active`, `acr`,
//! `auth_time`) and answers the RFC 9470 challenge; routes that require `acr_values`;
//! the login that asks for them and checks what the provider did; garbage challenges.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const SILVER: &str = "urn:portcullis:silver";
const GOLD: &str = "urn:portcullis:gold";

/// The verifying upstream: every request's Bearer token is introspected at the
/// provider. `/pay/…` needs `acr` gold, `/fresh/…` an `auth_time` at most 5 s old;
/// otherwise 401 with the RFC 9470 challenge. Answers 200 `{"sub", "acr"}`.
struct Api {
    url: String,
    listener: Option<tokio::net::TcpListener>,
}

impl Api {
    async fn bind() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        Self {
            url,
            listener: Some(listener),
        }
    }

    fn serve(&mut self, introspection: String) {
        let listener = self.listener.take().unwrap();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let introspection = introspection.clone();
            async move { api_answer(request, &introspection).await }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
}

fn challenge(params: &str) -> axum::response::Response {
    let value = format!(
        "Bearer error=\"insufficient_user_authentication\", error_description=\"A different authentication is required\", {params}"
    );
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&value).unwrap(),
        )],
        "step up, please",
    )
        .into_response()
}

async fn api_answer(
    request: axum::extract::Request,
    introspection: &str,
) -> axum::response::Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let info = introspect_at(introspection, &token).await;
    if info["active"] != true {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
        )
            .into_response();
    }
    let path = request.uri().path();
    if path.starts_with("/pay") && info["acr"] != GOLD {
        return challenge(&format!("acr_values=\"{GOLD}\""));
    }
    if path.starts_with("/fresh") {
        let age = now() - info["auth_time"].as_i64().unwrap_or(0);
        if age > 5 {
            return challenge("max_age=5");
        }
    }
    axum::Json(json!({ "sub": info["sub"], "acr": info["acr"], "auth_time": info["auth_time"] }))
        .into_response()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A raw HTTP/1.1 upstream: `/raw/N` is answered 401 with the N-th of `fields` as its
/// `WWW-Authenticate` field(s), bytes as given (the cases an HTTP library wouldn't write).
async fn raw_upstream(cases: Vec<Vec<Vec<u8>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cases = std::sync::Arc::new(cases);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let cases = cases.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let n: usize = line
                    .split(' ')
                    .nth(1)
                    .and_then(|p| p.rsplit('/').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let mut out = b"HTTP/1.1 401 Unauthorized\r\n".to_vec();
                for field in &cases[n] {
                    out.extend_from_slice(b"WWW-Authenticate: ");
                    out.extend_from_slice(field);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"content-length: 5\r\nconnection: close\r\n\r\nnope\n");
                let _ = socket.write_all(&out).await;
            });
        }
    });
    url
}

const CSRF: [(&str, &str); 1] = [("x-csrf", "1")];

async fn start(api: &mut Api, extra_routes: &str) -> Env {
    let routes = format!(
        r#"
[[routes]]
prefix = "/pay"
upstream = "{api}"

[[routes]]
prefix = "/fresh"
upstream = "{api}"

[[routes]]
prefix = "/vault"
upstream = "{{upstream}}"
acr_values = ["{GOLD}", "urn:portcullis:platinum"]
{extra_routes}

[[routes]]
prefix = "/recent"
upstream = "{{upstream}}"
max_age = "60s"
"#,
        api = api.url
    );
    let env = Env::builder()
        .provider_option(
            "stepUp",
            json!({ "acrValues": [SILVER, GOLD], "defaultAcr": SILVER }),
        )
        .plain_authorize()
        .routes(&routes)
        .start_with_security("pending_logins_per_browser = 100\n")
        .await;
    let introspection = env.provider.discovery().await["introspection_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    api.serve(introspection);
    env
}

/// Follows a `login_url` through the provider (the login form when it shows one) back
/// to the callback; returns the callback's answer.
async fn follow(browser: &Browser, env: &Env, login_url: &str) -> (Answer, String) {
    assert!(login_url.starts_with("/bff/login?"), "{login_url}");
    let r = browser.get(&env.url(login_url)).await;
    assert_eq!(r.status, 302, "{login_url}: {}", r.text());
    let authorize = r.location();
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    (browser.get(&callback).await, authorize)
}

#[tokio::test]
async fn an_upstream_challenge_becomes_step_up_required_and_its_login_url_steps_up() {
    let mut api = Api::bind().await;
    let env = start(&mut api, "").await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let user = browser.user(&env).await.json();
    assert_eq!(user["acr"], SILVER, "{user}");
    let first_auth = user["auth_time"].as_i64().expect("auth_time in /bff/user");
    assert!((now() - first_auth).abs() < 60, "{user}");

    let r = browser.get_with(&env.url("/pay/invoice"), &CSRF).await;
    r.assert_error(401, "step_up_required");
    assert_eq!(r.headers["cache-control"], "no-store");
    let body = r.json();
    assert_eq!(body["acr_values"], GOLD, "{body}");
    assert_eq!(body["max_age"], Value::Null, "{body}");
    assert_eq!(
        body["login_url"],
        "/bff/login?acr_values=urn%3Aportcullis%3Agold&returnUrl=%2F"
    );
    assert!(
        !r.text().contains("step up, please"),
        "the upstream's body is not passed on"
    );
    assert!(!r.headers.contains_key(header::WWW_AUTHENTICATE));

    // The SPA sets its own returnUrl and follows it: the provider asks again (the
    // session's silver doesn't meet gold) and the new session is gold.
    let login_url = with_param(
        &env.url(body["login_url"].as_str().unwrap()),
        "returnUrl",
        Some("/checkout?step=2"),
    )
    .strip_prefix(&env.gateway.origin)
    .unwrap()
    .to_owned();
    let (r, authorize) = follow(&browser, &env, &login_url).await;
    assert_eq!(query(&authorize)["acr_values"], GOLD);
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.location(), "/checkout?step=2");
    let user = browser.user(&env).await.json();
    assert_eq!(user["acr"], GOLD, "{user}");
    assert!(user["auth_time"].as_i64().unwrap() >= first_auth);
    let r = browser.get_with(&env.url("/pay/invoice"), &CSRF).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["acr"], GOLD);
}

#[tokio::test]
async fn a_max_age_challenge_makes_the_provider_authenticate_again() {
    let mut api = Api::bind().await;
    let env = start(&mut api, "").await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    assert_eq!(
        browser.get_with(&env.url("/fresh/x"), &CSRF).await.status,
        200
    );
    let before = browser.user(&env).await.json()["auth_time"]
        .as_i64()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;

    let r = browser.get_with(&env.url("/fresh/x"), &CSRF).await;
    r.assert_error(401, "step_up_required");
    let body = r.json();
    assert_eq!(body["max_age"], 5, "{body}");
    assert_eq!(body["acr_values"], Value::Null);
    assert_eq!(body["login_url"], "/bff/login?max_age=5&returnUrl=%2F");
    let (r, _) = follow(&browser, &env, body["login_url"].as_str().unwrap()).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let after = browser.user(&env).await.json()["auth_time"]
        .as_i64()
        .unwrap();
    assert!(after > before, "a new authentication: {before} → {after}");
    let r = browser.get_with(&env.url("/fresh/x"), &CSRF).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn a_route_requiring_acr_answers_before_the_upstream_and_a_provider_that_ignores_it_does_not_pass()
 {
    let mut api = Api::bind().await;
    let env = start(&mut api, "").await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    // A route's max_age met by a fresh login: through to the upstream.
    let r = browser.get_with(&env.url("/recent/x"), &CSRF).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = env.upstream.requests().len();

    let r = browser.get_with(&env.url("/vault/x"), &CSRF).await;
    r.assert_error(401, "step_up_required");
    let body = r.json();
    assert_eq!(
        body["acr_values"],
        format!("{GOLD} urn:portcullis:platinum")
    );
    let login_url = body["login_url"].as_str().unwrap().to_owned();
    assert_eq!(
        login_url,
        "/bff/login?acr_values=urn%3Aportcullis%3Agold+urn%3Aportcullis%3Aplatinum&returnUrl=%2F"
    );
    assert_eq!(
        env.upstream.requests().len(),
        seen,
        "refused before the upstream"
    );

    // A provider that ignores acr_values: the login comes back silver and is refused;
    // the session the browser had stays, and still doesn't pass the route.
    let cookie = browser.session_cookie(&env).unwrap();
    let ignore = reqwest::Client::new()
        .post(env.provider.url("/test/step-up"))
        .json(&json!({ "ignore": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(ignore.status(), 200);
    let (r, _) = follow(&browser, &env, &login_url).await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.text().contains("requested authentication"),
        "{}",
        r.text()
    );
    assert_eq!(
        browser.session_cookie(&env).unwrap(),
        cookie,
        "the old session stays"
    );
    assert_eq!(browser.user(&env).await.json()["acr"], SILVER);
    browser
        .get_with(&env.url("/vault/x"), &CSRF)
        .await
        .assert_error(401, "step_up_required");
    assert!(env.gateway.logs().contains("step_up_refused"));
    // As a navigation, the refusal lands on the login's own returnUrl (like every
    // other failed login), not on the SPA's root; the old session still stays.
    let refused = login_url.replace("returnUrl=%2F", "returnUrl=%2Fvault%2Fpage%3Ftab%3D2");
    let r = browser.get(&env.url(&refused)).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let callback = browser
        .provider_login(&r.location(), "alice", "alice")
        .await;
    let r = browser.get_with(&callback, NAVIGATE).await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.location(), "/vault/page?tab=2&bff_error=login_failed");
    assert_eq!(browser.session_cookie(&env).unwrap(), cookie);

    // Honoured again: gold, and the route passes.
    reqwest::Client::new()
        .post(env.provider.url("/test/step-up"))
        .json(&json!({ "ignore": false }))
        .send()
        .await
        .unwrap();
    let (r, _) = follow(&browser, &env, &login_url).await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(browser.user(&env).await.json()["acr"], GOLD);
    let r = browser.get_with(&env.url("/vault/x"), &CSRF).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.upstream.requests().len(), seen + 1);

    // /bff/login holds acr_values and max_age to its rules.
    for bad in [
        "acr_values=a%22b",
        "acr_values=a%20%20b",
        "acr_values=a%5Cb",
        "acr_values=%3Cimg%3E",
        "acr_values=%20",
        "max_age=-1",
        "max_age=99999999999",
        "max_age=1e3",
        "max_age=%2B5",
    ] {
        browser
            .get(&env.url(&format!("/bff/login?{bad}")))
            .await
            .assert_error(400, "invalid_request");
    }
}

/// Checks a `step_up_required` answer made from an upstream's garbage: nothing
/// unencoded reaches the JSON or the login URL, and the login URL still works.
async fn assert_clean(browser: &Browser, env: &Env, r: &Answer, case: &str) {
    r.assert_error(401, "step_up_required");
    let body = r.json();
    if let Some(acr) = body["acr_values"].as_str() {
        assert!(
            acr.bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'),
            "{case}: {acr:?}"
        );
    } else {
        assert_eq!(body["acr_values"], Value::Null, "{case}");
    }
    let text = r.text();
    assert!(
        !text.contains('\r') && !text.contains('\n'),
        "{case}: {text:?}"
    );
    let login_url = body["login_url"].as_str().unwrap();
    assert!(
        login_url
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/?&=%+-._*".contains(&b)),
        "{case}: {login_url}"
    );
    let (path, q) = login_url.split_once('?').unwrap();
    assert_eq!(path, "/bff/login", "{case}");
    let params: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "returnUrl").count(),
        1,
        "{case}: {login_url}"
    );
    assert!(
        names
            .iter()
            .all(|n| ["acr_values", "max_age", "prompt", "returnUrl"].contains(n)),
        "{case}: {login_url}"
    );
    // Asked for nothing usable: a fresh login at least.
    if body["acr_values"].is_null() && body["max_age"].is_null() {
        assert!(login_url.contains("prompt=login"), "{case}: {login_url}");
    }
    assert_eq!(
        params.iter().find(|(n, _)| n == "returnUrl").unwrap().1,
        "/",
        "{case}"
    );
    let r = browser.get(&env.url(login_url)).await;
    assert_eq!(r.status, 302, "{case}: {login_url} → {}", r.text());
}

#[tokio::test]
async fn garbage_challenges_never_reach_the_spa_unencoded() {
    let e = "error=\"insufficient_user_authentication\"";
    let cases: Vec<(Vec<Vec<u8>>, Value, Value)> = vec![
        // (fields, expected acr_values, expected max_age)
        (
            vec![format!("Bearer {e}, acr_values=\"gold\\\" onload=\\\"x\"").into_bytes()],
            Value::Null,
            Value::Null,
        ),
        (
            vec![
                format!("Bearer {e}, acr_values=\"urn:a&returnUrl=//evil.example#\"").into_bytes(),
            ],
            json!("urn:a&returnUrl=//evil.example#"),
            Value::Null,
        ),
        (
            vec![format!("Bearer {e}, acr_values=<script>alert(1)</script>").into_bytes()],
            Value::Null,
            Value::Null,
        ),
        (
            vec![format!("Bearer {e}, acr_values=\"<img src=x onerror=alert(1)>\"").into_bytes()],
            Value::Null,
            Value::Null,
        ),
        (
            vec![format!("Bearer {e}, acr_values=\"caf\u{e9}\"").into_bytes()],
            Value::Null,
            Value::Null,
        ),
        (
            vec![
                [
                    format!("Bearer {e}, acr_values=\"caf").as_bytes(),
                    b"\xe9\"".as_slice(),
                ]
                .concat(),
            ],
            Value::Null,
            Value::Null,
        ),
        (
            vec![format!("Bearer {e}, max_age=\"300; DROP\", acr_values=\"a\\\\b\"").into_bytes()],
            Value::Null,
            Value::Null,
        ),
        (
            vec![format!("Bearer {e}, acr_values=\"x\", x=\"{}\"", "y".repeat(6000)).into_bytes()],
            Value::Null,
            Value::Null,
        ),
        (
            vec![format!("Bearer {e}, acr_values=\"{}\"", "z".repeat(300)).into_bytes()],
            Value::Null,
            Value::Null,
        ),
        (
            vec![format!("Bearer {e}, acr_values=\"unterminated").into_bytes()],
            Value::Null,
            Value::Null,
        ),
        (
            vec![format!("Bearer {e}, acr_values=\"a\\r\\nSet-Cookie: x=y\"").into_bytes()],
            json!("arnSet-Cookie: x=y"),
            Value::Null,
        ),
        (
            vec![
                b"bearer ERROR=insufficient_user_authentication,acr_values=gold,max_age=60"
                    .to_vec(),
            ],
            json!("gold"),
            json!(60),
        ),
        (
            vec![
                b"Basic realm=\"x\"".to_vec(),
                format!("DPoP algs=\"ES256\", {e}, acr_values=\"urn:x urn:y\"").into_bytes(),
            ],
            json!("urn:x urn:y"),
            Value::Null,
        ),
        (
            vec![format!("Negotiate abc==, Bearer {e},, max_age=0").into_bytes()],
            Value::Null,
            json!(0),
        ),
    ];
    let fields: Vec<Vec<Vec<u8>>> = cases.iter().map(|c| c.0.clone()).collect();
    let raw = raw_upstream(fields).await;
    let env = Env::builder()
        .plain_authorize()
        .routes(&format!(
            "[[routes]]\nprefix = \"/raw\"\nupstream = \"{raw}\"\n"
        ))
        .start_with_security("pending_logins_per_browser = 100\n")
        .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    for (n, (fields, acr, max_age)) in cases.iter().enumerate() {
        let case = format!(
            "case {n}: {:?}",
            String::from_utf8_lossy(&fields[fields.len() - 1])
                .chars()
                .take(120)
                .collect::<String>()
        );
        let r = browser
            .get_with(&env.url(&format!("/raw/{n}")), &CSRF)
            .await;
        assert_clean(&browser, &env, &r, &case).await;
        assert_eq!(r.json()["acr_values"], *acr, "{case}");
        assert_eq!(r.json()["max_age"], *max_age, "{case}");
    }
    // A literal line break (obs-fold) in the upstream's header never reaches the SPA:
    // the answer is refused as a broken upstream or read as one folded line.
    let folded = raw_upstream(vec![vec![
        format!("Bearer {e}, acr_values=\"a\r\n b\"").into_bytes(),
    ]])
    .await;
    let env2 = Env::builder()
        .plain_authorize()
        .routes(&format!(
            "[[routes]]\nprefix = \"/raw\"\nupstream = \"{folded}\"\n"
        ))
        .start()
        .await;
    let browser2 = env2.browser();
    browser2.login(&env2, "alice", "alice", "/").await;
    let r = browser2.get_with(&env2.url("/raw/0"), &CSRF).await;
    eprintln!("an obs-folded challenge is answered {}", r.status);
    if r.status == 401 {
        assert_clean(&browser2, &env2, &r, "obs-fold").await;
    } else {
        r.assert_error(502, "upstream_unavailable");
    }
    // A 401 without the challenge passes as it was (the upstream's own answer).
    let plain = raw_upstream(vec![vec![b"Bearer error=\"invalid_token\"".to_vec()]]).await;
    let env3 = Env::builder()
        .routes(&format!(
            "[[routes]]\nprefix = \"/raw\"\nupstream = \"{plain}\"\n"
        ))
        .start()
        .await;
    let browser3 = env3.browser();
    browser3.login(&env3, "alice", "alice", "/").await;
    let r = browser3.get_with(&env3.url("/raw/0"), &CSRF).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), "nope\n");
}

/// `portcullis check` in the gateway's folder: (success, stdout, stderr).
async fn check(env: &Env) -> (bool, String, String) {
    let config = env.gateway.config_path.clone();
    let dir = env.gateway.dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(["check", "--config", config.to_str().unwrap()])
            .current_dir(dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_prints_the_routes_rules_and_warns_of_acr_values_the_provider_lacks() {
    let mut api = Api::bind().await;
    let env = start(
        &mut api,
        r#"methods = ["GET"]
require = [{ claim = "groups", contains = "admins" }]
max_age = "10m""#,
    )
    .await;
    let (ok, out, err) = check(&env).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "route /vault: methods GET; require groups contains \"admins\"; step-up acr_values {GOLD} urn:portcullis:platinum; step-up max_age 600s"
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "warning: routes[5].acr_values: the provider does not advertise urn:portcullis:platinum"
        ),
        "{out}"
    );
    assert!(
        !out.contains("route /pay:"),
        "routes without rules print nothing: {out}"
    );

    // A provider that advertises no ACR values at all.
    let env = Env::builder()
        .routes("[[routes]]\nprefix = \"/vault\"\nupstream = \"{upstream}\"\nacr_values = [\"urn:gold\"]\n")
        .start()
        .await;
    let (ok, out, err) = check(&env).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("route /vault: step-up acr_values urn:gold"),
        "{out}"
    );
    assert!(
        out.contains(
            "warning: routes[3].acr_values: the provider advertises no acr_values_supported"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn the_login_url_stays_under_the_frontends_path_prefix() {
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let provider = Provider::start(json!({
        "port": 0,
        "host": "127.0.0.1",
        "issuerHost": "localhost",
        "stepUp": { "acrValues": [SILVER, GOLD] },
        "clients": [{
            "client_id": "admin-app",
            "client_secret": "admin-app-secret-0123456789",
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": [format!("{origin}/admin/bff/callback")],
        }]
    }));
    let upstream = Upstream::start().await;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_origin = "{origin}"

[oidc]
issuer = "{issuer}"
scopes = ["openid", "profile"]
par = "never"

[session]
store = "memory"
keys = ["{key}"]

[[frontends]]
name = "admin"
path_prefix = "/admin"
[frontends.oidc]
client_id = "admin-app"
client_secret = "admin-app-secret-0123456789"
[[frontends.routes]]
prefix = "/admin/vault"
upstream = "{upstream}"
acr_values = ["{GOLD}"]
"#,
        issuer = provider.issuer,
        key = random_key(),
        upstream = upstream.url(),
    );
    let gateway = Gateway::start(port, &config);
    let browser = Browser::new();
    let r = browser
        .get(&gateway.url("/admin/bff/login?returnUrl=%2Fadmin%2F"))
        .await;
    assert_eq!(r.status, 302, "{}", r.text());
    let callback = browser
        .provider_login(&r.location(), "alice", "alice")
        .await;
    assert_eq!(browser.get(&callback).await.status, 302);

    let r = browser
        .get_with(&gateway.url("/admin/vault/x"), &CSRF)
        .await;
    r.assert_error(401, "step_up_required");
    let login_url = r.json()["login_url"].as_str().unwrap().to_owned();
    assert_eq!(
        login_url,
        "/admin/bff/login?acr_values=urn%3Aportcullis%3Agold&returnUrl=%2Fadmin%2F"
    );
    let r = browser.get(&gateway.url(&login_url)).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let callback = browser
        .provider_login(&r.location(), "alice", "alice")
        .await;
    let r = browser.get(&callback).await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.location(), "/admin/");
    let r = browser
        .get_with(&gateway.url("/admin/vault/x"), &CSRF)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(upstream.requests().len() == 1);
}
