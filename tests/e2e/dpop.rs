//! DPoP (RFC 9449): tokens bound to the session's key, checked by a resource server
//! that verifies every proof and the token's `cnf.jkt` binding at the provider.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::harness::*;

// ---------------------------------------------------------------- verifying resource server

/// What the resource server decided about one request.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub method: Method,
    pub path_and_query: String,
    /// `None`: accepted; else why it was refused.
    pub refused: Option<String>,
    pub authorization: Option<String>,
    pub proof: Option<String>,
    /// The proof key's RFC 7638 thumbprint, when the proof could be read.
    pub jkt: Option<String>,
}

struct RsState {
    /// The provider's introspection endpoint: how the binding (`cnf.jkt`) is checked.
    introspection: Mutex<Option<String>>,
    /// Demand this nonce in every proof (`use_dpop_nonce` otherwise).
    nonce: Option<String>,
    jtis: Mutex<HashSet<String>>,
    log: Mutex<Vec<Verdict>>,
}

/// A resource server that accepts only DPoP-bound tokens with a valid proof (RFC 9449
/// §7.1): signature by the embedded `jwk` (jsonwebtoken), `typ`, `alg`, `htm`, `htu`
/// equal to the URL it was called on, `iat` within a minute, `ath`, a `jti` never seen
/// before, its own nonce when it demands one, and the token's `cnf.jkt` (from the
/// provider's introspection) equal to the proof key's thumbprint.
pub struct VerifyingUpstream {
    pub addr: SocketAddr,
    state: Arc<RsState>,
    task: tokio::task::JoinHandle<()>,
}

