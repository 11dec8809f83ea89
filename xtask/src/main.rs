//! Project automation for chronik, run as `cargo xtask <command>`.
//!
//! Light on purpose (anyhow + xshell): it calls cargo, git and the project's own `chronik`
//! binary instead of linking a database driver.

mod layering;
mod migrations;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context as _, bail};
use xshell::{Shell, cmd};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci [STEP...]     what CI runs, in order, stopping at the first failure:
                   fmt, clippy (-D warnings), otel (the exporter feature, compiled),
                   layering, doc (-D warnings), migrations,
                   test (all tests, PostgreSQL included, against DATABASE_URL),
                   torture-smoke (15 s of concurrent writers under injected faults, then a
                   check against a model; debug build),
                   bench-smoke (every benchmark scenario briefly, debug build),
                   readme (the README's first command, `cargo run -- demo`, as written);
                   naming steps runs only those, e.g. `cargo xtask ci layering migrations`
  migrate          applies the migrations to DATABASE_URL with `chronik migrate`
  bench [ARG...]   runs chronik-bench (release build) against DATABASE_URL; ARGs go to it,
                   e.g. `cargo xtask bench --quick`; results in target/bench/results.{json,md}
  torture [ARG...] runs chronik-torture (release build) against DATABASE_URL in a scratch
                   database `chronik_torture`: seeded concurrent writers while faults are
                   injected, then every check; ARGs go to it: `--smoke` (~30 s), `--duration
                   30m`, `--seed N` (replay), `--restart-cmd CMD` (also restart the server);
                   exit 1 on FAIL; summary in target/torture/
  lock-migrations  records new migrations in xtask/migrations.lock (their git blob ids),
                   after which `ci` refuses any edit to them

DATABASE_URL defaults to postgres://postgres@127.0.0.1:5432/postgres.";

/// The database `ci` and `migrate` use when `DATABASE_URL` is unset.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = std::env::args_os()
        .skip(1)
        .map(OsString::into_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|bad| anyhow::anyhow!("argument {bad:?} is not valid UTF-8\n\n{USAGE}"))?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    match args.as_slice() {
        ["ci", steps @ ..] => ci(&sh, steps),
        ["migrate"] => migrate(&sh),
        ["bench", args @ ..] => bench(&sh, args),
        ["torture", args @ ..] => torture(&sh, args),
        ["lock-migrations"] => migrations::lock(&sh),
        ["help" | "-h" | "--help"] => {
            println!("{USAGE}");
            Ok(())
        }
        [] => bail!("no command given\n\n{USAGE}"),
        [command, ..] => bail!("unknown command or extra arguments: {command:?}\n\n{USAGE}"),
    }
}

/// The workspace root (xtask lives one level below it).
fn project_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}

/// The cargo that runs us, so that the pinned toolchain is used throughout.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// The `ci` steps that talk to PostgreSQL (checked up front, before any build).
const DATABASE_STEPS: [&str; 3] = ["test", "torture-smoke", "bench-smoke"];

