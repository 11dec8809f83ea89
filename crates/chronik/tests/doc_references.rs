//! Tidy (issue 14, item 12): the docs and the sources name no document that is not in the
//! repository (a design note or a guide the project was seeded from): a reader cannot follow
//! such a reference, so say what is meant instead. A reference to the guide the benchmarks'
//! plain table came from had come back in docs/benchmarks.md and chronik-bench after the
//! first clean-up.

use std::path::{Path, PathBuf};

/// References to documents this repository does not hold, in lowercase. Built from parts so
/// that this file does not name them itself.
fn absent_documents() -> Vec<String> {
    [
        ["seed", " guide"],
        ["design", " invariant"],
        ["design", ".md"],
    ]
    .iter()
    .map(|parts| parts.concat())
    .collect()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                files(&path, out);
            }
        } else if path
            .extension()
            .is_some_and(|e| e == "rs" || e == "md" || e == "toml")
        {
            out.push(path);
        }
    }
}

#[test]
fn docs_and_sources_name_no_absent_document() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut all = Vec::new();
    for dir in ["docs", "crates", "examples", "xtask", "tests"] {
        files(&root.join(dir), &mut all);
    }
    all.push(root.join("README.md"));
    assert!(
        all.len() > 50,
        "the repository's files were found ({})",
        all.len()
    );
    let absent = absent_documents();
    let mut found = Vec::new();
    for path in &all {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let lower = text.to_lowercase();
        for needle in &absent {
            if let Some(at) = lower.find(needle.as_str()) {
                let line = lower[..at].matches('\n').count() + 1;
                found.push(format!("{}:{line}: {needle:?}", path.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "references to documents not in the repository (say what is meant instead):\n{}",
        found.join("\n")
    );
}
