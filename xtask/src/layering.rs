//! The layering check: dependency edges point inward, the pure crates stay pure, the
//! operator tool runs no SQL of its own, no binary ships test code, and the PostgreSQL
//! adapter knows no example domain.
//!
//! Reads `cargo tree` (normal and build edges only: dev-dependencies may point anywhere,
//! e.g. store's tests use the in-memory adapter). Features are resolved per package, as a
//! build of that package alone would resolve them.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail, ensure};
use xshell::{Shell, cmd};

/// Every workspace member and its layer. An edge `a -> b` between members is allowed only
/// when `b` sits in a lower layer: macros <- core <- store <- {memory, projections (the
/// projection engine and its ports)} <- {postgres (implements those ports too), testkit,
/// relay (a projection that publishes the feed to NATS JetStream)} <- console (the web console) <- cli (the operator tool) <- the `chronik` facade <- the
/// examples
/// (services built on the facade, with their operator binaries) <- {bench, torture, e2e}.
/// `None`: must depend on no member at all.
const LAYERS: &[(&str, Option<u8>)] = &[
    ("chronik-macros", Some(0)),
    ("chronik-core", Some(1)),
    ("chronik-store", Some(2)),
    ("chronik-memory", Some(3)),
    ("chronik-projections", Some(3)),
    ("chronik-postgres", Some(4)),
    ("chronik-testkit", Some(4)),
    ("chronik-relay", Some(4)),
    ("chronik-console", Some(5)),
    ("chronik-cli", Some(6)),
    ("chronik", Some(7)),
    ("chronik-example-orders", Some(8)),
    ("chronik-example-accounts", Some(8)),
    ("chronik-bench", Some(9)),
    ("chronik-torture", Some(9)),
    ("chronik-e2e", Some(9)),
    ("xtask", None),
];

