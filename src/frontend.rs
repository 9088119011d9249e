//! Frontends: the SPAs one gateway serves (`[[frontends]]`, or the single one of a
//! config without it), each with its own OIDC client, session cookie, routes and
//! files. See `config::frontends` for the rules; this module is their runtime form
//! and the per-request choice of one.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, Uri, header};

use crate::config::{Config, FrontendConfig, StaticConfig};
use crate::oidc::Oidc;
use crate::upstream::RouteTable;
use crate::upstream::rewrite::RewriteConfig;

/// The endpoints under every frontend's `{prefix}/bff`: the `/bff` router's paths
/// (`bff::router`).
pub const BFF_ENDPOINTS: [&str; 6] = [
    "/login",
    "/callback",
    "/user",
    "/logout",
    "/backchannel-logout",
    "/frontchannel-logout",
];

/// One frontend, prepared for requests.
pub struct Frontend {
    /// The `[[frontends]]` name; "" for the single frontend.
    pub name: String,
    /// The path prefix without a trailing slash; "" for the whole origin.
    pub prefix: String,
    /// The host it answers on (lowercase, with `:port` when not the default); any when `None`.
    pub host: Option<String>,
    /// The origin the browser sees (`Origin` checks, return URLs).
    pub origin: url::Url,
    /// The same origin, serialised as browsers send it in `Origin`.
    pub origin_text: String,
    pub cookie_name: String,
    /// The session cookie's `SameSite` (`frontends[].same_site`, else `session.same_site`).
    pub same_site: crate::config::SameSite,
    pub login_cookie: String,
    /// Its OIDC client; shared with the token manager's refreshes of its sessions.
    pub oidc: Arc<Oidc>,
    pub routes: RouteTable,
    pub rewrite: RewriteConfig,
    pub config: FrontendConfig,
}

impl Frontend {
    fn new(config: &Config, fc: &FrontendConfig, own_cookies: &[String]) -> Result<Self, String> {
        let origin_string = fc.origin(config);
        let origin =
            url::Url::parse(&origin_string).map_err(|e| format!("{origin_string}: {e}"))?;
        let host = match origin.port() {
            Some(p) => format!("{}:{p}", origin.host_str().unwrap_or_default()),
            None => origin.host_str().unwrap_or_default().to_owned(),
        };
        let rewrite = RewriteConfig {
            trusted_proxies: config.server.trusted_proxies.clone(),
            own_cookies: own_cookies.to_vec(),
            public_proto: HeaderValue::from_str(origin.scheme()).map_err(|e| e.to_string())?,
            public_host: HeaderValue::from_str(&host).map_err(|e| e.to_string())?,
        };
        Ok(Self {
            name: fc.name.clone(),
            prefix: fc.prefix().to_owned(),
            host: fc.host.clone(),
            origin_text: origin.origin().ascii_serialization(),
            origin,
            cookie_name: fc.cookie_name.clone(),
            same_site: fc.same_site.unwrap_or(config.session.same_site),
            login_cookie: fc.login_cookie_name(),
            oidc: {
                let mut oidc = Oidc::new(&fc.oidc, fc.redirect_uri(config))?;
                if fc.oidc.resource_at_login {
                    // RFC 8707 §2.1: the resources the routes' refresh-token grants name.
                    oidc.add_login_resources(
                        fc.routes
                            .iter()
                            .filter(|r| {
                                r.has_own_user_token()
                                    && r.token != crate::config::TokenKind::Exchange
                            })
                            .filter_map(|r| r.resource.as_ref().map(url::Url::as_str)),
                    );
                }
                Arc::new(oidc)
            },
            routes: RouteTable::from_config(&fc.routes)?,
            rewrite,
            config: fc.clone(),
        })
    }

