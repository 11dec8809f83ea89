//! `chronik append` under hostile input, as an operator's shell would run it: arbitrary
//! bytes on stdin (invalid UTF-8, truncated or deeply nested JSON, huge input) and
//! arbitrary arguments (invalid UTF-8 included). Every run ends with status 0 (and the
//! event appended), 1 (the store refused) or 2 (bad input), never 101 (a panic), with one
//! `error: ...` line; and the store then holds exactly the events of the successful runs.
//!
//! Case counts: `stdin_fuzz` 128 cases, `argument_fuzz` 96 cases (one process each).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::ffi::OsStringExt as _;
use std::process::{Command, Output, Stdio};

use chronik::EventStore as _;
use chronik::postgres::{PgEventStore, PgStoreConfig, SchemaName};
use chronik::{EventId, EventType, Metadata, NewEvent, StreamId, Version};
use futures::TryStreamExt as _;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

const STDIN_CASES: u32 = 128;
const ARGUMENT_CASES: u32 = 96;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh migrated schema, dropped at the end of the test.
struct Schema {
    name: String,
    runtime: tokio::runtime::Runtime,
    store: PgEventStore,
}

impl Schema {
    fn migrated() -> Self {
        let name = format!("cliappend_{}", uuid::Uuid::new_v4().simple());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let config = PgStoreConfig::with_schema(SchemaName::new(name.clone()).unwrap());
        let store = runtime
            .block_on(PgEventStore::connect_with(&database_url(), config))
            .unwrap();
        runtime.block_on(store.migrate()).unwrap();
        Self {
            name,
            runtime,
            store,
        }
    }

    /// Runs `chronik append <args> --schema <this>` with `stdin` piped in.
    fn append(&self, args: &[OsString], stdin: &[u8]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chronik"))
            .arg("append")
            .args(args)
            .args(["--schema", &self.name])
            .env("DATABASE_URL", database_url())
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let bytes = stdin.to_vec();
        // A writer thread: the child may exit before reading everything (broken pipe).
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&bytes);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// The payloads of every event in the schema, by stream then version.
    fn events(&self) -> Vec<(String, u64, Value)> {
        self.runtime.block_on(async {
            let rows: Vec<(String, i64, sqlx::types::Json<Value>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT stream_id, version, payload FROM \"{}\".events ORDER BY stream_id, version",
                self.name
            )))
            .fetch_all(self.store.pool())
            .await
            .unwrap();
            rows.into_iter()
                .map(|(s, v, p)| (s, u64::try_from(v).unwrap(), p.0))
                .collect()
        })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        let _ = self
            .runtime
            .block_on(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(self.store.pool()));
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A failed run: status 1 or 2 as expected, one `error:` line first, no panic.
fn check_failure(out: &Output, what: &str) {
    let stderr = text(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{what}: status {:?}\n{stderr}",
        out.status
    );
    assert!(stderr.starts_with("error: "), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{what}: printed {}",
        text(&out.stdout)
    );
}

/// Whether the library accepts `bytes` as an event payload: the oracle of the fuzz.
fn accepted(bytes: &[u8]) -> Option<Value> {
    let payload: Value = serde_json::from_slice(bytes).ok()?;
    NewEvent::new(
        EventId::new(uuid::Uuid::from_u128(1)).unwrap(),
        EventType::new("T").unwrap(),
        1,
        payload.clone(),
        Metadata::default(),
    )
    .ok()
    .map(|_| payload)
}

