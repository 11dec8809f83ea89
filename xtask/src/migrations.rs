//! The migrations check, and recording migrations in `xtask/migrations.lock`.
//!
//! Rules (`migrations/` at the workspace root, applied by `sqlx::migrate!`):
//! - every `*.sql` file is named `<version>_<name>.sql`: a positive integer version (it
//!   must fit sqlx's `i64`), a name of ASCII letters, digits and `_`; no `.up.sql` /
//!   `.down.sql`, because migrations are append-only and never reverted;
//! - versions are unique, so sorted by version they strictly increase;
//! - a recorded migration is never edited or deleted: `xtask/migrations.lock` keeps each
//!   one's git blob id (`git hash-object`), and a file whose content no longer matches
//!   fails the check. A new migration needs a version above every recorded one.
//!
//! Why a lock file rather than comparing with `git show HEAD:<file>`: CI runs on a fresh
//! clone, where the working tree always equals HEAD, so that comparison would never fail
//! there; an edit committed in a later commit would slip through. The lock file records
//! content at the time a migration was accepted, and changing an entry is a visible,
//! reviewable edit. (sqlx also refuses, at run time, to apply a migration whose checksum
//! differs from the one a database recorded; this check catches it before any database.)
//!
//! Workflow: add `migrations/<version>_<name>.sql`, then run `cargo xtask lock-migrations`
//! and commit both. Until it is committed a migration may still be changed and locked again;
//! once committed, `lock-migrations` refuses to touch its entry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail, ensure};
use xshell::{Shell, cmd};

const DIR: &str = "migrations";
const LOCK: &str = "xtask/migrations.lock";
const LOCK_HEADER: &str = "\
# Recorded migrations: <file> <git blob id>. Written by `cargo xtask lock-migrations`.
# `cargo xtask ci` fails when a recorded migration is edited or deleted: add a new one.
";

/// A migration file with a valid name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Migration {
    version: i64,
    file: String,
}

/// Parses `<version>_<name>.sql`.
fn parse_name(file: &str) -> Result<Migration, String> {
    let bad = |why: &str| Err(format!("{file}: {why} (expected `<version>_<name>.sql`)"));
    let Some(stem) = file.strip_suffix(".sql") else {
        return bad("not a .sql file");
    };
    if stem.ends_with(".up") || stem.ends_with(".down") {
        return bad("reversible migrations are not used: migrations are append-only");
    }
    let Some((version, name)) = stem.split_once('_') else {
        return bad("no `_` between version and name");
    };
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return bad("the version is not a number");
    }
    let Ok(number) = version.parse::<i64>() else {
        return bad("the version does not fit a 64-bit signed integer");
    };
    if number == 0 {
        return bad("the version must be positive");
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return bad("the name must be non-empty ASCII letters, digits and `_`");
    }
    Ok(Migration {
        version: number,
        file: file.to_owned(),
    })
}

/// The recorded `file -> blob id` entries, in file order.
fn read_lock(sh: &Shell) -> anyhow::Result<BTreeMap<String, String>> {
    if !sh.path_exists(LOCK) {
        return Ok(BTreeMap::new());
    }
    let text = sh.read_file(LOCK)?;
    let mut entries = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(file), Some(id), None) = (words.next(), words.next(), words.next()) else {
            bail!("{LOCK}:{}: expected `<file> <git blob id>`", i + 1);
        };
        ensure!(
            entries.insert(file.to_owned(), id.to_owned()).is_none(),
            "{LOCK}:{}: {file} is recorded twice",
            i + 1
        );
    }
    Ok(entries)
}

fn write_lock(sh: &Shell, entries: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let mut text = LOCK_HEADER.to_owned();
    for (file, id) in entries {
        writeln!(text, "{file} {id}")?;
    }
    sh.write_file(LOCK, text)?;
    Ok(())
}

