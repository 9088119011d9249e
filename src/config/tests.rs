//! Config tests: loading, defaults, the environment overlay, secret files, and one
//! refusal per validation rule — each must name the key at fault. The environment
//! is always passed in; these tests never touch the process environment.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use super::*;

/// A valid session key (base64url of 32 bytes). Public: test-only.
const KEY: &str = "hekyQHTosvculEk8CMUKNgwBC6Y3BzZ7iPc9C1RuEJI";

/// A TOML config built from sections of `key = value` lines, starting from the
/// smallest valid one. Values are TOML literals (`"\"text\""`, `"true"`, `"[]"`).
#[derive(Clone)]
struct Toml {
    sections: Vec<(String, Vec<(String, String)>)>,
    routes: Vec<String>,
}

impl Toml {
    fn minimal() -> Self {
        let section = |name: &str, pairs: &[(&str, &str)]| {
            let pairs = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (name.to_owned(), pairs)
        };
        Self {
            sections: vec![
                section(
                    "server",
                    &[("public_origin", "\"https://app.example.com\"")],
                ),
                section(
                    "oidc",
                    &[
                        ("issuer", "\"https://idp.example.com/realms/main\""),
                        ("client_id", "\"spa-bff\""),
                        ("client_secret", "\"s3cret\""),
                    ],
                ),
                section("session", &[("keys", &format!("[\"{KEY}\"]"))]),
            ],
            routes: Vec::new(),
        }
    }

    /// Sets `key` in `[section]`, replacing it if present (adds the section if needed).
    fn set(mut self, section: &str, key: &str, value: &str) -> Self {
        let pairs = match self.sections.iter().position(|(s, _)| s == section) {
            Some(i) => &mut self.sections[i].1,
            None => {
                self.sections.push((section.to_owned(), Vec::new()));
                &mut self.sections.last_mut().unwrap().1
            }
        };
        match pairs.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = value.to_owned(),
            None => pairs.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    fn unset(mut self, section: &str, key: &str) -> Self {
        for (s, pairs) in &mut self.sections {
            if s == section {
                pairs.retain(|(k, _)| k != key);
            }
        }
        self
    }

    /// Adds a `[[routes]]` table with these lines.
    fn route(mut self, lines: &str) -> Self {
        self.routes.push(lines.to_owned());
        self
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (section, pairs) in &self.sections {
            writeln!(out, "[{section}]").unwrap();
            for (k, v) in pairs {
                writeln!(out, "{k} = {v}").unwrap();
            }
            out.push('\n');
        }
        for route in &self.routes {
            writeln!(out, "[[routes]]\n{route}\n").unwrap();
        }
        out
    }

    fn load(&self) -> Result<Config, ConfigError> {
        Config::from_toml(&self.text(), [])
    }

    fn load_with_env(&self, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml(&self.text(), env)
    }

    fn valid(&self) -> Config {
        self.load()
            .unwrap_or_else(|e| panic!("refused: {e}\n--- config ---\n{}", self.text()))
    }

    /// Loads, expects a refusal by `validate()` (or secret-file reading) naming `key`.
    fn refused_for(&self, key: &str) -> String {
        match self.load() {
            Ok(_) => panic!(
                "accepted, expected a refusal naming {key}:\n{}",
                self.text()
            ),
            Err(ConfigError::Invalid {
                key: named,
                problem,
            }) => {
                assert_eq!(named, key, "wrong key named ({problem})\n{}", self.text());
                let text = format!("{named}: {problem}");
                assert!(text.starts_with(key));
                text
            }
            Err(e @ ConfigError::Parse(_)) => {
                panic!(
                    "a parse error, expected validation naming {key}: {e}\n{}",
                    self.text()
                )
            }
        }
    }

    /// Loads, expects a parse (serde) error whose text mentions every one of `words`.
    fn unparsable(&self, words: &[&str]) -> String {
        let e = match self.load() {
            Ok(_) => panic!("accepted, expected a parse error:\n{}", self.text()),
            Err(e) => e.to_string(),
        };
        for word in words {
            assert!(e.contains(word), "{e:?} does not mention {word:?}");
        }
        e
    }
}

// ---- loading and defaults ----------------------------------------------------------

#[test]
fn minimal_config_loads() {
    let c = Toml::minimal().valid();
    assert_eq!(c.server.public_origin.as_str(), "https://app.example.com/");
    assert_eq!(
        c.frontend().oidc.issuer,
        "https://idp.example.com/realms/main"
    );
    assert_eq!(c.frontend().oidc.client_id, "spa-bff");
    assert_eq!(
        c.frontend().oidc.client_secret.as_ref().unwrap().expose(),
        "s3cret"
    );
    assert_eq!(c.session.keys.len(), 1);
    assert!(c.frontend().routes.is_empty());
    assert!(c.frontend().static_files.is_none());
}

#[test]
fn defaults_follow_the_contract() {
    let c = Toml::minimal()
        .route("prefix = \"/api\"\nupstream = \"http://127.0.0.1:9100\"")
        .valid();

    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.server.admin_listen, None);
    assert!(c.server.trusted_proxies.is_empty());
    assert_eq!(c.server.workers, None);
    assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.server.first_request_timeout, Duration::from_secs(10));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.server.write_timeout, Duration::from_secs(30));
    assert_eq!(c.server.max_connections_per_client, 1024);

    assert_eq!(c.frontend().oidc.auth_method, AuthMethod::ClientSecretBasic);
    assert_eq!(c.frontend().oidc.scopes, ["openid"]);
    assert!(!c.frontend().oidc.userinfo);
    assert_eq!(c.frontend().oidc.post_logout_redirect_uri, None);
    assert!(
        c.frontend()
            .oidc
            .id_token_algorithms
            .iter()
            .any(|a| a == "RS256")
    );
    assert!(
        !c.frontend()
            .oidc
            .id_token_algorithms
            .iter()
            .any(|a| a.starts_with("HS"))
    );
    assert_eq!(c.frontend().oidc.clock_skew, Duration::from_secs(60));
    assert_eq!(c.frontend().oidc.http_timeout, Duration::from_secs(10));
    assert_eq!(
        c.frontend().oidc.pending_login_ttl,
        Duration::from_secs(600)
    );
    assert_eq!(c.frontend().oidc.max_pending_logins, 10_000);

    assert_eq!(c.session.store, StoreKind::Sqlite);
    assert_eq!(c.session.sqlite_path, Path::new("portcullis.db"));
    assert_eq!(c.session.sqlite_cache_size, 100_000);
    assert!(c.session.redis_url.is_none());
    assert_eq!(c.session.cookie_name, "__Host-portcullis");
    assert_eq!(c.session.same_site, SameSite::Strict);
    assert_eq!(c.session.idle_timeout, Duration::from_secs(30 * 60));
    assert_eq!(c.session.absolute_timeout, Duration::from_secs(12 * 3600));

    assert_eq!(c.tokens.refresh_before, Duration::from_secs(60));

    let route = &c.frontend().routes[0];
    assert_eq!(route.token, TokenKind::User);
    assert!(!route.strip_prefix);
    assert_eq!(route.timeout, Duration::from_secs(30));
}

#[test]
fn static_defaults_to_spa_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let c = Toml::minimal()
        .set("static", "dir", &toml_string(dir.path()))
        .valid();
    let s = c.frontend().static_files.clone().unwrap();
    assert_eq!(s.dir, dir.path());
    assert!(s.spa_fallback);
}

