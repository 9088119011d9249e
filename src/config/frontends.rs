//! `[[frontends]]`: several SPAs served by one gateway, each with its own OIDC
//! client, session cookie, routes and files.
//!
//! A frontend is chosen per request by its `host` (when set) and its `path_prefix`
//! (the longest that matches, on segment boundaries). Its endpoints are
//! `{path_prefix}/bff/*` and its redirect URI is
//! `{origin}{path_prefix}/bff/callback`, where the origin is `server.public_origin`
//! or, with `host`, the same scheme with that host. Its session cookie is
//! `__Host-portcullis-<name>`; sessions remember their frontend, so a cookie of one
//! frontend is never accepted by another, even under the other's cookie name.
//!
//! The top-level `[oidc]` table, when present next to `[[frontends]]`, holds defaults
//! for every frontend's `oidc` table — except the client's credentials
//! (`client_id`, `client_secret`, `client_secret_file`, `private_key_file`,
//! `private_key_id`), which each frontend names itself. Environment overrides reach
//! a frontend as `PORTCULLIS_FRONTENDS__<NAME>__<KEY>` (the name upper-cased, `-`
//! written `_`), e.g. `PORTCULLIS_FRONTENDS__ADMIN__OIDC__CLIENT_SECRET`.

use figment::value::{Dict, Tag, Value};
use serde::Deserialize;

use super::{
    Config, ConfigError, OidcConfig, RouteConfig, StaticConfig, env_value, invalid, validate_oidc,
    validate_route_access, validate_routes, validate_static,
};

/// One `[[frontends]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendConfig {
    /// Lowercase letters, digits and `-` (at most 32): names the session cookie
    /// `__Host-portcullis-<name>`, the metrics and the logs. Empty only for the
    /// single frontend of a config without `[[frontends]]`.
    pub name: String,
    /// The path the frontend lives under, e.g. `/admin` (its endpoints are
    /// `/admin/bff/*`, its routes must be under it). Default: `/`, the whole origin.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The host (with `:port` unless it is the scheme's default) this frontend
    /// answers on, compared with the request's `Host`. Default: any host.
    #[serde(default)]
    pub host: Option<String>,
    /// This frontend's OIDC client: the keys of `[oidc]`.
    pub oidc: OidcConfig,
    /// This frontend's API routes: the keys of `[[routes]]`.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// This frontend's SPA files: the keys of `[static]`.
    #[serde(default, rename = "static")]
    pub static_files: Option<StaticConfig>,
    /// The session cookie's `SameSite` (`strict` or `lax`). Default: `session.same_site`.
    #[serde(default)]
    pub same_site: Option<super::SameSite>,
    /// The session cookie's name (set when the config is loaded).
    #[serde(skip)]
    pub cookie_name: String,
    /// Its place in `[[frontends]]`; `None` for the single frontend (set when loaded).
    #[serde(skip)]
    pub(super) index: Option<usize>,
}

/// `oidc` keys a frontend never inherits from the top-level `[oidc]` table.
const CREDENTIALS: &[&str] = &[
    "client_id",
    "client_secret",
    "client_secret_file",
    "private_key_file",
    "private_key_id",
];

impl FrontendConfig {
    /// The only frontend of a config without `[[frontends]]`.
    pub(super) fn single(
        oidc: OidcConfig,
        routes: Vec<RouteConfig>,
        static_files: Option<StaticConfig>,
        cookie_name: &str,
    ) -> Self {
        Self {
            name: String::new(),
            path_prefix: None,
            host: None,
            oidc,
            routes,
            static_files,
            same_site: None,
            cookie_name: cookie_name.to_owned(),
            index: None,
        }
    }

    /// The path prefix without a trailing slash: "" for the whole origin.
    pub fn prefix(&self) -> &str {
        self.path_prefix
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/')
    }

    /// How keys of this frontend are named in errors: "" or "frontends[i].".
    pub(super) fn key_prefix(&self) -> String {
        match self.index {
            None => String::new(),
            Some(i) => format!("frontends[{i}]."),
        }
    }

    /// The origin the browser sees for this frontend, without a trailing slash.
    pub fn origin(&self, config: &Config) -> String {
        match &self.host {
            Some(host) => format!("{}://{host}", config.server.public_origin.scheme()),
            None => config.public_origin().to_owned(),
        }
    }

    /// The redirect URI to register at the provider.
    pub fn redirect_uri(&self, config: &Config) -> String {
        format!("{}{}/bff/callback", self.origin(config), self.prefix())
    }

    /// The login-binding cookie's name: `<cookie_name>-login` with `[[frontends]]`,
    /// else the contract's `__Host-portcullis-login`.
    pub fn login_cookie_name(&self) -> String {
        match self.index {
            None => super::values::LOGIN_COOKIE.to_owned(),
            Some(_) => format!("{}-login", self.cookie_name),
        }
    }
}

