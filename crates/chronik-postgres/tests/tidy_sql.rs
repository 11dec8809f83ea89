//! Tidy check (in the style of rust-analyzer's): every SQL text built with `format!` in the
//! PostgreSQL adapter and the CLI interpolates only names that cannot carry user input:
//! a quoted, validated identifier (`SchemaName::quoted`, `RoleName::quoted`), a table name
//! checked as an identifier, or a constant fragment. Values (stream ids, payloads,
//! cursors, names of projections) always travel as bind parameters (`$1`), so this is
//! the whole of the injection surface.
//!
//! How: each `format!(...)` whose literal holds an SQL keyword is parsed for its `{...}`
//! placeholders; a named one must be in [`ALLOWED`], a positional one's argument must end
//! with `.quoted()` or be in [`ALLOWED_ARGS`]. A file that interpolates `{s}` or `{r}` must
//! bind them to `.quoted()`. A new interpolation fails this test until it is added here,
//! with the reason it is safe.

use std::path::{Path, PathBuf};

/// Names that may appear as `{name}` in SQL text, and why each is safe.
const ALLOWED: [(&str, &str); 21] = [
    ("s", "the store's SchemaName::quoted()"),
    ("r", "RoleName::quoted()"),
    ("schema", "SchemaName::quoted() (store.rs migrate)"),
    (
        "t",
        "schema.quoted() + a quoted constant or checked table name",
    ),
    (
        "table",
        "a constant table name, schema.quoted() + a constant, or a read-model table checked by check_identifier (roles.rs)",
    ),
    ("privileges", "a constant privilege list (roles.rs)"),
    ("EVENT_COLUMNS", "a constant column list"),
    ("HORIZON", "a constant expression"),
    ("INSERT_COLUMNS", "a constant column list (sql.rs)"),
    (
        "BATCH_ROWS",
        "a constant unnest of bind parameters (sql.rs)",
    ),
    (
        "BATCH_VALUES",
        "a constant list of bind parameters and columns (sql.rs)",
    ),
    ("STREAM_HASH", "a constant expression (sql.rs)"),
    ("ALIVE", "a constant expression (projection/sql.rs)"),
    ("snapshot_columns", "a constant column list"),
    ("checkpoint_columns", "a constant column list"),
    ("live_table", "checked by ident() before use (rebuild.rs)"),
    ("shadow_table", "checked by ident() before use (rebuild.rs)"),
    ("old_table", "checked by ident() before use (rebuild.rs)"),
    ("statement", "one of application_role_sql's statements"),
    ("why", "not SQL: a validation message"),
    (
        "role",
        "a validated RoleName (a message that shows the SQL to run)",
    ),
];

/// Positional arguments allowed besides `<expr>.quoted()`.
const ALLOWED_ARGS: [&str; 1] = [
    "names.shadow_table", // checked by ident() (rebuild.rs)
];