/// `*.sql` file names in `migrations/` (other files are ignored, as sqlx ignores them).
fn sql_files(sh: &Shell) -> anyhow::Result<Vec<String>> {
    if !sh.path_exists(DIR) {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for path in sh.read_dir(DIR)? {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has a name that is not UTF-8", path.display()))?
            .to_owned();
        if name.ends_with(".sql") {
            files.push(name);
        }
    }
    files.sort();
    Ok(files)
}

fn blob_id(sh: &Shell, file: &str) -> anyhow::Result<String> {
    let path = Path::new(DIR).join(file);
    Ok(cmd!(sh, "git hash-object --no-filters {path}")
        .quiet()
        .read()?
        .trim()
        .to_owned())
}

/// Whether `migrations/<file>` is in the HEAD commit.
fn committed(sh: &Shell, file: &str) -> bool {
    let spec = format!("HEAD:{DIR}/{file}");
    cmd!(sh, "git cat-file -e {spec}")
        .quiet()
        .ignore_stderr()
        .run()
        .is_ok()
}

/// Checks names, version order, and that recorded migrations are unchanged.
pub(crate) fn check(sh: &Shell) -> anyhow::Result<()> {
    let files = sql_files(sh)?;
    let lock = read_lock(sh)?;
    let mut problems = Vec::new();
    let mut migrations = Vec::new();
    for file in &files {
        match parse_name(file) {
            Ok(m) => migrations.push(m),
            Err(e) => problems.push(e),
        }
    }
    migrations.sort_by_key(|m| m.version);
    for pair in migrations.windows(2) {
        if pair[0].version == pair[1].version {
            problems.push(format!(
                "{} and {} share version {}: versions must strictly increase",
                pair[0].file, pair[1].file, pair[0].version
            ));
        }
    }
    for (file, recorded) in &lock {
        if !files.contains(file) {
            problems.push(format!(
                "{file} is recorded in {LOCK} but was deleted: migrations are append-only"
            ));
        } else if blob_id(sh, file)? != *recorded {
            problems.push(format!(
                "{file} was edited after it was recorded in {LOCK}: never change a migration \
                 that may have been applied; add a new one"
            ));
        }
    }
    let newest_recorded = migrations
        .iter()
        .filter(|m| lock.contains_key(&m.file))
        .map(|m| m.version)
        .max();
    let mut pending = Vec::new();
    for m in migrations.iter().filter(|m| !lock.contains_key(&m.file)) {
        if let Some(newest) = newest_recorded.filter(|&n| m.version <= n) {
            problems.push(format!(
                "{} has version {}, not above the newest recorded migration ({newest}): \
                 new migrations go after every existing one",
                m.file, m.version
            ));
        }
        if committed(sh, &m.file) {
            problems.push(format!(
                "{} is committed but not recorded in {LOCK}: run `cargo xtask lock-migrations` \
                 and commit {LOCK}",
                m.file
            ));
        } else {
            pending.push(m.file.as_str());
        }
    }
    if !problems.is_empty() {
        bail!("migration problems:\n  {}", problems.join("\n  "));
    }
    if !pending.is_empty() {
        println!(
            "not committed yet, so not recorded (run `cargo xtask lock-migrations` before committing): {}",
            pending.join(", ")
        );
    }
    println!(
        "{} migrations, versions increasing, {} recorded and unchanged",
        migrations.len(),
        lock.len()
    );
    Ok(())
}

/// Records every migration not yet in the lock (and re-records uncommitted ones).
pub(crate) fn lock(sh: &Shell) -> anyhow::Result<()> {
    let mut lock = read_lock(sh)?;
    let mut changed = Vec::new();
    for file in sql_files(sh)? {
        parse_name(&file).map_err(anyhow::Error::msg)?;
        let id = blob_id(sh, &file)?;
        match lock.get(&file) {
            Some(recorded) if *recorded == id => {}
            Some(_) if committed(sh, &file) => bail!(
                "{file} is committed and was edited since it was recorded; refusing to record \
                 the edit: add a new migration instead"
            ),
            _ => {
                lock.insert(file.clone(), id);
                changed.push(file);
            }
        }
    }
    write_lock(sh, &lock)?;
    if changed.is_empty() {
        println!("{LOCK} is up to date");
    } else {
        println!("recorded in {LOCK}: {}", changed.join(", "));
    }
    // Run the full check so that a bad name or version order is reported right away.
    check(sh)
}

#[cfg(test)]
mod tests {
    use super::parse_name;

    #[test]
    fn sqlx_names_are_checked() {
        let ok = parse_name("0001_event_store.sql").map(|m| m.version);
        assert_eq!(ok, Ok(1));
        assert_eq!(
            parse_name("20260101120000_add_index.sql").map(|m| m.version),
            Ok(20_260_101_120_000)
        );
        for bad in [
            "event_store.sql",
            "1.sql",
            "_x.sql",
            "0_zero.sql",
            "x1_a.sql",
            "1_.sql",
            "1_has space.sql",
            "1_a.up.sql",
            "1_a.down.sql",
            "99999999999999999999_big.sql",
            "1_a.txt",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }
}
