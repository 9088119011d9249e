//! `security::validate_return_url`: the `returnUrl` of `/bff/login` must never send
//! the browser to another origin.
//!
//! Input: arbitrary bytes as (lossy) UTF-8. Properties, whenever the value is accepted:
//! it is returned unchanged, starts with a single `/`, holds no `\`, no ASCII control
//! or whitespace; resolved as a browser would (WHATWG URL parser, `url::Url::join`)
//! against the origin and against the callback page that redirects to it, it stays
//! on the origin — also after the browser's own clean-up (leading/trailing C0 control
//! and space stripped, tab and newlines removed anywhere).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::security::validate_return_url;
use url::Url;

/// What the WHATWG URL parser does to its input before parsing.
fn browser_cleanup(s: &str) -> String {
    s.trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect()
}

fn check(value: &str, origin: &Url) {
    let Ok(accepted) = validate_return_url(value, origin) else {
        return;
    };
    assert_eq!(accepted, value, "the accepted value was altered");
    let p = accepted.as_str();
    assert!(p.starts_with('/'), "{p:?} does not start with '/'");
    assert!(!p.starts_with("//"), "{p:?} starts with '//'");
    assert!(!p.contains('\\'), "{p:?} contains a backslash");
    assert!(
        !p.bytes()
            .any(|b| b.is_ascii_control() || b.is_ascii_whitespace() || b == b' '),
        "{p:?} contains a control or whitespace character"
    );
    // Where the redirect is resolved: the origin itself, and the callback URL whose
    // response carries the `Location` header.
    let callback = origin.join("/bff/callback?code=c&state=s").unwrap();
    for base in [origin, &callback] {
        for candidate in [p.to_owned(), browser_cleanup(p)] {
            let joined = base
                .join(&candidate)
                .unwrap_or_else(|e| panic!("accepted {p:?} does not resolve: {e}"));
            assert_eq!(
                joined.origin(),
                origin.origin(),
                "accepted {p:?} resolves to {joined} (off-origin)"
            );
            assert_eq!(joined.scheme(), origin.scheme());
            assert_eq!(joined.host_str(), origin.host_str());
            assert_eq!(
                joined.port_or_known_default(),
                origin.port_or_known_default()
            );
            assert!(joined.username().is_empty() && joined.password().is_none());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data);
    thread_local! {
        static ORIGINS: [Url; 2] = [
            Url::parse("https://app.example.com").unwrap(),
            Url::parse("http://127.0.0.1:8080").unwrap(),
        ];
    }
    ORIGINS.with(|origins| {
        for origin in origins {
            check(&value, origin);
        }
    });
});
