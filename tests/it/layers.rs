//! The dependency direction of ARCHITECTURE.md, held: no module of `src/` names a module above it.
//! Read from the sources (every `crate::NAME` path), so a new arrow up fails here.

use std::collections::BTreeSet;
use std::path::Path;

/// Top first; a module may name only modules after it. `lib`/`main` name everything.
const LAYERS: &[&str] = &[
    "cli",
    "api",
    "web",
    "runner",
    "store",
    "repro",
    "pipeline",
    "spec",
    "config",
    "attest",
    "toolchain",
    // The stage cache's remote tier speaks to its registry through `registry`.
    "cache",
    "registry",
    "git",
    "elf",
    "oci",
    "proc",
    "cancel",
    "target",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The modules a file names as `crate::NAME`.
fn named(text: &str) -> BTreeSet<String> {
    text.match_indices("crate::")
        .map(|(i, _)| {
            text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect::<String>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn no_module_names_a_module_above_it() {
    let src = crate::support::repo().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut up = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let me = rank(&module).unwrap_or_else(|| panic!("{module} is not in LAYERS: place it"));
        for dep in named(&std::fs::read_to_string(&f).unwrap()) {
            if dep == module {
                continue;
            }
            let them = rank(&dep).unwrap_or_else(|| panic!("{dep} is not in LAYERS: place it"));
            if them < me {
                up.push(format!("{} names crate::{dep}", rel.display()));
            }
        }
    }
    assert!(up.is_empty(), "arrows pointing up:\n{}", up.join("\n"));
}

#[test]
fn the_check_sees_an_arrow_up() {
    assert!(named("use crate::runner::BuildInput;").contains("runner"));
    assert!(named("crate::spec::is_tag(x)").contains("spec"));
}
