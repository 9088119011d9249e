//! The command line: `serve` (default), `check`, `keygen`, `sessions`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, FrontendConfig};
use crate::session::{SessionFilter, SessionStore, Sessions};

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A Backend-for-Frontend authentication gateway"
)]
pub struct Cli {
    /// The configuration file (TOML).
    #[arg(
        long,
        short,
        global = true,
        env = "PORTCULLIS_CONFIG",
        default_value = "portcullis.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate the config, fetch discovery and JWKS, and print a summary.
    Check,
    /// Print a fresh random 256-bit key (base64url) for `session.keys`.
    Keygen,
    /// Administer sessions in the configured store.
    #[command(subcommand)]
    Sessions(SessionsCommand),
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions (one JSON object per line; never ids or tokens).
    List {
        #[arg(long)]
        sub: Option<String>,
    },
    /// End sessions.
    Revoke {
        #[arg(long, conflicts_with_all = ["sub", "all"])]
        sid: Option<String>,
        #[arg(long, conflicts_with = "all")]
        sub: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

/// Runs the command; the error text is printed and the exit code is 1.
pub fn run(cli: Cli) -> Result<(), String> {
    if let Some(Command::Keygen) = cli.command {
        println!("{}", crate::session::cipher::generate_key());
        return Ok(());
    }
    let config =
        Config::load(&cli.config, std::env::vars()).map_err(|e| format!("config error: {e}"))?;
    match cli.command {
        None | Some(Command::Serve) => {
            #[cfg(feature = "otel")]
            let exporting = crate::telemetry::otel::init()?;
            crate::telemetry::init_logging_with(
                config.server.log_format,
                config.server.log_level.as_deref(),
            );
            #[cfg(feature = "otel")]
            if exporting {
                tracing::info!("OpenTelemetry: exporting spans over OTLP/HTTP");
            }
            #[cfg(not(feature = "otel"))]
            if [
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ]
            .iter()
            .any(|k| std::env::var_os(k).is_some())
            {
                tracing::warn!(
                    "OTEL_EXPORTER_OTLP_* is set, but this build has no OpenTelemetry export \
                     (build with --features otel); traceparent passes through unchanged"
                );
            }
            let served = crate::server::serve(config);
            #[cfg(feature = "otel")]
            crate::telemetry::otel::shutdown();
            served
        }
        Some(Command::Check) => runtime()?.block_on(check(config)),
        Some(Command::Sessions(cmd)) => runtime()?.block_on(sessions(config, cmd)),
        Some(Command::Keygen) => unreachable!("handled above"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// `portcullis check`: every frontend is checked, and each failure is reported.
async fn check(config: Config) -> Result<(), String> {
    println!("config:                  ok ({})", config_summary(&config));
    let mut failures = Vec::new();
    for (i, frontend) in config.frontends.iter().enumerate() {
        let keys = if frontend.name.is_empty() {
            String::new()
        } else {
            println!("\nfrontend {} (frontends[{i}]):", frontend.name);
            format!("frontends[{i}].")
        };
        if let Err(e) = check_frontend(&config, frontend, &keys).await {
            failures.push(if frontend.name.is_empty() {
                e
            } else {
                format!("frontend {}: {e}", frontend.name)
            });
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// `keys` is "" or "frontends[i]." for the config keys named in messages.
async fn check_frontend(
    config: &Config,
    frontend: &FrontendConfig,
    keys: &str,
) -> Result<(), String> {
    print_routes(frontend);
    let redirect_uri = frontend.redirect_uri(config);
    let oidc = crate::oidc::Oidc::new(&frontend.oidc, redirect_uri.clone())?;
    let meta = oidc
        .metadata()
        .await
        .map_err(|e| format!("oidc.issuer: discovery failed: {e}"))?;
    let jwks = oidc
        .jwks()
        .refresh(&meta.jwks_uri)
        .await
        .map_err(|e| format!("oidc.issuer: JWKS at {} failed: {e}", meta.jwks_uri))?;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    const NOT_ADVERTISED: &str = "(not advertised)";
    let opt = |o: &Option<String>| {
        o.clone()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| NOT_ADVERTISED.into())
    };
    let list = |l: &[String]| {
        if l.is_empty() {
            NOT_ADVERTISED.to_owned()
        } else {
            l.join(", ")
        }
    };
    println!("issuer:                  {}", meta.issuer);
    println!("authorization endpoint:  {}", meta.authorization_endpoint);
    println!("token endpoint:          {}", meta.token_endpoint);
    println!("userinfo endpoint:       {}", opt(&meta.userinfo_endpoint));
    println!(
        "end-session endpoint:    {}",
        opt(&meta.end_session_endpoint)
    );
    match &meta.revocation_endpoint {
        Some(endpoint) => println!(
            "revocation endpoint:     {endpoint} ({})",
            meta.revocation_endpoint_source.describe()
        ),
        None => println!("revocation endpoint:     {NOT_ADVERTISED}"),
    }
    println!(
        "PAR endpoint:            {}",
        opt(&meta.pushed_authorization_request_endpoint)
    );
    println!(
        "iss parameter (RFC 9207): {}",
        yes_no(meta.authorization_response_iss_parameter_supported)
    );
    println!(
        "back-channel logout:     {} (sid: {})",
        yes_no(meta.backchannel_logout_supported),
        yes_no(meta.backchannel_logout_session_supported)
    );
    println!(
        "PKCE methods:            {}",
        list(&meta.code_challenge_methods_supported)
    );
    let kids: Vec<String> = jwks
        .keys
        .iter()
        .map(|k| k.common.key_id.as_deref().unwrap_or("(no kid)").to_owned())
        .collect();
    println!(
        "JWKS:                    {} key(s): {}",
        jwks.keys.len(),
        kids.join(", ")
    );
    if let Some(jwk) = oidc.client_public_jwk() {
        println!("client public key (register it at the provider): {}", jwk?);
    }
    println!("redirect URI to register: {redirect_uri}");
    println!(
        "back-channel logout URI:  {}{}/bff/backchannel-logout",
        frontend.origin(config),
        frontend.prefix()
    );
    if !meta.authorization_response_iss_parameter_supported {
        println!(
            "note: the provider does not advertise RFC 9207; mix-up defence relies on per-issuer state"
        );
    }
    if meta.revocation_endpoint.is_none() {
        println!(
            "warning: no revocation endpoint (not in OIDC discovery nor RFC 8414 metadata; \
             set {keys}oidc.revocation_endpoint if the provider has one): \
             refresh tokens will not be revoked at logout"
        );
    }
    check_route_tokens(frontend, &meta, keys);
    print_route_access(frontend, &meta, keys);
    check_client_credentials(&oidc, &frontend.oidc, keys).await
}

/// Per route with a token of its own: what it will request, and warnings where the
/// provider's metadata doesn't advertise what it needs.
fn check_route_tokens(
    frontend: &crate::config::FrontendConfig,
    meta: &crate::oidc::ProviderMetadata,
    keys: &str,
) {
    use crate::config::TokenKind;
    for (i, route) in frontend.routes.iter().enumerate() {
        if !route.has_own_user_token() {
            continue;
        }
        let resource = route.resource.as_ref().map(|r| r.to_string());
        let scopes = route.scopes.as_ref().map(|s| s.join(" "));
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let grant = if route.token == TokenKind::Exchange {
            format!("token exchange (audience {})", show(&route.audience))
        } else {
            "refresh-token grant".to_owned()
        };
        println!(
            "route {}: own user token by {grant}, resource {}, scopes {}",
            route.prefix,
            show(&resource),
            show(&scopes)
        );
        if route.token == TokenKind::Exchange
            && !meta
                .grant_types_supported
                .as_ref()
                .is_some_and(|g| g.iter().any(|t| t == crate::oidc::TOKEN_EXCHANGE))
        {
            println!(
                "warning: {keys}routes[{i}] (token = \"exchange\"): the provider does not advertise \
                 the token-exchange grant ({}) in grant_types_supported",
                crate::oidc::TOKEN_EXCHANGE
            );
        }
        if resource.is_some() {
            println!(
                "warning: {keys}routes[{i}].resource: RFC 8707 resource indicators have no discovery \
                 metadata, so support can't be verified here; a JWT whose aud is not the resource is \
                 refused at runtime (403 forbidden){}",
                if route.token != TokenKind::Exchange && !frontend.oidc.resource_at_login {
                    format!(
                        "; set {keys}oidc.resource_at_login = true if the provider grants resources only at login"
                    )
                } else {
                    String::new()
                }
            );
        }
    }
}

/// Each route's prefix, upstream and the protocol spoken to it.
fn print_routes(frontend: &FrontendConfig) {
    for c in &frontend.routes {
        match crate::upstream::Route::from_config(c) {
            Ok(route) => println!(
                "route {:<18} → {} ({}{})",
                c.prefix,
                route.upstream_label(),
                route.protocol.describe(),
                if c.event_source {
                    "; EventSource without X-CSRF"
                } else {
                    ""
                },
            ),
            Err(e) => println!("route {:<18} → {} ({e})", c.prefix, c.upstream),
        }
    }
}

/// `check`'s lines for the routes' access rules and step-up, with a warning for each
/// ACR value the provider does not advertise (its step-up login would come back with
/// another `acr` and be refused).
fn print_route_access(frontend: &FrontendConfig, meta: &crate::oidc::ProviderMetadata, keys: &str) {
    for (i, route) in frontend.routes.iter().enumerate() {
        let mut parts = Vec::new();
        if let Some(methods) = &route.methods {
            parts.push(format!("methods {}", methods.join(", ")));
        }
        if let Some(rules) = &route.require {
            let rules: Vec<String> = rules
                .iter()
                .map(|r| {
                    let (op, v) = match (&r.equals, &r.contains, &r.contains_any) {
                        (Some(v), _, _) => ("equals", v.to_string()),
                        (_, Some(v), _) => ("contains", format!("{v:?}")),
                        (_, _, Some(v)) => ("contains_any", format!("{v:?}")),
                        _ => ("?", String::new()),
                    };
                    format!("{} {op} {v}", r.claim.label())
                })
                .collect();
            parts.push(format!("require {}", rules.join(" and ")));
        }
        if let Some(acr) = &route.acr_values {
            parts.push(format!("step-up acr_values {}", acr.join(" ")));
        }
        if let Some(max_age) = route.max_age {
            parts.push(format!("step-up max_age {}s", max_age.as_secs()));
        }
        if parts.is_empty() {
            continue;
        }
        println!("route {}: {}", route.prefix, parts.join("; "));
        let Some(acr) = &route.acr_values else {
            continue;
        };
        match &meta.acr_values_supported {
            None => println!(
                "warning: {keys}routes[{i}].acr_values: the provider advertises no acr_values_supported; \
                 check that it honours {}",
                acr.join(" ")
            ),
            Some(supported) => {
                let missing: Vec<&str> = acr
                    .iter()
                    .filter(|v| !supported.contains(v))
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() {
                    println!(
                        "warning: {keys}routes[{i}].acr_values: the provider does not advertise {} \
                         (acr_values_supported: {})",
                        missing.join(" "),
                        supported.join(", ")
                    );
                }
            }
        }
    }
}

/// Proves the client credentials with a token request (see
/// [`Oidc::probe_client_credentials`](crate::oidc::Oidc::probe_client_credentials)).
async fn check_client_credentials(
    oidc: &crate::oidc::Oidc,
    settings: &crate::config::OidcConfig,
    keys: &str,
) -> Result<(), String> {
    use crate::config::AuthMethod;
    use crate::oidc::CredentialProbe;
    let probe = oidc
        .probe_client_credentials()
        .await
        .map_err(|e| format!("oidc.issuer: the token endpoint could not be reached: {e}"))?;
    match probe {
        CredentialProbe::Accepted => {
            println!(
                "client credentials:      ok (the provider authenticated {keys}oidc.client_id {}; \
                 it answered invalid_grant for a made-up code)",
                oidc.client_id()
            );
            Ok(())
        }
        CredentialProbe::Refused { error, description } => {
            let what = match settings.auth_method {
                AuthMethod::PrivateKeyJwt => format!(
                    "{keys}oidc.private_key_file (and the public key registered at the provider, {keys}oidc.private_key_id)"
                ),
                AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => format!(
                    "{keys}oidc.client_secret (and {keys}oidc.auth_method = {:?})",
                    auth_method_name(settings.auth_method)
                ),
            };
            let error = if error == "http_401" {
                "invalid_client".to_owned()
            } else {
                error
            };
            Err(format!(
                "the provider refused the client credentials for {keys}oidc.client_id {}: {error} — check {what}{}",
                oidc.client_id(),
                description
                    .map(|d| format!("; the provider said: {d}"))
                    .unwrap_or_default()
            ))
        }
        CredentialProbe::Unproven(why) => {
            println!(
                "warning: the client credentials could not be proven: {why} \
                 (expected invalid_grant for a made-up authorization code)"
            );
            Ok(())
        }
    }
}

fn auth_method_name(m: crate::config::AuthMethod) -> &'static str {
    use crate::config::AuthMethod;
    match m {
        AuthMethod::ClientSecretBasic => "client_secret_basic",
        AuthMethod::ClientSecretPost => "client_secret_post",
        AuthMethod::PrivateKeyJwt => "private_key_jwt",
    }
}

fn config_summary(config: &Config) -> String {
    format!(
        "store {:?}, {} frontend(s), {} route(s), public origin {}",
        config.session.store,
        config.frontends.len(),
        config
            .frontends
            .iter()
            .map(|f| f.routes.len())
            .sum::<usize>(),
        config.public_origin()
    )
}

/// A Unix time in seconds as RFC 3339, UTC (`2026-12-01T12:00:00Z`).
fn rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0).unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn sessions(config: Config, cmd: SessionsCommand) -> Result<(), String> {
    if config.session.store == crate::config::StoreKind::Memory {
        return Err(
            "session.store: the memory store lives inside the running gateway; \
                    sessions can't be administered from outside"
                .into(),
        );
    }
    let sessions = Sessions::open(&config.session).await?;
    let store = sessions.store();
    match cmd {
        SessionsCommand::List { sub } => {
            let filter = sub.map_or(SessionFilter::All, SessionFilter::Sub);
            for r in store.find(&filter).await.map_err(|e| e.to_string())? {
                let mut line = serde_json::json!({
                    "session": r.key.log_label(),
                    "sub": r.sub,
                    "sid": r.sid,
                    "created_at": rfc3339(r.created_at),
                    "last_seen": rfc3339(r.last_seen),
                    "expires_at": rfc3339(r.expires_at),
                });
                if !r.frontend.is_empty() {
                    line["frontend"] = r.frontend.clone().into();
                }
                println!("{line}");
            }
            Ok(())
        }
        SessionsCommand::Revoke { sid, sub, all } => {
            let filter = match (sid, sub, all) {
                (Some(sid), None, false) => SessionFilter::Sid(sid),
                (None, Some(sub), false) => SessionFilter::Sub(sub),
                (None, None, true) => SessionFilter::All,
                _ => return Err("give exactly one of --sid, --sub, --all".into()),
            };
            let mut n = 0;
            for r in store.find(&filter).await.map_err(|e| e.to_string())? {
                if sessions
                    .end(&r.key, crate::session::EndReason::Revoked)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some()
                {
                    n += 1;
                }
            }
            println!("revoked {n} session(s)");
            Ok(())
        }
    }
}
