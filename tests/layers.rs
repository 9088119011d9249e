//! The direction of the module graph: a module of `src/` names only modules in layers
//! below its own.
//!
//! The layer order is written once, in `src/lib.rs`'s docs (the numbered list under
//! "Layers"); this test reads it from there. For every file under `src/` it collects
//! the top-level modules the file names — `use crate::x…`, `crate::x::y` in
//! expressions and types, the members of `crate::{x, y::z}` groups, and
//! `super::super::…` paths that climb out of their own top-level module — and
//! checks each against the order:
//!
//! - a module may name modules of lower layers;
//! - modules of one layer are siblings and never name each other (they share only
//!   what lies below them);
//! - naming a module of a higher layer is a violation.
//!
//! Comments are not read (a doc link upward is not a dependency).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Imports that still break the order, as (module, module it names). The test fails
/// on any violation not listed here, and on a listed one that is gone (so the list
/// only shrinks). Empty means the graph has no upward edge.
const KNOWN: &[(&str, &str)] = &[];

#[test]
fn every_module_names_only_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let layers = layer_order(&lib);
    assert!(
        !layers.is_empty(),
        "src/lib.rs's docs must list the layers (\"1. `error`, `config` — …\")"
    );
    let layer_of = |module: &str| layers.iter().position(|l| l.iter().any(|m| m == module));

    // Every top-level module is in the list, and every listed module exists.
    let mut modules = BTreeSet::new();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if path.is_dir()
            || (path.extension().is_some_and(|e| e == "rs") && !src.join(&name).is_dir())
        {
            modules.insert(name);
        }
    }
    modules.remove("lib");
    modules.remove("main");
    for m in &modules {
        assert!(
            layer_of(m).is_some(),
            "src/lib.rs's layer list does not name module `{m}`"
        );
    }
    for m in layers.iter().flatten() {
        assert!(
            modules.contains(m),
            "src/lib.rs's layer list names `{m}`, which is no module of src/"
        );
    }

    let mut files = Vec::new();
    collect_rs(&src, &mut files);
    let mut violations = Vec::new();
    let mut edges = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let parts: Vec<&str> = rel.iter().map(|p| p.to_str().unwrap()).collect();
        let top = parts[0].trim_end_matches(".rs");
        if top == "lib" || top == "main" {
            continue;
        }
        let from = layer_of(top).unwrap();
        // Depth of the file's module below the crate root: src/a.rs and src/a/mod.rs
        // are 1, src/a/b.rs is 2.
        let depth = parts.len() - usize::from(parts.last() == Some(&"mod.rs"));
        let text = fs::read_to_string(file).unwrap();
        for (line_no, named) in named_modules(&text, depth) {
            if named == top {
                continue;
            }
            let Some(to) = layer_of(&named) else {
                continue; // an external crate path through `super` (none today) or a typo rustc reports
            };
            let why = if to > from {
                format!(
                    "layer '{}' is above '{}'",
                    layers[to].join(", "),
                    layers[from].join(", ")
                )
            } else if to == from {
                format!(
                    "'{named}' and '{top}' are siblings in one layer, which never name each other"
                )
            } else {
                continue;
            };
            edges.insert((top.to_owned(), named.clone()));
            violations.push((
                top.to_owned(),
                named.clone(),
                format!(
                    "src/{}:{line_no} names crate::{named} ({why})",
                    rel.display()
                ),
            ));
        }
    }

    let new: Vec<&str> = violations
        .iter()
        .filter(|(a, b, _)| !KNOWN.contains(&(a.as_str(), b.as_str())))
        .map(|(_, _, msg)| msg.as_str())
        .collect();
    let gone: Vec<String> = KNOWN
        .iter()
        .filter(|(a, b)| !edges.contains(&((*a).to_owned(), (*b).to_owned())))
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect();
    for (_, _, msg) in &violations {
        eprintln!("known: {msg}");
    }
    assert!(
        new.is_empty(),
        "{} import(s) name a module that is not below them (layer order: src/lib.rs docs):\n{}",
        new.len(),
        new.join("\n")
    );
    assert!(
        gone.is_empty(),
        "no longer violated, remove from KNOWN in tests/layers.rs: {}",
        gone.join(", ")
    );
}

/// The numbered list under "Layers" in lib.rs's docs: per layer, the backticked
/// module names before the first ` — `.
fn layer_order(lib: &str) -> Vec<Vec<String>> {
    let mut layers = Vec::new();
    let mut in_list = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            break;
        };
        let doc = doc.trim();
        if doc.starts_with('#') {
            in_list = doc.trim_start_matches('#').trim().starts_with("Layers");
            continue;
        }
        if !in_list {
            continue;
        }
        let Some((number, rest)) = doc.split_once(". ") else {
            continue;
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let names = rest.split(" — ").next().unwrap();
        let modules: Vec<String> = names
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        layers.push(modules);
    }
    layers
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file's code names, with their line numbers. Read over the
/// whole text (a `use crate::{…}` group may span lines), comment lines blanked.
fn named_modules(text: &str, depth: usize) -> Vec<(usize, String)> {
    let code: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    let mut pos = 0;
    while let Some((at, start)) = find_path_start(&code[pos..]) {
        let at = pos + at;
        let mut rest = &code[at..];
        let escapes = match start {
            PathStart::Crate => {
                rest = &rest["crate::".len()..];
                true
            }
            PathStart::Super => {
                let mut supers = 0;
                while let Some(r) = rest.strip_prefix("super::") {
                    supers += 1;
                    rest = r;
                }
                // From a module at `depth`, `depth` supers reach the crate root.
                supers >= depth
            }
        };
        if escapes {
            for name in first_segments(rest) {
                found.push((line_of(at), name));
            }
        }
        pos = code.len() - rest.len();
    }
    found
}

enum PathStart {
    Crate,
    Super,
}

/// The next `crate::` or `super::` that starts a path (not the tail of an identifier).
fn find_path_start(s: &str) -> Option<(usize, PathStart)> {
    let bytes = s.as_bytes();
    let mut from = 0;
    loop {
        let c = s[from..]
            .find("crate::")
            .map(|i| (from + i, PathStart::Crate));
        let p = s[from..]
            .find("super::")
            .map(|i| (from + i, PathStart::Super));
        let next = match (c, p) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        }?;
        let at = next.0;
        let ident_before =
            at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if !ident_before {
            return Some(next);
        }
        from = at + 1;
    }
}

/// The first segment of a path, or of each member of a `{…}` group (nested groups
/// included, at their first level only).
fn first_segments(s: &str) -> Vec<String> {
    let ident = |t: &str| -> String {
        t.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = s.strip_prefix('{') else {
        let name = ident(s);
        return if name.is_empty() { vec![] } else { vec![name] };
    };
    let mut names = Vec::new();
    let mut depth = 0usize;
    let mut start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if c.is_whitespace() => {}
            _ if start && depth == 0 => {
                start = false;
                let name = ident(&group[i..]);
                if !name.is_empty() && name != "self" {
                    names.push(name);
                }
            }
            _ => {}
        }
    }
    names
}