#[test]
fn every_documented_key_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let c = Toml::minimal()
        .set("server", "listen", "\"0.0.0.0:8443\"")
        .set("server", "admin_listen", "\"127.0.0.1:9091\"")
        .set("server", "trusted_proxies", "[\"10.0.0.0/8\", \"::1/128\"]")
        .set("server", "workers", "2")
        .set("server", "drain_timeout", "\"5s\"")
        .set("oidc", "auth_method", "\"client_secret_post\"")
        .set(
            "oidc",
            "scopes",
            "[\"openid\", \"profile\", \"email\", \"offline_access\"]",
        )
        .set(
            "oidc",
            "post_logout_redirect_uri",
            "\"https://app.example.com/\"",
        )
        .set("oidc", "userinfo", "true")
        .set("oidc", "id_token_algorithms", "[\"ES256\", \"EdDSA\"]")
        .set("session", "store", "\"memory\"")
        .set("session", "cookie_name", "\"__Host-app\"")
        .set("session", "same_site", "\"lax\"")
        .set("session", "idle_timeout", "\"15m\"")
        .set("session", "absolute_timeout", "\"1day\"")
        .set("tokens", "refresh_before", "\"2m\"")
        .set("static", "dir", &toml_string(dir.path()))
        .set("static", "spa_fallback", "false")
        .route(
            "prefix = \"/api\"\nupstream = \"http://127.0.0.1:9100/v1/\"\n\
             token = \"user_or_none\"\nstrip_prefix = true\ntimeout = \"3s\"",
        )
        .route("prefix = \"/public\"\nupstream = \"http://127.0.0.1:9200\"\ntoken = \"none\"")
        .valid();
    assert_eq!(c.server.trusted_proxies.len(), 2);
    assert_eq!(
        c.server.admin_listen,
        Some("127.0.0.1:9091".parse().unwrap())
    );
    assert_eq!(c.server.workers, Some(2));
    assert_eq!(c.frontend().oidc.auth_method, AuthMethod::ClientSecretPost);
    assert!(c.frontend().oidc.userinfo);
    assert_eq!(c.session.store, StoreKind::Memory);
    assert_eq!(c.session.same_site, SameSite::Lax);
    assert_eq!(c.session.absolute_timeout, Duration::from_secs(86_400));
    assert_eq!(c.tokens.refresh_before, Duration::from_secs(120));
    assert_eq!(c.frontend().routes[0].token, TokenKind::UserOrNone);
    assert!(c.frontend().routes[0].strip_prefix);
    assert_eq!(c.frontend().routes[0].timeout, Duration::from_secs(3));
    assert_eq!(c.frontend().routes[1].token, TokenKind::None);
    assert!(!c.frontend().static_files.clone().unwrap().spa_fallback);
}

#[test]
fn loopback_origins_may_be_plain_http() {
    for origin in [
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "http://app.localhost",
        "http://[::1]:8080",
    ] {
        Toml::minimal()
            .set("server", "public_origin", &format!("\"{origin}\""))
            .set("oidc", "issuer", "\"http://localhost:9090\"")
            .valid();
    }
}

#[test]
fn redirect_uri_is_the_origin_plus_callback() {
    let c = Toml::minimal().valid();
    assert_eq!(c.public_origin(), "https://app.example.com");
    assert_eq!(c.redirect_uri(), "https://app.example.com/bff/callback");
    let c = Toml::minimal()
        .set("server", "public_origin", "\"http://127.0.0.1:8080/\"")
        .valid();
    assert_eq!(c.redirect_uri(), "http://127.0.0.1:8080/bff/callback");
}

#[test]
fn debug_output_never_shows_secrets() {
    let c = Toml::minimal()
        .set("session", "store", "\"memory\"")
        .set("session", "redis_url", "\"redis://:hunter2@127.0.0.1/0\"")
        .valid();
    let shown = format!("{c:?}");
    for secret in ["s3cret", KEY, "hunter2"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}

// ---- environment overlay -----------------------------------------------------------

#[test]
fn env_overrides_keys() {
    let c = Toml::minimal()
        .unset("oidc", "client_secret")
        .load_with_env(&[
            ("PORTCULLIS_OIDC__CLIENT_SECRET", "from-env"),
            ("PORTCULLIS_SESSION__IDLE_TIMEOUT", "5m"),
            ("PORTCULLIS_SERVER__LISTEN", "127.0.0.1:9999"),
            ("PORTCULLIS_SESSION__STORE", "memory"),
            ("PORTCULLIS_OIDC__USERINFO", "true"),
            ("PORTCULLIS_OIDC__MAX_PENDING_LOGINS", "7"),
        ])
        .unwrap();
    assert_eq!(
        c.frontend().oidc.client_secret.as_ref().unwrap().expose(),
        "from-env"
    );
    assert_eq!(c.session.idle_timeout, Duration::from_secs(300));
    assert_eq!(c.server.listen, "127.0.0.1:9999".parse().unwrap());
    assert_eq!(c.session.store, StoreKind::Memory);
    assert!(c.frontend().oidc.userinfo);
    assert_eq!(c.frontend().oidc.max_pending_logins, 7);
}

#[test]
fn env_wins_over_the_file() {
    let c = Toml::minimal()
        .load_with_env(&[("PORTCULLIS_OIDC__CLIENT_SECRET", "rotated")])
        .unwrap();
    assert_eq!(
        c.frontend().oidc.client_secret.as_ref().unwrap().expose(),
        "rotated"
    );
}

#[test]
fn numeric_looking_ids_and_secrets_stay_strings() {
    let c = Toml::minimal()
        .load_with_env(&[
            ("PORTCULLIS_OIDC__CLIENT_ID", "12345"),
            ("PORTCULLIS_OIDC__CLIENT_SECRET", "007"),
        ])
        .unwrap();
    assert_eq!(c.frontend().oidc.client_id, "12345");
    assert_eq!(
        c.frontend().oidc.client_secret.as_ref().unwrap().expose(),
        "007"
    );
    let c = Toml::minimal()
        .load_with_env(&[("PORTCULLIS_OIDC__CLIENT_SECRET", "1e10")])
        .unwrap();
    assert_eq!(
        c.frontend().oidc.client_secret.as_ref().unwrap().expose(),
        "1e10"
    );
}

#[test]
fn session_keys_from_env_use_array_syntax() {
    let other = "A".repeat(43);
    let c = Toml::minimal()
        .unset("session", "keys")
        .load_with_env(&[("PORTCULLIS_SESSION__KEYS", &format!("[{other}, {KEY}]"))])
        .unwrap();
    let keys: Vec<&str> = c.session.keys.iter().map(Secret::expose).collect();
    assert_eq!(keys, [other.as_str(), KEY]);
}

#[test]
fn env_values_with_non_ascii_and_escapes_do_not_panic() {
    // Found by fuzz/fuzz_targets/config_toml.rs: figment's value parser panicked here.
    let e = Toml::minimal()
        .load_with_env(&[("PORTCULLIS_OIDC__SCOPES", "[\"openid\", \"é\\n\"]")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("scopes"), "{e}");
    let c = Toml::minimal()
        .load_with_env(&[("PORTCULLIS_OIDC__SCOPES", "[\"openid\", \"é\"]")])
        .unwrap();
    assert_eq!(c.frontend().oidc.scopes, ["openid", "é"]);
}

#[test]
fn env_without_the_prefix_is_ignored() {
    let c = Toml::minimal()
        .load_with_env(&[
            ("OIDC__CLIENT_SECRET", "ignored"),
            ("HOME", "/root"),
            ("portcullis_oidc__client_secret", "ignored"),
        ])
        .unwrap();
    assert_eq!(
        c.frontend().oidc.client_secret.as_ref().unwrap().expose(),
        "s3cret"
    );
}

#[test]
fn portcullis_variables_that_are_not_config_keys_are_ignored() {
    // PORTCULLIS_CONFIG names the config file; PORTCULLIS_BIN is used by test scripts.
    let c = Toml::minimal()
        .load_with_env(&[
            ("PORTCULLIS_CONFIG", "/etc/portcullis.toml"),
            ("PORTCULLIS_BIN", "target/debug/portcullis"),
            ("PORTCULLIS_NOSECTION__X", "1"),
        ])
        .unwrap();
    assert_eq!(
        c.frontend().oidc.client_secret.as_ref().unwrap().expose(),
        "s3cret"
    );
}

#[test]
fn env_values_are_validated_and_named() {
    let e = Toml::minimal()
        .load_with_env(&[("PORTCULLIS_SESSION__COOKIE_NAME", "plain")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("session.cookie_name"), "{e}");
    let e = Toml::minimal()
        .load_with_env(&[("PORTCULLIS_SESSION__IDLE_TIMEOUT", "soon")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("idle_timeout"), "{e}");
    assert!(
        !e.contains("default."),
        "no figment profile in key names: {e}"
    );
}

// ---- client_secret_file ------------------------------------------------------------

#[test]
fn client_secret_file_is_read_and_trimmed() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"  from-file-secret \n\n").unwrap();
    let c = Toml::minimal()
        .unset("oidc", "client_secret")
        .set("oidc", "client_secret_file", &toml_string(file.path()))
        .valid();
    assert_eq!(
        c.frontend().oidc.client_secret.as_ref().unwrap().expose(),
        "from-file-secret"
    );
}

#[test]
fn client_secret_file_and_client_secret_conflict() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "x").unwrap();
    let toml = Toml::minimal().set("oidc", "client_secret_file", &toml_string(file.path()));
    toml.refused_for("oidc.client_secret_file");
    // Also when the secret comes from the environment.
    let e = toml
        .clone()
        .unset("oidc", "client_secret")
        .load_with_env(&[("PORTCULLIS_OIDC__CLIENT_SECRET", "env")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("oidc.client_secret_file"), "{e}");
}

#[test]
fn unreadable_client_secret_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-secret");
    let e = Toml::minimal()
        .unset("oidc", "client_secret")
        .set("oidc", "client_secret_file", &toml_string(&missing))
        .refused_for("oidc.client_secret_file");
    assert!(e.contains("no-such-secret"), "{e}");
}

