//! Errors an operator can act on: config errors name the key in one style and where
//! its value came from, with no source locations or library type names; an
//! unreachable provider is named with its URL and the cause; relative paths in the
//! config file are relative to its folder; `sessions list` prints RFC 3339 times; a
//! refused start says what to do.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

/// Runs the binary in `cwd` with `env`: (success, stdout, stderr).
fn portcullis(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("PORTCULLIS_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn base_config(extra_session: &str) -> String {
    format!(
        "[server]\npublic_origin = \"http://127.0.0.1:1\"\n\
         [oidc]\nissuer = \"http://127.0.0.1:2\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
         [session]\nkeys = [\"{}\"]\n{extra_session}\n",
        random_key()
    )
}

/// No source location of ours, no library type name, no `routes.0` style.
fn assert_plain(err: &str) {
    for internal in ["src/", ".rs:", "figment", "Value", "routes.0", "default."] {
        assert!(!err.contains(internal), "{internal:?} in {err}");
    }
}

#[test]
fn config_errors_name_the_key_and_where_its_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    let file = path.to_str().unwrap();
    let check = |text: &str, env: &[(&str, &str)]| {
        std::fs::write(&path, text).unwrap();
        let (ok, _, err) = portcullis(&["check", "--config", file], dir.path(), env);
        assert!(!ok, "accepted: {text}");
        assert_plain(&err);
        err
    };
    let base = format!("{}store = \"memory\"\n", base_config(""));

    // A wrong type in the file.
    let err = check(
        &format!(
            "{base}[[routes]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:3\"\nstrip_prefix = \"yes\"\n"
        ),
        &[],
    );
    assert!(
        err.contains(&format!(
            "routes[0].strip_prefix: found string \"yes\", expected a boolean (in {file})"
        )),
        "{err}"
    );
    // An unknown key: named in full, with the keys that exist.
    let err = check(
        &format!(
            "{base}[[routes]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:3\"\nstrip = true\n"
        ),
        &[],
    );
    assert!(
        err.contains("routes[0].strip: is not a key here (known keys: prefix, upstream"),
        "{err}"
    );
    assert!(err.contains(&format!("(in {file})")), "{err}");
    // A missing key.
    let err = check(&base.replace("client_id = \"c\"\n", ""), &[]);
    assert!(
        err.contains(&format!("oidc.client_id: is required (in {file})")),
        "{err}"
    );
    // A value of an environment variable: parse errors and validation errors alike.
    let err = check(&base, &[("PORTCULLIS_SESSION__IDLE_TIMEOUT", "soon")]);
    assert!(
        err.contains(
            "session.idle_timeout: found string \"soon\", expected a duration \
             (from the environment variable PORTCULLIS_SESSION__IDLE_TIMEOUT)"
        ),
        "{err}"
    );
    let err = check(&base, &[("PORTCULLIS_OIDC__ISSUER", "ftp://idp.example")]);
    assert!(
        err.contains(
            "oidc.issuer: must be an http(s) URL without a query \
             (from the environment variable PORTCULLIS_OIDC__ISSUER)"
        ),
        "{err}"
    );
    let err = check(&base, &[("PORTCULLIS_SESSION__STORE", "floppy")]);
    assert!(
        err.contains(
            "session.store: \"floppy\" is not one of memory, sqlite, redis \
             (from the environment variable PORTCULLIS_SESSION__STORE)"
        ),
        "{err}"
    );
    // A validation error about the file's value.
    let err = check(
        &format!("{base}[[routes]]\nprefix = \"api\"\nupstream = \"http://127.0.0.1:3\"\n"),
        &[],
    );
    assert!(
        err.contains("routes[0].prefix: must start with '/'"),
        "{err}"
    );
    assert!(err.contains(&format!("(in {file})")), "{err}");
}

#[test]
fn an_unreachable_provider_is_named_with_its_url_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = base_config("store = \"memory\"")
        .replace("http://127.0.0.1:2", &format!("http://127.0.0.1:{port}"));
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let (ok, _, err) = portcullis(
        &["check", "--config", path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "http://127.0.0.1:{port}/.well-known/openid-configuration"
        )),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
}

#[test]
fn relative_paths_in_the_file_are_relative_to_its_folder() {
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("conf");
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(conf.join("spa")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(conf.join("secret.txt"), "s\n").unwrap();
    let text = base_config("store = \"sqlite\"\nsqlite_path = \"data/sessions.db\"").replace(
        "client_secret = \"s\"",
        "client_secret_file = \"secret.txt\"",
    ) + "[static]\ndir = \"spa\"\n";
    let path = conf.join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    let file = path.to_str().unwrap();

    // Run from another folder: the static dir and the secret file are found, the
    // database is made next to the config.
    let (ok, out, err) = portcullis(&["sessions", "list", "--config", file], &elsewhere, &[]);
    assert!(ok, "{err}");
    assert_eq!(out, "");
    assert!(
        conf.join("data/sessions.db").is_file(),
        "the database is beside the config"
    );
    assert!(!elsewhere.join("data").exists());

    // A relative path from an environment variable stays relative to the working directory.
    let (ok, _, err) = portcullis(
        &["sessions", "list", "--config", file],
        &elsewhere,
        &[("PORTCULLIS_SESSION__SQLITE_PATH", "env.db")],
    );
    assert!(ok, "{err}");
    assert!(elsewhere.join("env.db").is_file());

    // A missing one is reported with the resolved path.
    std::fs::remove_dir(conf.join("spa")).unwrap();
    let (ok, _, err) = portcullis(&["sessions", "list", "--config", file], &elsewhere, &[]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "static.dir: {} is not a directory",
            conf.join("spa").display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn sessions_list_prints_rfc3339_times() {
    let env = Env::builder().store("sqlite").start().await;
    env.browser().login(&env, "alice", "alice", "/").await;
    let config = env.gateway.config_path.to_str().unwrap().to_owned();
    let dir = env.gateway.dir.path().to_owned();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        portcullis(&["sessions", "list", "--config", &config], &dir, &[])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    for field in ["created_at", "last_seen", "expires_at"] {
        let t = line[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {line}"));
        let parsed = humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("{field} {t}: {e}"));
        let age = std::time::SystemTime::now()
            .duration_since(parsed)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_else(|e| -(e.duration().as_secs() as i64));
        match field {
            "expires_at" => assert!(age < 0, "{field} {t} is not in the future"),
            _ => assert!((0..120).contains(&age), "{field} {t}"),
        }
        assert!(t.ends_with('Z') && t.len() == 20, "{t}");
    }
}

#[test]
fn a_refused_start_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = base_config("store = \"memory\"").replace(
        "[server]\n",
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let (ok, _, err) = portcullis(
        &["serve", "--config", path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert!(!ok);
    assert!(err.contains("address already in use"), "{err}");
    assert!(err.contains("or set another server.listen"), "{err}");
    drop(taken);

    let text = base_config("store = \"sqlite\"\nsqlite_path = \"/proc/portcullis/sessions.db\"");
    std::fs::write(&path, text).unwrap();
    let (ok, _, err) = portcullis(
        &["serve", "--config", path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert!(!ok);
    assert!(err.contains("session.sqlite_path"), "{err}");
    assert!(err.contains("writable by this user"), "{err}");
}