/// What `ci` does to the cluster it is pointed at, said before it does it.
const WHAT_CI_WRITES: &str = "\
note: ci writes to this cluster (use one of its own, never a production one):
  - test: throwaway databases (sqlx::test; dropped when their test passes), uniquely named
    schemas and LOGIN roles `chronik_*` (dropped at each test's end), sessions it opened
    itself terminated, held-open and prepared transactions (always resolved);
  - torture-smoke: drops and re-creates database `chronik_torture`, prepares and resolves
    two-phase transactions, kills its own sessions; the database is left for inspection;
  - bench-smoke: drops and re-creates scratch schemas `chronik_bench*` in the target database;
  - a held transaction pauses every feed reader in the cluster while it lasts.";

/// One step of `ci`.
struct Step {
    name: &'static str,
    what: &'static str,
    run: fn(&Shell) -> anyhow::Result<()>,
}

const STEPS: &[Step] = &[
    Step {
        name: "fmt",
        what: "cargo fmt --all -- --check",
        run: |sh| {
            let cargo = cargo();
            Ok(cmd!(sh, "{cargo} fmt --all -- --check").run()?)
        },
    },
    Step {
        name: "clippy",
        what: "cargo clippy --workspace --all-targets --features <every feature but otel> -- -D warnings",
        run: |sh| {
            let cargo = cargo();
            let features = ci_features()?;
            Ok(cmd!(
                sh,
                "{cargo} clippy --workspace --all-targets --features {features} --quiet -- -D warnings"
            )
            .run()?)
        },
    },
    Step {
        name: "otel",
        what: "cargo clippy -p chronik-cli --features otel -- -D warnings (the OpenTelemetry exporter, off in every other step, compiled so that it cannot rot)",
        run: |sh| {
            let cargo = cargo();
            Ok(cmd!(
                sh,
                "{cargo} clippy -p chronik-cli --features otel --quiet -- -D warnings"
            )
            .run()?)
        },
    },
    Step {
        name: "layering",
        what: "core and store pull in no sqlx and no tokio runtime; dependency edges point inward",
        run: layering::check,
    },
    Step {
        name: "doc",
        what: "RUSTDOCFLAGS=\"-D warnings\" cargo doc --workspace --no-deps",
        run: |sh| {
            let cargo = cargo();
            Ok(cmd!(sh, "{cargo} doc --workspace --no-deps --quiet")
                .env("RUSTDOCFLAGS", "-D warnings")
                .run()?)
        },
    },
    Step {
        name: "migrations",
        what: "sqlx file names, increasing versions, recorded migrations unchanged",
        run: migrations::check,
    },
    Step {
        name: "test",
        what: "cargo test --workspace --features <every feature but otel>, PostgreSQL included",
        run: |sh| {
            let url = database_url();
            check_database(sh, &url)
                .context("the PostgreSQL tests need a database and are never skipped")?;
            let cargo = cargo();
            let features = ci_features()?;
            Ok(cmd!(sh, "{cargo} test --workspace --features {features}")
                .env("DATABASE_URL", &url)
                .run()?)
        },
    },
    Step {
        name: "torture-smoke",
        what: "cargo run -p chronik-torture -- --smoke (writers under injected faults, checked against a model)",
        run: |sh| {
            let url = database_url();
            check_database(sh, &url)?;
            let cargo = cargo();
            Ok(cmd!(
                sh,
                "{cargo} run --quiet --package chronik-torture -- --smoke"
            )
            .env("DATABASE_URL", &url)
            .run()?)
        },
    },
    Step {
        name: "readme",
        what: "the README's set-up command (its first ```sh block) run exactly as written",
        run: readme_commands,
    },
    Step {
        name: "bench-smoke",
        what: "cargo run -p chronik-bench -- --quick (proves the scenarios run; debug numbers mean nothing)",
        run: |sh| {
            let url = database_url();
            let cargo = cargo();
            Ok(cmd!(
                sh,
                "{cargo} run --quiet --package chronik-bench -- --quick --out target/bench-smoke"
            )
            .env("DATABASE_URL", &url)
            .run()?)
        },
    },
];

/// The commands of the README's first ```sh block (its "Run the demo" set-up), in order.
///
/// Only `cargo run ...` lines are accepted: they run with the pinned cargo, in the
/// workspace root, as a user types them (an error names the line that is not one).
fn readme_setup_commands(readme: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let block = readme
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .context("README.md has no ```sh block: its first one is the set-up command")?;
    let mut commands = Vec::new();
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        if words.first().map(String::as_str) != Some("cargo")
            || words.get(1).map(String::as_str) != Some("run")
        {
            bail!(
                "README.md's first ```sh block has `{line}`: the readme step runs only `cargo run ...` lines"
            );
        }
        commands.push(words);
    }
    if commands.is_empty() {
        bail!("README.md's first ```sh block is empty");
    }
    Ok(commands)
}