#[test]
fn empty_client_secret_file_is_a_missing_secret() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), " \n").unwrap();
    Toml::minimal()
        .unset("oidc", "client_secret")
        .set("oidc", "client_secret_file", &toml_string(file.path()))
        .refused_for("oidc.client_secret");
}

// ---- every refusal names its key ---------------------------------------------------

#[test]
fn server_refusals() {
    let m = Toml::minimal;
    let origin = |v: &str| m().set("server", "public_origin", &format!("\"{v}\""));
    origin("https://app.example.com/app").refused_for("server.public_origin");
    origin("https://app.example.com/?x=1").refused_for("server.public_origin");
    origin("https://app.example.com/#top").refused_for("server.public_origin");
    origin("http://app.example.com").refused_for("server.public_origin");
    origin("http://10.0.0.5:8080").refused_for("server.public_origin");
    origin("ftp://app.example.com").refused_for("server.public_origin");
    // Not a URL at all: a parse error, still naming the key.
    origin("app.example.com").unparsable(&["public_origin"]);
    m().unset("server", "public_origin")
        .unparsable(&["public_origin"]);
    m().set("server", "listen", "\"localhost\"")
        .unparsable(&["listen"]);
}

#[test]
fn oidc_refusals() {
    let m = Toml::minimal;
    m().set("oidc", "issuer", "\"idp.example.com\"")
        .refused_for("oidc.issuer");
    m().set("oidc", "issuer", "\"not a url\"")
        .refused_for("oidc.issuer");
    m().set("oidc", "issuer", "\"http://idp.example.com\"")
        .refused_for("oidc.issuer");
    m().set("oidc", "issuer", "\"https://idp.example.com/?realm=x\"")
        .refused_for("oidc.issuer");
    m().set("oidc", "client_id", "\"\"")
        .refused_for("oidc.client_id");
    m().unset("oidc", "client_secret")
        .refused_for("oidc.client_secret");
    m().set("oidc", "client_secret", "\"\"")
        .refused_for("oidc.client_secret");
    m().unset("oidc", "client_secret")
        .set("oidc", "auth_method", "\"client_secret_post\"")
        .refused_for("oidc.client_secret");
    m().set("oidc", "auth_method", "\"private_key_jwt\"")
        .refused_for("oidc.private_key_file");
    m().set("oidc", "auth_method", "\"private_key_jwt\"")
        .set("oidc", "private_key_file", "\"/nonexistent/key.pem\"")
        .refused_for("oidc.private_key_file");
    m().set("oidc", "scopes", "[\"profile\", \"email\"]")
        .refused_for("oidc.scopes");
    m().set("oidc", "scopes", "[]").refused_for("oidc.scopes");
    m().set("oidc", "clock_skew", "\"2h\"")
        .refused_for("oidc.clock_skew");
    m().set("oidc", "post_logout_redirect_uri", "\"mailto:a@b.c\"")
        .refused_for("oidc.post_logout_redirect_uri");
    for bad in [
        "\"http://idp.example.com/revoke\"",
        "\"ftp://idp.example.com/revoke\"",
        "\"mailto:a@b.c\"",
        "\"https://idp.example.com/revoke#x\"",
    ] {
        m().set("oidc", "revocation_endpoint", bad)
            .refused_for("oidc.revocation_endpoint");
    }
    for good in [
        "https://idp.example.com/oauth2/revoke",
        "http://127.0.0.1:9090/token/revocation",
        "http://localhost:9090/revoke",
        "http://[::1]:9090/revoke?x=1",
    ] {
        let c = m()
            .set("oidc", "revocation_endpoint", &format!("\"{good}\""))
            .valid();
        assert_eq!(
            c.frontend()
                .oidc
                .revocation_endpoint
                .as_ref()
                .map(Url::as_str),
            Some(good)
        );
    }
    for alg in ["HS256", "HS512", "none", "XYZ"] {
        let e = m()
            .set(
                "oidc",
                "id_token_algorithms",
                &format!("[\"RS256\", \"{alg}\"]"),
            )
            .refused_for("oidc.id_token_algorithms");
        assert!(e.contains(alg), "{e}");
    }
    m().set("oidc", "id_token_algorithms", "[]")
        .refused_for("oidc.id_token_algorithms");
    m().set("oidc", "max_pending_logins", "0")
        .refused_for("oidc.max_pending_logins");
    m().set("oidc", "auth_method", "\"tls_client_auth\"")
        .unparsable(&["auth_method", "tls_client_auth"]);
    m().unset("oidc", "client_id").unparsable(&["client_id"]);
}

