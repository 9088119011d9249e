//! Configuration parsing: `Config::from_toml` (figment + serde + `validate()`).
//!
//! Input: arbitrary bytes. Everything before the first NUL byte is the TOML text
//! (lossy UTF-8); after it, each line `NAME=value` is an environment variable for the
//! `PORTCULLIS_<SECTION>__<KEY>` overlay. Parsed once with the overlay and once
//! without (`std::iter::empty()`). Property: never panics (errors are fine); an
//! accepted configuration passes `validate()` again and parses the same way twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;

fuzz_target!(|data: &[u8]| {
    let (toml, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let toml = String::from_utf8_lossy(toml);
    // Nothing in a fuzz input may make the parser read files: a secret file named by
    // the input could be anything (/dev/zero).
    if toml.contains("_file") {
        return;
    }
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.to_ascii_lowercase().contains("_file"))
        .collect();

    if let Ok(config) = Config::from_toml(&toml, std::iter::empty()) {
        config
            .validate()
            .expect("an accepted configuration fails validate()");
        let _ = config.redirect_uri();
        let _ = config.public_origin();
        let again = Config::from_toml(&toml, std::iter::empty()).expect("not deterministic");
        assert_eq!(format!("{config:?}"), format!("{again:?}"));
    }
    if !env.is_empty() {
        let _ = Config::from_toml(&toml, env);
    }
});
