//! The layering check: dependency edges point inward, and the pure crates stay pure.
//!
//! Reads `cargo tree` (normal and build edges only: dev-dependencies may point anywhere,
//! e.g. store's tests use the in-memory adapter). Features are resolved per package, as a
//! build of that package alone would resolve them.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail, ensure};
use xshell::{Shell, cmd};

/// Every workspace member and its layer. An edge `a -> b` between members is allowed only
/// when `b` sits in a lower layer: macros <- core <- store <- {memory, postgres,
/// projections, testkit} <- the `chronik` facade <- the examples (services built on the
/// facade) <- {the `chronik` binary, bench, torture, e2e tests}.
/// `None`: must depend on no member at all.
const LAYERS: &[(&str, Option<u8>)] = &[
    ("chronik-macros", Some(0)),
    ("chronik-core", Some(1)),
    ("chronik-store", Some(2)),
    ("chronik-memory", Some(3)),
    ("chronik-postgres", Some(3)),
    ("chronik-projections", Some(3)),
    ("chronik-testkit", Some(3)),
    ("chronik", Some(5)),
    ("chronik-example-orders", Some(6)),
    // For now the stock binary: the Orders example's operator tool.
    ("chronik-cli", Some(7)),
    ("chronik-bench", Some(7)),
    ("chronik-torture", Some(7)),
    ("chronik-e2e", Some(7)),
    ("xtask", None),
];

/// Crates the pure core must not pull in, at any depth.
const CORE_FORBIDDEN: &[&str] = &["sqlx", "tokio", "async-std", "smol"];
/// Crates the store ports must not pull in, at any depth.
const STORE_FORBIDDEN: &[&str] = &["sqlx", "async-std", "smol"];
/// tokio features that start or drive a runtime (or do I/O); `sync` and friends are fine.
const TOKIO_RUNTIME_FEATURES: &[&str] = &[
    "full",
    "rt",
    "rt-multi-thread",
    "net",
    "time",
    "fs",
    "process",
    "signal",
    "io-std",
];

/// Runs the whole check.
pub(crate) fn check(sh: &Shell) -> anyhow::Result<()> {
    let layers: BTreeMap<&str, Option<u8>> = LAYERS.iter().copied().collect();
    let members = members(sh)?;
    let mut problems = Vec::new();
    for member in &members {
        let Some(&layer) = layers.get(member.as_str()) else {
            problems.push(format!(
                "{member} is a new workspace member: give it a layer in LAYERS (xtask/src/layering.rs)"
            ));
            continue;
        };
        for dep in direct_member_deps(sh, member, &members)? {
            let allowed = match (layer, layers.get(dep.as_str()).copied().flatten()) {
                (Some(from), Some(to)) => to < from,
                _ => false,
            };
            if !allowed {
                problems.push(format!(
                    "{member} -> {dep}: dependency edges must point inward (core <- store <- adapters <- facade <- examples <- binaries)"
                ));
            }
        }
    }
    problems.extend(purity(sh, "chronik-core", CORE_FORBIDDEN)?);
    problems.extend(purity(sh, "chronik-store", STORE_FORBIDDEN)?);
    if !problems.is_empty() {
        bail!("layering violations:\n  {}", problems.join("\n  "));
    }
    println!(
        "{} members checked; chronik-core and chronik-store pull in no sqlx and no tokio runtime",
        members.len()
    );
    Ok(())
}

/// Workspace members by package name.
fn members(sh: &Shell) -> anyhow::Result<Vec<String>> {
    let cargo = crate::cargo();
    let out = cmd!(
        sh,
        "{cargo} tree --workspace --depth 0 --prefix none -e normal"
    )
    .quiet()
    .read()?;
    let members: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    ensure!(!members.is_empty(), "cargo tree listed no workspace member");
    Ok(members)
}

/// The members `package` depends on directly through normal or build edges.
fn direct_member_deps(
    sh: &Shell,
    package: &str,
    members: &[String],
) -> anyhow::Result<Vec<String>> {
    let cargo = crate::cargo();
    let out = cmd!(
        sh,
        "{cargo} tree -p {package} -e normal,build --depth 1 --prefix depth"
    )
    .quiet()
    .read()
    .with_context(|| format!("cargo tree -p {package}"))?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix('1'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| members.iter().any(|m| m == name))
        .map(str::to_owned)
        .collect())
}

/// What `package` pulls in that it must not: forbidden crates at any depth, and tokio
/// runtime features. Empty when pure.
fn purity(sh: &Shell, package: &str, forbidden: &[&str]) -> anyhow::Result<Vec<String>> {
    let cargo = crate::cargo();
    let out = cmd!(
        sh,
        "{cargo} tree -p {package} -e normal,build,features --prefix none"
    )
    .quiet()
    .read()
    .with_context(|| format!("cargo tree -p {package}"))?;
    let mut problems = Vec::new();
    for (name, feature) in out.lines().filter_map(parse_tree_line) {
        let banned = forbidden
            .iter()
            .any(|f| name == *f || name.starts_with(&format!("{f}-")));
        let problem = match feature {
            None if banned => format!("{package} depends on {name}"),
            Some(f) if name == "tokio" && TOKIO_RUNTIME_FEATURES.contains(&f) => {
                format!("{package} enables the tokio runtime feature {f:?}")
            }
            _ => continue,
        };
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    Ok(problems)
}

/// `tokio v1.0.0 (...)` -> `("tokio", None)`; `tokio feature "rt"` -> `("tokio", Some("rt"))`.
fn parse_tree_line(line: &str) -> Option<(&str, Option<&str>)> {
    let mut words = line.split_whitespace();
    let name = words.next()?;
    match words.next()? {
        "feature" => Some((name, Some(words.next()?.trim_matches('"')))),
        _ => Some((name, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_tree_line;

    #[test]
    fn tree_lines_parse() {
        assert_eq!(parse_tree_line("tokio v1.54.1 (*)"), Some(("tokio", None)));
        assert_eq!(
            parse_tree_line("tokio feature \"rt-multi-thread\""),
            Some(("tokio", Some("rt-multi-thread")))
        );
        assert_eq!(parse_tree_line(""), None);
    }
}