#[test]
fn session_refusals() {
    let m = Toml::minimal;
    m().unset("session", "keys").refused_for("session.keys");
    m().set("session", "keys", "[]").refused_for("session.keys");
    // 16 bytes instead of 32.
    m().set("session", "keys", "[\"AAAAAAAAAAAAAAAAAAAAAA\"]")
        .refused_for("session.keys[0]");
    // Too long (34 bytes).
    let long = format!("[\"{KEY}AAA\"]");
    m().set("session", "keys", &long)
        .refused_for("session.keys[0]");
    m().set("session", "keys", "[\"not base64url!!\"]")
        .refused_for("session.keys[0]");
    // Standard base64 (`+`, `/`) is not base64url.
    m().set(
        "session",
        "keys",
        "[\"+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/8\"]",
    )
    .refused_for("session.keys[0]");
    let e = m()
        .set("session", "keys", &format!("[\"{KEY}\", \"short\"]"))
        .refused_for("session.keys[1]");
    assert!(!e.contains(KEY), "the error shows a key: {e}");

    m().set("session", "cookie_name", "\"portcullis\"")
        .refused_for("session.cookie_name");
    m().set("session", "cookie_name", "\"__Secure-portcullis\"")
        .refused_for("session.cookie_name");
    m().set("session", "cookie_name", "\"__Host-\"")
        .refused_for("session.cookie_name");
    m().set("session", "cookie_name", "\"__Host-a;b\"")
        .refused_for("session.cookie_name");

    m().set("session", "idle_timeout", "\"2h\"")
        .set("session", "absolute_timeout", "\"1h\"")
        .refused_for("session.absolute_timeout");
    m().set("session", "idle_timeout", "\"0s\"")
        .refused_for("session.idle_timeout");

    m().set("session", "store", "\"redis\"")
        .refused_for("session.redis_url");
    m().set("session", "store", "\"redis\"")
        .set("session", "redis_url", "\"http://127.0.0.1:6379/0\"")
        .refused_for("session.redis_url");
    m().set("session", "store", "\"redis\"")
        .set(
            "session",
            "redis_url",
            "\"redis+sentinel://127.0.0.1:26379\"",
        )
        .refused_for("session.redis_url");
    let c = m()
        .set("session", "store", "\"redis\"")
        .set(
            "session",
            "redis_url",
            "\"redis+cluster://127.0.0.1:7000,127.0.0.1:7001\"",
        )
        .valid();
    assert_eq!(c.session.store, StoreKind::Redis);
    m().set("session", "store", "\"postgres\"")
        .unparsable(&["store", "postgres"]);
    m().set("session", "sqlite_path", "\"\"")
        .refused_for("session.sqlite_path");
    m().set("session", "sqlite_cache_size", "10000001")
        .refused_for("session.sqlite_cache_size");
    m().set("session", "sqlite_cache_size", "-1")
        .unparsable(&["sqlite_cache_size"]);
    assert_eq!(
        m().set("session", "sqlite_cache_size", "0")
            .valid()
            .session
            .sqlite_cache_size,
        0
    );
    m().set("session", "same_site", "\"none\"")
        .unparsable(&["same_site"]);
}

#[test]
fn route_refusals() {
    let up = "upstream = \"http://127.0.0.1:9100\"";
    let route = |prefix: &str| Toml::minimal().route(&format!("prefix = \"{prefix}\"\n{up}"));
    route("api").refused_for("routes[0].prefix");
    route("/").refused_for("routes[0].prefix");
    route("").refused_for("routes[0].prefix");
    route("/api/").refused_for("routes[0].prefix");
    route("/bff").refused_for("routes[0].prefix");
    route("/bff/api").refused_for("routes[0].prefix");
    // Matched raw and forwarded as is: no spelling an upstream would resolve differently.
    for odd in [
        "/api/..",
        "/a/./b",
        "/api%2fv1",
        "/a/%2e%2e",
        "/a\\\\b",
        "/a/..;x",
        "/a%00",
    ] {
        route(odd).refused_for("routes[0].prefix");
    }
    // `/bffx` is not under `/bff`.
    route("/bffx").valid();

    route("/api")
        .route(&format!("prefix = \"/other\"\n{up}"))
        .route(&format!("prefix = \"/api\"\n{up}"))
        .refused_for("routes[2].prefix");

    let upstream =
        |u: &str| Toml::minimal().route(&format!("prefix = \"/api\"\nupstream = \"{u}\""));
    upstream("https://api.example.com").valid();
    upstream("ftp://api.example.com").refused_for("routes[0].upstream");
    upstream("http://api.example.com/?x=1").refused_for("routes[0].upstream");
    upstream("not a url").unparsable(&["upstream"]);

    let token =
        |t: &str| Toml::minimal().route(&format!("prefix = \"/api\"\n{up}\ntoken = \"{t}\""));
    token("admin").unparsable(&["token", "admin"]);
    // `scopes` and `resource` shape the route's token (client, own user token, exchange):
    // on a route without a token they are a mistake.
    token("none")
        .route(&format!(
            "prefix = \"/b\"\n{up}\ntoken = \"none\"\nscopes = [\"api\"]"
        ))
        .refused_for("routes[1].scopes");
    let e = token("none")
        .route(&format!(
            "prefix = \"/b\"\n{up}\ntoken = \"none\"\nresource = \"https://api.example.com\""
        ))
        .load()
        .unwrap_err()
        .to_string();
    assert!(e.contains("routes[1]") && e.contains("resource"), "{e}");
    // A user route's own token; `audience` only with exchange; exchange needs a target.
    for t in ["user", "user_or_none", "user_or_client"] {
        token(t)
            .route(&format!(
                "prefix = \"/b\"\n{up}\ntoken = \"{t}\"\nscopes = [\"api\"]\nresource = \"https://api.example.com\""
            ))
            .load()
            .unwrap();
        token(t)
            .route(&format!(
                "prefix = \"/b\"\n{up}\ntoken = \"{t}\"\naudience = \"api\""
            ))
            .refused_for("routes[1].audience");
    }
    token("exchange").refused_for("routes[0].audience");
    token("user")
        .route(&format!(
            "prefix = \"/b\"\n{up}\ntoken = \"exchange\"\naudience = \"api\"\nscopes = [\"r\"]"
        ))
        .load()
        .unwrap();
    token("user")
        .route(&format!("prefix = \"/b\"\n{up}\nscopes = [\"two words\"]"))
        .refused_for("routes[1].scopes");

    Toml::minimal()
        .route(&format!("prefix = \"/api\"\n{up}\ntimeout = \"forever\""))
        .unparsable(&["timeout"]);
    Toml::minimal()
        .route("prefix = \"/api\"")
        .unparsable(&["upstream"]);
}

