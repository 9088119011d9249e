//! A route's access rules, prepared once from its config (`routes[].methods`,
//! `require`, `acr_values`, `max_age`) and kept on its [`Route`](super::Route); the proxy
//! applies them (`proxy::access`). A route without rules carries no [`Access`] and
//! pays nothing.

use std::sync::{Arc, Mutex};

use axum::http::Method;
use serde_json::{Map, Value};

use crate::config::{ClaimRule, RouteConfig};

/// A route's access rules, prepared once.
#[derive(Debug)]
pub struct Access {
    /// The allowed methods and their `Allow` value; `None`: every method.
    pub methods: Option<(Box<[Method]>, &'static str)>,
    pub require: Box<[ClaimRule]>,
    /// The route's ACR values, and the same space-joined (for the login URL).
    pub acr_values: Option<(Box<[String]>, String)>,
    pub max_age: Option<u64>,
}

impl Access {
    /// The rules of `c`, or `None` when it has none.
    pub fn from_config(c: &RouteConfig) -> Result<Option<Arc<Self>>, String> {
        if c.methods.is_none()
            && c.require.is_none()
            && c.acr_values.is_none()
            && c.max_age.is_none()
        {
            return Ok(None);
        }
        let methods = match &c.methods {
            None => None,
            Some(names) => {
                let mut methods = Vec::with_capacity(names.len() + 1);
                for name in names {
                    methods.push(Method::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?);
                }
                if methods.contains(&Method::GET) && !methods.contains(&Method::HEAD) {
                    methods.push(Method::HEAD);
                }
                let allow = methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                Some((methods.into_boxed_slice(), intern(allow)))
            }
        };
        Ok(Some(Arc::new(Self {
            methods,
            require: c.require.clone().unwrap_or_default().into_boxed_slice(),
            acr_values: c
                .acr_values
                .as_ref()
                .map(|v| (v.clone().into_boxed_slice(), v.join(" "))),
            max_age: c.max_age.map(|d| d.as_secs()),
        })))
    }

    /// Does the route take into account the session's claims?
    pub fn reads_claims(&self) -> bool {
        !self.require.is_empty() || self.acr_values.is_some() || self.max_age.is_some()
    }
}

/// `Allow` values live as long as the process (the error carries a `&'static str`);
/// one copy of each distinct value, so rebuilding route tables doesn't grow memory.
fn intern(value: String) -> &'static str {
    static SEEN: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = seen.iter().find(|v| **v == value) {
        return v;
    }
    let v: &'static str = Box::leak(value.into_boxed_str());
    seen.push(v);
    v
}

/// `auth_time` of the claims (a NumericDate: integer or fractional seconds).
pub fn auth_time(claims: &Map<String, Value>) -> Option<i64> {
    let t = claims.get("auth_time")?;
    t.as_i64().or_else(|| t.as_f64().map(|f| f as i64))
}

/// Does `rule` hold on `claims`? A missing claim holds nothing.
pub fn holds(rule: &ClaimRule, claims: &Map<String, Value>) -> bool {
    let mut segments = rule.claim.segments().iter();
    let Some(first) = segments.next() else {
        return false;
    };
    let mut value = claims.get(first.as_str());
    for s in segments {
        value = value.and_then(|v| v.get(s.as_str()));
    }
    let Some(value) = value else { return false };
    let has = |wanted: &str| match value {
        Value::String(s) => s == wanted,
        Value::Array(items) => items.iter().any(|i| i.as_str() == Some(wanted)),
        _ => false,
    };
    if let Some(equals) = &rule.equals {
        return value == equals;
    }
    if let Some(wanted) = &rule.contains {
        return has(wanted);
    }
    if let Some(any) = &rule.contains_any {
        return any.iter().any(|w| has(w));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClaimPath;
    use serde_json::json;

    fn rule(claim: ClaimPath, op: &str, v: Value) -> ClaimRule {
        let mut r = ClaimRule {
            claim,
            equals: None,
            contains: None,
            contains_any: None,
        };
        match op {
            "equals" => r.equals = Some(v),
            "contains" => r.contains = Some(v.as_str().unwrap().to_owned()),
            _ => {
                r.contains_any = Some(
                    v.as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_owned())
                        .collect(),
                )
            }
        }
        r
    }

    fn name(n: &str) -> ClaimPath {
        ClaimPath::Name(n.into())
    }

    #[test]
    fn rules_hold_on_exactly_what_they_say() {
        let claims = json!({
            "groups": ["staff", "admins"],
            "role": "editor",
            "email_verified": true,
            "level": 3,
            "https://example.com/roles": ["owner"],
            "realm_access": { "roles": ["offline", "auditor"] },
            "nested": { "x": { "y": "deep" } },
        });
        let claims = claims.as_object().unwrap();
        let path = |p: &[&str]| ClaimPath::Path(p.iter().map(|s| (*s).to_owned()).collect());
        let yes = [
            rule(name("groups"), "contains", json!("admins")),
            rule(name("role"), "contains", json!("editor")),
            rule(name("email_verified"), "equals", json!(true)),
            rule(name("level"), "equals", json!(3)),
            rule(name("role"), "equals", json!("editor")),
            rule(
                name("https://example.com/roles"),
                "contains",
                json!("owner"),
            ),
            rule(
                path(&["realm_access", "roles"]),
                "contains_any",
                json!(["x", "auditor"]),
            ),
            rule(path(&["nested", "x", "y"]), "equals", json!("deep")),
        ];
        for r in &yes {
            assert!(holds(r, claims), "{r:?}");
        }
        let no = [
            rule(name("groups"), "contains", json!("admin")),
            rule(name("groups"), "contains", json!("ADMINS")),
            rule(name("groups"), "equals", json!("admins")),
            rule(name("email_verified"), "equals", json!("true")),
            rule(name("level"), "equals", json!("3")),
            rule(name("missing"), "contains", json!("x")),
            rule(name("missing"), "equals", json!(false)),
            rule(name("role"), "contains", json!("edit")),
            // A dotted name is one name, never a path.
            rule(name("realm_access.roles"), "contains", json!("auditor")),
            rule(
                path(&["realm_access", "roles"]),
                "contains_any",
                json!(["x", "y"]),
            ),
            rule(
                path(&["realm_access", "roles", "0"]),
                "equals",
                json!("offline"),
            ),
            rule(name("level"), "contains", json!("3")),
        ];
        for r in &no {
            assert!(!holds(r, claims), "{r:?}");
        }
    }

    #[test]
    fn allow_values_are_interned_once() {
        let a = intern("GET, HEAD".to_owned());
        let b = intern("GET, HEAD".to_owned());
        assert!(std::ptr::eq(a, b));
    }
}
