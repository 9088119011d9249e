//! A token per API: per-route `resource`/`scopes` on user routes and token exchange,
//! against the real test provider (two API resources issuing JWT access tokens with
//! per-resource `aud` and scopes, rotating refresh tokens, a real token-exchange grant)
//! and upstreams that verify the token themselves (RS256 signature with the provider's
//! JWKS, `iss`, `aud`, `exp`, `scope`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde_json::{Value, json};

use crate::harness::*;

const API_A: &str = "https://api-a.test/";
const API_B: &str = "https://api-b.test/";
const API_C: &str = "https://api-c.test/";
const API_D: &str = "https://api-d.test/";

/// What a verifying upstream saw: the verified claims of each accepted token, and
/// how many requests it refused.
#[derive(Default)]
struct Verified {
    accepted: Vec<Value>,
    refused: u64,
}

/// An API that checks its bearer token like a real resource server: signature with
/// the provider's JWKS, `iss`, `aud` = its own identifier, `exp`, and a required scope.
struct VerifyingUpstream {
    seen: Arc<Mutex<Verified>>,
    task: tokio::task::JoinHandle<()>,
}

impl VerifyingUpstream {
    /// Serves on `port` (reserved before Portcullis was configured with it).
    async fn start(provider: &Provider, audience: &str, required_scope: &str, port: u16) -> Self {
        let jwks: JwkSet = reqwest::get(provider.url("/jwks"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let keys: Vec<(Option<String>, DecodingKey)> = jwks
            .keys
            .iter()
            .filter_map(|k| Some((k.common.key_id.clone(), DecodingKey::from_jwk(k).ok()?)))
            .collect();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&provider.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        let seen = Arc::new(Mutex::new(Verified::default()));
        let state = Arc::new((keys, validation, required_scope.to_owned(), seen.clone()));
        let app = axum::Router::new().fallback(move |headers: HeaderMap| {
            let state = state.clone();
            async move {
                let (keys, validation, scope, seen) = &*state;
                let verdict = (|| {
                    let token = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .ok_or("no bearer token")?;
                    let kid = jsonwebtoken::decode_header(token)
                        .map_err(|_| "not a JWT")?
                        .kid;
                    let key = keys
                        .iter()
                        .find(|(k, _)| *k == kid)
                        .map(|(_, key)| key)
                        .ok_or("unknown key")?;
                    let claims = jsonwebtoken::decode::<Value>(token, key, validation)
                        .map_err(|_| "signature, iss, aud or exp refused")?
                        .claims;
                    let scopes = claims["scope"].as_str().unwrap_or_default();
                    if !scopes.split(' ').any(|s| s == scope) {
                        return Err("scope missing");
                    }
                    Ok(claims)
                })();
                match verdict {
                    Ok(claims) => {
                        seen.lock().unwrap().accepted.push(claims.clone());
                        (StatusCode::OK, axum::Json(claims))
                    }
                    Err(why) => {
                        seen.lock().unwrap().refused += 1;
                        (
                            StatusCode::UNAUTHORIZED,
                            axum::Json(json!({ "error": "invalid_token", "why": why })),
                        )
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the reserved upstream port");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { seen, task }
    }

    fn accepted(&self) -> Vec<Value> {
        self.seen.lock().unwrap().accepted.clone()
    }

    fn refused(&self) -> u64 {
        self.seen.lock().unwrap().refused
    }

    /// Distinct tokens accepted (by `jti`).
    fn distinct_tokens(&self) -> usize {
        self.accepted()
            .iter()
            .map(|c| c["jti"].as_str().unwrap_or_default().to_owned())
            .collect::<HashSet<_>>()
            .len()
    }
}

impl Drop for VerifyingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn api_resources(ttl: u64) -> Value {
    json!({
        API_A: { "scope": "a:read a:write", "accessTokenTTL": ttl },
        API_B: { "scope": "b:read", "accessTokenTTL": ttl },
    })
}

const LOGIN_SCOPES: &str =
    r#""openid", "profile", "email", "offline_access", "a:read", "a:write", "b:read""#;

/// Starts a provider first (the upstreams need its JWKS), then Portcullis whose routes
/// point at the verifying upstreams: the routes' TOML names them `{A}`, `{B}`, `{C}`.
struct Apis {
    env: Env,
    a: VerifyingUpstream,
    b: VerifyingUpstream,
    c: VerifyingUpstream,
}

async fn start(builder: EnvBuilder, routes: &str, provider_options: Value) -> Apis {
    // The upstreams need the provider's JWKS, Portcullis needs their addresses: their
    // ports are reserved first, and they start once the provider is up.
    let (la, lb, lc) = (free_port(), free_port(), free_port());
    let routes = routes
        .replace("{A}", &format!("http://127.0.0.1:{la}"))
        .replace("{B}", &format!("http://127.0.0.1:{lb}"))
        .replace("{C}", &format!("http://127.0.0.1:{lc}"));
    let mut builder = builder.routes(&routes);
    for (k, v) in provider_options.as_object().unwrap() {
        builder = builder.provider_option(k, v.clone());
    }
    let env = builder.start().await;
    let a = VerifyingUpstream::start(&env.provider, API_A, "a:read", la).await;
    let b = VerifyingUpstream::start(&env.provider, API_B, "b:read", lb).await;
    let c = VerifyingUpstream::start(&env.provider, API_C, "c:read", lc).await;
    Apis { env, a, b, c }
}

async fn call(browser: &Browser, url: &str) -> Answer {
    browser.get_with(url, &[("x-csrf", "1")]).await
}

fn resource_routes(extra: &str) -> String {
    format!(
        r#"
[[routes]]
prefix = "/api-a"
upstream = "{{A}}"
resource = "{API_A}"
scopes = ["a:read"]

[[routes]]
prefix = "/api-b"
upstream = "{{B}}"
resource = "{API_B}"
{extra}
"#
    )
}

#[tokio::test]
async fn each_api_gets_its_own_verified_token_and_never_another_routes() {
    let apis = start(
        Env::builder()
            .login_scopes(LOGIN_SCOPES)
            .oidc("resource_at_login = true\n"),
        &resource_routes(""),
        json!({ "apiResources": api_resources(300) }),
    )
    .await;
    let env = &apis.env;
    let browser = env.browser();
    browser.login(env, "alice", "alice", "/").await;

    for _ in 0..3 {
        let r = call(&browser, &env.url("/api-a/orders")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = call(&browser, &env.url("/api-b/items")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = call(&browser, &env.url("/api/login-token")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (a, b) = (apis.a.accepted(), apis.b.accepted());
    assert_eq!((a.len(), b.len()), (3, 3));
    assert_eq!((apis.a.refused(), apis.b.refused()), (0, 0));
    // Downscoped: route A asked for a:read only, though the login granted a:write too.
    assert_eq!(a[0]["scope"], "a:read");
    assert_eq!(b[0]["scope"], "b:read");
    assert_eq!(a[0]["sub"], "alice");
    // One token per audience, reused until it is due.
    assert_eq!(apis.a.distinct_tokens(), 1);
    assert_eq!(apis.b.distinct_tokens(), 1);
    // The login's route still gets the login's (opaque, userinfo) token, not an API's.
    let login_token = env.upstream.last().headers["authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!login_token.contains("eyJ"), "{login_token}");
    let by_target = env.provider.grants_by_target(CLIENT_ID).await;
    assert_eq!(by_target["refresh_token"][API_A], 1, "{by_target}");
    assert_eq!(by_target["refresh_token"][API_B], 1, "{by_target}");
}

#[tokio::test]
async fn invalid_scope_and_invalid_target_are_the_routes_403_and_other_routes_work() {
    // `/api-x` asks for a scope the login never got: invalid_scope.
    let apis = start(
        Env::builder()
            .login_scopes(LOGIN_SCOPES)
            .oidc("resource_at_login = true\n"),
        &resource_routes(&format!(
            "\n[[routes]]\nprefix = \"/api-x\"\nupstream = \"{{A}}\"\nresource = \"{API_A}\"\nscopes = [\"a:admin\"]\n"
        )),
        json!({ "apiResources": api_resources(300) }),
    )
    .await;
    let env = &apis.env;
    let browser = env.browser();
    browser.login(env, "alice", "alice", "/").await;
    call(&browser, &env.url("/api-x/admin"))
        .await
        .assert_error(403, "forbidden");
    assert!(
        env.gateway.logs().contains("/api-x"),
        "the log names the route"
    );
    assert_eq!(call(&browser, &env.url("/api-a/x")).await.status, 200);
    assert_eq!(call(&browser, &env.url("/api/x")).await.status, 200);
    assert_eq!(browser.user(env).await.status, 200, "not a logout");
    assert_eq!(apis.a.accepted().len(), 1, "route X's call never reached A");

    // Without resource_at_login the provider never granted API A: invalid_target.
    let apis = start(
        Env::builder()
            .login_scopes(LOGIN_SCOPES)
            .access_token_ttl(2)
            .userinfo(false),
        &resource_routes(""),
        json!({ "apiResources": api_resources(300) }),
    )
    .await;
    let env = &apis.env;
    let browser = env.browser();
    browser.login(env, "alice", "alice", "/").await;
    // (Route B asks for its resource alone; route A's scope would be refused first.)
    let r = call(&browser, &env.url("/api-b/x")).await;
    r.assert_error(403, "forbidden");
    assert!(env.gateway.logs().contains("invalid_target"));
    assert_eq!(call(&browser, &env.url("/api/x")).await.status, 200);
    assert_eq!(browser.user(env).await.status, 200, "not a logout");
    assert_eq!(apis.b.accepted().len() + apis.b.refused() as usize, 0);
    // Asked again: the same answer, without another grant at the provider.
    call(&browser, &env.url("/api-b/x"))
        .await
        .assert_error(403, "forbidden");
    let (_, errors) = env.provider.grant_count("refresh_token").await;
    assert_eq!(
        errors, 1,
        "the refused route was not sent to the provider again"
    );
    // The refusal spent no refresh token: the login's token is still refreshed.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        call(&browser, &env.url("/api/after-expiry")).await.status,
        200
    );
    let (refreshed, errors) = env.provider.grant_count("refresh_token").await;
    assert!(refreshed >= 1, "the login's token was refreshed");
    assert_eq!(errors, 1, "only the one invalid_target, no invalid_grant");
}

#[tokio::test]
async fn a_provider_without_resource_indicators_is_a_clear_403() {
    // The provider ignores `resource` and issues JWTs for its default API (the shape of
    // a provider without RFC 8707): the token's aud is not the route's resource.
    let apis = start(
        Env::builder()
            .login_scopes(LOGIN_SCOPES)
            .oidc("resource_at_login = true\n"),
        &resource_routes(""),
        json!({
            "apiResources": {
                "https://default-api.test/": { "scope": "a:read a:write b:read" }
            },
            "resourceAudience": "https://default-api.test/",
        }),
    )
    .await;
    let env = &apis.env;
    let browser = env.browser();
    browser.login(env, "alice", "alice", "/").await;
    call(&browser, &env.url("/api-a/x"))
        .await
        .assert_error(403, "forbidden");
    assert!(
        env.gateway.logs().contains("resource indicators"),
        "the log says why"
    );
    assert_eq!(apis.a.accepted().len() + apis.a.refused() as usize, 0);
    // The refresh token it rotated was kept: the session goes on.
    assert_eq!(call(&browser, &env.url("/api/x")).await.status, 200);
    assert_eq!(browser.user(env).await.status, 200);
    let (_, errors) = env.provider.grant_count("refresh_token").await;
    assert_eq!(errors, 0);
}

#[tokio::test]
async fn token_exchange_issues_the_routes_token_and_a_refusal_is_403_not_a_logout() {
    let routes = format!(
        r#"
[[routes]]
prefix = "/api-c"
upstream = "{{C}}"
token = "exchange"
audience = "{API_C}"
scopes = ["c:read"]

[[routes]]
prefix = "/api-d"
upstream = "{{C}}"
token = "exchange"
audience = "{API_D}"
"#
    );
    let apis = start(
        Env::builder(),
        &routes,
        json!({ "tokenExchange": { "audiences": {
            API_C: { "scope": "c:read c:write", "accessTokenTTL": 300 },
            API_D: { "scope": "d:read", "allowedSubs": ["bob"] },
        } } }),
    )
    .await;
    let env = &apis.env;
    // Without a session: as a user route.
    call(&env.browser(), &env.url("/api-c/x"))
        .await
        .assert_error(401, "unauthenticated");
    let browser = env.browser();
    browser.login(env, "alice", "alice", "/").await;
    for _ in 0..3 {
        let r = call(&browser, &env.url("/api-c/x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let c = apis.c.accepted();
    assert_eq!(c[0]["sub"], "alice");
    assert_eq!(c[0]["scope"], "c:read");
    assert_eq!(apis.c.distinct_tokens(), 1, "cached per session and route");
    let by_target = env.provider.grants_by_target(CLIENT_ID).await;
    assert_eq!(
        by_target["urn:ietf:params:oauth:grant-type:token-exchange"][API_C], 1,
        "{by_target}"
    );

    // The provider's policy refuses alice for D: 403, the session stays.
    call(&browser, &env.url("/api-d/x"))
        .await
        .assert_error(403, "forbidden");
    assert!(env.gateway.logs().contains("access_denied"));
    assert_eq!(browser.user(env).await.status, 200, "never a logout");
    assert_eq!(call(&browser, &env.url("/api-c/x")).await.status, 200);
    assert_eq!(call(&browser, &env.url("/api/x")).await.status, 200);
}

/// The storm: 200 parallel requests over two routes with different audiences, both
/// tokens expiring during the run, across two instances on a real Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_over_two_audiences_and_two_instances_gets_one_grant_per_audience_per_expiry() {
    let ttl = 4;
    let apis = start(
        Env::builder()
            .store("redis")
            .instances(2)
            .userinfo(false)
            .login_scopes(LOGIN_SCOPES)
            .oidc("resource_at_login = true\n"),
        &resource_routes(""),
        json!({ "apiResources": api_resources(ttl) }),
    )
    .await;
    let env = &apis.env;
    let browser = env.browser();
    browser.login(env, "alice", "alice", "/").await;
    browser.share_session_with(env, &env.others[0]);
    let urls = [
        env.gateway.url("/api-a/storm"),
        env.others[0].url("/api-b/storm"),
        env.others[0].url("/api-a/storm"),
        env.gateway.url("/api-b/storm"),
    ];
    let run_for = Duration::from_secs(9);
    let Storm {
        ok,
        failed,
        elapsed,
        ..
    } = storm(&browser, &urls, 200, run_for).await;
    let by_target = env.provider.grants_by_target(CLIENT_ID).await;
    let grants = |t: &str| by_target["refresh_token"][t].as_u64().unwrap_or(0);
    let (grants_a, grants_b) = (grants(API_A), grants(API_B));
    let (tokens_a, tokens_b) = (apis.a.distinct_tokens(), apis.b.distinct_tokens());
    let (_, refresh_errors) = env.provider.grant_count("refresh_token").await;
    println!(
        "ROUTE TOKEN STORM (2 instances, redis, {elapsed:?}, token TTL {ttl}s): {ok} ok, {failed} failed; \
         API A: {grants_a} grants, {tokens_a} tokens used; API B: {grants_b} grants, {tokens_b} tokens used; \
         refresh errors {refresh_errors}; upstream refusals A {} B {}",
        apis.a.refused(),
        apis.b.refused()
    );
    assert_eq!(failed, 0);
    assert_eq!(refresh_errors, 0, "no rotated refresh token was sent twice");
    assert_eq!((apis.a.refused(), apis.b.refused()), (0, 0));
    // Both expired during the run (renewed at half their lifetime: every ~2 s)…
    assert!(grants_a >= 3 && grants_b >= 3, "{by_target}");
    // …and every grant was one expiry's: each obtained token went upstream, none twice.
    assert_eq!(grants_a as usize, tokens_a, "one grant per expiry for A");
    assert_eq!(grants_b as usize, tokens_b, "one grant per expiry for B");
    // Generous upper bound: no more than one grant per half-lifetime, plus the first.
    let bound = elapsed.as_secs() / (ttl / 2) + 2;
    assert!(
        grants_a <= bound && grants_b <= bound,
        "{grants_a} {grants_b} > {bound}"
    );
}

#[tokio::test]
async fn rotated_refresh_tokens_serve_the_login_and_every_audience() {
    // Every grant rotates the one refresh token (the provider revokes the whole grant
    // if a rotated one is sent again): the login's token and both APIs' expire and are
    // renewed, in turns, for ~9 s.
    let apis = start(
        Env::builder()
            .access_token_ttl(4)
            .userinfo(false)
            .login_scopes(LOGIN_SCOPES)
            .oidc("resource_at_login = true\n"),
        &resource_routes(""),
        json!({ "apiResources": api_resources(4), "rotateRefreshToken": true }),
    )
    .await;
    let env = &apis.env;
    let browser = env.browser();
    browser.login(env, "alice", "alice", "/").await;
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(9) {
        for path in ["/api/x", "/api-a/x", "/api-b/x"] {
            let r = call(&browser, &env.url(path)).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            calls += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (refreshes, errors) = env.provider.grant_count("refresh_token").await;
    let by_target = env.provider.grants_by_target(CLIENT_ID).await;
    println!("ROTATION: {calls} calls, {refreshes} refresh grants ({by_target}), {errors} errors");
    assert_eq!(errors, 0, "no rotated refresh token was reused");
    assert!(apis.a.distinct_tokens() >= 3 && apis.b.distinct_tokens() >= 3);
    let login_refreshes = by_target["refresh_token"][""].as_u64().unwrap_or(0);
    assert!(login_refreshes >= 2, "{by_target}");
    assert_eq!(
        refreshes,
        login_refreshes + apis.a.distinct_tokens() as u64 + apis.b.distinct_tokens() as u64
    );
}

#[tokio::test]
async fn provider_down_is_the_routes_503_and_invalid_grant_ends_the_session() {
    let apis = start(
        Env::builder()
            .userinfo(false)
            .oidc("http_timeout = \"1s\"\n")
            .login_scopes(LOGIN_SCOPES)
            .oidc("resource_at_login = true\n"),
        &resource_routes(""),
        json!({ "apiResources": api_resources(300) }),
    )
    .await;
    let env = &apis.env;
    let browser = env.browser();
    browser.login(env, "alice", "alice", "/").await;
    assert_eq!(call(&browser, &env.url("/api/x")).await.status, 200);

    // Route A has no token yet and the provider is down: 503 for A only.
    env.provider.pause();
    call(&browser, &env.url("/api-a/x"))
        .await
        .assert_error(503, "idp_unavailable");
    assert_eq!(call(&browser, &env.url("/api/x")).await.status, 200);
    assert_eq!(browser.user(env).await.status, 200, "the session stays");
    env.provider.resume();
    let mut status = 0;
    for _ in 0..20 {
        status = call(&browser, &env.url("/api-a/x")).await.status.as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200, "route A works again once the provider is back");

    // The grant is revoked: B's refresh gets invalid_grant, which ends the session.
    env.provider.revoke_grants("alice").await;
    call(&browser, &env.url("/api-b/x"))
        .await
        .assert_error(401, "session_expired");
    browser.user(env).await.assert_error(401, "unauthenticated");
    assert_eq!(apis.b.accepted().len() + apis.b.refused() as usize, 0);
}

/// `portcullis check` says what each route with its own token requests, and warns when
/// the provider doesn't advertise the token-exchange grant.
#[tokio::test]
async fn check_prints_route_tokens_and_warns_about_a_missing_exchange_grant() {
    let routes = format!(
        r#"
[[routes]]
prefix = "/api-a"
upstream = "http://127.0.0.1:1"
resource = "{API_A}"
scopes = ["a:read"]

[[routes]]
prefix = "/api-c"
upstream = "http://127.0.0.1:1"
token = "exchange"
audience = "{API_C}"
"#
    );
    let check = |env: &Env| {
        let config = env.gateway.config_path.to_str().unwrap().to_owned();
        let dir = env.gateway.dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(binary())
                .args(["check", "--config", &config])
                .current_dir(dir)
                .env_remove("PORTCULLIS_CONFIG")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let without = Env::builder().routes(&routes).start().await;
    let out = check(&without).await.unwrap();
    assert!(
        out.contains(&format!(
            "route /api-a: own user token by refresh-token grant, resource {API_A}, scopes a:read"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "route /api-c: own user token by token exchange (audience {API_C})"
        )),
        "{out}"
    );
    assert!(
        out.contains("routes[4] (token = \"exchange\"): the provider does not advertise"),
        "{out}"
    );
    assert!(out.contains("routes[3].resource: RFC 8707"), "{out}");

    let with = Env::builder()
        .routes(&routes)
        .provider_option(
            "tokenExchange",
            json!({ "audiences": { API_C: { "scope": "c:read" } } }),
        )
        .start()
        .await;
    let out = check(&with).await.unwrap();
    assert!(
        !out.contains("does not advertise the token-exchange"),
        "{out}"
    );
}

/// Auth0's `audience` (per frontend) and the routes' resources (RFC 8707 §2.1) travel
/// in the authorization request; a login with them completes.
#[tokio::test]
async fn the_authorization_request_carries_the_audience_and_the_routes_resources() {
    let apis = start(
        Env::builder()
            .plain_authorize()
            .login_scopes(LOGIN_SCOPES)
            .oidc("resource_at_login = true\naudience = \"https://api.example.com\"\n"),
        &resource_routes(""),
        json!({ "apiResources": api_resources(300) }),
    )
    .await;
    let env = &apis.env;
    let browser = env.browser();
    let authorize = browser.start_login(env, "/").await;
    let pairs: Vec<(String, String)> = url::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let values = |name: &str| -> Vec<&str> {
        pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("audience"), ["https://api.example.com"]);
    assert_eq!(values("resource"), [API_A, API_B]);
    // The provider accepts it (it ignores `audience`): the login and both APIs work.
    browser.login(env, "alice", "alice", "/").await;
    assert_eq!(call(&browser, &env.url("/api-a/x")).await.status, 200);
    assert_eq!(call(&browser, &env.url("/api-b/x")).await.status, 200);
}