#[test]
fn client_token_routes_take_scopes_and_a_resource() {
    let c = Toml::minimal()
        .route("prefix = \"/reports\"\nupstream = \"http://127.0.0.1:9200\"\ntoken = \"client\"")
        .route(
            "prefix = \"/api\"\nupstream = \"http://127.0.0.1:9100\"\ntoken = \"user_or_client\"\n\
             scopes = [\"api:read\", \"api:write\"]\nresource = \"https://api.example.com/\"",
        )
        .valid();
    assert_eq!(c.frontend().routes[0].token, TokenKind::Client);
    assert_eq!(c.frontend().routes[0].scopes, None);
    assert_eq!(c.frontend().routes[0].resource, None);
    assert_eq!(c.frontend().routes[1].token, TokenKind::UserOrClient);
    assert_eq!(
        c.frontend().routes[1].scopes.as_deref(),
        Some(&["api:read".to_owned(), "api:write".to_owned()][..])
    );
    assert_eq!(
        c.frontend().routes[1].resource.as_ref().map(Url::as_str),
        Some("https://api.example.com/")
    );
    Toml::minimal()
        .route("prefix = \"/api\"\nupstream = \"http://127.0.0.1:1\"\ntoken = \"client\"\nresource = \"not a url\"")
        .unparsable(&["resource"]);
}

#[test]
fn static_dir_must_be_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let e = Toml::minimal()
        .set("static", "dir", &toml_string(&dir.path().join("missing")))
        .refused_for("static.dir");
    assert!(e.contains("missing"), "{e}");
    let file = tempfile::NamedTempFile::new().unwrap();
    Toml::minimal()
        .set("static", "dir", &toml_string(file.path()))
        .refused_for("static.dir");
}

#[test]
fn unknown_fields_are_refused_by_name() {
    let m = Toml::minimal;
    m().set("server", "listne", "\"127.0.0.1:1\"")
        .unparsable(&["listne"]);
    m().set("oidc", "client_secrets", "\"x\"")
        .unparsable(&["client_secrets"]);
    m().set("session", "idle", "\"5m\"").unparsable(&["idle"]);
    m().set("tokens", "refresh_ahead", "\"5m\"")
        .unparsable(&["refresh_ahead"]);
    m().set("sessions", "store", "\"memory\"")
        .unparsable(&["sessions"]);
    m().route("prefix = \"/api\"\nupstream = \"http://127.0.0.1:1\"\nstrip = true")
        .unparsable(&["strip"]);
    let dir = tempfile::tempdir().unwrap();
    m().set("static", "dir", &toml_string(dir.path()))
        .set("static", "fallback", "true")
        .unparsable(&["fallback"]);
}

#[test]
fn bad_durations_are_refused_by_name() {
    let m = Toml::minimal;
    m().set("session", "idle_timeout", "\"thirty minutes\"")
        .unparsable(&["idle_timeout"]);
    m().set("session", "absolute_timeout", "\"12\"")
        .unparsable(&["absolute_timeout"]);
    m().set("session", "idle_timeout", "30")
        .unparsable(&["idle_timeout"]);
    m().set("tokens", "refresh_before", "\"-1s\"")
        .unparsable(&["refresh_before"]);
    m().set("oidc", "clock_skew", "\"1 fortnight\"")
        .unparsable(&["clock_skew"]);
}

#[test]
fn malformed_toml_is_a_parse_error() {
    let e = Config::from_toml("[server\npublic_origin = 1", []).unwrap_err();
    assert!(matches!(e, ConfigError::Parse(_)), "{e:?}");
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let e = Config::load(&path, []).unwrap_err().to_string();
    assert!(e.contains("--config") && e.contains("nope.toml"), "{e}");
}

// ---- the example configs in the repository -----------------------------------------

/// Every example config in the repository loads and validates, with relative paths
/// (`static.dir`) resolved from the file's folder.
#[test]
fn every_example_config_in_the_repo_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("demo/demo.toml")];
    for dir in ["examples", "docs"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut found: Vec<_> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        found.sort();
        files.extend(found);
    }
    for file in &files {
        let config = Config::load(file, [])
            .unwrap_or_else(|e| panic!("{} does not load: {e}", file.display()));
        assert!(!config.session.keys.is_empty(), "{}", file.display());
    }

    let demo = Config::load(&root.join("demo/demo.toml"), []).unwrap();
    assert_eq!(demo.redirect_uri(), "http://127.0.0.1:8080/bff/callback");
    assert_eq!(demo.session.store, StoreKind::Sqlite);
    assert_eq!(demo.frontend().routes.len(), 1);
    assert_eq!(demo.frontend().routes[0].prefix, "/api");
}

/// The configs shipped in deploy/ (the container's and systemd's file, and the one the
/// Kubernetes ConfigMap embeds) load with their secrets from the environment, as the
/// Dockerfile, the unit and the Deployment pass them.
#[test]
fn every_deploy_config_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = |extra: &[(&str, &str)]| {
        let mut env = vec![
            ("PORTCULLIS_OIDC__CLIENT_SECRET", "from-the-secret"),
            (
                "PORTCULLIS_SESSION__KEYS",
                r#"["hekyQHTosvculEk8CMUKNgwBC6Y3BzZ7iPc9C1RuEJI"]"#,
            ),
        ];
        env.extend_from_slice(extra);
        env.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<Vec<_>>()
    };

    let file = root.join("deploy/portcullis.toml");
    let c = Config::load(&file, env(&[]))
        .unwrap_or_else(|e| panic!("deploy/portcullis.toml does not load: {e}"));
    assert_eq!(c.session.store, StoreKind::Sqlite);
    assert!(c.session.sqlite_path.is_absolute());
    assert!(c.session.sqlite_path.starts_with("/var/lib/portcullis"));
    assert_eq!(c.server.admin_listen.unwrap().port(), 9091);
    // Without the secrets it is refused: they are not in the file.
    let e = Config::load(&file, []).unwrap_err().to_string();
    assert!(
        e.contains("client_secret") || e.contains("session.keys"),
        "{e}"
    );

    let yaml = std::fs::read_to_string(root.join("deploy/kubernetes/configmap.yaml")).unwrap();
    let toml = configmap_file(&yaml, "portcullis.toml");
    assert!(toml.contains("[oidc]"), "{toml}");
    let redis = ("PORTCULLIS_SESSION__REDIS_URL", "redis://:pw@redis:6379/0");
    let c = Config::from_toml(&toml, env(&[redis]))
        .unwrap_or_else(|e| panic!("the ConfigMap's portcullis.toml does not load: {e}"));
    assert_eq!(c.session.store, StoreKind::Redis);
    assert_eq!(c.server.admin_listen.unwrap().port(), 9091);
    // The Redis URL comes from the Secret only.
    assert!(Config::from_toml(&toml, env(&[])).is_err());
}

/// The text of `key: |` under `data:` in a ConfigMap (a literal block, 4-space indent).
fn configmap_file(yaml: &str, key: &str) -> String {
    let start = format!("  {key}: |");
    let mut lines = yaml.lines().skip_while(|l| *l != start);
    assert!(lines.next().is_some(), "no `{start}` in the ConfigMap");
    let mut text = String::new();
    for line in lines {
        if let Some(rest) = line.strip_prefix("    ") {
            text.push_str(rest);
        } else if !line.trim().is_empty() {
            break;
        }
        text.push('\n');
    }
    text
}