/// Applies the frontend environment overrides and the `[oidc]` defaults to the
/// `frontends` array of the raw config tree.
pub(super) fn resolve(tree: Value, env: &[(String, String)]) -> Result<Value, ConfigError> {
    let Value::Dict(tag, mut root) = tree else {
        return Ok(tree);
    };
    let Some(Value::Array(array_tag, mut frontends)) = root.remove("frontends") else {
        if let Some((key, _)) = env.first() {
            return Err(invalid(
                &key.replace("__", "."),
                "there is no [[frontends]] table to override",
            ));
        }
        return Ok(Value::Dict(tag, root));
    };
    for (key, raw) in env {
        // key: "frontends__<name>__<path…>", lowercase.
        let mut parts = key.split("__").skip(1);
        let (Some(name), path) = (parts.next(), parts.collect::<Vec<_>>()) else {
            continue;
        };
        let target = frontends.iter_mut().find_map(|f| match f {
            Value::Dict(_, d)
                if d.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.replace('-', "_") == name) =>
            {
                Some(d)
            }
            _ => None,
        });
        let Some(target) = target else {
            return Err(invalid(
                &key.replace("__", "."),
                format!("no frontend is named {name:?}"),
            ));
        };
        if path.is_empty() {
            return Err(invalid(&key.replace("__", "."), "names no key"));
        }
        set_path(target, &path, env_value(&path.join("."), raw));
    }
    let defaults = match root.get("oidc") {
        Some(Value::Dict(_, d)) => {
            if let Some(key) = CREDENTIALS.iter().find(|k| d.contains_key(**k)) {
                return Err(invalid(
                    &format!("oidc.{key}"),
                    format!(
                        "with [[frontends]], each frontend names its own client \
                         (frontends.oidc.{key}, or PORTCULLIS_FRONTENDS__<NAME>__OIDC__{})",
                        key.to_ascii_uppercase()
                    ),
                ));
            }
            d.clone()
        }
        _ => Dict::new(),
    };
    for frontend in &mut frontends {
        if let Value::Dict(_, f) = frontend {
            let mut oidc = defaults.clone();
            if let Some(Value::Dict(_, own)) = f.remove("oidc") {
                oidc.extend(own);
            }
            f.insert("oidc".into(), Value::Dict(Tag::Default, oidc));
        }
    }
    if !frontends.is_empty() {
        root.remove("oidc");
    }
    root.insert("frontends".into(), Value::Array(array_tag, frontends));
    Ok(Value::Dict(tag, root))
}

fn set_path(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [leaf] => {
            dict.insert((*leaf).to_owned(), value);
        }
        [head, rest @ ..] => {
            let entry = dict
                .entry((*head).to_owned())
                .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::Dict(Tag::Default, Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

/// Checks every frontend and the relations between them.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    for (i, f) in config.frontends.iter().enumerate() {
        let many = f.index.is_some();
        let prefix = f.key_prefix();
        let key = |field: &str| format!("{prefix}{field}");
        if many {
            if f.name.is_empty()
                || f.name.len() > 32
                || !f
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                || f.name.starts_with('-')
            {
                return Err(invalid(
                    &key("name"),
                    "must be 1 to 32 lowercase letters, digits or '-' (not first)",
                ));
            }
            if f.name == "login" || f.name.ends_with("-login") {
                return Err(invalid(
                    &key("name"),
                    "must not be \"login\" or end with \"-login\" (the login cookies use that suffix)",
                ));
            }
            if config.frontends[..i].iter().any(|o| o.name == f.name) {
                return Err(invalid(&key("name"), "is used by another frontend"));
            }
        }
        if let Some(p) = &f.path_prefix
            && (!p.starts_with('/')
                || (p.len() > 1 && p.ends_with('/'))
                || p.contains("//")
                || p.split('/').any(|s| s == "." || s == "..")
                || !p.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(invalid(
                &key("path_prefix"),
                "must start with '/', not end with '/', and be a plain path",
            ));
        }
        if f.prefix() == "/bff" || f.prefix().starts_with("/bff/") {
            return Err(invalid(
                &key("path_prefix"),
                "/bff is reserved for Portcullis",
            ));
        }
        if let Some(host) = &f.host {
            let ok = !host.is_empty()
                && host.parse::<axum::http::uri::Authority>().is_ok()
                && !host.contains('@')
                && host.bytes().all(|b| !b.is_ascii_uppercase());
            if !ok {
                return Err(invalid(
                    &key("host"),
                    "must be a lowercase host, with :port unless it is the default",
                ));
            }
        }
        if config.frontends[..i]
            .iter()
            .any(|o| o.host == f.host && o.prefix() == f.prefix())
        {
            return Err(invalid(
                &key("path_prefix"),
                "another frontend has the same host and path_prefix",
            ));
        }
        validate_oidc(&f.oidc, &prefix)?;
        if let Some(path) = &f.oidc.login_error_path
            && !path
                .strip_prefix(f.prefix())
                .is_some_and(|rest| rest.starts_with('/'))
        {
            return Err(invalid(
                &format!("{prefix}oidc.login_error_path"),
                format!("must be under the frontend's path_prefix {:?}", f.prefix()),
            ));
        }
        validate_routes(&f.routes, f.oidc.dpop, &prefix)?;
        validate_route_access(&f.routes, &f.oidc.login_params, &prefix)?;
        for (r, route) in f.routes.iter().enumerate() {
            let under = route
                .prefix
                .strip_prefix(f.prefix())
                .is_some_and(|rest| rest.starts_with('/'));
            if !under {
                return Err(invalid(
                    &format!("{prefix}routes[{r}].prefix"),
                    format!("must be under the frontend's path_prefix {:?}", f.prefix()),
                ));
            }
            let bff = format!("{}/bff", f.prefix());
            if route.prefix == bff || route.prefix.starts_with(&format!("{bff}/")) {
                return Err(invalid(
                    &format!("{prefix}routes[{r}].prefix"),
                    format!("{bff} is reserved for Portcullis"),
                ));
            }
        }
        validate_static(f.static_files.as_ref(), &prefix)?;
    }
    Ok(())
}
