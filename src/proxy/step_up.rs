//! Step-up authentication (RFC 9470): an upstream's
//! `WWW-Authenticate: Bearer error="insufficient_user_authentication"` becomes the
//! SPA's 401 `step_up_required`, with a ready login URL.
//!
//! The challenge is the upstream's text, so it is parsed by the grammar of RFC 9110
//! §11 (`#challenge`, `auth-param = token BWS "=" BWS ( token / quoted-string )`,
//! quoted-pairs unescaped), never by searching for substrings. What it asks for is
//! then held to Portcullis's own rules before it goes anywhere: `acr_values` must be
//! ACR values (URI characters: no spaces, quotes, backslashes or angle brackets; bounded), `max_age` a
//! bounded number of seconds. A value that fails is dropped (and logged); the rest
//! reach the SPA as JSON strings (escaped by the JSON writer) and the login URL as
//! percent-encoded query parameters. A header that does not parse, or is too large
//! to bother with, still answers `step_up_required` when it names the error, asking
//! for nothing in particular.

use axum::http::{HeaderMap, header};

use crate::config::{MAX_ACR_VALUES_LEN, MAX_MAX_AGE_SECS, is_acr_value};
use crate::error::{ApiError, StepUp};
use crate::frontend::Frontend;

/// Challenges longer than this are not parsed (no real one comes close).
const MAX_CHALLENGE: usize = 4096;

/// The RFC 9470 error code.
const INSUFFICIENT: &str = "insufficient_user_authentication";

/// One challenge of a `WWW-Authenticate` field: its scheme (as sent), its
/// `token68` if it has one, and its parameters (names lowercased, values unquoted).
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub token68: Option<String>,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What an upstream's step-up challenge asks for, checked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Asked {
    pub acr_values: Option<String>,
    pub max_age: Option<u64>,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// A cursor over a field value.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> &str {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        // tchars are ASCII.
        std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default()
    }
    /// A quoted-string, the cursor on its opening quote; its content unescaped.
    fn quoted(&mut self) -> Result<String, ParseError> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(ParseError("an unterminated quoted-string")),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b)
                            if b == b'\t'
                                || b == b' '
                                || (0x21..=0x7e).contains(&b)
                                || b >= 0x80 =>
                        {
                            out.push(b);
                            self.i += 1;
                        }
                        _ => return Err(ParseError("a bad quoted-pair")),
                    }
                }
                Some(b) if b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80 => {
                    out.push(b);
                    self.i += 1;
                }
                Some(_) => return Err(ParseError("a control character in a quoted-string")),
            }
        }
        String::from_utf8(out).map_err(|_| ParseError("a quoted-string that is not UTF-8"))
    }
    /// At the end of a list element: optional whitespace, then `,` or the end.
    fn element_end(&mut self) -> bool {
        self.ows();
        matches!(self.peek(), None | Some(b','))
    }
}

/// Why a field value is not a `#challenge` list.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseError(&'static str);