/// A path as a TOML string literal.
fn toml_string(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

// ---- operations: logs, admin listener, TLS ------------------------------------------

#[test]
fn operations_keys_default_off() {
    let c = Toml::minimal().valid();
    assert_eq!(c.server.log_format, LogFormat::Auto);
    assert!(c.server.log_level.is_none());
    assert!(c.server.admin_listen.is_none());
    assert!(c.server.tls.is_none());
    assert!(c.server.upstream_ca_file.is_none());
}

#[test]
fn operations_keys_load_and_validate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, "x").unwrap();
    std::fs::write(&key, "x").unwrap();
    let c = Toml::minimal()
        .set("server", "log_format", "\"json\"")
        .set("server", "log_level", "\"info,portcullis=debug\"")
        .set("server", "admin_listen", "\"127.0.0.1:9091\"")
        .set(
            "server",
            "upstream_ca_file",
            &format!("{:?}", cert.to_str().unwrap()),
        )
        .set(
            "server.tls",
            "cert",
            &format!("{:?}", cert.to_str().unwrap()),
        )
        .set("server.tls", "key", &format!("{:?}", key.to_str().unwrap()))
        .valid();
    assert_eq!(c.server.log_format, LogFormat::Json);
    assert_eq!(c.server.tls.unwrap().key, key);
    assert_eq!(c.server.admin_listen.unwrap().port(), 9091);

    Toml::minimal()
        .set("server", "log_format", "\"xml\"")
        .unparsable(&["log_format"]);
    Toml::minimal()
        .set("server", "log_level", "\"info,[[[\"")
        .refused_for("server.log_level");
    Toml::minimal()
        .set("server", "listen", "\"127.0.0.1:9091\"")
        .set("server", "admin_listen", "\"127.0.0.1:9091\"")
        .refused_for("server.admin_listen");
    Toml::minimal()
        .set("server", "upstream_ca_file", "\"/nonexistent/ca.pem\"")
        .refused_for("server.upstream_ca_file");
    Toml::minimal()
        .set("server.tls", "cert", "\"/nonexistent/cert.pem\"")
        .set("server.tls", "key", &format!("{:?}", key.to_str().unwrap()))
        .refused_for("server.tls.cert");
    Toml::minimal()
        .set("server", "public_origin", "\"http://127.0.0.1:8080\"")
        .set(
            "server.tls",
            "cert",
            &format!("{:?}", cert.to_str().unwrap()),
        )
        .set("server.tls", "key", &format!("{:?}", key.to_str().unwrap()))
        .refused_for("server.public_origin");
    // Environment overrides reach nested tables too.
    let c = Toml::minimal()
        .load_with_env(&[("PORTCULLIS_SERVER__LOG_FORMAT", "text")])
        .unwrap();
    assert_eq!(c.server.log_format, LogFormat::Text);
}

#[test]
fn upstream_client_certificate_keys_come_in_pairs_of_files() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("client.pem");
    let key = dir.path().join("client.key");
    std::fs::write(&cert, "x").unwrap();
    std::fs::write(&key, "x").unwrap();
    let (cert_s, key_s) = (
        format!("{:?}", cert.to_str().unwrap()),
        format!("{:?}", key.to_str().unwrap()),
    );
    let c = Toml::minimal().valid();
    assert!(c.server.upstream_client_cert.is_none() && c.server.upstream_client_key.is_none());
    let c = Toml::minimal()
        .set("server", "upstream_client_cert", &cert_s)
        .set("server", "upstream_client_key", &key_s)
        .valid();
    assert_eq!(
        c.server.upstream_client_cert.as_deref(),
        Some(cert.as_path())
    );
    assert_eq!(c.server.upstream_client_key.as_deref(), Some(key.as_path()));

    Toml::minimal()
        .set("server", "upstream_client_cert", &cert_s)
        .refused_for("server.upstream_client_key");
    Toml::minimal()
        .set("server", "upstream_client_key", &key_s)
        .refused_for("server.upstream_client_cert");
    Toml::minimal()
        .set(
            "server",
            "upstream_client_cert",
            "\"/nonexistent/client.pem\"",
        )
        .set("server", "upstream_client_key", &key_s)
        .refused_for("server.upstream_client_cert");
    Toml::minimal()
        .set("server", "upstream_client_cert", &cert_s)
        .set(
            "server",
            "upstream_client_key",
            "\"/nonexistent/client.key\"",
        )
        .refused_for("server.upstream_client_key");
}

#[test]
fn connection_timeouts_must_be_positive() {
    for key in ["first_request_timeout", "idle_timeout", "write_timeout"] {
        Toml::minimal()
            .set("server", key, "\"0s\"")
            .refused_for(&format!("server.{key}"));
    }
    let c = Toml::minimal()
        .set("server", "max_connections_per_client", "0")
        .valid();
    assert_eq!(
        c.server.max_connections_per_client, 0,
        "0 turns the cap off"
    );
}

// ---- docs/configuration.md matches the structs ---------------------------------------

/// The fields of the struct at `section`, read from the refusal of an unknown key
/// (`deny_unknown_fields` names every field it expects).
fn fields_of(section: &str) -> Vec<String> {
    if section == "frontends" {
        let text =
            frontends_toml("").replacen("name = \"admin\"", "name = \"admin\"\nzzz_probe = 1", 1);
        let e = Config::from_toml(&text, []).unwrap_err().to_string();
        return known_keys(&e);
    }
    let probe = match section {
        "routes" => {
            Toml::minimal().route("prefix = \"/a\"\nupstream = \"http://x\"\nzzz_probe = 1")
        }
        s => Toml::minimal().set(s, "zzz_probe", "1"),
    };
    let e = probe.unparsable(&["zzz_probe"]);
    known_keys(&e)
}

/// The keys listed by an unknown-key error ("… (known keys: a, b, c)").
fn known_keys(error: &str) -> Vec<String> {
    let list = error
        .split_once("known keys: ")
        .unwrap_or_else(|| panic!("no list of known keys in {error:?}"))
        .1;
    list.split(')')
        .next()
        .unwrap()
        .split(", ")
        .map(str::to_owned)
        .collect()
}

#[test]
fn docs_configuration_lists_every_key() {
    use std::collections::BTreeSet;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let docs = std::fs::read_to_string(path).unwrap();
    let documented: BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split_once('`'))
        .map(|(key, _)| key.to_owned())
        .collect();

    // Tables inside sections are probed on their own.
    let nested = ["server.tls"];
    let mut actual = BTreeSet::new();
    for section in [
        "server",
        "server.tls",
        "oidc",
        "session",
        "tokens",
        "security",
        "static",
        "routes",
        "frontends",
    ] {
        let prefix = if section == "routes" || section == "frontends" {
            format!("{section}[]")
        } else {
            section.to_owned()
        };
        for field in fields_of(section) {
            let key = format!("{prefix}.{field}");
            if !nested.contains(&key.as_str()) {
                actual.insert(key);
            }
        }
    }
    let undocumented: Vec<_> = actual.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&actual).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/configuration.md is out of date.\n  keys missing from it: {undocumented:?}\n  \
         keys it lists that don't exist: {unknown:?}"
    );

    // The complete example parses (unknown keys would be refused).
    let example = docs
        .split("## A complete example")
        .nth(1)
        .and_then(|s| s.split("```toml").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("a complete example in a ```toml block");
    use figment::providers::Format as _;
    let parsed: Result<Config, _> =
        Figment::from(figment::providers::Toml::string(example)).extract();
    let config = parsed.unwrap_or_else(|e| panic!("the complete example does not parse: {e}"));
    assert!(config.server.tls.is_some());
}

// ---- [[frontends]] -------------------------------------------------------------------

