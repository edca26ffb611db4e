//! The layering README.md promises, checked: a request travels down the layers and its reply
//! comes back up; nothing below imports anything above. Every `crate::<module>` a file of
//! src/ names must be its own module or one listed after it here.

use std::path::{Path, PathBuf};

/// Top to bottom. Entry points first; the protocol (RESP) at the bottom.
const LAYERS: &[&[&str]] = &[
    &["dev", "offline"],
    &["server"],
    &["session"],
    &["auth"],
    &["config"],
    // Siblings: neither may import the other (state never reaches into connections).
    &["state", "upstream"],
    &["route"],
    &["command"],
    &["tls"],
    &["telemetry"],
    &["protocol"],
    &["signal", "fair_share"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module names a file's code (not its comments) refers to as `crate::name`.
fn crate_refs(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = code.as_str();
    let mut refs = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        // Skip anything inside a longer path or identifier.
        if i > 0
            && matches!(text.as_bytes()[i - 1], b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b':')
        {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            refs.push(name);
        }
    }
    refs
}

#[test]
fn nothing_below_imports_anything_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let module = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|m| m.trim_end_matches(".rs").to_string())
            .unwrap_or_default();
        if module == "lib" || module == "main" {
            // The crate root wires the layers together; the binary is its caller.
            continue;
        }
        let Some(own) = layer_of(&module) else {
            violations.push(format!(
                "{}: module `{module}` is in no layer of tests/layering.rs",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read file");
        for r in crate_refs(&text) {
            checked += 1;
            if r == module {
                continue;
            }
            match layer_of(&r) {
                Some(l) if l > own => {}
                Some(_) => violations.push(format!(
                    "{}: `{module}` imports `crate::{r}`, which is not below it",
                    rel.display()
                )),
                None => violations.push(format!(
                    "{}: `crate::{r}` is in no layer of tests/layering.rs",
                    rel.display()
                )),
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} references found: is the scan broken?"
    );
    assert!(
        violations.is_empty(),
        "layering broken:\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn the_scan_sees_what_it_must() {
    assert_eq!(
        crate_refs(
            "use crate::protocol::{Limits};\nlet x = crate::telemetry::f();\n// crate::no\nx::crate::no"
        ),
        vec!["protocol".to_string(), "telemetry".to_string()]
    );
}