/// Parses one `WWW-Authenticate` field value (RFC 9110 §11.6.1: a comma-separated
/// list of challenges, each a scheme with a token68 or a list of auth-params).
pub fn parse_challenges(value: &[u8]) -> Result<Vec<Challenge>, ParseError> {
    let mut c = Cursor { s: value, i: 0 };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        // Empty list elements are allowed.
        while matches!(c.peek(), Some(b' ' | b'\t' | b',')) {
            c.i += 1;
        }
        if c.peek().is_none() {
            return Ok(out);
        }
        let scheme = c.token().to_owned();
        if scheme.is_empty() {
            return Err(ParseError("a challenge that does not start with a scheme"));
        }
        let mut challenge = Challenge {
            scheme,
            token68: None,
            params: Vec::new(),
        };
        if !matches!(c.peek(), None | Some(b' ' | b'\t' | b',')) {
            return Err(ParseError("a scheme followed by a separator"));
        }
        c.ows();
        let mut first = true;
        loop {
            // The next element: a parameter of this challenge, or the next challenge.
            let element = c.i;
            c.ows();
            if c.peek() == Some(b',') {
                c.i += 1;
                while matches!(c.peek(), Some(b' ' | b'\t' | b',')) {
                    c.i += 1;
                }
                first = false;
                continue;
            }
            if c.peek().is_none() {
                break;
            }
            let name = c.token().to_ascii_lowercase();
            let after_name = c.i;
            c.ows();
            let is_param = !name.is_empty() && c.peek() == Some(b'=') && {
                // `name=` followed by a value (not `==`: that is token68 padding).
                let mut look = Cursor { s: c.s, i: c.i + 1 };
                look.ows();
                matches!(look.peek(), Some(b) if b == b'"' || is_tchar(b))
            };
            if is_param {
                c.i += 1;
                c.ows();
                let value = if c.peek() == Some(b'"') {
                    c.quoted()?
                } else {
                    c.token().to_owned()
                };
                if !c.element_end() {
                    return Err(ParseError("garbage after an auth-param"));
                }
                if challenge.params.iter().any(|(n, _)| *n == name) {
                    return Err(ParseError("an auth-param given twice in one challenge"));
                }
                challenge.params.push((name, value));
                first = false;
                continue;
            }
            if first && challenge.params.is_empty() {
                // token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
                c.i = element;
                c.ows();
                let start = c.i;
                while c.peek().is_some_and(is_token68_char) {
                    c.i += 1;
                }
                if c.i > start {
                    while c.peek() == Some(b'=') {
                        c.i += 1;
                    }
                    if c.element_end() {
                        challenge.token68 =
                            Some(String::from_utf8_lossy(&c.s[start..c.i]).into_owned());
                        first = false;
                        continue;
                    }
                }
                c.i = after_name;
            }
            if name.is_empty() {
                return Err(ParseError(
                    "a list element that is neither a parameter nor a scheme",
                ));
            }
            // A new challenge begins at this element.
            c.i = element;
            break;
        }
        out.push(challenge);
        if c.peek().is_none() {
            return Ok(out);
        }
    }
}

/// The step-up request in an upstream's 401, if it makes one: a `Bearer` or `DPoP`
/// challenge with `error="insufficient_user_authentication"`, in any of the
/// `WWW-Authenticate` fields.
pub fn challenge(headers: &HeaderMap) -> Option<Asked> {
    let mut unreadable = false;
    for value in headers.get_all(header::WWW_AUTHENTICATE) {
        let bytes = value.as_bytes();
        let names_it = bytes
            .windows(INSUFFICIENT.len())
            .any(|w| w.eq_ignore_ascii_case(INSUFFICIENT.as_bytes()));
        if !names_it {
            continue;
        }
        if bytes.len() > MAX_CHALLENGE {
            unreadable = true;
            tracing::warn!(
                len = bytes.len(),
                "an upstream's step-up challenge is too large to read"
            );
            continue;
        }
        match parse_challenges(bytes) {
            Err(e) => {
                unreadable = true;
                tracing::warn!(
                    problem = e.0,
                    "an upstream's step-up challenge does not parse"
                );
            }
            Ok(challenges) => {
                let found = challenges.into_iter().find(|c| {
                    (c.scheme.eq_ignore_ascii_case("bearer")
                        || c.scheme.eq_ignore_ascii_case("dpop"))
                        && c.param("error") == Some(INSUFFICIENT)
                });
                if let Some(c) = found {
                    return Some(asked(&c));
                }
            }
        }
    }
    // Named but unreadable: still a step-up, asking for nothing in particular.
    unreadable.then(Asked::default)
}