/// Two frontends sharing `[oidc]` defaults; `extra` is appended verbatim.
fn frontends_toml(extra: &str) -> String {
    format!(
        r#"
[server]
public_origin = "https://app.example.com"

[oidc]
issuer = "https://idp.example.com/realms/main"
scopes = ["openid", "email"]
userinfo = true

[session]
keys = ["{KEY}"]

[[frontends]]
name = "shop"
[frontends.oidc]
client_id = "shop"
client_secret = "shop-secret"
[[frontends.routes]]
prefix = "/api"
upstream = "http://shop-api:8000"

[[frontends]]
name = "admin"
path_prefix = "/admin"
[frontends.oidc]
client_id = "admin"
client_secret = "admin-secret"
scopes = ["openid", "admin"]
[[frontends.routes]]
prefix = "/admin/api"
upstream = "http://admin-api:8000"
{extra}
"#
    )
}

fn frontends_refused(text: &str, key: &str) -> String {
    match Config::from_toml(text, []) {
        Ok(_) => panic!("accepted, expected a refusal naming {key}:\n{text}"),
        Err(ConfigError::Invalid {
            key: named,
            problem,
        }) => {
            assert_eq!(named, key, "wrong key named ({problem})\n{text}");
            problem
        }
        Err(e) => panic!("a parse error, expected {key}: {e}\n{text}"),
    }
}

#[test]
fn frontends_load_with_inherited_oidc_defaults() {
    let c = Config::from_toml(&frontends_toml(""), []).unwrap();
    assert!(c.oidc.is_none(), "[oidc] only holds defaults");
    assert_eq!(c.frontends.len(), 2);
    let (shop, admin) = (&c.frontends[0], &c.frontends[1]);
    assert_eq!(shop.name, "shop");
    assert_eq!(shop.cookie_name, "__Host-portcullis-shop");
    assert_eq!(admin.cookie_name, "__Host-portcullis-admin");
    assert_eq!(admin.login_cookie_name(), "__Host-portcullis-admin-login");
    // Inherited: issuer, userinfo, and scopes unless the frontend sets its own.
    assert_eq!(shop.oidc.issuer, "https://idp.example.com/realms/main");
    assert_eq!(admin.oidc.issuer, shop.oidc.issuer);
    assert!(shop.oidc.userinfo && admin.oidc.userinfo);
    assert_eq!(shop.oidc.scopes, ["openid", "email"]);
    assert_eq!(admin.oidc.scopes, ["openid", "admin"]);
    // Own clients.
    assert_eq!(shop.oidc.client_id, "shop");
    assert_eq!(
        admin.oidc.client_secret.as_ref().unwrap().expose(),
        "admin-secret"
    );
    assert_eq!(
        shop.redirect_uri(&c),
        "https://app.example.com/bff/callback"
    );
    assert_eq!(
        admin.redirect_uri(&c),
        "https://app.example.com/admin/bff/callback"
    );
    assert_eq!(admin.routes[0].prefix, "/admin/api");
}

#[test]
fn a_single_frontend_config_is_frontend_zero() {
    let c = Toml::minimal()
        .route("prefix = \"/api\"\nupstream = \"http://x:1\"")
        .valid();
    assert_eq!(c.frontends.len(), 1);
    let f = c.frontend();
    assert_eq!(f.name, "");
    assert_eq!(f.prefix(), "");
    assert_eq!(f.cookie_name, "__Host-portcullis");
    assert_eq!(f.oidc.client_id, "spa-bff");
    assert_eq!(f.routes.len(), 1);
    assert_eq!(c.redirect_uri(), "https://app.example.com/bff/callback");
}

#[test]
fn a_frontend_has_its_own_host() {
    let extra = r#"
[[frontends]]
name = "partner"
host = "partners.example.com"
[frontends.oidc]
client_id = "partner"
client_secret = "p"
"#;
    let c = Config::from_toml(&frontends_toml(extra), []).unwrap();
    assert_eq!(
        c.frontends[2].redirect_uri(&c),
        "https://partners.example.com/bff/callback"
    );
}

#[test]
fn frontend_secrets_come_from_their_own_env_overrides() {
    let env = [(
        "PORTCULLIS_FRONTENDS__ADMIN__OIDC__CLIENT_SECRET".to_owned(),
        "from-env".to_owned(),
    )];
    let c = Config::from_toml(&frontends_toml(""), env).unwrap();
    assert_eq!(
        c.frontends[1].oidc.client_secret.as_ref().unwrap().expose(),
        "from-env"
    );
    assert_eq!(
        c.frontends[0].oidc.client_secret.as_ref().unwrap().expose(),
        "shop-secret"
    );
    let env = [(
        "PORTCULLIS_FRONTENDS__NOPE__OIDC__CLIENT_SECRET".to_owned(),
        "x".to_owned(),
    )];
    let e = Config::from_toml(&frontends_toml(""), env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("frontends.nope.oidc.client_secret"), "{e}");
    assert!(e.contains("no frontend is named"), "{e}");
}

#[test]
fn frontend_refusals() {
    let base = frontends_toml("");
    let shop_block = "[[frontends]]\nname = \"shop\"";
    let with = |old: &str, new: &str| {
        assert!(base.contains(old), "{old}");
        base.replacen(old, new, 1)
    };
    // Names: a cookie-safe token, unique, not clashing with login cookies.
    for bad in [
        "\"\"",
        "\"Shop\"",
        "\"a b\"",
        "\"-x\"",
        "\"login\"",
        "\"x-login\"",
    ] {
        frontends_refused(
            &with(shop_block, &format!("[[frontends]]\nname = {bad}")),
            "frontends[0].name",
        );
    }
    frontends_refused(
        &with("name = \"admin\"", "name = \"shop\""),
        "frontends[1].name",
    );
    // Prefixes.
    for bad in [
        "\"admin\"",
        "\"/admin/\"",
        "\"/a//b\"",
        "\"/a/../b\"",
        "\"/bff\"",
    ] {
        frontends_refused(
            &with("path_prefix = \"/admin\"", &format!("path_prefix = {bad}")),
            "frontends[1].path_prefix",
        );
    }
    // Routes belong under their frontend, clear of its /bff.
    frontends_refused(
        &with("prefix = \"/admin/api\"", "prefix = \"/api2\""),
        "frontends[1].routes[0].prefix",
    );
    frontends_refused(
        &with("prefix = \"/admin/api\"", "prefix = \"/admin/bff/x\""),
        "frontends[1].routes[0].prefix",
    );
    // Two frontends on the same host and prefix.
    frontends_refused(
        &with("path_prefix = \"/admin\"\n", ""),
        "frontends[1].path_prefix",
    );
    // Keys are named within their frontend.
    frontends_refused(
        &with("client_id = \"admin\"", "client_id = \"\""),
        "frontends[1].oidc.client_id",
    );
    frontends_refused(
        &with("scopes = [\"openid\", \"admin\"]", "scopes = [\"admin\"]"),
        "frontends[1].oidc.scopes",
    );
    // Hosts.
    frontends_refused(
        &frontends_toml(
            "[[frontends]]\nname = \"p\"\nhost = \"Partner.example.com\"\n[frontends.oidc]\nclient_id = \"p\"\nclient_secret = \"p\"",
        ),
        "frontends[2].host",
    );
    // The single-frontend sections don't mix with [[frontends]].
    frontends_refused(
        &frontends_toml("[[routes]]\nprefix = \"/x\"\nupstream = \"http://x:1\""),
        "routes",
    );
    frontends_refused(
        &with("scopes = [\"openid\", \"email\"]", "client_id = \"shared\""),
        "oidc.client_id",
    );
    frontends_refused(
        &with("[session]", "[session]\ncookie_name = \"__Host-mine\""),
        "session.cookie_name",
    );
}