/// Runs the README's set-up command as written (the embedded in-memory demo): the tests
/// run binaries by name, so only this catches `cargo run` no longer knowing what to run.
fn readme_commands(sh: &Shell) -> anyhow::Result<()> {
    let readme = sh.read_file("README.md")?;
    for words in readme_setup_commands(&readme)? {
        let shown = words.join(" ");
        let cargo = cargo();
        let status = std::process::Command::new(cargo)
            .current_dir(sh.current_dir())
            .args(&words[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("cannot run `{shown}`"))?;
        if !status.success() {
            bail!("the README's `{shown}` failed ({status})");
        }
        println!("`{shown}` ran as the README says");
    }
    Ok(())
}

/// Features CI leaves out of the workspace build and tests: the OpenTelemetry exporter
/// (heavy dependencies no test needs), compiled by the `otel` step instead.
const LEFT_OUT_FEATURES: &[&str] = &["otel"];

/// Every feature of every workspace member as `package/feature`, comma-separated, but
/// `default` and [`LEFT_OUT_FEATURES`]: what `--all-features` was, without the exporter.
/// Read from the manifests, so a feature added later is built and tested too.
fn ci_features() -> anyhow::Result<String> {
    let root = project_root();
    let mut features = Vec::new();
    for dir in ["crates", "examples"] {
        let mut members: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .with_context(|| format!("cannot list {dir}/"))?
            .filter_map(Result::ok)
            .map(|e| e.path().join("Cargo.toml"))
            .filter(|p| p.is_file())
            .collect();
        members.sort();
        for manifest in members {
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("cannot read {}", manifest.display()))?;
            features.extend(manifest_features(&text));
        }
    }
    anyhow::ensure!(
        !features.is_empty(),
        "no workspace member declares a feature"
    );
    Ok(features.join(","))
}

/// `package/feature` for each feature a manifest declares (but `default` and
/// [`LEFT_OUT_FEATURES`]): the keys of its `[features]` table.
fn manifest_features(manifest: &str) -> Vec<String> {
    let mut package = None;
    let mut section = "";
    let mut keys = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if section == "[package]" && key == "name" {
            package = Some(value.trim().trim_matches('"').to_owned());
        } else if section == "[features]"
            && !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && key != "default"
            && !LEFT_OUT_FEATURES.contains(&key)
        {
            keys.push(key.to_owned());
        }
    }
    let Some(package) = package else {
        return Vec::new();
    };
    keys.into_iter().map(|k| format!("{package}/{k}")).collect()
}

fn ci(sh: &Shell, only: &[&str]) -> anyhow::Result<()> {
    if let Some(unknown) = only.iter().find(|n| !STEPS.iter().any(|s| s.name == **n)) {
        let names: Vec<&str> = STEPS.iter().map(|s| s.name).collect();
        bail!(
            "unknown ci step {unknown:?}; the steps are: {}",
            names.join(", ")
        );
    }
    let steps: Vec<&Step> = STEPS
        .iter()
        .filter(|s| only.is_empty() || only.contains(&s.name))
        .collect();
    // Before minutes of building: a database the later steps need must answer now.
    if steps.iter().any(|s| DATABASE_STEPS.contains(&s.name)) {
        let url = database_url();
        check_database(sh, &url)
            .context("the PostgreSQL steps need a database and are never skipped")?;
        println!("{WHAT_CI_WRITES}");
    }
    let started = Instant::now();
    let total = steps.len();
    for (i, step) in steps.iter().enumerate() {
        println!("\n==> [{}/{total}] {}: {}", i + 1, step.name, step.what);
        let t = Instant::now();
        (step.run)(sh).with_context(|| format!("ci step `{}` failed", step.name))?;
        println!(
            "==> [{}/{total}] {} ok ({:.1} s)",
            i + 1,
            step.name,
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "\nci passed: {total} steps in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn migrate(sh: &Shell) -> anyhow::Result<()> {
    let url = database_url();
    check_database(sh, &url)?;
    // `chronik migrate --database-url` reads the URL from DATABASE_URL, which keeps a
    // password out of process listings; std's Command inherits stdio and echoes nothing.
    let status = std::process::Command::new(cargo())
        .current_dir(sh.current_dir())
        .args([
            "run",
            "--quiet",
            "--package",
            "chronik-example-orders",
            "--bin",
            "chronik",
            "--",
            "migrate",
        ])
        .env("DATABASE_URL", &url)
        .status()
        .context("cannot run `chronik migrate`")?;
    if !status.success() {
        bail!("`chronik migrate` failed ({status})");
    }
    Ok(())
}

fn bench(sh: &Shell, args: &[&str]) -> anyhow::Result<()> {
    let url = database_url();
    check_database(sh, &url)?;
    let cargo = cargo();
    cmd!(
        sh,
        "{cargo} run --release --package chronik-bench -- {args...}"
    )
    .env("DATABASE_URL", &url)
    .run()?;
    Ok(())
}

fn torture(sh: &Shell, args: &[&str]) -> anyhow::Result<()> {
    let url = database_url();
    check_database(sh, &url)?;
    let cargo = cargo();
    // A FAIL verdict exits with 1, which fails this command too.
    cmd!(
        sh,
        "{cargo} run --release --package chronik-torture -- {args...}"
    )
    .env("DATABASE_URL", &url)
    .run()
    .context("the torture run failed (see its verdict above)")?;
    Ok(())
}

/// `DATABASE_URL`, or the local default (announced once).
fn database_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            println!("DATABASE_URL is not set; using {DEFAULT_DATABASE_URL}");
            DEFAULT_DATABASE_URL.to_owned()
        }
    })
    .clone()
}