/// The challenge's `acr_values` and `max_age`, each kept only when it is valid.
fn asked(c: &Challenge) -> Asked {
    let acr_values = c.param("acr_values").and_then(|v| {
        let values: Vec<&str> = v.split(' ').filter(|s| !s.is_empty()).collect();
        let ok = !values.is_empty()
            && values.iter().all(|v| is_acr_value(v))
            && values.iter().map(|v| v.len() + 1).sum::<usize>() <= MAX_ACR_VALUES_LEN + 1;
        if !ok {
            tracing::warn!("an upstream's step-up challenge has unusable acr_values: dropped");
        }
        ok.then(|| values.join(" "))
    });
    let max_age = c.param("max_age").and_then(|v| {
        let n = (v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
            .then(|| v.parse::<u64>().ok())
            .flatten()
            .filter(|n| *n <= MAX_MAX_AGE_SECS);
        if n.is_none() {
            tracing::warn!("an upstream's step-up challenge has an unusable max_age: dropped");
        }
        n
    });
    Asked {
        acr_values,
        max_age,
    }
}

/// The `step_up_required` answer asking for `acr_values` / `max_age`, with its login
/// URL: this frontend's `/bff/login` with those of them `oidc.login_params` allows
/// (`prompt=login` when it asks for neither), and `returnUrl` the frontend's root
/// (the SPA may set its own: see docs/configuration.md).
pub fn required(
    frontend: &Frontend,
    acr_values: Option<&str>,
    max_age: Option<u64>,
    detail: String,
) -> ApiError {
    let allowed = |p: &str| frontend.config.oidc.login_params.iter().any(|a| a == p);
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(acr) = acr_values {
        if allowed("acr_values") {
            query.append_pair("acr_values", acr);
        } else {
            tracing::warn!("step-up asks for acr_values, which oidc.login_params does not allow");
        }
    }
    if let Some(age) = max_age {
        if allowed("max_age") {
            query.append_pair("max_age", &age.to_string());
        } else {
            tracing::warn!("step-up asks for max_age, which oidc.login_params does not allow");
        }
    }
    // Asked for nothing readable: a fresh authentication at least (else the provider's
    // own session would answer at once with the same login, and the SPA would loop).
    if acr_values.is_none() && max_age.is_none() && allowed("prompt") {
        query.append_pair("prompt", "login");
    }
    query.append_pair("returnUrl", &frontend.path("/"));
    ApiError::StepUpRequired(Box::new(StepUp {
        acr_values: acr_values.map(str::to_owned),
        max_age,
        login_url: format!("{}?{}", frontend.path("/bff/login"), query.finish()),
        detail,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Vec<Challenge> {
        parse_challenges(s.as_bytes()).unwrap_or_else(|e| panic!("{s:?}: {e:?}"))
    }

    fn params(c: &Challenge) -> Vec<(&str, &str)> {
        c.params
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn challenges_parse_by_the_grammar() {
        let c = parse(
            r#"Bearer error="insufficient_user_authentication", error_description="A different authentication level is required", acr_values="myACR""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "Bearer");
        assert_eq!(c[0].param("error"), Some(INSUFFICIENT));
        assert_eq!(c[0].param("acr_values"), Some("myACR"));

        // Tokens unquoted, odd spacing, empty elements, names in any case.
        let c = parse("Bearer  ERROR = insufficient_user_authentication ,, max_age=5 ,");
        assert_eq!(params(&c[0]), [("error", INSUFFICIENT), ("max_age", "5")]);

        // Escapes inside quoted strings; commas and '=' inside quotes are content.
        let c = parse(r#"Bearer realm="a \"b\" c, d=e", acr_values="x\\y""#);
        assert_eq!(
            params(&c[0]),
            [("realm", r#"a "b" c, d=e"#), ("acr_values", r"x\y")]
        );

        // Several challenges in one field; a scheme without parameters; token68.
        let c = parse(
            r#"Basic realm="x", Negotiate, Foo abc/def==, Bearer error="insufficient_user_authentication", max_age=0"#,
        );
        let schemes: Vec<&str> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["Basic", "Negotiate", "Foo", "Bearer"]);
        assert_eq!(c[2].token68.as_deref(), Some("abc/def=="));
        assert_eq!(params(&c[3]), [("error", INSUFFICIENT), ("max_age", "0")]);
        let c = parse("Negotiate abc=, Bearer");
        assert_eq!(c[0].token68.as_deref(), Some("abc="));
        assert_eq!(c[1].scheme, "Bearer");
        assert!(parse("").is_empty() && parse(" , ,").is_empty());
    }

    #[test]
    fn malformed_challenges_are_refused() {
        for bad in [
            r#"Bearer error="unterminated"#,
            r#"Bearer error="a" junk"#,
            r#"Bearer error="a"x"#,
            r#"Bearer error="a", error="b""#,
            "Bearer error=insufficient_user_authentication \"",
            "=Bearer",
            "\"Bearer\"",
            "Bearer, =x",
            "Bearer\u{1}",
            "Bearer error=\"a\u{7f}\"",
            r#"Bearer error="\"#,
        ] {
            assert!(parse_challenges(bad.as_bytes()).is_err(), "{bad:?} parsed");
        }
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_step_up_challenge_is_found_and_checked() {
        let asked = |values: &[&[u8]]| challenge(&headers(values));
        assert_eq!(asked(&[br#"Bearer realm="api""#]), None);
        assert_eq!(asked(&[br#"Bearer error="invalid_token""#]), None);
        assert_eq!(
            asked(&[
                br#"Basic realm="x""#,
                br#"Bearer error="insufficient_user_authentication", acr_values="urn:gold  urn:platinum", max_age="300""#
            ]),
            Some(Asked {
                acr_values: Some("urn:gold urn:platinum".into()),
                max_age: Some(300)
            })
        );
        assert_eq!(
            asked(&[br#"DPoP error="insufficient_user_authentication", max_age=60"#]),
            Some(Asked {
                acr_values: None,
                max_age: Some(60)
            })
        );
        // Garbage in the values: each bad one dropped, the step-up kept.
        for (value, acr, age) in [
            (&br#"Bearer error="insufficient_user_authentication", acr_values="a\"b", max_age="9""#[..], None, Some(9)),
            (br#"Bearer error="insufficient_user_authentication", acr_values="<script>\\", max_age="-1""#, None, None),
            (br#"Bearer error="insufficient_user_authentication", acr_values="ok", max_age="99999999999999""#, Some("ok"), None),
            (br#"Bearer error="insufficient_user_authentication", acr_values="", max_age="1e3""#, None, None),
            (b"Bearer error=\"insufficient_user_authentication\", acr_values=\"caf\xc3\xa9\"", None, None),
            (br#"Bearer error="insufficient_user_authentication", acr_values="<b> {x}""#, None, None),
            (br#"Bearer error="insufficient_user_authentication", acr_values="a&returnUrl=//evil""#, Some("a&returnUrl=//evil"), None),
        ] {
            assert_eq!(
                challenge(&headers(&[value])),
                Some(Asked { acr_values: acr.map(str::to_owned), max_age: age }),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        let long = format!(
            r#"Bearer error="insufficient_user_authentication", acr_values="{}""#,
            "a".repeat(300)
        );
        assert_eq!(asked(&[long.as_bytes()]), Some(Asked::default()));
        let huge = format!(
            r#"Bearer error="insufficient_user_authentication", x="{}""#,
            "a".repeat(5000)
        );
        assert_eq!(asked(&[huge.as_bytes()]), Some(Asked::default()));
        // Unparseable but naming the error: a step-up asking for nothing.
        assert_eq!(
            asked(&[br#"Bearer error="insufficient_user_authentication", acr_values="x"#]),
            Some(Asked::default())
        );
        // The error in another parameter or scheme is not the challenge.
        assert_eq!(
            asked(&[br#"Bearer error="invalid_token", error_description="insufficient_user_authentication""#]),
            None
        );
        assert_eq!(
            challenge(&headers(&[
                br#"Basic error="insufficient_user_authentication""#
            ])),
            None
        );
    }
}