#[test]
fn dpop_routes_need_oidc_dpop_and_a_user_token() {
    let up = "upstream = \"http://127.0.0.1:9100\"";
    let route = |extra: &str| format!("prefix = \"/api\"\n{up}\n{extra}");
    // Off by default, everywhere.
    let c = Toml::minimal().route(&route("")).valid();
    assert!(!c.frontend().oidc.dpop);
    assert_eq!(c.frontend().routes[0].dpop, Some(false));
    // dpop on a route needs oidc.dpop.
    Toml::minimal()
        .route(&route("dpop = true"))
        .refused_for("routes[0].dpop");
    let on = Toml::minimal().set("oidc", "dpop", "true");
    // With oidc.dpop, user-token routes default to DPoP; others can't have it.
    let c = on
        .clone()
        .route(&route(""))
        .route("prefix = \"/b\"\nupstream = \"http://127.0.0.1:9100\"\ntoken = \"user_or_client\"")
        .route("prefix = \"/c\"\nupstream = \"http://127.0.0.1:9100\"\ntoken = \"none\"")
        .route("prefix = \"/d\"\nupstream = \"http://127.0.0.1:9100\"\ndpop = false")
        .valid();
    let dpop: Vec<_> = c.frontend().routes.iter().map(|r| r.dpop).collect();
    assert_eq!(dpop, [Some(true), Some(true), Some(false), Some(false)]);
    for t in ["none", "client"] {
        on.clone()
            .route(&route(&format!("token = \"{t}\"\ndpop = true")))
            .refused_for("routes[0].dpop");
    }
    on.clone()
        .route(&route("token = \"user_or_none\"\ndpop = true"))
        .valid();
    // The environment can turn it on.
    let c = Toml::minimal()
        .route(&route(""))
        .load_with_env(&[("PORTCULLIS_OIDC__DPOP", "true")])
        .unwrap();
    assert!(c.frontend().oidc.dpop && c.frontend().routes[0].dpop == Some(true));
}

#[test]
fn h2c_upstreams_need_a_port_and_http2() {
    // What each scheme is spoken as: `upstream::routes`'s tests.
    Toml::minimal()
        .route("prefix = \"/grpc\"\nupstream = \"h2c://127.0.0.1:50051\"\ntoken = \"none\"")
        .valid();
    Toml::minimal()
        .route("prefix = \"/grpc\"\nupstream = \"h2c://127.0.0.1\"")
        .refused_for("routes[0].upstream");
    Toml::minimal()
        .route("prefix = \"/grpc\"\nupstream = \"h2c://127.0.0.1:50051\"\nhttp2 = false")
        .refused_for("routes[0].http2");
    Toml::minimal()
        .route("prefix = \"/x\"\nupstream = \"ftp://127.0.0.1:21\"")
        .refused_for("routes[0].upstream");
}

#[test]
fn route_access_rules_load_and_bad_ones_name_their_key() {
    let up = "prefix = \"/a\"\nupstream = \"http://127.0.0.1:9100\"";
    let two = |lines: &str| {
        Toml::minimal().route(up).route(&format!(
            "prefix = \"/b\"\nupstream = \"http://127.0.0.1:9100\"\n{lines}"
        ))
    };
    let c = two(r#"methods = ["GET", "POST"]
require = [
  { claim = "groups", contains = "admins" },
  { claim = "email_verified", equals = true },
  { claim = ["realm_access", "roles"], contains_any = ["a", "b"] },
]
acr_values = ["urn:gold"]
max_age = "5m""#)
    .valid();
    let r = &c.frontend().routes[1];
    assert_eq!(
        r.methods.as_deref(),
        Some(&["GET".to_owned(), "POST".to_owned()][..])
    );
    let rules = r.require.as_ref().unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[2].claim.segments(), ["realm_access", "roles"]);
    assert_eq!(rules[1].equals, Some(serde_json::Value::Bool(true)));
    assert_eq!(r.max_age, Some(Duration::from_secs(300)));

    for bad in ["get", "GET POST", "/api", "", "TRACE", "G3T"] {
        two(&format!("methods = [\"GET\", {bad:?}]")).refused_for("routes[1].methods[1]");
    }
    two("methods = [\"GET\", \"GET\"]").refused_for("routes[1].methods[1]");
    two("methods = []").refused_for("routes[1].methods");
    two("methods = [\"GET\", 7]").unparsable(&["methods"]);
    two("require = [{ claim = \"g\" }]").refused_for("routes[1].require[0].claim");
    two("require = [{ claim = \"g\", contains = \"a\", equals = \"a\" }]")
        .refused_for("routes[1].require[0].claim");
    two("require = [{ claim = \"\", contains = \"a\" }]").refused_for("routes[1].require[0].claim");
    two("require = [{ claim = [], contains = \"a\" }]").refused_for("routes[1].require[0].claim");
    two("require = [{ claim = \"g\", equals = [1] }]").refused_for("routes[1].require[0].equals");
    two("require = [{ claim = \"g\", contains_any = [] }]")
        .refused_for("routes[1].require[0].contains_any");
    two("require = [{ claim = \"g\", contain = \"a\" }]").unparsable(&["contain"]);
    two("require = [{ claim = \"g\", contains = \"a\" }]\ntoken = \"none\"")
        .refused_for("routes[1].require");
    // An exchanged token is the session's too: its route may carry rules.
    two(
        "require = [{ claim = \"g\", contains = \"a\" }]\ntoken = \"exchange\"\naudience = \"api\"",
    )
    .valid();
    two("acr_values = [\"urn:gold\"]\ntoken = \"user_or_none\"")
        .refused_for("routes[1].acr_values");
    two("acr_values = []").refused_for("routes[1].acr_values");
    two("acr_values = [\"two words\"]").refused_for("routes[1].acr_values");
    two("acr_values = [\"quo\\\"te\"]").refused_for("routes[1].acr_values");
    two("max_age = \"10s\"").refused_for("routes[1].max_age");
    two("max_age = \"400days\"").refused_for("routes[1].max_age");
    two("max_age = \"5m\"\ntoken = \"client\"").refused_for("routes[1].max_age");
    // The step-up login must be able to send what the route asks for.
    two("acr_values = [\"urn:gold\"]")
        .set("oidc", "login_params", "[\"prompt\"]")
        .refused_for("routes[1].acr_values");
    two("max_age = \"5m\"")
        .set("oidc", "login_params", "[\"prompt\"]")
        .refused_for("routes[1].max_age");
}

// ---- oidc.login_error_path ---------------------------------------------------------

#[test]
fn login_error_path_is_a_local_path() {
    let base = Toml::minimal();
    let ok = base
        .clone()
        .set("oidc", "login_error_path", "\"/oops?x=1\"")
        .valid();
    assert_eq!(
        ok.frontend().oidc.login_error_path.as_deref(),
        Some("/oops?x=1")
    );
    for bad in [
        "\"https://evil.example/\"",
        "\"//evil.example\"",
        "\"/\\\\evil\"",
        "\"oops\"",
        "\"/a#b\"",
        "\"/a b\"",
    ] {
        base.clone()
            .set("oidc", "login_error_path", bad)
            .refused_for("oidc.login_error_path");
    }
}