/// Bytes an operator (or a broken script) could pipe in.
fn stdin_bytes() -> impl Strategy<Value = Vec<u8>> {
    let json = chronik::testkit::strategies::json_value()
        .prop_map(|v| v.to_string())
        .boxed();
    prop_oneof![
        // Anything at all, invalid UTF-8 included.
        2 => prop::collection::vec(any::<u8>(), 0..600),
        // Valid objects (appended) and other JSON values (refused).
        2 => chronik::testkit::strategies::payload().prop_map(|v| v.to_string().into_bytes()),
        1 => json.clone().prop_map(String::into_bytes),
        // Valid JSON damaged: truncated, or one byte replaced by anything.
        2 => (json.clone(), any::<prop::sample::Index>()).prop_map(|(s, i)| {
            let b = s.into_bytes();
            b[..i.index(b.len() + 1)].to_vec()
        }),
        2 => (chronik::testkit::strategies::payload(), any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(v, i, byte)| {
                let mut b = v.to_string().into_bytes();
                let at = i.index(b.len());
                b[at] = byte;
                b
            }),
        // Hostile shapes.
        1 => (1..4_000usize).prop_map(|n| {
            let mut s = "{\"a\":".to_owned();
            s.push_str(&"[".repeat(n));
            s.push_str(&"]".repeat(n));
            s.push('}');
            s.into_bytes()
        }),
        1 => prop::sample::select(vec![
            r#"{"lone":"\ud800"}"#,
            r#"{"lone":"\udc00x"}"#,
            r#"{"pair":"\ud83d\ude00"}"#,
            r#"{"nul":"\u0000"}"#,
            r#"{"\u0000":1}"#,
            r#"{"big":1e999}"#,
            r#"{"big":18446744073709551616}"#,
            r#"{"neg":-9223372036854775809}"#,
            r#"{"a":1}{"b":2}"#,
            r#"{"a":1} trailing"#,
            "\u{feff}{}",
            r#"{"dup":1,"dup":2}"#,
            "null",
            "\"just a string\"",
            "[]",
            "",
            "   \n\t",
            "{",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

#[test]
fn stdin_fuzz_appends_exactly_the_valid_payloads() {
    let schema = Schema::migrated();
    let appended: std::cell::RefCell<Vec<Value>> = std::cell::RefCell::default();
    let mut runner = TestRunner::new(Config {
        cases: STDIN_CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&stdin_bytes(), |bytes| {
        let out = schema.append(&os(&["fuzz-1", "--type", "Fuzzed"]), &bytes);
        let what = format!("stdin {:?}", text(&bytes[..bytes.len().min(200)]));
        match accepted(&bytes) {
            Some(payload) => {
                let stdout = text(&out.stdout);
                prop_assert!(
                    out.status.success(),
                    "{what}: {:?} {}",
                    out.status,
                    text(&out.stderr)
                );
                let mut appended = appended.borrow_mut();
                appended.push(payload);
                let expected = format!("appended: fuzz-1 v{} Fuzzed event ", appended.len());
                prop_assert!(stdout.starts_with(&expected), "{what}: {stdout}");
            }
            None => {
                check_failure(&out, &what);
                prop_assert_eq!(out.status.code(), Some(2), "{}", what);
            }
        }
        Ok(())
    });
    result.unwrap();
    let appended = appended.into_inner();
    let stored = schema.events();
    assert_eq!(
        stored.len(),
        appended.len(),
        "exactly the accepted payloads"
    );
    for (i, ((stream, version, payload), sent)) in stored.iter().zip(&appended).enumerate() {
        assert_eq!((stream.as_str(), *version), ("fuzz-1", i as u64 + 1));
        assert_eq!(payload, sent);
    }
    eprintln!(
        "stdin fuzz: {STDIN_CASES} cases, {} appended, {} refused",
        appended.len(),
        STDIN_CASES as usize - appended.len()
    );
}

/// An argument: valid or hostile text, or bytes that are not UTF-8. (Never a NUL byte:
/// no operating system can pass one in an argument.)
fn argument(valid: impl Strategy<Value = String> + 'static) -> BoxedStrategy<OsString> {
    let no_nul = |bytes: Vec<u8>| {
        OsString::from_vec(
            bytes
                .into_iter()
                .map(|b| if b == 0 { b'0' } else { b })
                .collect(),
        )
    };
    prop_oneof![
        8 => valid.prop_map(OsString::from),
        1 => chronik::testkit::strategies::any_text().prop_map(move |s| no_nul(s.into_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(no_nul),
    ]
    .boxed()
}

#[test]
fn argument_fuzz_never_panics_and_writes_only_what_succeeded() {
    let schema = Schema::migrated();
    let expected = prop_oneof![
        Just("any".to_owned()),
        Just("no-stream".to_owned()),
        Just("exists".to_owned()),
        (0..3u64).prop_map(|n| n.to_string()),
        Just("-1".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("9223372036854775808".to_owned()),
        Just("18446744073709551616".to_owned()),
    ];
    let args = (
        argument("[a-z]{1,4}-[a-z0-9]{1,4}".prop_map(String::from)),
        argument("[A-Z][a-z]{0,8}".prop_map(String::from)),
        argument(expected),
        argument((0..3u32).prop_map(|n| n.to_string())),
        argument(r#"\{"[a-z]{1,3}": ?[0-9]{1,3}\}"#.prop_map(String::from)),
        prop::collection::vec(
            argument("[a-z]{1,3}=[a-z]{0,3}".prop_map(String::from)),
            0..3,
        ),
    );
    let succeeded = std::cell::Cell::new(0usize);
    let mut runner = TestRunner::new(Config {
        cases: ARGUMENT_CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&args, |(stream, kind, expected, sv, data, headers)| {
        let mut argv = vec![stream, OsString::from("--type"), kind];
        // `=` form: a value starting with `-` is a value, not a flag.
        let mut flag = OsString::from("--expected-version=");
        flag.push(&expected);
        argv.push(flag);
        let mut sv_flag = OsString::from("--schema-version=");
        sv_flag.push(&sv);
        argv.push(sv_flag);
        let mut data_flag = OsString::from("--data=");
        data_flag.push(&data);
        argv.push(data_flag);
        for h in headers {
            let mut header = OsString::from("--header=");
            header.push(h);
            argv.push(header);
        }
        let out = schema.append(&argv, b"");
        let what = format!("{argv:?}");
        if out.status.success() {
            succeeded.set(succeeded.get() + 1);
            prop_assert!(text(&out.stdout).starts_with("appended: "), "{}", what);
        } else {
            check_failure(&out, &what);
        }
        Ok(())
    });
    result.unwrap();
    let succeeded = succeeded.get();
    assert_eq!(
        schema.events().len(),
        succeeded,
        "every event stored comes from a run that reported success"
    );
    eprintln!("argument fuzz: {ARGUMENT_CASES} cases, {succeeded} appended");
}

#[test]
fn huge_deep_and_invalid_inputs_are_clear_errors_and_write_nothing() {
    let schema = Schema::migrated();
    let over = vec![b' '; chronik::MAX_PAYLOAD_BYTES * 4 + 1];
    let big_string = format!("{{\"s\":\"{}\"}}", "x".repeat(chronik::MAX_PAYLOAD_BYTES));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(100), "}".repeat(100));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (over, "the payload on stdin is larger than 4194304 bytes"),
        (big_string.into_bytes(), "the limit is 1048576"),
        (deep.into_bytes(), "recursion limit exceeded"),
        (deep_object.into_bytes(), "nested deeper than 64 levels"),
        (vec![0xff, 0xfe, b'{', b'}'], "not valid JSON"),
        (b"{\"s\":\"\xc3\x28\"}".to_vec(), "not valid JSON"),
        (br#"{"s":"\ud800"}"#.to_vec(), "not valid JSON"),
        (br#"{"s":"\u0000"}"#.to_vec(), "NUL character"),
        (b"[1,2]".to_vec(), "must be a JSON object, got an array"),
        (b"".to_vec(), "the payload is empty"),
    ];
    for (stdin, expected) in cases {
        let out = schema.append(&os(&["note-1", "--type", "Placed"]), &stdin);
        let what = text(&stdin[..stdin.len().min(40)]);
        check_failure(&out, &what);
        assert_eq!(out.status.code(), Some(2), "{what}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{what}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
    }

    // Invalid UTF-8 in each argument: clap refuses it before anything runs.
    let bad = || OsString::from_vec(vec![b'o', 0xff, b'x']);
    let with = |i: usize| {
        let mut args = os(&[
            "note-1", "--type", "Placed", "--data", "{}", "--header", "k=v",
        ]);
        args[i] = bad();
        args
    };
    for i in [0, 2, 4, 6] {
        let out = schema.append(&with(i), b"");
        check_failure(&out, &format!("argument {i}"));
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("invalid UTF-8"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(schema.events().is_empty(), "nothing was appended");
}

#[test]
fn versions_conflicts_and_retries_behave_like_the_library() {
    let schema = Schema::migrated();
    let run = |args: &[&str]| schema.append(&os(args), b"");
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let id = "0b6f8a2e-1f3c-4c1e-9a53-3f2d0f6a0001";
    let first = ok(&[
        "note-9",
        "--type",
        "Placed",
        "--expected-version",
        "no-stream",
        "--data",
        r#"{"n":1}"#,
        "--event-id",
        id,
        "--header",
        "user=ann",
    ]);
    assert!(
        first.starts_with("appended: note-9 v1 Placed event 0b6f8a2e-"),
        "{first}"
    );
    // The same event again: an idempotent retry, nothing written.
    let again = ok(&[
        "note-9",
        "--type",
        "Placed",
        "--expected-version",
        "no-stream",
        "--data",
        r#"{"n":1}"#,
        "--event-id",
        id,
    ]);
    assert!(
        again.starts_with("already appended (nothing written): note-9 v1"),
        "{again}"
    );
    for (expected, message) in [
        ("0", "expected version 0, stream is at version 1"),
        ("no-stream", "stream is at version 1"),
        ("5", "expected version 5, stream is at version 1"),
    ] {
        let out = run(&[
            "note-9",
            "--type",
            "Placed",
            "--expected-version",
            expected,
            "--data",
            "{}",
        ]);
        check_failure(&out, expected);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains(message), "{}", text(&out.stderr));
    }
    let out = run(&[
        "note-none",
        "--type",
        "Placed",
        "--expected-version",
        "exists",
        "--data",
        "{}",
    ]);
    check_failure(&out, "exists");
    for (flag, expected) in [
        ("--expected-version=-1", "is not a version"),
        ("--expected-version=9223372036854775808", "out of range"),
        ("--expected-version=18446744073709551616", "out of range"),
        ("--schema-version=0", "0 is not in 1.."),
        ("--schema-version=4294967296", "4294967296 is not in 1.."),
        (
            "--event-id=00000000-0000-0000-0000-000000000000",
            "nil uuid",
        ),
        ("--event-id=nope", "not a uuid"),
        ("--header=novalue", "KEY=VALUE"),
    ] {
        let out = run(&["note-9", "--type", "Placed", "--data", "{}", flag]);
        check_failure(&out, flag);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert!(
            text(&out.stderr).contains(expected),
            "{flag}: {}",
            text(&out.stderr)
        );
    }
    let ok2 = ok(&[
        "note-9",
        "--type",
        "Placed",
        "--expected-version",
        "1",
        "--schema-version",
        "3",
        "--data",
        r#"{"n":2}"#,
    ]);
    assert!(ok2.starts_with("appended: note-9 v2 Placed"), "{ok2}");
    let events: Vec<_> = schema.runtime.block_on(async {
        schema
            .store
            .read_stream(&StreamId::new("note-9").unwrap(), Version::FIRST)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    });
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].metadata.headers.get("user").map(String::as_str),
        Some("ann")
    );
    assert_eq!(events[1].schema_version, 3);
    assert_eq!(schema.events().len(), 2, "nothing else was written");
}
