//! `docs/conformance.md` maps each requirement of the specifications Portcullis answers
//! to onto the tests that prove it. This test keeps the map true: every test it names
//! exists in the sources, and every requirement row names at least one test or says in
//! bold why it has none (**no test**, **not yet**, **not supported**, **provider's side**).
//!
//! A name is `` `file::module::…::test_name` `` for Rust (the modules are those inside
//! the file: `src/security/mod.rs::tests::csrf_header_must_be_exactly_one`), and
//! `` `tests/browser/file.test.mjs::title` `` for a browser test (`test('title', …)`).

use std::fs;
use std::path::Path;

/// Why a row may name no test.
const EXCUSES: &[&str] = &[
    "**no test**",
    "**not yet**",
    "**not supported**",
    "**provider's side**",
];

/// A reference to a test, as written in the page.
#[derive(Debug, PartialEq)]
struct TestRef {
    file: String,
    /// The modules inside the file (Rust only), then the test's name or title.
    path: Vec<String>,
}

/// The test references of one line: backticked spans that start with `src/` or
/// `tests/` and name something after a `::`.
fn refs_in(line: &str) -> Vec<TestRef> {
    let mut out = Vec::new();
    for (i, span) in line.split('`').enumerate() {
        if i % 2 == 0 || !(span.starts_with("src/") || span.starts_with("tests/")) {
            continue;
        }
        let Some((file, rest)) = span.split_once("::") else {
            continue;
        };
        let path = if file.ends_with(".mjs") {
            vec![rest.to_owned()]
        } else {
            rest.split("::").map(str::to_owned).collect()
        };
        out.push(TestRef {
            file: file.to_owned(),
            path,
        });
    }
    out
}

/// Whether `source` (the text of `r.file`) holds the test `r` names; the reason if not.
fn check(r: &TestRef, source: &str) -> Result<(), String> {
    let (name, modules) = r.path.split_last().ok_or("no test name")?;
    if r.file.ends_with(".mjs") {
        let found = ["'", "\"", "`"].iter().any(|q| {
            ["test(", "t.test(", "it("]
                .iter()
                .any(|call| source.contains(&format!("{call}{q}{name}{q}")))
        });
        return if found {
            Ok(())
        } else {
            Err(format!("no test titled {name:?}"))
        };
    }
    for m in modules {
        let declared = source.lines().any(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")
                .is_some_and(|rest| rest.trim_start().starts_with(&format!("{m} {{")))
        });
        if !declared {
            return Err(format!("no `mod {m} {{` in the file"));
        }
    }
    // `fn name(` right after a test attribute (other attributes and doc comments may
    // stand between them).
    let lines: Vec<&str> = source.lines().map(str::trim).collect();
    for (i, l) in lines.iter().enumerate() {
        let is_fn = [format!("fn {name}("), format!("async fn {name}(")]
            .iter()
            .any(|f| l.starts_with(f.as_str()));
        if !is_fn {
            continue;
        }
        let attrs = lines[..i]
            .iter()
            .rev()
            .take_while(|p| p.starts_with("#[") || p.starts_with("///"));
        if attrs
            .into_iter()
            .any(|a| a.starts_with("#[") && a.contains("test"))
        {
            return Ok(());
        }
        return Err(format!("`fn {name}` is not a test"));
    }
    Err(format!("no `fn {name}`"))
}

/// The requirement rows of the page: table lines whose first cell is an id like `BFF-1`.
fn requirement_rows(page: &str) -> Vec<(usize, &str)> {
    page.lines()
        .enumerate()
        .filter(|(_, l)| {
            l.strip_prefix("| ")
                .and_then(|rest| rest.split(" |").next())
                .is_some_and(|id| {
                    id.contains('-')
                        && id
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                })
        })
        .map(|(i, l)| (i + 1, l))
        .collect()
}

#[test]
fn every_test_named_in_docs_conformance_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = fs::read_to_string(root.join("docs/conformance.md")).unwrap();
    let rows = requirement_rows(&page);
    assert!(
        rows.len() >= 60,
        "docs/conformance.md has only {} requirement rows",
        rows.len()
    );

    let mut problems = Vec::new();
    let mut named = 0;
    for (n, line) in &rows {
        let refs = refs_in(line);
        if refs.is_empty() && !EXCUSES.iter().any(|e| line.contains(e)) {
            problems.push(format!(
                "line {n}: names no test and gives no reason ({})",
                EXCUSES.join(", ")
            ));
        }
        for r in refs {
            named += 1;
            let source = match fs::read_to_string(root.join(&r.file)) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("line {n}: {}: {e}", r.file));
                    continue;
                }
            };
            if let Err(why) = check(&r, &source) {
                problems.push(format!(
                    "line {n}: {}::{}: {why}",
                    r.file,
                    r.path.join("::")
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/conformance.md is out of step with the tests:\n{}",
        problems.join("\n")
    );
    assert!(named >= 100, "only {named} test references");
}

/// The checker itself: it finds what exists and refuses what doesn't.
#[test]
fn the_checker_tells_real_tests_from_made_up_ones() {
    let rust = "mod tests {\n    use super::*;\n\n    /// Why.\n    #[tokio::test]\n    async fn real_one() {}\n\n    fn helper() {}\n}\n";
    let js = "test('a real title', { timeout: 1 }, async () => {});\n";
    let line = "| X-1 | r | MUST | `src/a.rs::tests::real_one`, `tests/browser/b.test.mjs::a real title`, `not/a/ref::x` |";
    let refs = refs_in(line);
    assert_eq!(refs.len(), 2, "{refs:?}");
    assert_eq!(check(&refs[0], rust), Ok(()));
    assert_eq!(check(&refs[1], js), Ok(()));
    let r = |file: &str, path: &[&str]| TestRef {
        file: file.into(),
        path: path.iter().map(|s| s.to_string()).collect(),
    };
    assert!(check(&r("src/a.rs", &["tests", "made_up"]), rust).is_err());
    assert!(check(&r("src/a.rs", &["tests", "helper"]), rust).is_err());
    assert!(check(&r("src/a.rs", &["other", "real_one"]), rust).is_err());
    assert!(check(&r("src/a.rs", &["real_on"]), rust).is_err());
    assert!(check(&r("tests/browser/b.test.mjs", &["a real"]), js).is_err());
    assert_eq!(requirement_rows(line).len(), 1);
    assert!(requirement_rows("| # | requirement | level | proved by |").is_empty());
}
