//! The binary never prints a password from `--database-url` or `DATABASE_URL`, nor a
//! payload it appends, whatever `RUST_LOG` says and whether the connection works or not.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::{Command, Output};

const PASSWORD: &str = "s3cr3t-marker";
const PAYLOAD: &str = "payload-marker-91c2";

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The test database's URL with a password (the local server trusts local logins and
/// ignores it), and optionally another host and port.
fn with_password(host_port: Option<&str>) -> String {
    let url = database_url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, host) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
    let user = user.split(':').next().unwrap();
    let host = match host_port {
        Some(h) => format!("{h}/postgres"),
        None => host.to_owned(),
    };
    format!("{scheme}://{user}:{PASSWORD}@{host}")
}

fn chronik(args: &[&str], url: &str, log: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", log)
        .output()
        .unwrap()
}

fn check(out: &Output, what: &str) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(PASSWORD), "{what} shows the password:\n{all}");
    assert!(!all.contains("panicked"), "{what}:\n{all}");
}

#[test]
fn bad_urls_and_unreachable_servers_never_show_the_password() {
    let refused = with_password(Some("127.0.0.1:1"));
    let unknown = with_password(Some("no-such-host.invalid:5432"));
    let malformed = format!("postgres://postgres:{PASSWORD}@127.0.0.1:notaport/postgres");
    // An unreachable server costs the pool's acquire timeout (10 s) per run: few runs
    // there, every command on the malformed URL. `trace` logs everything `info` does.
    let append: &[&str] = &["append", "note-1", "--type", "T", "--data", "{}"];
    let mut runs: Vec<(&str, &[&str])> = vec![
        (&refused, &["migrate"]),
        (&refused, append),
        (&unknown, &["doctor"]),
    ];
    for args in [
        &["migrate"][..],
        &["doctor"],
        append,
        &["roles", "grant", "app"],
    ] {
        runs.push((&malformed, args));
    }
    for (url, args) in runs {
        let out = chronik(args, url, "trace");
        assert_eq!(out.status.code(), Some(1), "{args:?} {url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("error: "), "{args:?}: {stderr}");
        check(&out, &format!("{args:?} on {url}"));
    }
    // The URL given as a flag rather than in the environment.
    let out = chronik(&["migrate", "--database-url", &malformed], "", "trace");
    assert_eq!(out.status.code(), Some(1));
    check(&out, "--database-url");
}

#[test]
fn appending_logs_neither_the_password_nor_the_payload_at_info() {
    let url = with_password(None);
    let schema = format!("clisecret_{}", uuid::Uuid::new_v4().simple());
    let out = chronik(&["migrate", "--schema", &schema], &url, "info");
    assert!(out.status.success());
    check(&out, "migrate");
    let data = format!(r#"{{"note":"{PAYLOAD}"}}"#);
    let header = format!("token={PAYLOAD}");
    for _ in 0..2 {
        let out = chronik(
            &[
                "append", "note-1", "--type", "Noted", "--data", &data, "--header", &header,
                "--schema", &schema,
            ],
            &url,
            "info",
        );
        check(&out, "append");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(PAYLOAD), "the payload is shown:\n{all}");
    }
    let out = chronik(
        &[
            "tail",
            "--no-follow",
            "--category",
            "note",
            "--schema",
            &schema,
        ],
        &url,
        "info",
    );
    // `tail` prints payloads on stdout by design (that is its job); never in the logs.
    assert!(!String::from_utf8_lossy(&out.stderr).contains(PAYLOAD));
    check(&out, "tail");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&database_url()).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&pool)
        .await
        .unwrap();
    });
}