    /// The part of `path` after this frontend's `/bff`, e.g. `/user` for
    /// `{prefix}/bff/user`; `None` when `path` is not one of its `/bff` paths.
    pub fn bff_path<'a>(&self, path: &'a str) -> Option<&'a str> {
        let rest = path.strip_prefix(self.prefix.as_str())?;
        let rest = rest.strip_prefix("/bff")?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    /// Is `path` one of this frontend's `/bff` endpoints, a path the `/bff` router
    /// serves ([`BFF_ENDPOINTS`])?
    pub fn is_bff_endpoint(&self, path: &str) -> bool {
        self.bff_path(path)
            .is_some_and(|rest| BFF_ENDPOINTS.contains(&rest))
    }

    /// `{prefix}{path}`: a path of this frontend (`path` starts with '/').
    pub fn path(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    pub fn static_files(&self) -> Option<&StaticConfig> {
        self.config.static_files.as_ref()
    }

    fn serves(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(own) = &self.host
            && !host.is_some_and(|h| h.eq_ignore_ascii_case(own))
        {
            return false;
        }
        path.strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// Every frontend, most specific first (a `host` before none, then longer prefixes).
pub struct Frontends {
    all: Vec<Arc<Frontend>>,
    /// The single frontend of a plain config serves every request: no lookup.
    single: bool,
}

impl Frontends {
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let own_cookies: Vec<String> = config
            .frontends
            .iter()
            .flat_map(|f| [f.cookie_name.clone(), f.login_cookie_name()])
            .collect();
        let mut all = config
            .frontends
            .iter()
            .map(|f| {
                Frontend::new(config, f, &own_cookies)
                    .map(Arc::new)
                    .map_err(|e| {
                        if f.name.is_empty() {
                            e
                        } else {
                            format!("frontend {:?}: {e}", f.name)
                        }
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        all.sort_by_key(|f| (f.host.is_none(), std::cmp::Reverse(f.prefix.len())));
        let single = all.len() == 1 && all[0].host.is_none() && all[0].prefix.is_empty();
        Ok(Self { all, single })
    }

    /// The frontend serving a request for `uri` with these headers, if any.
    pub fn select(&self, uri: &Uri, headers: &HeaderMap) -> Option<&Arc<Frontend>> {
        if self.single {
            return self.all.first();
        }
        let host = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()));
        self.all.iter().find(|f| f.serves(host, uri.path()))
    }

    /// The frontend named `name` (a session's own).
    pub fn named(&self, name: &str) -> Option<&Arc<Frontend>> {
        self.all.iter().find(|f| f.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Frontend>> {
        self.all.iter()
    }

    /// Is `path` a `/bff` endpoint of any frontend (one the `/bff` router serves)?
    pub fn is_bff_endpoint(&self, path: &str) -> bool {
        self.all.iter().any(|f| f.is_bff_endpoint(path))
    }

    /// The distinct path prefixes, each with a `/bff` of its own.
    pub fn prefixes(&self) -> Vec<&str> {
        let mut p: Vec<&str> = self.all.iter().map(|f| f.prefix.as_str()).collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SameSite;

    /// The session cookie's `SameSite` is the frontend's own, like its name: the
    /// top-level `session.same_site` is only the default.
    #[test]
    fn each_frontend_has_its_own_same_site() {
        let key = crate::session::cipher::generate_key();
        let toml = format!(
            r#"
[server]
public_origin = "https://app.example.com"
[oidc]
issuer = "https://idp.example.com"
[session]
keys = ["{key}"]
same_site = "lax"
[[frontends]]
name = "shop"
[frontends.oidc]
client_id = "shop"
client_secret = "s"
[[frontends]]
name = "admin"
path_prefix = "/admin"
same_site = "strict"
[frontends.oidc]
client_id = "admin"
client_secret = "s"
"#
        );
        let config = Config::from_toml(&toml, []).unwrap();
        let frontends = Frontends::from_config(&config).unwrap();
        assert_eq!(frontends.named("shop").unwrap().same_site, SameSite::Lax);
        assert_eq!(
            frontends.named("admin").unwrap().same_site,
            SameSite::Strict
        );
    }
}
