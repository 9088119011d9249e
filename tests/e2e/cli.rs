//! The command line: check, keygen, bad configs, session administration.

use std::process::Command;

use crate::harness::*;

fn run(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_reports_what_the_provider_offers() {
    let env = Env::builder().start().await;
    let config = env.gateway.config_path.to_str().unwrap().to_owned();
    let dir = env.gateway.dir.path().to_owned();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || run(&["check", "--config", &config], &dir))
            .await
            .unwrap();
    assert!(ok, "check failed: {err}");
    assert!(out.contains(&env.provider.issuer));
    assert!(out.contains("token endpoint:"));
    assert!(out.contains("iss parameter (RFC 9207): yes"), "{out}");
    assert!(
        out.contains("PAR endpoint:") && out.contains("/request"),
        "{out}"
    );
    assert!(out.contains("back-channel logout:     yes"), "{out}");
    assert!(out.contains("JWKS:"));
    assert!(
        !out.contains(CLIENT_SECRET) && !err.contains(CLIENT_SECRET),
        "check prints no secret"
    );

    // A wrong issuer: exit 1 naming the key.
    let text = std::fs::read_to_string(&env.gateway.config_path).unwrap();
    let bad = env.gateway.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        text.replace(
            &env.provider.issuer,
            &format!("http://127.0.0.1:{}", free_port()),
        ),
    )
    .unwrap();
    let dir = env.gateway.dir.path().to_owned();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        run(&["check", "--config", bad.to_str().unwrap()], &dir)
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(err.contains("oidc.issuer"), "{err}");
}

/// `portcullis check --config <path>` in the gateway's folder: (success, stdout, stderr).
async fn check(env: &Env, path: &std::path::Path) -> (bool, String, String) {
    let config = path.to_str().unwrap().to_owned();
    let dir = env.gateway.dir.path().to_owned();
    tokio::task::spawn_blocking(move || run(&["check", "--config", &config], &dir))
        .await
        .unwrap()
}

/// The gateway's config with `from` replaced by `to`, written next to it.
fn edited_config(env: &Env, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&env.gateway.config_path).unwrap();
    assert!(text.contains(from), "{from} is not in the config");
    let path = env.gateway.dir.path().join("edited.toml");
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path
}

#[tokio::test]
async fn check_proves_the_client_secret() {
    for method in ["client_secret_basic", "client_secret_post"] {
        let env = Env::builder().auth_method(method).start().await;
        let (ok, out, err) = check(&env, &env.gateway.config_path).await;
        assert!(ok, "{method}: check failed: {err}");
        assert!(
            out.contains("client credentials:      ok (the provider authenticated oidc.client_id portcullis-test;"),
            "{method}: {out}"
        );

        let wrong = edited_config(&env, CLIENT_SECRET, "not-the-secret");
        let (ok, out, err) = check(&env, &wrong).await;
        assert!(!ok, "{method}: a wrong secret passed: {out}");
        assert!(
            err.contains(&format!(
                "the provider refused the client credentials for oidc.client_id {CLIENT_ID}: \
                 invalid_client — check oidc.client_secret (and oidc.auth_method = \"{method}\")"
            )),
            "{method}: {err}"
        );
        assert!(!err.contains("not-the-secret") && !out.contains("not-the-secret"));
        // The made-up code of the probe is refused as a grant, not counted as anything else.
        let grants = env.provider.grants(CLIENT_ID).await;
        assert_eq!(
            grants["authorization_code"]["errors"]["invalid_grant"], 1,
            "{grants}"
        );
    }
}

#[tokio::test]
async fn check_proves_the_client_key() {
    let signer = TestSigner::new("client-key-1");
    let keys = tempfile::tempdir().unwrap();
    let env = Env::builder()
        .private_key_jwt(&signer, keys.path())
        .start()
        .await;
    let (ok, out, err) = check(&env, &env.gateway.config_path).await;
    assert!(ok, "check failed: {err}");
    assert!(out.contains("client credentials:      ok"), "{out}");

    // Another key under the same kid: the provider can't verify the assertion.
    let other = keys.path().join("other-key.pem");
    std::fs::write(&other, TestSigner::new("client-key-1").private_pem()).unwrap();
    let key_path = keys.path().join("client-key.pem");
    let wrong = edited_config(&env, key_path.to_str().unwrap(), other.to_str().unwrap());
    let (ok, _, err) = check(&env, &wrong).await;
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the provider refused the client credentials for oidc.client_id {CLIENT_ID}: \
             invalid_client — check oidc.private_key_file"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn check_says_what_the_provider_does_not_advertise() {
    // django-oauth-toolkit's shape: revocation only in RFC 8414 metadata.
    let env = Env::builder()
        .provider_option(
            "omitFromDiscovery",
            serde_json::json!(["revocation_endpoint"]),
        )
        .start()
        .await;
    let (ok, out, err) = check(&env, &env.gateway.config_path).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "revocation endpoint:     {} (from RFC 8414 metadata at {})",
            env.provider.url("/token/revocation"),
            env.provider.url("/.well-known/oauth-authorization-server")
        )),
        "{out}"
    );
    assert!(!out.contains("will not be revoked"), "{out}");

    // Nothing anywhere: a warning, and "(not advertised)" instead of empty values.
    let env = Env::builder()
        .provider_option(
            "omitFromDiscovery",
            serde_json::json!([
                "revocation_endpoint",
                "end_session_endpoint",
                "userinfo_endpoint",
                "code_challenge_methods_supported",
                "pushed_authorization_request_endpoint"
            ]),
        )
        .provider_option(
            "omitFromRfc8414",
            serde_json::json!(["revocation_endpoint"]),
        )
        .userinfo(false)
        .start()
        .await;
    let (ok, out, err) = check(&env, &env.gateway.config_path).await;
    assert!(ok, "{err}");
    for line in [
        "revocation endpoint:     (not advertised)",
        "end-session endpoint:    (not advertised)",
        "userinfo endpoint:       (not advertised)",
        "PKCE methods:            (not advertised)",
        "PAR endpoint:            (not advertised)",
    ] {
        assert!(out.contains(line), "{line:?} missing: {out}");
    }
    assert!(
        out.contains("refresh tokens will not be revoked at logout"),
        "{out}"
    );
    for line in out.lines() {
        assert!(!line.trim_end().ends_with(':'), "an empty value: {line:?}");
    }

    // oidc.revocation_endpoint fills the gap.
    let endpoint = env.provider.url("/token/revocation");
    let path = edited_config(
        &env,
        "[oidc]\n",
        &format!("[oidc]\nrevocation_endpoint = \"{endpoint}\"\n"),
    );
    let (ok, out, err) = check(&env, &path).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "revocation endpoint:     {endpoint} (from oidc.revocation_endpoint)"
        )),
        "{out}"
    );
    assert!(!out.contains("will not be revoked"), "{out}");
}

