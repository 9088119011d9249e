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
