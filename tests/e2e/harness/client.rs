//! The cookie-keeping "browser" (redirects off), its whole-read [`Answer`], and
//! the login walk through the provider's pages; URL helpers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;

use super::{COOKIE, Env, Gateway, Provider};

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn location(&self) -> String {
        self.headers
            .get("location")
            .unwrap_or_else(|| panic!("no Location in {} answer: {}", self.status, self.text()))
            .to_str()
            .unwrap()
            .to_owned()
    }
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
    pub fn sets_cookie(&self, name: &str) -> bool {
        self.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{name}=")) && !c.contains("Max-Age=0"))
    }
    /// Asserts the contract's JSON error.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(self.json()["error"], code, "body: {}", self.text());
        assert!(self.json()["error_description"].is_string());
    }
}

/// Cookies by `host:port`, as (name, value) pairs.
type CookieJar = HashMap<String, Vec<(String, String)>>;

/// A cookie-keeping client with redirects off. Cookies are kept per host:port and
/// sent to that host:port only (attributes other than deletion are ignored).
#[derive(Clone)]
pub struct Browser {
    client: reqwest::Client,
    jar: Arc<Mutex<CookieJar>>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            // A fresh connection per request: a restarted gateway leaves no stale pool behind.
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Self {
            client,
            jar: Arc::default(),
        }
    }

    fn site(url: &::url::Url) -> String {
        format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port_or_known_default().unwrap()
        )
    }

    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let url = ::url::Url::parse(url).unwrap();
        let jar = self.jar.lock().unwrap();
        jar.get(&Self::site(&url))?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub fn set_cookie(&self, url: &str, name: &str, value: &str) {
        let url = ::url::Url::parse(url).unwrap();
        let mut jar = self.jar.lock().unwrap();
        let cookies = jar.entry(Self::site(&url)).or_default();
        cookies.retain(|(n, _)| n != name);
        cookies.push((name.to_owned(), value.to_owned()));
    }

    pub fn clear_cookie(&self, url: &str, name: &str) {
        let url = ::url::Url::parse(url).unwrap();
        if let Some(c) = self.jar.lock().unwrap().get_mut(&Self::site(&url)) {
            c.retain(|(n, _)| n != name);
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Body>,
    ) -> Answer {
        let body = body.map(|b| reqwest::Body::wrap_stream(b.into_data_stream()));
        self.send_body(method, url, headers, body).await
    }

    /// Like [`Browser::send`] with a reqwest body: one made from bytes is sent with a
    /// `Content-Length` (servers that can't read chunked requests, like WSGI's).
    pub async fn send_body(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<reqwest::Body>,
    ) -> Answer {
        let parsed = ::url::Url::parse(url).unwrap();
        let mut request = self.client.request(method, url);
        let cookie_header = {
            let jar = self.jar.lock().unwrap();
            jar.get(&Self::site(&parsed)).map(|c| {
                c.iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        };
        if let Some(c) = cookie_header.filter(|c| !c.is_empty()) {
            request = request.header("cookie", c);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        {
            let mut jar = self.jar.lock().unwrap();
            let cookies = jar.entry(Self::site(&parsed)).or_default();
            for sc in headers.get_all("set-cookie") {
                let c = cookie::Cookie::parse(sc.to_str().unwrap().to_owned()).unwrap();
                cookies.retain(|(n, _)| n != c.name());
                let deleted = c.value().is_empty()
                    || c.max_age().is_some_and(|a| a.is_zero() || a.is_negative());
                if !deleted {
                    cookies.push((c.name().to_owned(), c.value().to_owned()));
                }
            }
        }
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.send(Method::GET, url, &[], None).await
    }

    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(Method::GET, url, headers, None).await
    }

    /// `GET /bff/user` with the CSRF header.
    pub async fn user(&self, env: &Env) -> Answer {
        self.get_with(&env.url("/bff/user"), &[("x-csrf", "1")])
            .await
    }

    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.send(
            Method::POST,
            url,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(Body::from(body)),
        )
        .await
    }

    /// Like [`Browser::post_form`], with a `Content-Length` instead of a chunked body.
    pub async fn post_form_sized(&self, url: &str, form: &[(&str, &str)]) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.send_body(
            Method::POST,
            url,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(reqwest::Body::from(body)),
        )
        .await
    }

    /// Starts a login at Portcullis; returns the provider's authorization URL.
    pub async fn start_login(&self, env: &Env, return_url: &str) -> String {
        let q = form_urlencoded::Serializer::new(String::new())
            .append_pair("returnUrl", return_url)
            .finish();
        let r = self.get(&env.url(&format!("/bff/login?{q}"))).await;
        assert_eq!(r.status, 302, "login: {}", r.text());
        let location = r.location();
        assert!(
            location.starts_with(&env.provider.issuer),
            "login redirects to the provider: {location}"
        );
        location
    }

    /// Signs in at the provider from an authorization URL; returns the URL the
    /// provider redirects back to (Portcullis's callback with code, state, iss).
    pub async fn provider_login(&self, authorize_url: &str, user: &str, password: &str) -> String {
        let mut url = authorize_url.to_owned();
        for _ in 0..10 {
            let r = self.get(&url).await;
            assert!(
                r.status.is_redirection() || r.status == 200,
                "{url}: {} {}",
                r.status,
                r.text()
            );
            if r.status == 200 {
                // The login form.
                assert!(
                    r.text().contains("login-form"),
                    "expected the login form at {url}: {}",
                    r.text()
                );
                let action = format!("{}/login", url.split('?').next().unwrap());
                let posted = self
                    .post_form(&action, &[("login", user), ("password", password)])
                    .await;
                assert!(
                    posted.status.is_redirection(),
                    "login POST: {} {}",
                    posted.status,
                    posted.text()
                );
                url = resolve(&action, &posted.location());
                continue;
            }
            let next = resolve(&url, &r.location());
            if next.contains("/bff/callback") {
                return next;
            }
            url = next;
        }
        panic!("the provider login did not come back to the callback");
    }

    /// The whole login: `/bff/login` → provider → `/bff/callback`. Returns the callback's answer.
    pub async fn login(&self, env: &Env, user: &str, password: &str, return_url: &str) -> Answer {
        let authorize = self.start_login(env, return_url).await;
        let callback = self.provider_login(&authorize, user, password).await;
        let r = self.get(&callback).await;
        assert_eq!(r.status, 302, "callback: {}", r.text());
        assert!(
            r.sets_cookie(COOKIE),
            "callback sets the session cookie: {:?}",
            r.set_cookies()
        );
        r
    }

    /// Follows the redirects from `url` (the provider's authorization URL of a
    /// `prompt=none` login: no login form) until one comes back to `/bff/callback`;
    /// returns that callback URL. At most 5 redirects.
    pub async fn follow_to_callback(&self, url: &str) -> String {
        let mut url = url.to_owned();
        for _ in 0..5 {
            let step = self.get(&url).await;
            assert!(
                step.status.is_redirection(),
                "{url}: {} {}",
                step.status,
                step.text()
            );
            url = resolve(&url, &step.location());
            if url.contains("/bff/callback") {
                return url;
            }
        }
        panic!("the provider did not come back to the callback: {url}");
    }

    /// Confirms a logout at the test provider's end-session page `url`: the page,
    /// then its form posted with "yes". Returns the provider's answer (a redirect:
    /// to the post-logout URI when the request named one).
    pub async fn confirm_provider_logout(&self, provider: &Provider, url: &str) -> Answer {
        let page = self.get(url).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let html = page.text();
        let xsrf = html
            .split("name=\"xsrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no xsrf field in the end-session page: {html}"))
            .to_owned();
        let done = self
            .post_form(
                &provider.url("/session/end/confirm"),
                &[("xsrf", &xsrf), ("logout", "yes")],
            )
            .await;
        assert!(
            done.status.is_redirection(),
            "{} {}",
            done.status,
            done.text()
        );
        done
    }

    /// Logs out at the provider's own end-session page (not through Portcullis): the
    /// provider then sends Portcullis a back-channel logout.
    pub async fn logout_at_provider(&self, env: &Env) {
        self.confirm_provider_logout(&env.provider, &env.provider.url("/session/end"))
            .await;
    }

    pub fn session_cookie(&self, env: &Env) -> Option<String> {
        self.cookie(&env.gateway.origin, COOKIE)
    }

    /// Gives `other` (another instance behind the same public origin) this
    /// browser's session cookie, as a load balancer would route the same browser.
    pub fn share_session_with(&self, env: &Env, other: &Gateway) {
        if let Some(v) = self.session_cookie(env) {
            self.set_cookie(&other.origin, COOKIE, &v);
        } else {
            self.clear_cookie(&other.origin, COOKIE);
        }
    }
}

/// Resolves a Location against the URL it came from.
pub fn resolve(base: &str, location: &str) -> String {
    ::url::Url::parse(base)
        .unwrap()
        .join(location)
        .unwrap()
        .to_string()
}

/// The query parameters of a URL.
pub fn query(url: &str) -> HashMap<String, String> {
    ::url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// Replaces (or adds, or with `None` removes) one query parameter.
pub fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let mut u = ::url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != name)
        .collect();
    {
        let mut q = u.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        if let Some(v) = value {
            q.append_pair(name, v);
        }
    }
    u.to_string()
}

pub fn header_value(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap()
}