/// Fails with a clear message when the database at `url` does not answer.
fn check_database(sh: &Shell, url: &str) -> anyhow::Result<()> {
    let shown = redact(url);
    let probe = if cmd!(sh, "psql --version")
        .quiet()
        .ignore_stdout()
        .run()
        .is_ok()
    {
        cmd!(
            sh,
            "psql --no-psqlrc --quiet --tuples-only --dbname {url} --command"
        )
        .arg("select 1")
    } else if cmd!(sh, "pg_isready --version")
        .quiet()
        .ignore_stdout()
        .run()
        .is_ok()
    {
        cmd!(sh, "pg_isready --dbname {url}")
    } else {
        bail!(
            "cannot check DATABASE_URL={shown}: neither psql nor pg_isready is installed \
             (install the PostgreSQL client tools)"
        );
    };
    // Quiet and status-checked by hand: xshell's own messages would print the URL.
    let out = probe
        .quiet()
        .ignore_status()
        .output()
        .context("cannot run the database probe")?;
    if out.status.success() {
        println!("database at DATABASE_URL={shown} is reachable");
        return Ok(());
    }
    let why = String::from_utf8_lossy(if out.stderr.is_empty() {
        &out.stdout
    } else {
        &out.stderr
    })
    .trim()
    .to_owned();
    bail!(
        "the database at DATABASE_URL={shown} is not reachable ({why}); start PostgreSQL \
         (.ci/run does) or point DATABASE_URL at a running server"
    )
}

/// `url` with any password replaced by `***`, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{manifest_features, readme_setup_commands, redact};

    #[test]
    fn the_readme_setup_block_is_read_as_commands() {
        let readme = "# x\n\n```sh\ncargo run -- demo\n```\n\n```sh\ncargo xtask ci\n```\n";
        let commands = readme_setup_commands(readme).expect("one command");
        assert_eq!(commands, vec![vec!["cargo", "run", "--", "demo"]]);
        let shell = "```sh\nmake demo\n```\n";
        let err = readme_setup_commands(shell).expect_err("not cargo run");
        assert!(err.to_string().contains("`make demo`"), "{err}");
        assert!(readme_setup_commands("no block").is_err());
    }

    #[test]
    fn the_real_readme_starts_with_the_demo() {
        let readme = include_str!("../../README.md");
        let commands = readme_setup_commands(readme).expect("the README's set-up block");
        assert_eq!(commands[0][..3], ["cargo", "run", "--"]);
    }

    #[test]
    fn features_are_read_from_manifests_without_default_and_otel() {
        let manifest = r#"
[package]
name = "chronik-cli"
version.workspace = true

[features]
default = ["a"]
# a comment = not a feature
metrics = ["dep:metrics"]
otel = ["dep:tracing-opentelemetry"]
relay = [
    "x", # not = a feature
]

[dependencies]
name = "not a package"
"#;
        assert_eq!(
            manifest_features(manifest),
            ["chronik-cli/metrics", "chronik-cli/relay"]
        );
        assert!(manifest_features("[package]\nname = \"x\"\n").is_empty());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("not a url"), "not a url");
    }
}