impl VerifyingUpstream {
    pub async fn start(require_nonce: bool) -> Self {
        let state = Arc::new(RsState {
            introspection: Mutex::new(None),
            nonce: require_nonce.then(|| format!("rs-nonce-{}", random_key())),
            jtis: Mutex::default(),
            log: Mutex::default(),
        });
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let state = shared.clone();
            async move { verify(request, state).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Checks bindings by introspection at `provider`.
    pub async fn use_provider(&self, provider: &Provider) {
        let endpoint = provider.discovery().await["introspection_endpoint"]
            .as_str()
            .unwrap()
            .to_owned();
        *self.state.introspection.lock().unwrap() = Some(endpoint);
    }

    pub fn verdicts(&self) -> Vec<Verdict> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn last(&self) -> Verdict {
        self.verdicts()
            .pop()
            .expect("no request reached the resource server")
    }

    /// Sends a request straight to the resource server (as an attacker holding a
    /// captured token and proof would).
    pub async fn call(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
        Browser::new()
            .send(method, &format!("{}{path}", self.url()), headers, None)
            .await
    }
}

impl Drop for VerifyingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn verify(request: axum::extract::Request, state: Arc<RsState>) -> axum::response::Response {
    let (parts, _body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut verdict = Verdict {
        method: parts.method.clone(),
        path_and_query: pq.clone(),
        refused: None,
        authorization: header("authorization"),
        proof: header("dpop"),
        jkt: None,
    };
    let outcome = check(
        &parts.method,
        parts.uri.path(),
        &parts.headers,
        &state,
        &mut verdict,
    )
    .await;
    verdict.refused = outcome.as_ref().err().map(|(_, why)| why.clone());
    state.log.lock().unwrap().push(verdict.clone());
    match outcome {
        Ok(claims) => axum::response::Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(
                json!({ "ok": true, "path": pq, "jkt": verdict.jkt, "sub": claims["sub"] })
                    .to_string(),
            ))
            .unwrap(),
        Err((error, why)) => {
            let mut r = axum::response::Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("content-type", "application/json")
                .header(
                    "www-authenticate",
                    format!("DPoP error=\"{error}\", algs=\"ES256\""),
                );
            if error == "use_dpop_nonce" {
                r = r.header("dpop-nonce", state.nonce.clone().unwrap());
            }
            r.body(Body::from(
                json!({ "error": error, "why": why }).to_string(),
            ))
            .unwrap()
        }
    }
}

type Refusal = (&'static str, String);

async fn check(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    state: &RsState,
    verdict: &mut Verdict,
) -> Result<Value, Refusal> {
    let bad_proof = |why: &str| ("invalid_dpop_proof", why.to_owned());
    let token = verdict
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("DPoP "))
        .ok_or(("invalid_token", "not a DPoP authorization".to_owned()))?
        .to_owned();
    if headers.get_all("dpop").iter().count() != 1 {
        return Err(bad_proof("exactly one DPoP header is required"));
    }
    let proof = verdict.proof.clone().ok_or(bad_proof("no proof"))?;
    let jwt_header =
        jsonwebtoken::decode_header(&proof).map_err(|e| bad_proof(&format!("header: {e}")))?;
    if jwt_header.typ.as_deref() != Some("dpop+jwt") {
        return Err(bad_proof("typ is not dpop+jwt"));
    }
    if jwt_header.alg != Algorithm::ES256 {
        return Err(bad_proof("alg is not ES256"));
    }
    let jwk = jwt_header.jwk.ok_or(bad_proof("no jwk"))?;
    if serde_json::to_value(&jwk).unwrap().get("d").is_some() {
        return Err(bad_proof("jwk holds a private key"));
    }
    let jkt = jwk.thumbprint(ThumbprintHash::SHA256).unwrap();
    verdict.jkt = Some(jkt.clone());
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| bad_proof(&format!("jwk: {e}")))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(&proof, &key, &validation)
        .map_err(|e| bad_proof(&format!("signature: {e}")))?
        .claims;
    if claims["htm"] != method.as_str() {
        return Err(bad_proof("htm mismatch"));
    }
    let host = headers["host"].to_str().unwrap();
    let called = format!("http://{host}{path}");
    if claims["htu"] != called.as_str() {
        return Err(bad_proof(&format!(
            "htu mismatch: {} for {called}",
            claims["htu"]
        )));
    }
    let iat = claims["iat"].as_i64().ok_or(bad_proof("no iat"))?;
    if (iat - portcullis::primitives::now_secs()).abs() > 60 {
        return Err(bad_proof("iat out of window"));
    }
    let ath = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ));
    if claims["ath"] != ath.as_str() {
        return Err(bad_proof("ath mismatch"));
    }
    if let Some(nonce) = &state.nonce
        && claims["nonce"] != nonce.as_str()
    {
        return Err(("use_dpop_nonce", "nonce required".to_owned()));
    }
    let jti = claims["jti"].as_str().ok_or(bad_proof("no jti"))?;
    if !state.jtis.lock().unwrap().insert(jti.to_owned()) {
        return Err(bad_proof("jti replayed"));
    }
    let endpoint = state
        .introspection
        .lock()
        .unwrap()
        .clone()
        .expect("use_provider first");
    let info = introspect_at(&endpoint, &token).await;
    if info["active"] != true {
        return Err(("invalid_token", "token not active".to_owned()));
    }
    if info["cnf"]["jkt"] != jkt.as_str() {
        return Err((
            "invalid_token",
            format!("cnf.jkt {} is not the proof key's", info["cnf"]["jkt"]),
        ));
    }
    Ok(info)
}

// ---------------------------------------------------------------- tests

const CSRF: &[(&str, &str)] = &[("x-csrf", "1")];

/// The test env with `oidc.dpop` on and `/rs` routed to `rs`.
async fn env_with(rs: &VerifyingUpstream, builder: EnvBuilder) -> Env {
    let env = builder
        .oidc("dpop = true\n")
        .routes(&format!(
            "\n[[routes]]\nprefix = \"/rs\"\nupstream = \"{}\"\n",
            rs.url()
        ))
        .start()
        .await;
    rs.use_provider(&env.provider).await;
    env
}