/// An issuer with a path: RFC 8414 §3.1 puts the path after the well-known part.
#[tokio::test]
async fn check_finds_rfc8414_metadata_of_an_issuer_with_a_path() {
    let env = Env::builder()
        .provider_option("issuerPath", serde_json::json!("/tenant1"))
        .provider_option(
            "omitFromDiscovery",
            serde_json::json!(["revocation_endpoint"]),
        )
        .start()
        .await;
    let issuer = &env.provider.issuer;
    let origin = issuer.strip_suffix("/tenant1").unwrap();
    let (ok, out, err) = check(&env, &env.gateway.config_path).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "revocation endpoint:     {issuer}/token/revocation (from RFC 8414 metadata at \
             {origin}/.well-known/oauth-authorization-server/tenant1)"
        )),
        "{out}"
    );
    assert!(out.contains("client credentials:      ok"), "{out}");
}

#[test]
fn keygen_prints_a_fresh_key() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, a, _) = run(&["keygen"], dir.path());
    let (_, b, _) = run(&["keygen"], dir.path());
    assert!(ok);
    assert_eq!(a.trim().len(), 43);
    assert_ne!(a, b);
    assert!(portcullis::session::cipher::decode_key(a.trim()).is_ok());
}

#[test]
fn a_bad_config_refuses_to_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let base = format!(
        "[server]\npublic_origin = \"http://127.0.0.1:1\"\n[oidc]\nissuer = \"http://127.0.0.1:2\"\nclient_id = \"c\"\nclient_secret = \"s\"\n[session]\nstore = \"memory\"\nkeys = [\"{}\"]\n",
        random_key()
    );
    let cases = [
        (
            base.replace("http://127.0.0.1:1", "http://example.com"),
            "server.public_origin",
        ),
        (
            base.replace("keys = [", "keys = [\"tooshort\", "),
            "session.keys[0]",
        ),
        (
            base.replace("client_secret = \"s\"\n", ""),
            "oidc.client_secret",
        ),
        (
            format!("{base}[[routes]]\nprefix = \"api\"\nupstream = \"http://127.0.0.1:3\"\n"),
            "routes[0].prefix",
        ),
        (
            base.replace("store = \"memory\"", "store = \"floppy\""),
            "store",
        ),
    ];
    for (text, key) in cases {
        std::fs::write(&path, text).unwrap();
        let (ok, _, err) = run(&["serve", "--config", path.to_str().unwrap()], dir.path());
        assert!(!ok, "started with a bad {key}");
        assert!(err.contains(key), "error does not name {key}: {err}");
    }
    let (ok, _, err) = run(&["--config", "/nonexistent.toml"], dir.path());
    assert!(!ok && err.contains("not found"), "{err}");
}

#[tokio::test]
async fn sessions_list_and_revoke_against_sqlite() {
    let env = Env::builder().store("sqlite").start().await;
    let alice = env.browser();
    let bob = env.browser();
    alice.login(&env, "alice", "alice", "/").await;
    bob.login(&env, "bob", "bob", "/").await;
    let config = env.gateway.config_path.to_str().unwrap().to_owned();
    let dir = env.gateway.dir.path().to_owned();
    let (c, d) = (config.clone(), dir.clone());
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || run(&["sessions", "list", "--config", &c], &d))
            .await
            .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("\"sub\":\"alice\"") && out.contains("\"sub\":\"bob\""));
    assert!(
        !out.contains(&alice.session_cookie(&env).unwrap()),
        "no session id printed"
    );

    let (c, d) = (config.clone(), dir.clone());
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        run(
            &["sessions", "revoke", "--sub", "alice", "--config", &c],
            &d,
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("revoked 1"), "{out}");
    // The gateway caches sessions: another process's revocation is seen within 0.75 s.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    alice.user(&env).await.assert_error(401, "unauthenticated");
    assert_eq!(bob.user(&env).await.status, 200);
}