/// Crates the pure core must not pull in, at any depth.
const CORE_FORBIDDEN: &[&str] = &["sqlx", "tokio", "async-std", "smol"];
/// Crates the store ports must not pull in, at any depth.
const STORE_FORBIDDEN: &[&str] = &["sqlx", "async-std", "smol"];
/// The operator tool (`chronik-cli`) and its web console (`chronik-console`) must not
/// depend on these directly: all SQL lives in chronik-postgres.
const CLI_FORBIDDEN_DIRECT: &[&str] = &["sqlx"];
/// Test code, which must not ship inside a binary: no member that builds one (nor the
/// operator library every service binary links) may pull these in through normal or build
/// edges, at any depth. Dev-dependencies are where they belong.
const TEST_CODE: &[&str] = &["chronik-testkit", "proptest"];
/// The members whose normal dependencies end up in a binary a user runs: the operator
/// library, the example services (the stock `chronik` binary, `accounts-admin`), the bench
/// and the torture harness.
const SHIPPING: &[&str] = &[
    "chronik-console",
    "chronik-cli",
    "chronik-example-orders",
    "chronik-example-accounts",
    "chronik-bench",
    "chronik-torture",
];
/// The example services' vocabulary, which the library's PostgreSQL adapter must not
/// contain (in `src/` and `build.rs`): read models and domains belong to the examples.
const EXAMPLE_DOMAIN_WORDS: &[&str] = &[
    "chronik_example_",
    "chronik-example-",
    "Orders",
    "orders::",
    "accounts::",
    "Balances::",
    "\"order\"",
    "\"order-",
    "order_summaries",
    "OrderPlaced",
    "OrderShipped",
    "OrderCancelled",
    "OrderEvent",
    "OrderCommand",
    "OrderProjection",
    "OrderSummary",
    "OrderStatus",
    "LineAdded",
];

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
                    "{member} -> {dep}: dependency edges must point inward (core <- store <- adapters <- console <- cli <- facade <- examples <- binaries)"
                ));
            }
        }
    }
    problems.extend(purity(sh, "chronik-core", CORE_FORBIDDEN)?);
    problems.extend(purity(sh, "chronik-store", STORE_FORBIDDEN)?);
    for package in SHIPPING {
        problems.extend(shipping_dependencies(sh, package)?);
    }
    problems.extend(adapter_knows_no_example("crates/chronik-postgres")?);
    problems.extend(adapter_knows_no_example("crates/chronik-console")?);
    if !problems.is_empty() {
        bail!("layering violations:\n  {}", problems.join("\n  "));
    }
    println!(
        "{} members checked; chronik-core and chronik-store pull in no sqlx and no tokio runtime; \
         chronik-cli and chronik-console depend on no sqlx; no binary ships test code; chronik-postgres and chronik-console name no example domain",
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

/// What a shipping member ([`SHIPPING`]) depends on that it must not: test code at any
/// depth (normal and build edges) and, for the operator tool, sqlx directly.
fn shipping_dependencies(sh: &Shell, package: &str) -> anyhow::Result<Vec<String>> {
    let cargo = crate::cargo();
    let out = cmd!(
        sh,
        "{cargo} tree -p {package} -e normal,build --prefix depth"
    )
    .quiet()
    .read()
    .with_context(|| format!("cargo tree -p {package}"))?;
    Ok(shipping_problems(package, &out))
}

/// [`shipping_dependencies`] on the text of `cargo tree --prefix depth`.
fn shipping_problems(package: &str, tree: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for line in tree.lines() {
        let depth_len = line.bytes().take_while(u8::is_ascii_digit).count();
        let (depth, rest) = line.split_at(depth_len);
        let Some(name) = rest.split_whitespace().next() else {
            continue;
        };
        let problem = if matches!(package, "chronik-cli" | "chronik-console")
            && depth == "1"
            && CLI_FORBIDDEN_DIRECT.contains(&name)
        {
            format!(
                "{package} depends on {name}: its SQL belongs in chronik-postgres (e.g. PgEventStore::migration_status)"
            )
        } else if TEST_CODE.contains(&name) {
            format!(
                "{package} pulls in {name}: test code must not ship in a binary (make it a dev-dependency)"
            )
        } else {
            continue;
        };
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    problems
}

/// Where the sources of the crate at `dir` (its `src/` and `build.rs`) mention an example
/// domain ([`EXAMPLE_DOMAIN_WORDS`]).
fn adapter_knows_no_example(dir: &str) -> anyhow::Result<Vec<String>> {
    let root = crate::project_root().join(dir);
    let mut files = vec![root.join("build.rs")];
    let mut dirs = vec![root.join("src")];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut problems = Vec::new();
    for file in files.iter().filter(|f| f.exists()) {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let shown = file.strip_prefix(crate::project_root()).unwrap_or(file);
        for (line, word) in example_mentions(&text) {
            problems.push(format!(
                "{}:{line} mentions the example domain ({word:?}): the adapter must not know it; move it to examples/",
                shown.display()
            ));
        }
    }
    Ok(problems)
}

/// `(line number, word)` for every example-domain word in `text`.
fn example_mentions(text: &str) -> Vec<(usize, &'static str)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        for word in EXAMPLE_DOMAIN_WORDS {
            if line.contains(word) {
                found.push((i + 1, *word));
            }
        }
    }
    found
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
    use super::{example_mentions, parse_tree_line, shipping_problems};

    #[test]
    fn the_cli_may_not_use_sqlx_directly_nor_ship_testkit() {
        let clean = "0chronik-cli v0.1.0\n1chronik-postgres v0.1.0\n2sqlx v0.8.6\n";
        assert!(
            shipping_problems("chronik-cli", clean).is_empty(),
            "sqlx through the adapter is fine"
        );
        let direct = "0chronik-cli v0.1.0\n1sqlx v0.8.6\n";
        assert_eq!(shipping_problems("chronik-cli", direct).len(), 1);
        let testkit =
            "0chronik-cli v0.1.0\n1chronik v0.1.0\n2chronik-testkit v0.1.0\n3proptest v1.0.0\n";
        assert_eq!(shipping_problems("chronik-cli", testkit).len(), 2);
        let console = "0chronik-console v0.1.0\n1sqlx v0.8.6\n";
        assert_eq!(shipping_problems("chronik-console", console).len(), 1);
    }

    #[test]
    fn no_binary_ships_test_code() {
        let bench =
            "0chronik-bench v0.1.0\n1chronik-testkit v0.1.0\n2proptest v1.0.0\n1sqlx v0.8.6\n";
        assert_eq!(
            shipping_problems("chronik-bench", bench),
            [
                "chronik-bench pulls in chronik-testkit: test code must not ship in a binary (make it a dev-dependency)",
                "chronik-bench pulls in proptest: test code must not ship in a binary (make it a dev-dependency)",
            ],
            "sqlx is the bench's own business; test code is not"
        );
    }

    #[test]
    fn example_domain_words_are_found() {
        let text =
            "//! feed order, TransactionOrder, order_retries\nuse orders::OrderProjection;\n";
        assert_eq!(
            example_mentions(text),
            [(2, "orders::"), (2, "OrderProjection")]
        );
        assert!(example_mentions("ordering by (transaction, position)").is_empty());
    }

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