fn token_of(v: &Verdict) -> String {
    v.authorization
        .as_deref()
        .unwrap()
        .strip_prefix("DPoP ")
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn dpop_bound_tokens_pass_a_verifying_upstream_and_captured_proofs_do_not() {
    let rs = VerifyingUpstream::start(false).await;
    let env = env_with(&rs, Env::builder()).await;
    let browser = env.browser();
    // Userinfo is on in this env: the login's userinfo call carries a proof too.
    browser.login(&env, "alice", "alice", "/").await;
    assert_eq!(
        browser.user(&env).await.json()["email"],
        "alice@example.com"
    );

    let r = browser.get_with(&env.url("/rs/items?page=2#x"), CSRF).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let accepted = rs.last();
    assert_eq!(accepted.refused, None);
    assert_eq!(accepted.path_and_query, "/rs/items?page=2");
    let jkt = accepted.jkt.clone().unwrap();
    assert_eq!(r.json()["jkt"], jkt.as_str());

    // The provider issued a DPoP-bound token: bound to the key the proofs are signed with.
    let token = token_of(&accepted);
    let info = env.provider.introspect(&token).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["token_type"], "DPoP", "{info}");
    assert_eq!(info["cnf"]["jkt"], jkt.as_str());

    // A captured token and proof, replayed to the same URL: refused (jti seen).
    let auth = accepted.authorization.clone().unwrap();
    let proof = accepted.proof.clone().unwrap();
    let replay = rs
        .call(
            Method::GET,
            "/rs/items?page=2",
            &[("authorization", &auth), ("dpop", &proof)],
        )
        .await;
    assert_eq!(replay.status, 401);
    assert_eq!(rs.last().refused.as_deref(), Some("jti replayed"));
    // ... or to another URL: refused (htu).
    let elsewhere = rs
        .call(
            Method::GET,
            "/rs/admin",
            &[("authorization", &auth), ("dpop", &proof)],
        )
        .await;
    assert_eq!(elsewhere.status, 401);
    assert!(rs.last().refused.unwrap().starts_with("htu mismatch"));
    // ... or with another method: refused (htm).
    let post = rs
        .call(
            Method::POST,
            "/rs/items",
            &[("authorization", &auth), ("dpop", &proof)],
        )
        .await;
    assert_eq!(post.status, 401);
    assert_eq!(rs.last().refused.as_deref(), Some("htm mismatch"));
    // The token alone, as Bearer: refused.
    let bearer = format!("Bearer {token}");
    assert_eq!(
        rs.call(Method::GET, "/rs/items", &[("authorization", &bearer)])
            .await
            .status,
        401
    );

    // Every call through the gateway has a fresh proof.
    let r = browser.get_with(&env.url("/rs/items?page=2"), CSRF).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(rs.last().proof, accepted.proof);
    // With a body too (POST, no nonce needed here).
    let r = browser
        .send(
            Method::POST,
            &env.url("/rs/items"),
            &[("x-csrf", "1"), ("content-type", "application/json")],
            Some(Body::from("{\"a\":1}")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(rs.last().method, Method::POST);

    // oidc.dpop makes the other user-token routes DPoP routes by default.
    let r = browser.get_with(&env.url("/api/x"), CSRF).await;
    assert_eq!(r.status, 200);
    let seen = env.upstream.last();
    assert!(
        seen.headers["authorization"]
            .to_str()
            .unwrap()
            .starts_with("DPoP ")
    );
    assert!(seen.headers.contains_key("dpop"));
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1", "the TCP peer");
    // Public routes carry nothing.
    browser.get(&env.url("/public/p")).await;
    let seen = env.upstream.last();
    assert!(!seen.headers.contains_key("dpop") && !seen.headers.contains_key("authorization"));
}

#[tokio::test]
async fn a_provider_that_demands_dpop_nonces_still_logs_in() {
    let rs = VerifyingUpstream::start(false).await;
    let env = env_with(
        &rs,
        Env::builder().provider_option("dpopNonce", json!(true)),
    )
    .await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    assert_eq!(browser.user(&env).await.status, 200);
    let r = browser.get_with(&env.url("/rs/a"), CSRF).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // One code exchange, refused once for the nonce, then granted.
    let grants = env.provider.grants(CLIENT_ID).await;
    assert_eq!(grants["authorization_code"]["success"], 1, "{grants}");
    assert_eq!(
        grants["authorization_code"]["errors"]["use_dpop_nonce"], 1,
        "{grants}"
    );
    // A second login reuses the kept nonce: no more refusals.
    let other = env.browser();
    other.login(&env, "bob", "bob", "/").await;
    let grants = env.provider.grants(CLIENT_ID).await;
    assert_eq!(grants["authorization_code"]["success"], 2, "{grants}");
    assert_eq!(
        grants["authorization_code"]["errors"]["use_dpop_nonce"], 1,
        "{grants}"
    );
}

#[tokio::test]
async fn an_upstream_nonce_is_learned_and_a_bodiless_request_retried() {
    let rs = VerifyingUpstream::start(true).await;
    let rs2 = VerifyingUpstream::start(true).await;
    let env = env_with(
        &rs,
        Env::builder().routes(&format!(
            "\n[[routes]]\nprefix = \"/rs2\"\nupstream = \"{}\"\n",
            rs2.url()
        )),
    )
    .await;
    rs2.use_provider(&env.provider).await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;

    // A GET: the 401 use_dpop_nonce is answered by a retry with the nonce.
    let r = browser.get_with(&env.url("/rs/first"), CSRF).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = rs.verdicts();
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v[0].refused.as_deref(), Some("nonce required"));
    assert_eq!(v[1].refused, None);
    // The nonce is kept: the next call needs no retry.
    assert_eq!(
        browser.get_with(&env.url("/rs/second"), CSRF).await.status,
        200
    );
    assert_eq!(rs.verdicts().len(), 3);

    // A request with a body is not buffered for a retry: its 401 goes back, and
    // the next request carries the nonce.
    let post = |path: &'static str| {
        let browser = browser.clone();
        let url = env.url(path);
        async move {
            browser
                .send(
                    Method::POST,
                    &url,
                    &[("x-csrf", "1"), ("content-type", "text/plain")],
                    Some(Body::from("payload")),
                )
                .await
        }
    };
    let r = post("/rs2/write").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("use_dpop_nonce")
    );
    assert_eq!(rs2.verdicts().len(), 1);
    let r = post("/rs2/write").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(rs2.verdicts().len(), 2);
}