const SQL_WORDS: [&str; 12] = [
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "DELETE ",
    "CREATE ",
    "DROP ",
    "ALTER ",
    "GRANT ",
    "REVOKE ",
    "TRUNCATE ",
    "SET ",
    " FROM ",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of the macro call starting at `start` (just after `format!(`), up to its
/// closing parenthesis, skipping string literals.
fn call_body(src: &str, start: usize) -> &str {
    let bytes = src.as_bytes();
    let (mut depth, mut i, mut in_str) = (1usize, start, false);
    while i < bytes.len() {
        match (in_str, bytes[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') | (false, b'"') => in_str = !in_str,
            (false, b'(') => depth += 1,
            (false, b')') => {
                depth -= 1;
                if depth == 0 {
                    return &src[start..i];
                }
            }
            _ => {}
        }
        i += 1;
    }
    &src[start..]
}

/// The first string literal of a call body and the rest (its arguments).
fn literal_and_args(body: &str) -> Option<(String, &str)> {
    let open = body.find('"')?;
    let bytes = body.as_bytes();
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some((body[open + 1..i].to_owned(), &body[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

/// Splits arguments at top-level commas.
fn args(rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut current) = (0i32, String::new());
    for c in rest.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(current.trim().to_owned());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current.trim().to_owned());
    out.into_iter().filter(|a| !a.is_empty()).collect()
}

/// The placeholders of a format string: `Some(name)` for `{name}` / `{name:?}`, `None`
/// for `{}` / `{:?}`. `{{` and `}}` are escapes.
fn placeholders(literal: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut chars = literal.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '{' {
            if chars.peek() == Some(&'{') {
                chars.next();
                continue;
            }
            let mut inner = String::new();
            for d in chars.by_ref() {
                if d == '}' {
                    break;
                }
                inner.push(d);
            }
            let name = inner.split(':').next().unwrap_or("").trim().to_owned();
            out.push((!name.is_empty()).then_some(name));
        }
    }
    out
}

/// Every problem found in one file's source.
fn check_source(path: &str, src: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut uses = Vec::new();
    for (at, _) in src.match_indices("format!(") {
        let body = call_body(src, at + "format!(".len());
        let Some((literal, rest)) = literal_and_args(body) else {
            continue;
        };
        if !SQL_WORDS.iter().any(|w| literal.contains(w)) {
            continue;
        }
        let line = src[..at].lines().count() + 1;
        let mut positional = args(rest).into_iter();
        for p in placeholders(&literal) {
            match p {
                Some(name) if ALLOWED.iter().any(|(n, _)| *n == name) => uses.push(name),
                Some(name) => problems.push(format!(
                    "{path}:{line}: `{{{name}}}` in SQL text is not a known-safe name"
                )),
                None => {
                    let arg = positional.next().unwrap_or_default();
                    if !(arg.ends_with(".quoted()") || ALLOWED_ARGS.contains(&arg.as_str())) {
                        problems.push(format!(
                            "{path}:{line}: `{arg}` is interpolated into SQL text unquoted"
                        ));
                    }
                }
            }
        }
    }
    for (name, binding) in [("s", "let s = "), ("r", "let r = ")] {
        if uses.iter().any(|u| u == name) {
            let bound = src
                .lines()
                .filter(|l| l.trim_start().starts_with(binding))
                .all(|l| l.trim_end().ends_with(".quoted();"));
            let any = src.lines().any(|l| l.trim_start().starts_with(binding));
            if !(bound && any) {
                problems.push(format!(
                    "{path}: `{{{name}}}` is used in SQL but not bound with `{binding}....quoted();`"
                ));
            }
        }
    }
    problems
}

#[test]
fn sql_text_interpolates_only_quoted_identifiers_and_constants() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("../chronik-cli/src"), &mut files);
    assert!(files.len() > 10, "the sources were found: {files:?}");
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in &files {
        let src = std::fs::read_to_string(file).expect("readable source");
        checked += src.matches("format!(").count();
        problems.extend(check_source(&file.display().to_string(), &src));
    }
    assert!(checked > 50, "format! calls were found ({checked})");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The check itself can fail: it flags an interpolated value and an unquoted argument.
#[test]
fn the_tidy_check_flags_string_built_sql() {
    let bad = r#"
        let s = schema.quoted();
        let q = format!("SELECT * FROM {s}.events WHERE stream_id = '{stream}'");
        let p = format!("DELETE FROM {}.snapshots", schema.as_str());
        let ok = format!("SELECT 1 FROM {}.\"{}\"", schema.quoted(), names.shadow_table);
        let msg = format!("stream {stream} is gone");
    "#;
    let problems = check_source("example.rs", bad);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains("`{stream}`"));
    assert!(problems[1].contains("`schema.as_str()`"));
    let unbound = "let q = format!(\"SELECT 1 FROM {s}.events\");";
    assert_eq!(check_source("x.rs", unbound).len(), 1);
}