#[tokio::test]
async fn a_refresh_binds_the_new_token_to_the_same_key() {
    let rs = VerifyingUpstream::start(false).await;
    let env = env_with(&rs, Env::builder().access_token_ttl(4).userinfo(false)).await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    assert_eq!(browser.get_with(&env.url("/rs/a"), CSRF).await.status, 200);
    let before = rs.last();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // Several at once: one refresh (single-flight), all accepted.
    let calls = (0..4).map(|i| {
        let browser = browser.clone();
        let url = env.url(&format!("/rs/b{i}"));
        async move { browser.get_with(&url, CSRF).await.status }
    });
    for status in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200);
    }
    let after = rs.last();
    assert_eq!(after.refused, None);
    assert_ne!(token_of(&after), token_of(&before), "a new access token");
    assert_eq!(after.jkt, before.jkt, "bound to the same session key");
    assert_eq!(env.provider.grant_count("refresh_token").await, (1, 0));
    let info = env.provider.introspect(&token_of(&after)).await;
    assert_eq!(info["cnf"]["jkt"], after.jkt.unwrap().as_str());
}

#[tokio::test]
async fn the_key_lives_in_the_shared_store() {
    // Two instances on one Redis: the session (and its DPoP key) made by the first is
    // used by the second, and the proofs it signs match the token's binding.
    let rs = VerifyingUpstream::start(false).await;
    let env = env_with(&rs, Env::builder().store("redis").instances(2)).await;
    let browser = env.browser();
    browser.login(&env, "alice", "alice", "/").await;
    let r = browser.get_with(&env.url("/rs/on-a"), CSRF).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let on_a = rs.last().jkt;
    browser.share_session_with(&env, &env.others[0]);
    let r = browser.get_with(&env.others[0].url("/rs/on-b"), CSRF).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(rs.last().jkt, on_a);
    // Nothing in Redis holds the key in clear (it is sealed with the tokens).
    let dump = env.redis.as_ref().unwrap().command(&["KEYS", "*"]);
    assert!(!dump.contains("\"d\""), "{dump}");
}

#[tokio::test]
async fn a_provider_that_ignores_dpop_is_a_refused_downgrade() {
    let rs = VerifyingUpstream::start(false).await;
    let env = env_with(&rs, Env::builder().provider_option("dpop", json!(false))).await;
    let browser = env.browser();
    let authorize = browser.start_login(&env, "/").await;
    let callback = browser.provider_login(&authorize, "alice", "alice").await;
    browser
        .get(&callback)
        .await
        .assert_error(400, "invalid_request");
    browser
        .user(&env)
        .await
        .assert_error(401, "unauthenticated");
    assert!(
        env.gateway
            .logs()
            .contains("did not bind the token to the DPoP key")
    );
}
