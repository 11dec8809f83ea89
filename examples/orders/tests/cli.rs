//! The `chronik` binary as a user runs it: exit codes, stdout, stderr.

use std::ffi::OsString;
use std::process::{Command, Output};

/// Runs `chronik` with `args` on the in-memory store (DATABASE_URL removed).
fn chronik(args: &[OsString]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("the chronik binary runs")
}

/// The PostgreSQL the tests use: DATABASE_URL, or the local default. Never skipped.
fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Runs `chronik` with `args` and DATABASE_URL set to the test database.
fn chronik_pg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(args)
        .env("DATABASE_URL", database_url())
        .env_remove("RUST_LOG")
        .output()
        .expect("the chronik binary runs")
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `args` must fail with exit status `code` and a stderr containing `expected`, and never panic.
fn check_refused(args: &[OsString], code: i32, expected: &str) {
    let out = chronik(args);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: status {:?}, stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains(expected),
        "{args:?}: stderr lacks {expected:?}:\n{stderr}"
    );
    assert!(
        args.is_empty() || stderr.starts_with("error:"),
        "{args:?}: stderr should start with the error:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
}

#[test]
fn demo_prints_the_story_and_the_summary() {
    let out = chronik(&os(&["demo", "--orders", "20", "--long-stream", "250"]));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    for expected in [
        "chronik demo on the in-memory store: 20 orders",
        "[1/8] placing orders from concurrent tasks",
        "20 orders from 8 tasks: 80 commands, 80 events",
        "[2/8] conflicting commands, retried",
        "no update was lost",
        "[3/8] a long stream, snapshotted",
        "latest snapshot at version 100",
        "load with the snapshot replays 150 events",
        "without it 250 events",
        "[4/8] a v1 event read through the upcaster",
        "stored:  OrderPlaced v1 {\"amount\":4200,\"customer_id\":\"legacy-customer\"}",
        "read as: OrderPlaced v2 {\"customer_id\":\"legacy-customer\",\"total_amount\":4200}",
        "without the upcaster a load fails: cannot decode event",
        "[5/8] business rules",
        "4 x cannot ship a cancelled order",
        "16 x cannot cancel a shipped order",
        "nothing was written: all 20 orders are still at version 4",
        "[6/8] the global feed, upcast",
        "[7/8] a projection catches up with the feed",
        "ran \"demo-order-counter\" from the start of the feed: caught up to ",
        "it counted 23 orders placed, ",
        "[8/8] a process across streams: checkout, payment, a reactor, the trace",
        "checkout: 2 orders placed and their 2 payments requested in one atomic append across 4 streams",
        "a second checkout naming the first order again is refused as a whole (order is already placed)",
        "restarted without its checkpoint, it got the payment again: the reaction was already done",
        "summary",
        "store              in-memory",
        "orders             23 (20 placed concurrently, 1 contended, 1 long, 1 imported at schema v1)",
        "conflicts retried",
        "written, the latest of each stream kept",
        "read model         23 orders counted by an in-memory projection, caught up in ",
        // Issue 14, item 12: the cursor is explained once, numbers are labelled.
        "(a feed cursor, <transaction>:<position>: ",
        "commands/s while placing orders (a debug build: `cargo run --release -- demo` for real numbers)",
        "total time",
    ] {
        assert!(
            stdout.contains(expected),
            "stdout lacks {expected:?}:\n{stdout}"
        );
    }
    check_demo_trace(&stdout);
    // 20 orders x 4 + 1 + 8 racers x 5 lines + 250 + 2 on the v1 order + 6 of the process,
    // unless a racer gave up.
    let events = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("events written"))
        .expect("an events written line");
    if stdout.contains(" 0 gave up after retries") {
        assert!(
            events.trim().starts_with("379 "),
            "events written: {events}"
        );
    }
}

/// Phase 8's causation tree, as the demo prints it: its header, and per line the command or
/// the event's depth, stream category, version and type.
fn check_demo_trace(stdout: &str) {
    let lines: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains("the causation chain, as `chronik trace` prints it:"))
        .skip(1)
        .take_while(|l| l.starts_with("        "))
        .map(|l| &l[8..])
        .collect();
    let mut streams = Vec::new();
    let shape: Vec<String> = lines
        .iter()
        .map(|l| {
            let depth = (l.len() - l.trim_start().len()) / 2;
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.first().copied() {
                Some("correlation") => format!("correlation: {}", words[2..].join(" ")),
                Some("command") => "command".to_owned(),
                Some(stream) => {
                    streams.push(stream);
                    let category = stream.split('-').next().unwrap_or_default();
                    format!("{}{category} {} {}", "  ".repeat(depth), words[1], words[2])
                }
                None => String::new(),
            }
        })
        .collect();
    assert_eq!(
        shape,
        [
            "correlation: 6 events in 4 streams",
            "command",
            "  order v1 OrderPlaced",
            "  order v1 OrderPlaced",
            "  payment v1 PaymentRequested",
            "  payment v1 PaymentRequested",
            "command",
            "  payment v2 PaymentReceived",
            "    order v2 OrderShipped",
        ],
        "{stdout}"
    );
    // The first order's payment was received, and that order was shipped in reaction.
    assert_eq!(
        (streams[4], streams[5]),
        (streams[2], streams[0]),
        "the shipped order is the paid one: {streams:?}"
    );
}

#[test]
fn out_of_range_and_malformed_numbers_are_refused() {
    for (args, expected) in [
        (&["demo", "--orders", "0"][..], "0 is not in 1..=1000000"),
        (&["demo", "--orders", "-3"], "unexpected argument '-3'"),
        (&["demo", "--orders", "many"], "invalid digit"),
        (&["demo", "--orders", "99999999999"], "not in 1..=1000000"),
        (&["demo", "--concurrency", "0"], "0 is not in 1..=256"),
        (&["demo", "--concurrency", "257"], "257 is not in 1..=256"),
        (&["demo", "--long-stream", "1"], "1 is not in 2..=100000"),
        (&["demo", "--orders"], "a value is required"),
    ] {
        check_refused(&os(args), 2, expected);
    }
}

#[test]
fn unknown_commands_and_flags_are_refused() {
    check_refused(
        &os(&["frobnicate"]),
        2,
        "unrecognized subcommand 'frobnicate'",
    );
    check_refused(
        &os(&["demo", "--bogus"]),
        2,
        "unexpected argument '--bogus'",
    );
    check_refused(
        &os(&["migrate"]),
        2,
        "`chronik migrate` works on PostgreSQL only: pass --database-url URL or set DATABASE_URL",
    );
    // No subcommand: clap prints the help to stderr and exits 2.
    check_refused(&os(&[]), 2, "Usage: chronik <COMMAND>");
}

#[cfg(unix)]
#[test]
fn invalid_utf8_arguments_do_not_panic() {
    use std::os::unix::ffi::OsStringExt;
    let bad = || OsString::from_vec(vec![b'o', 0xff, b'x']);
    check_refused(&[bad()], 2, "unrecognized subcommand");
    check_refused(
        &[OsString::from("demo"), OsString::from("--orders"), bad()],
        2,
        "invalid UTF-8",
    );
    check_refused(
        &[
            OsString::from("demo"),
            OsString::from("--database-url"),
            bad(),
        ],
        2,
        "invalid UTF-8",
    );
    let mut flag = b"--".to_vec();
    flag.extend([0xc3, 0x28]);
    check_refused(
        &[OsString::from("demo"), OsString::from_vec(flag)],
        2,
        "error",
    );
}

#[test]
fn help_and_version_exit_zero() {
    for args in [&["--help"][..], &["demo", "--help"], &["--version"]] {
        let out = chronik(&os(args));
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
        assert!(!out.stdout.is_empty(), "{args:?} printed nothing");
    }
    let help = text(&chronik(&os(&["demo", "--help"])).stdout);
    for flag in [
        "--orders",
        "--concurrency",
        "--long-stream",
        "--database-url",
    ] {
        assert!(help.contains(flag), "demo --help lacks {flag}:\n{help}");
    }
}

#[test]
fn demo_runs_on_postgres_from_database_url() {
    let out = chronik_pg(&["demo", "--orders", "20", "--long-stream", "120"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    for expected in [
        "chronik demo on the PostgreSQL (",
        "no update was lost",
        "latest snapshot at version 100",
        "load with the snapshot replays 20 events",
        "read as: OrderPlaced v2 {\"customer_id\":\"legacy-customer\",\"total_amount\":4200}",
        "nothing was written: all 20 orders are still at version 4",
        "[7/8] a projection catches up with the feed",
        "PgProjectionRunner \"orders\" (exactly-once: each batch commits with its checkpoint) reached ",
        "this run's 21 checked orders are all there, with the status their aggregates have:",
        "[8/8] a process across streams: checkout, payment, a reactor, the trace",
        "restarted without its checkpoint, it got the payment again: the reaction was already done",
        "  legacy-customer  shipped  total 5,190  1 line  dhl  v3",
        "summary",
        "conflicts retried",
        " rows in order_summaries, caught up in ",
    ] {
        assert!(
            stdout.contains(expected),
            "stdout lacks {expected:?}:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains(&database_url()),
        "the URL is printed:\n{stdout}"
    );
    assert_no_demo_checkpoints();
    check_demo_trace(&stdout);
}

/// The demo's one-off checkpoints (the feed reader's and the reactor's) are gone from
/// schema public: `doctor` would call them lagging projections.
fn assert_no_demo_checkpoints() {
    let out = chronik_pg(&["projections", "status", "--json"]);
    let doc = json(&text(&out.stdout));
    let names: Vec<&str> = doc["projections"]
        .as_array()
        .map(|all| all.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(!names.contains(&"chronik-demo"), "{doc}");
    assert!(!names.contains(&"chronik-demo-ship-paid-orders"), "{doc}");
}

#[test]
fn migrate_applies_the_migrations_and_is_repeatable() {
    for _ in 0..2 {
        let out = chronik_pg(&["migrate"]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "status {:?}\nstderr:\n{}",
            out.status,
            text(&out.stderr)
        );
        assert!(
            stdout.starts_with("schema public of ")
                && stdout.contains(" is migrated: ")
                && stdout.contains(" (0001 event store, "),
            "{stdout}"
        );
    }
}

/// Issue 14, item 12: `migrate --schema S` says which schema it migrated and how many
/// migrations it applied then, and again that none were left.
#[test]
fn migrate_names_the_schema_and_counts_what_it_applied() {
    let schema = Schema::unmigrated();
    let embedded = chronik::postgres::MigrationStatus::embedded().len();
    let stdout = schema.ok(&["migrate"]);
    assert!(
        stdout.starts_with(&format!(
            "schema {} of {} is migrated: {embedded} migrations applied now, 0 already were (0001 event store, ",
            schema.name,
            database_url().rsplit_once('@').map_or("", |(_, host)| host)
        )) && stdout.trim_end().ends_with("; read models: order_summaries"),
        "{stdout}"
    );
    let stdout = schema.ok(&["migrate"]);
    assert!(
        stdout.contains(&format!(
            " is migrated: all {embedded} migrations were already applied (0001 event store, "
        )),
        "{stdout}"
    );
    let doc = json(&schema.ok(&["migrate", "--json"]));
    assert_eq!(
        (&doc["schema"], &doc["applied_now"], &doc["already_applied"]),
        (
            &serde_json::json!(schema.name),
            &serde_json::json!(0),
            &serde_json::json!(embedded)
        ),
        "{doc}"
    );
}

/// Issue 14, item 12: bad names and versions say what is wrong, without the store's
/// `invalid request:` prefix, and `--expected-version -1` reaches chronik's own parser.
#[test]
fn bad_names_and_negative_versions_say_what_is_wrong_plainly() {
    for (args, expected) in [
        (
            &["migrate", "--schema", "Shop"][..],
            "invalid value 'Shop' for '--schema <SCHEMA>': invalid schema name \"Shop\": only lowercase ascii letters",
        ),
        (
            &["roles", "grant", "App", "--print"],
            "invalid value 'App' for '<ROLE>': invalid role name \"App\"",
        ),
        (
            &[
                "append",
                "order-1",
                "--type",
                "OrderPlaced",
                "--expected-version",
                "-1",
                "--data",
                "{}",
            ],
            "invalid value '-1' for '--expected-version <VERSION>': \"-1\" is not a version: versions are never negative; for a stream that must not exist yet, use `no-stream` (or 0)",
        ),
    ] {
        check_refused(&os(args), 2, expected);
        let stderr = text(&chronik(&os(args)).stderr);
        assert!(!stderr.contains("invalid request"), "{args:?}: {stderr}");
    }
}

/// Issue 14, item 12: `--concurrency 1` still races two tasks in step 2, and says why;
/// counts read well in the singular.
#[test]
fn demo_with_one_task_says_why_two_race() {
    let out = chronik(&os(&[
        "demo",
        "--orders",
        "1",
        "--concurrency",
        "1",
        "--long-stream",
        "60",
    ]));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for expected in [
        "1 order from 1 task: 4 commands",
        "2 tasks (a race needs two, whatever --concurrency says) add 5 lines each to ",
        "nothing was written: the order is still at version 4",
        "0 snapshots written (policy: by stream size; the store keeps the latest)",
    ] {
        assert!(stdout.contains(expected), "lacks {expected:?}:\n{stdout}");
    }
    assert!(
        !stdout.contains(" 1 conflicts") && !stdout.contains("all 1 orders"),
        "{stdout}"
    );
}

#[test]
fn unusable_databases_are_clear_errors_without_credentials() {
    let missing = "postgres://postgres:hunter2@127.0.0.1:5432/chronik_no_such_database";
    for (args, expected) in [
        (
            vec!["migrate", "--database-url", missing],
            "cannot connect to PostgreSQL at 127.0.0.1:5432/chronik_no_such_database",
        ),
        (vec!["demo", "--database-url", missing], "does not exist"),
        (
            vec!["migrate", "--database-url", "not a url"],
            "malformed database url",
        ),
    ] {
        let out = chronik_pg(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?} lacks {expected:?}: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "{args:?} leaks the password: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}

#[test]
fn a_closed_stdout_ends_the_demo_quietly() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(["demo", "--orders", "5", "--long-stream", "20"])
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the chronik binary starts");
    // Close the reading end before the demo writes anything (`chronik demo | head -0`).
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("the chronik binary ends");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    assert!(out.status.success(), "status {:?}:\n{stderr}", out.status);
}

/// Appends a v1 `OrderPlaced` (stored `amount`) to a fresh stream of a category no other
/// test uses, and returns the category.
fn append_v1_order_placed() -> String {
    use chronik::EventStore as _;
    use chronik::{EventId, EventType, ExpectedVersion, Metadata, NewEvent, StreamId};
    let category = format!("clitail{}", uuid::Uuid::new_v4().simple());
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let store = chronik::postgres::PgEventStore::connect(&database_url())
            .await
            .expect("the test database is reachable");
        store.migrate().await.expect("migrations apply");
        let event = NewEvent::new(
            EventId::new(uuid::Uuid::new_v4()).expect("not nil"),
            EventType::new("OrderPlaced").expect("valid"),
            1,
            serde_json::json!({ "customer_id": "c-tail", "amount": 700 }),
            Metadata::default(),
        )
        .expect("valid event");
        let stream = StreamId::new(format!("{category}-1")).expect("valid stream id");
        store
            .append(&stream, ExpectedVersion::NoStream, &[event])
            .await
            .expect("append");
    });
    category
}

/// A transaction left open holds committed events back from every feed reader: `tail`
/// says so, and which transaction and how to end it, instead of stopping (`--no-follow`)
/// or waiting as if nothing had been written.
#[test]
fn tail_says_when_the_feed_is_held_back() {
    let schema = Schema::migrated();
    // Visible before the holder begins (other tests' transactions may delay that).
    schema.append_raw("note-h1", "Noted", 1, serde_json::json!({}));
    let holder = schema.hold(WRITE_TRANSACTION);
    schema.ok(&["append", "note-h2", "--type", "Noted", "--data", "{}"]);
    let out = schema.chronik(&["tail", "--no-follow"]);
    let stderr = text(&out.stderr);
    holder.end();
    assert!(out.status.success(), "{stderr}");
    assert!(
        text(&out.stdout).contains("note-h1") && !text(&out.stdout).contains("note-h2"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains(
            "are not visible to any feed reader yet: the feed is held back by transaction "
        ) && stderr.contains("end it with `SELECT pg_terminate_backend(")
            && stderr.contains("`--no-follow` stops without them"),
        "{stderr}"
    );
}

#[test]
fn tail_prints_the_feed_upcast_and_stops_at_the_limit() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    // Following (the default): prints the matching event, then stops at --limit.
    let category = append_v1_order_placed();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(["tail", "--limit", "1", "--category", &category])
        .env("DATABASE_URL", database_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chronik tail starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chronik tail --limit 1 did not stop within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        text(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].contains(&format!(" {category}-1 v1 OrderPlaced v2 "))
            && lines[0].ends_with(r#"{"customer_id":"c-tail","total_amount":700}"#),
        "not upcast: {stdout}"
    );
    // Not following: the same event, then exit once caught up.
    let out = chronik_pg(&["tail", "--no-follow", "--category", &category]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), stdout);
    // JSON lines for scripts: the whole recorded event, upcast.
    let out = chronik_pg(&["tail", "--no-follow", "--json", "--category", &category]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    let event: serde_json::Value =
        serde_json::from_str(json.trim()).expect("one JSON object per line");
    assert_eq!(event["event_type"], "OrderPlaced");
    assert_eq!(event["schema_version"], 2);
    assert_eq!(event["payload"]["total_amount"], 700);
    assert_eq!(event["stream_id"], format!("{category}-1"));
    // Resuming after the printed cursor: nothing more.
    let cursor = stdout.split_whitespace().next().expect("a cursor");
    let out = chronik_pg(&[
        "tail",
        "--no-follow",
        "--category",
        &category,
        "--after",
        cursor,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn tail_refuses_bad_cursors_and_needs_a_database() {
    check_refused(&os(&["tail", "--after", "7"]), 2, "malformed feed cursor");
    check_refused(&os(&["tail", "--limit", "0"]), 2, "0 is not in 1..");
    check_refused(
        &os(&["tail"]),
        2,
        "`chronik tail` works on PostgreSQL only: pass --database-url URL or set DATABASE_URL",
    );
}

/// A fresh schema of the test database for one test (the operator commands take
/// `--schema`), dropped with everything in it when the test ends.
struct Schema {
    name: String,
    runtime: tokio::runtime::Runtime,
    store: chronik::postgres::PgEventStore,
}

impl Schema {
    /// A new schema with the migrations applied and the Orders read model's table, as
    /// `chronik migrate` leaves it.
    fn migrated() -> Self {
        let schema = Self::unmigrated();
        schema
            .runtime
            .block_on(schema.store.migrate())
            .expect("migrations apply");
        schema
            .runtime
            .block_on(orders::OrderProjection::create_table(&schema.store))
            .expect("the read model's table is created");
        schema
    }

    /// A new schema name; nothing is created until something migrates it.
    fn unmigrated() -> Self {
        let name = format!("clitest_{}", uuid::Uuid::new_v4().simple());
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let config = chronik::postgres::PgStoreConfig::with_schema(
            chronik::postgres::SchemaName::new(name.clone()).expect("a valid schema name"),
        );
        let store = runtime
            .block_on(chronik::postgres::PgEventStore::connect_with(
                &database_url(),
                config,
            ))
            .expect("the test database is reachable");
        Self {
            name,
            runtime,
            store,
        }
    }

    /// Runs `chronik args... --schema <this schema>` against the test database.
    fn chronik(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--schema", &self.name]);
        chronik_pg(&all)
    }

    /// Runs `args` on this schema and returns stdout; fails the test unless it succeeds.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.chronik(args);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            text(&out.stderr)
        );
        stdout
    }

    /// Places `count` orders, each with one line (two events each), through the
    /// repository; returns their stream ids once every event is visible in the feed.
    fn place_orders(&self, count: usize) -> Vec<chronik::StreamId> {
        use chronik::Repository;
        use orders::{Order, OrderCommand};
        let repo = Repository::<Order, _>::new(self.store.clone());
        self.runtime.block_on(async {
            let mut ids = Vec::new();
            let mut last = None;
            for i in 0..count {
                let id = chronik::StreamId::new(format!("order-{}", uuid::Uuid::new_v4()))
                    .expect("a valid stream id");
                for command in [
                    OrderCommand::Place {
                        customer_id: format!("customer-{i}"),
                        total_amount: 1_000,
                    },
                    OrderCommand::AddLine {
                        sku: "sku-1".to_owned(),
                        quantity: 2,
                        unit_price: 250,
                    },
                ] {
                    let outcome = repo
                        .execute(&id, command.clone())
                        .await
                        .expect("the command succeeds");
                    last = outcome.append.map(|a| a.cursor);
                }
                ids.push(id);
            }
            if let Some(cursor) = last {
                self.store
                    .wait_for_feed(cursor, std::time::Duration::from_secs(60))
                    .await
                    .expect("visible");
            }
            ids
        })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        // Best effort: a leftover schema only costs space.
        let _ = self
            .runtime
            .block_on(sqlx::query(sqlx::AssertSqlSafe(drop.as_str())).execute(self.store.pool()));
    }
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

#[test]
fn projections_status_shows_position_and_lag() {
    use chronik::CheckpointStore as _;
    let schema = Schema::migrated();
    let stdout = schema.ok(&["projections", "status"]);
    assert!(
        stdout.contains(&format!("no projections in schema {}", schema.name)),
        "{stdout}"
    );

    schema.place_orders(2);
    schema
        .runtime
        .block_on(
            schema
                .store
                .save_checkpoint("orders", chronik::FeedCursor::START, 0),
        )
        .expect("checkpoint saved");
    let stdout = schema.ok(&["projections", "status"]);
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header");
    for column in [
        "NAME",
        "POSITION",
        "LAG EVENTS",
        "LAG SECONDS",
        "STATE",
        "LAST ERROR",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    // name, position, processed, lag events, lag seconds, state, last error
    assert_eq!(&row[..4], ["orders", "0:0", "0", "4"], "{stdout}");
    assert_eq!(&row[5..], ["-", "-"], "{stdout}");

    let doc = json(&schema.ok(&["projections", "status", "--json"]));
    assert_eq!(doc["schema"], schema.name.as_str());
    let orders = &doc["projections"][0];
    assert_eq!(orders["name"], "orders");
    assert_eq!(orders["position"], "0:0");
    assert_eq!(orders["lag_events"], 4);
    assert!(orders["lag_seconds"].as_f64().is_some(), "{doc}");
    assert_eq!(orders["state"], serde_json::Value::Null);
}

#[test]
fn projections_status_names_the_transaction_holding_the_horizon() {
    let schema = Schema::migrated();
    let runtime = &schema.runtime;
    // A write transaction (it has an xid) left open in another session.
    let open = schema.hold(WRITE_TRANSACTION);
    // Committed after it began: invisible until it ends.
    let id = chronik::StreamId::new("order-held").expect("valid");
    let event = chronik::NewEvent::new(
        chronik::EventId::new(uuid::Uuid::new_v4()).expect("not nil"),
        chronik::EventType::new("OrderPlaced").expect("valid"),
        2,
        serde_json::json!({ "customer_id": "c", "total_amount": 1 }),
        chronik::Metadata::default(),
    )
    .expect("valid event");
    runtime
        .block_on(chronik::EventStore::append(
            &schema.store,
            &id,
            chronik::ExpectedVersion::NoStream,
            &[event],
        ))
        .expect("append");

    let stdout = schema.ok(&["projections", "status"]);
    assert!(
        stdout.contains("feed horizon held back by pid ") && stdout.contains("database "),
        "{stdout}"
    );
    let doc = json(&schema.ok(&["projections", "status", "--json"]));
    assert!(doc["held_back_by"]["pid"].is_i64(), "{doc}");
    assert!(doc["held_back_by"]["xid"].is_u64(), "{doc}");
    assert_eq!(doc["held_back_by"]["blocker"], true, "{doc}");
    assert!(doc["held_back_by"]["age_seconds"].is_f64(), "{doc}");
    open.end();
}

#[test]
fn projections_status_needs_a_migrated_postgres_schema() {
    check_refused(
        &os(&["projections", "status"]),
        2,
        "works on PostgreSQL only: pass --database-url URL or set DATABASE_URL",
    );
    check_refused(
        &os(&[
            "projections",
            "status",
            "--database-url",
            "postgres://x@127.0.0.1/x",
            "--schema",
            "Bad",
        ]),
        2,
        "invalid schema name",
    );
    // A schema that does not exist (a typo) is told apart from an unmigrated one, and
    // reading its status creates nothing.
    let schema = Schema::unmigrated();
    let out = schema.chronik(&["projections", "status"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: schema {} does not exist in this database (",
            schema.name
        )) && stderr.contains("check --schema"),
        "{stderr}"
    );
    let out = schema.chronik(&["projections", "status"]);
    assert!(
        text(&out.stderr).contains("does not exist"),
        "still absent: nothing was created"
    );
    // An existing schema without the store's tables is not migrated.
    let create = format!("CREATE SCHEMA \"{}\"", schema.name);
    schema
        .runtime
        .block_on(sqlx::query(sqlx::AssertSqlSafe(create.as_str())).execute(schema.store.pool()))
        .expect("create the schema");
    let out = schema.chronik(&["projections", "status"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: schema {} is not migrated (0 of ",
            schema.name
        )) && stderr.contains(&format!("run `chronik migrate --schema {}`", schema.name)),
        "{stderr}"
    );
}

#[test]
fn projections_rebuild_replays_the_feed_with_progress() {
    let schema = Schema::migrated();
    schema.place_orders(3);
    let out = schema.chronik(&["projections", "rebuild", "orders"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "rebuilt projection orders in schema {} from scratch: 6 events scanned, 6 handled, in ",
            schema.name
        )) && stdout.contains("order_summaries now holds 3 rows"),
        "{stdout}"
    );
    // Not a terminal: plain lines: what starts, then (at most every second) how far it is,
    // then how it ended and how long it took.
    assert!(
        stderr.starts_with(&format!(
            "rebuilding projection orders in schema {} from scratch, in one transaction \
             (readers see the old order_summaries until it commits): 6 events to scan; Ctrl-C stops it cleanly\n",
            schema.name
        )) && stderr.lines().last().is_some_and(|l| l.starts_with(
            "rebuilt orders: 6 events scanned, 6 handled, in "
        ) && l.ends_with(" events/s)")),
        "{stderr}"
    );
    let doc = json(&schema.ok(&["projections", "status", "--json"]));
    let orders = &doc["projections"][0];
    assert_eq!(orders["name"], "orders", "{doc}");
    assert_eq!(orders["events_processed"], 6, "{doc}");
    assert_eq!(orders["lag_events"], 0, "{doc}");

    schema.place_orders(1);
    let stdout = schema.ok(&[
        "projections",
        "rebuild",
        "orders",
        "--shadow",
        "--batch",
        "3",
    ]);
    assert!(
        stdout.contains("into order_summaries__shadow, swapped in atomically: 8 events scanned")
            && stdout.contains("order_summaries now holds 4 rows"),
        "{stdout}"
    );
    let out = schema.chronik(&["projections", "rebuild", "orders", "--shadow"]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "rebuilding projection orders in schema {} into order_summaries__shadow, swapped in at the end \
             (the live table order_summaries keeps serving meanwhile): 8 events to scan; Ctrl-C stops it cleanly\n",
            schema.name
        )) && stderr.contains("\nrebuilt orders: 8 events scanned, 8 handled, in "),
        "{stderr}"
    );
}

/// A projection rebuilt as partitions: `projections status` shows each partition with the
/// events the rebuild applied for it (adding up to every event), and `projections forget`
/// forgets it whole, every partition's checkpoint included.
#[test]
fn a_partitioned_projection_counts_its_events_and_is_forgotten_whole() {
    let schema = Schema::migrated();
    schema.place_orders(5);
    schema.ok(&["projections", "rebuild", "orders", "--partitions", "3"]);
    let doc = json(&schema.ok(&["projections", "status", "--json"]));
    let partitions: Vec<&serde_json::Value> = doc["projections"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|p| p["partition"]["projection"] == "orders")
        .collect();
    assert_eq!(partitions.len(), 3, "{doc}");
    let processed: u64 = partitions
        .iter()
        .map(|p| p["events_processed"].as_u64().expect("a count"))
        .sum();
    assert_eq!(processed, 10, "{doc}");

    let stdout = schema.ok(&["projections", "forget", "orders"]);
    assert!(
        stdout.starts_with(&format!(
            "forgot projection orders in schema {}: the checkpoints of its 3 partitions (orders#0/3 at ",
            schema.name
        )) && stdout.contains("; its read model's tables and park decisions are kept"),
        "{stdout}"
    );
    assert!(schema.projection_names().is_empty(), "{stdout}");
    assert_eq!(schema.rows("order_summaries"), 5, "the read model stays");
}
#[test]
fn projections_rebuild_refuses_unknown_names_and_a_running_projection() {
    use chronik::postgres::PgProjectionRunner;
    use orders::OrderProjection;
    use std::sync::Arc;
    check_refused(
        &os(&["projections", "rebuild", "nope"]),
        2,
        "invalid value 'nope' for '<NAME>'\n  [possible values: orders]",
    );
    check_refused(
        &os(&["projections", "rebuild", "orders"]),
        2,
        "works on PostgreSQL only",
    );
    check_refused(
        &os(&["projections", "rebuild", "orders", "--batch", "0"]),
        2,
        "0 is not in 1..=10000",
    );

    let schema = Schema::migrated();
    schema.place_orders(2);
    let runner = {
        let _entered = schema.runtime.enter();
        let projection = Arc::new(OrderProjection::new(schema.store.schema()));
        PgProjectionRunner::new(schema.store.clone(), projection)
            .spawn()
            .expect("the runner starts")
    };
    let mut status = runner.subscribe(OrderProjection::NAME).expect("its status");
    let pid = schema
        .runtime
        .block_on(status.wait_for(|s| s.lock_pid.is_some()))
        .expect("the runner takes the lock")
        .lock_pid
        .expect("a lock pid");

    let out = schema.chronik(&["projections", "rebuild", "orders"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The holder by pid, what it is, and how to end it.
    assert!(
        stderr.starts_with(&format!(
            "error: rebuilding projection orders failed (nothing was changed: order_summaries is as it was; \
             the lock is held by its runner, pid {pid} "
        )) && stderr.contains(&format!(
            ": stop that process, or wait for it to stop (`SELECT pg_terminate_backend({pid})` ends its session, \
             but a runner takes the lock again as soon as it is free)): \
             projection orders is running in another session (pid {pid}); stop it or wait\n"
        )),
        "{stderr}"
    );
    let out = schema.chronik(&["projections", "forget", "orders"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: projection orders is running (owner pid {pid} "
        )),
        "{stderr}"
    );
    // A shadow rebuild works beside the running runner.
    let stdout = schema.ok(&["projections", "rebuild", "orders", "--shadow"]);
    assert!(
        stdout.contains("order_summaries now holds 2 rows"),
        "{stdout}"
    );
    schema.runtime.block_on(runner.stop()).expect("stopped");
}

/// `chronik doctor` on `schema`: (exit code, stdout, stderr). Transactions of other tests
/// sharing the cluster must not make it flaky, hence the generous horizon limit.
fn doctor(schema: &Schema, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["doctor"];
    if extra.is_empty() {
        args.extend(["--max-horizon-age", "3600"]);
    }
    args.extend(extra);
    let out = schema.chronik(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code(), stdout, stderr)
}

#[test]
fn doctor_is_healthy_on_a_migrated_schema_and_lists_missing_migrations() {
    let schema = Schema::migrated();
    let (code, stdout, stderr) = doctor(&schema, &[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("chronik doctor: ")
            && first.ends_with(&format!(", schema {}", schema.name)),
        "{stdout}"
    );
    assert!(
        !database_url().contains('@') || !first.contains('@'),
        "the URL is printed: {first}"
    );
    let embedded = chronik::postgres::MIGRATOR.iter().count();
    assert!(
        stdout.contains(&format!("migrations   {embedded} of {embedded} applied (")),
        "{stdout}"
    );
    assert!(stdout.contains("0001 event store"), "{stdout}");
    assert!(stdout.contains("projections  0 projections"), "{stdout}");
    assert!(stdout.trim_end().ends_with("healthy"), "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");

    // A schema that does not exist is a typo until shown otherwise: said once, not as a
    // list of migrations to apply (which would create an empty store there).
    let bare = Schema::unmigrated();
    let (code, stdout, stderr) = doctor(&bare, &[]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let missing = format!("schema {} does not exist in this database (", bare.name);
    assert!(
        stdout.contains(&format!("  - {missing}"))
            && stdout.contains(&format!(
                "): check --schema; to create a new, empty store there, run `chronik migrate --schema {}`",
                bare.name
            ))
            && stdout.contains("1 problem:"),
        "{stdout}"
    );
    assert!(stderr.contains(&missing), "{stderr}");
    // An empty schema: every pending migration in one sentence.
    bare.runtime
        .block_on(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA \"{}\"",
                bare.name
            )))
            .execute(bare.store.pool()),
        )
        .expect("the schema is created");
    let (code, stdout, stderr) = doctor(&bare, &[]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let fix = format!(
        "{embedded} of {embedded} migrations are not applied in schema {} (0001 event store, 0002 projections, ",
        bare.name
    );
    assert!(
        stdout.contains(&format!("  - {fix}"))
            && stdout.contains(&format!(": run `chronik migrate --schema {}`", bare.name))
            && stdout.contains("1 problem:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("projections  not checked: the schema is not migrated"),
        "{stdout}"
    );
    assert!(
        stderr.starts_with("error: 1 problem found: ") && stderr.contains(&fix),
        "{stderr}"
    );
    check_refused(&os(&["doctor"]), 2, "works on PostgreSQL only");
    // An empty payload names the field it lacks, not the tagging's `data`.
    check_refused(
        &os(&["append", "order-9", "--type", "OrderPlaced", "--data", "{}"]),
        2,
        "the payload does not decode as OrderPlaced v2: missing field `customer_id`",
    );
    check_refused(
        &os(&["doctor", "--max-lag", "soon"]),
        2,
        "invalid value 'soon' for '--max-lag <SECONDS>'",
    );
}

#[test]
fn doctor_names_an_old_horizon_holder() {
    let schema = Schema::migrated();
    let open = schema.hold(WRITE_TRANSACTION);
    let (xid, pid) = (open.xid(), open.pid);
    let (code, stdout, stderr) = doctor(&schema, &["--max-horizon-age", "0"]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    // Issue 14, item 6: the problem says how to end it; the holder is listed once.
    assert!(
        stdout.contains(&format!(
            "  - a transaction holds the feed horizon back: pid {pid} (xid {xid}); "
        )) && stdout.contains(&format!("end it with `SELECT pg_terminate_backend({pid})`")),
        "{stdout}"
    );
    assert!(
        stdout.contains("idle_in_transaction_session_timeout"),
        "an idle transaction gets the hint: {stdout}"
    );
    assert_eq!(
        stdout
            .matches(&format!("pid {pid} (xid {xid}, database "))
            .count(),
        1,
        "the full description once: {stdout}"
    );
    // Listed by transaction id: the first is the blocker, every later one is behind it.
    let listed: Vec<&str> = stdout
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("blocker: ") || l.starts_with("behind it: "))
        .collect();
    assert!(
        listed.first().is_some_and(|l| l.starts_with("blocker: "))
            && listed[1..].iter().all(|l| l.starts_with("behind it: ")),
        "{stdout}"
    );
    assert!(
        listed
            .iter()
            .any(|l| l.contains(&format!("pid {pid} (xid {xid}, "))),
        "{stdout}"
    );
    // Who it is: its user, application_name and client address, as the server has them.
    let (user, application, client): (String, String, String) = schema
        .runtime
        .block_on(
            sqlx::query_as(
                "SELECT usename::text, application_name, \
                        coalesce(host(client_addr), 'local socket') \
                 FROM pg_stat_activity WHERE pid = $1",
            )
            .bind(pid)
            .fetch_one(schema.store.pool()),
        )
        .expect("the holder's session");
    assert!(!application.is_empty(), "the store names its sessions");
    assert!(
        listed.iter().any(|l| l.contains(&format!(
            "pid {pid} (xid {xid}, database postgres, user {user}, application {application}, from {client}, open for "
        ))),
        "{stdout}"
    );
    assert!(
        stderr.starts_with("error: ") && stderr.contains(" found: "),
        "{stderr}"
    );
    open.end();
}

/// Issue 14, item 6, at the command line: a prepared transaction holding the feed back is
/// named by its gid with the statement that ends it in the database it was prepared in.
#[test]
fn doctor_says_how_to_roll_back_a_prepared_transaction_in_its_database() {
    let schema = Schema::migrated();
    let gid = format!("clitest-{}", uuid::Uuid::new_v4());
    let (code, stdout, stderr) = schema.runtime.block_on(async {
        // Raw BEGIN: PREPARE TRANSACTION ends the transaction behind sqlx's back.
        let mut session = schema.store.pool().acquire().await.expect("a session");
        for sql in [
            "BEGIN".to_owned(),
            "SELECT pg_current_xact_id()".to_owned(),
            format!("PREPARE TRANSACTION '{gid}'"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *session)
                .await
                .expect("prepared");
        }
        let report = tokio::task::spawn_blocking({
            let name = schema.name.clone();
            move || {
                let out = chronik_pg(&["doctor", "--max-horizon-age", "0", "--schema", &name]);
                (out.status.code(), text(&out.stdout), text(&out.stderr))
            }
        })
        .await;
        // Before any assertion: a prepared transaction left behind pauses every feed of the
        // cluster.
        sqlx::query(sqlx::AssertSqlSafe(format!("ROLLBACK PREPARED '{gid}'")))
            .execute(&mut *session)
            .await
            .expect("rolled back");
        report.expect("doctor ran")
    });
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let end = format!("psql -d postgres -c \"ROLLBACK PREPARED '{gid}'\"");
    assert!(
        stdout.lines().any(|l| l.contains(&gid) && l.contains(&end)),
        "{stdout}"
    );
    assert!(stderr.contains(&end), "{stderr}");
}

/// Issue 14, item 5: a transaction younger than `--max-horizon-age` that holds committed
/// events back is not a problem yet, but doctor says so as a warning, with how to end it,
/// instead of a plain `healthy` under a line saying the feed is held back.
#[test]
fn doctor_warns_while_a_young_transaction_holds_the_feed_back() {
    let schema = Schema::migrated();
    let holder = schema.hold(WRITE_TRANSACTION);
    // Committed after it began: invisible until it ends.
    schema.ok(&["append", "note-y1", "--type", "Noted", "--data", "{}"]);
    let (code, stdout, stderr) = doctor(&schema, &[]);
    let doc = json(&doctor(&schema, &["--json", "--max-horizon-age", "3600"]).1);
    let (pid, xid) = (holder.pid, holder.xid());
    holder.end();
    assert_eq!(doc["healthy"], true, "{doc}");
    assert!(
        doc["warnings"].as_array().is_some_and(|all| all
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains(" are held back by ")))),
        "{doc}"
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let warning = stdout
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "  - committed events of schema {} are held back by ",
                schema.name
            ))
        })
        .unwrap_or_else(|| panic!("no held-back warning:\n{stdout}"));
    // Another test's transaction may be the blocker on a shared cluster; ours when alone.
    if warning.contains(&format!("pid {pid} (xid {xid})")) {
        assert!(
            warning.contains(&format!(
                "every projection waits for it; it counts as a problem once it is older than 3,600 s \
                 (--max-horizon-age); if it does not end soon, `SELECT pg_terminate_backend({pid})` ends it"
            )),
            "{warning}"
        );
    }
}

/// `doctor --json` (issue 14, item 6; issue 13's `--json` everywhere): one object with the
/// verdict, the problems and warnings, the migrations, the role, every horizon holder with
/// the statement that ends it, and the projections; the exit status is the text report's.
#[test]
fn doctor_json_is_one_object_with_the_same_verdict() {
    let schema = Schema::migrated();
    let (code, stdout, stderr) = doctor(&schema, &["--json", "--max-horizon-age", "3600"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let doc = json(&stdout);
    assert_eq!(doc["healthy"], true, "{doc}");
    assert_eq!(doc["schema"], schema.name.as_str(), "{doc}");
    assert_eq!(doc["problems"], serde_json::json!([]), "{doc}");
    assert_eq!(doc["migrations"]["current"], true, "{doc}");
    assert_eq!(
        doc["migrations"]["applied"],
        doc["migrations"]["embedded"].as_array().map_or(0, Vec::len),
        "{doc}"
    );
    assert_eq!(doc["role"]["superuser"], true, "{doc}");
    assert_eq!(doc["warnings"].as_array().map(Vec::len), Some(1), "{doc}");
    assert_eq!(doc["projections"], serde_json::json!([]), "{doc}");
    assert!(doc["horizon"]["holders"].is_array(), "{doc}");

    let bare = Schema::unmigrated();
    let (code, stdout, _) = doctor(&bare, &["--json", "--max-horizon-age", "3600"]);
    assert_eq!(code, Some(1), "{stdout}");
    let doc = json(&stdout);
    assert_eq!(doc["healthy"], false, "{doc}");
    assert_eq!(doc["migrations"]["current"], false, "{doc}");
    assert_eq!(doc["projections"], serde_json::Value::Null, "{doc}");
    let fix = format!("run `chronik migrate --schema {}`", bare.name);
    assert!(
        doc["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains(&fix))
            && doc["migrations"]["problems"][0]
                .as_str()
                .is_some_and(|p| p.contains(&fix)),
        "{doc}"
    );

    let open = schema.hold(WRITE_TRANSACTION);
    let (xid, pid) = (open.xid(), open.pid);
    let (code, stdout, _) = doctor(&schema, &["--json", "--max-horizon-age", "0"]);
    assert_eq!(code, Some(1), "{stdout}");
    let doc = json(&stdout);
    let holder = doc["horizon"]["holders"]
        .as_array()
        .and_then(|all| all.iter().find(|h| h["pid"] == pid))
        .unwrap_or_else(|| panic!("pid {pid} is not listed: {doc}"));
    assert_eq!(holder["xid"].to_string(), xid, "{doc}");
    assert_eq!(holder["kind"], "session", "{doc}");
    assert_eq!(holder["old"], true, "{doc}");
    assert_eq!(holder["user"], "postgres", "{doc}");
    assert_eq!(
        holder["how_to_end"],
        format!("SELECT pg_terminate_backend({pid})"),
        "{doc}"
    );
    assert!(
        doc["problems"]
            .as_array()
            .is_some_and(|all| all.iter().any(|p| p
                .as_str()
                .is_some_and(|p| p.contains(&format!("pid {pid} (xid {xid})"))))),
        "{doc}"
    );
    open.end();
}

/// A read model whose handler always fails.
struct Broken;

impl chronik::postgres::PgProjection for Broken {
    fn name(&self) -> &str {
        "broken"
    }

    async fn handle(
        &self,
        _tx: &mut chronik::postgres::PgTransaction,
        _event: &chronik::RecordedEvent,
    ) -> Result<(), chronik::postgres::HandlerError> {
        Err(chronik::postgres::HandlerError::new("always broken"))
    }

    async fn clear(
        &self,
        _tx: &mut chronik::postgres::PgTransaction,
    ) -> Result<(), chronik::postgres::HandlerError> {
        Ok(())
    }
}

#[test]
fn doctor_and_status_report_a_failing_projection() {
    use std::sync::Arc;
    let schema = Schema::migrated();
    schema.place_orders(1);
    let runner = {
        let _entered = schema.runtime.enter();
        chronik::postgres::PgProjectionRunner::new(schema.store.clone(), Arc::new(Broken))
            .spawn()
            .expect("the runner starts")
    };
    // The second attempt begins after the first failure was recorded.
    let mut status = runner.subscribe("broken").expect("its status");
    schema
        .runtime
        .block_on(status.wait_for(|s| s.attempts >= 2))
        .expect("the runner retries");

    let (code, stdout, stderr) = doctor(&schema, &[]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("  - projection broken is failing on event ")
            && stdout.contains("): order-")
            && stdout.contains("always broken"),
        "{stdout}"
    );
    assert!(
        stdout.contains("broken: failing, 2 events behind"),
        "{stdout}"
    );

    // A second runner waits as a standby; the owner is still the failing one.
    let standby = {
        let _entered = schema.runtime.enter();
        chronik::postgres::PgProjectionRunner::new(schema.store.clone(), Arc::new(Broken))
            .spawn()
            .expect("the runner starts")
    };
    schema
        .runtime
        .block_on(
            standby
                .subscribe("broken")
                .expect("its status")
                .wait_for(|s| s.state == chronik::postgres::ProjectionState::Standby),
        )
        .expect("the second runner waits");
    let owner = runner
        .status("broken")
        .expect("its status")
        .lock_pid
        .expect("the first runner holds the lock");
    let stdout = schema.ok(&["projections", "status"]);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("broken "))
        .unwrap_or_else(|| panic!("no row for broken:\n{stdout}"));
    assert!(
        row.contains("failing (attempt ")
            && row.contains(&format!(", owner pid {owner} "))
            && row.contains(", 1 standby: pid ")
            && row.contains("always broken"),
        "{row}"
    );
    let doc = json(&schema.ok(&["projections", "status", "--json"]));
    let broken = doc["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "broken"))
        .unwrap_or_else(|| panic!("no broken in {doc}"));
    assert_eq!(broken["owner"]["pid"], owner, "{doc}");
    assert_eq!(broken["standbys"][0]["state"], "standby", "{doc}");
    schema.runtime.block_on(standby.stop()).expect("stopped");
    schema.runtime.block_on(runner.abort());
}

#[test]
fn snapshots_list_take_and_drop() {
    let schema = Schema::migrated();
    let ids = schema.place_orders(2);
    let (first, second) = (ids[0].as_str(), ids[1].as_str());

    let stdout = schema.ok(&["snapshots", "list", first]);
    assert_eq!(
        stdout,
        format!("stream {first} is at version 2; no snapshots\n")
    );
    let stdout = schema.ok(&["snapshots", "take", first]);
    assert_eq!(
        stdout,
        format!(
            "snapshot of {first} taken at version 2 (state schema v1): it covers 2 events; \
             loads now replay only what comes after\n"
        )
    );
    schema.ok(&["snapshots", "take", second]);
    // Issue 13: `--json` on list, take and drop.
    let doc = json(&schema.ok(&["snapshots", "take", second, "--json"]));
    assert_eq!(
        doc,
        serde_json::json!({
            "stream_id": second, "schema": schema.name, "version": 2,
            "state_schema_version": 1, "events_replayed": 2,
        })
    );
    let doc = json(&schema.ok(&["snapshots", "list", second, "--json"]));
    assert_eq!(doc["stream_id"], second, "{doc}");
    assert_eq!(doc["version"], 2, "{doc}");
    assert_eq!(doc["current_state_schema_version"], 1, "{doc}");
    let listed = doc["snapshots"].as_array().expect("an array");
    assert_eq!(
        listed.len(),
        1,
        "the store keeps the latest snapshot: {doc}"
    );
    assert_eq!(
        (
            &listed[0]["version"],
            &listed[0]["usable"],
            &listed[0]["events_after"]
        ),
        (
            &serde_json::json!(2),
            &serde_json::json!(true),
            &serde_json::json!(0)
        ),
        "{doc}"
    );
    let stdout = schema.ok(&["snapshots", "list", first]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(
        lines[0],
        format!("stream {first} is at version 2; 1 snapshot")
    );
    assert!(
        lines[1].starts_with("VERSION  STATE SCHEMA  TAKEN AT"),
        "{stdout}"
    );
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(row[..2], ["2", "v1"], "{stdout}");
    assert_eq!(row[row.len() - 2..], ["0", "yes"], "{stdout}");

    // The snapshot is what the repository loads from.
    let loaded = schema
        .runtime
        .block_on(
            chronik::Repository::<orders::Order, _>::new(schema.store.clone())
                .with_snapshots(chronik::SnapshotPolicy::every(1_000).expect("valid"))
                .load(&ids[0]),
        )
        .expect("loads");
    assert_eq!(
        (loaded.snapshot_version.get(), loaded.events_replayed),
        (2, 0)
    );

    let stdout = schema.ok(&["snapshots", "drop", "order"]);
    assert_eq!(
        stdout,
        format!(
            "dropped 2 snapshots of category order in schema {}\n",
            schema.name
        )
    );
    let stdout = schema.ok(&["snapshots", "list", first]);
    assert!(stdout.ends_with("; no snapshots\n"), "{stdout}");
    let stdout = schema.ok(&["snapshots", "drop", "order"]);
    assert!(
        stdout.starts_with("dropped 0 snapshots of category order"),
        "{stdout}"
    );
    let doc = json(&schema.ok(&["snapshots", "drop", "order", "--json"]));
    assert_eq!(
        doc,
        serde_json::json!({ "category": "order", "schema": schema.name, "dropped": 0 })
    );
}

#[test]
fn snapshots_refuse_bad_stream_ids_and_categories() {
    for (args, expected) in [
        (
            &["snapshots", "list", "order 42"][..],
            "invalid value 'order 42' for '<STREAM_ID>': stream id contains whitespace",
        ),
        (
            &["snapshots", "take", ""],
            "invalid value '' for '<STREAM_ID>': stream id is empty",
        ),
        (
            &["snapshots", "drop", "order-1"],
            "\"order-1\" is not a category",
        ),
        (&["snapshots", "drop", ""], "a category is empty"),
        (
            &["snapshots", "list", "order-1"],
            "works on PostgreSQL only",
        ),
        (&["snapshots", "list"], "<STREAM_ID>"),
    ] {
        check_refused(&os(args), 2, expected);
    }
    let schema = Schema::migrated();
    for (args, code, expected) in [
        (
            &["snapshots", "take", "invoice-1"][..],
            2,
            "cannot snapshot invoice-1: chronik knows how to fold streams of category `order` only, not `invoice`",
        ),
        (
            &["snapshots", "take", "order-missing"],
            3,
            "stream order-missing has no events: nothing to snapshot",
        ),
    ] {
        let out = schema.chronik(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr, format!("error: {expected}\n"), "{args:?}");
    }
}

/// A server that is not there is named at once with the real cause, said once (issue 14,
/// item 3), by every command that connects: never "pool timed out" after a timeout.
#[test]
fn a_refused_connection_is_named_at_once_by_every_command() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    for args in [
        &["doctor"][..],
        &["projections", "status"],
        &["migrate"],
        &["tail", "--no-follow"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_chronik"))
            .args(args)
            .env("DATABASE_URL", &url)
            .env_remove("RUST_LOG")
            .output()
            .expect("the chronik binary runs");
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        let cause = format!("connection refused: is PostgreSQL running on 127.0.0.1:{port}?");
        assert_eq!(stderr.matches(&cause).count(), 1, "{args:?}: {stderr}");
        assert_eq!(stderr.matches("refused").count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("timed out"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A server of another kind on the port is named as not PostgreSQL (and what it is, when
/// it says), instead of protocol noise (`expected to read 1414811696 bytes`) or a wait for
/// the pool's timeout: NATS (which CI runs), a server that answers HTTP, and one that stays
/// silent (as Redis does).
#[test]
fn a_server_that_is_not_postgresql_is_named() {
    use std::io::{Read as _, Write as _};
    // Both accept connections until the test ends (their threads are left to the exit).
    let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let http_port = http.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in http.incoming().flatten() {
            let mut conn = conn;
            let mut first = [0_u8; 8];
            let _ = conn.read(&mut first);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let nats = std::env::var("NATS_URL")
        .ok()
        .and_then(|u| {
            u.rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        })
        .unwrap_or(4222);
    for (port, said) in [
        (nats, "NATS answered: \"INFO {"),
        (
            http_port,
            "an HTTP server answered: \"HTTP/1.1 400 Bad Request",
        ),
        (
            silent_port,
            "it accepted the connection but did not answer PostgreSQL's first message within 2 s",
        ),
    ] {
        for args in [&["projections", "status"][..], &["migrate"]] {
            let out = Command::new(env!("CARGO_BIN_EXE_chronik"))
                .args(args)
                .env(
                    "DATABASE_URL",
                    format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                )
                .env_remove("RUST_LOG")
                .output()
                .expect("the chronik binary runs");
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(
                stderr.starts_with(&format!(
                    "error: cannot connect to PostgreSQL at 127.0.0.1:{port}/postgres: backend error: the server at 127.0.0.1:{port} is not PostgreSQL: "
                )) && stderr.contains(said)
                    && stderr.trim_end().ends_with("is the port right?"),
                "{args:?}: {stderr}"
            );
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
            assert!(!stderr.contains("expected to read"), "{args:?}: {stderr}");
        }
    }
}

/// `streams list | show` need no registration: they read any stream as stored. Bad input
/// and a schema without migrations are refused with their own exit status, writing nothing.
#[test]
fn streams_list_and_show_read_any_stream_and_refuse_bad_input() {
    check_refused(
        &os(&["streams", "show", "has space"]),
        2,
        "invalid value 'has space' for '<STREAM_ID>'",
    );
    check_refused(
        &os(&["streams", "show", "order-1", "--from", "0"]),
        2,
        "invalid value '0' for '--from <FROM>'",
    );
    check_refused(
        &os(&["streams", "list", "--category", "a-b"]),
        2,
        "is not a category",
    );
    check_refused(
        &os(&["streams", "list"]),
        2,
        "`chronik streams list` works on PostgreSQL only",
    );

    let bare = Schema::unmigrated();
    for args in [&["streams", "list"][..], &["streams", "show", "order-1"]] {
        let out = bare.chronik(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("run `chronik migrate --schema {}`", bare.name)),
            "{stderr}"
        );
    }
    let status = bare
        .runtime
        .block_on(bare.store.migration_status())
        .expect("status");
    assert!(status.applied.is_empty(), "nothing was migrated or written");

    let schema = Schema::migrated();
    schema.ok(&[
        "append",
        "order-s1",
        "--type",
        "OrderPlaced",
        "--schema-version",
        "2",
        "--data",
        r#"{"customer_id":"c-1","total_amount":500}"#,
    ]);
    schema.ok(&[
        "append",
        "order-s1",
        "--type",
        "LineAdded",
        "--data",
        r#"{"sku":"a","quantity":1,"unit_price":5}"#,
        "--header",
        "via=test",
    ]);
    schema.ok(&[
        "append",
        "invoice-9",
        "--type",
        "InvoiceSent",
        "--data",
        "{}",
    ]);

    let listed: serde_json::Value =
        serde_json::from_str(&schema.ok(&["streams", "list", "--json"])).expect("json");
    assert_eq!(
        listed["streams"],
        serde_json::json!([
            { "stream_id": "invoice-9", "category": "invoice", "version": 1 },
            { "stream_id": "order-s1", "category": "order", "version": 2 },
        ])
    );
    let table = schema.ok(&["streams", "list", "--category", "order"]);
    assert!(
        table.contains("order-s1") && !table.contains("invoice-9"),
        "{table}"
    );

    let shown = schema.ok(&["streams", "show", "order-s1", "--json"]);
    let events: Vec<serde_json::Value> = shown
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(events.len(), 2, "{shown}");
    assert_eq!(events[0]["event_type"], "OrderPlaced");
    assert_eq!(events[0]["schema_version"], 2);
    assert_eq!(events[1]["metadata"]["headers"]["via"], "test");
    let from_two = schema.ok(&["streams", "show", "order-s1", "--from", "2"]);
    assert!(
        from_two.contains("LineAdded") && !from_two.contains("OrderPlaced"),
        "{from_two}"
    );

    let out = schema.chronik(&["streams", "show", "order-nope"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: stream order-nope has no events in schema {0}: `chronik streams list --schema {0}` lists the streams there\n",
            schema.name
        )
    );
}

/// A running `chronik` whose stdout and stderr are read line by line, so that a test can
/// wait for what it says (never for a time).
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Vec<String>,
    out_lines: std::sync::mpsc::Receiver<String>,
    stdout: Vec<String>,
}

/// The lines of `from`, sent to the returned receiver by a thread of their own.
fn line_reader(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

impl Running {
    fn spawn(args: &[&str], url: &str) -> Self {
        use std::process::Stdio;
        let mut child = Command::new(env!("CARGO_BIN_EXE_chronik"))
            .args(args)
            .env("DATABASE_URL", url)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chronik starts");
        let lines = line_reader(child.stderr.take().expect("piped stderr"));
        let out_lines = line_reader(child.stdout.take().expect("piped stdout"));
        Self {
            child,
            lines,
            stderr: Vec::new(),
            out_lines,
            stdout: Vec::new(),
        }
    }

    /// Waits until a line of stderr contains `needle` and returns it. Fails the test when
    /// the process ends (or two minutes pass, a safety net) without saying it.
    fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_any(&[needle])
    }

    /// Waits until a line of stderr contains one of `needles` and returns it; fails the
    /// test as [`Running::wait_for`] does.
    fn wait_for_any(&mut self, needles: &[&str]) -> String {
        Self::wait_in(
            &mut self.child,
            &self.lines,
            &mut self.stderr,
            needles,
            "stderr",
        )
    }

    /// Waits until a line of stdout contains `needle` and returns it; fails the test as
    /// [`Running::wait_for`] does.
    fn wait_for_stdout(&mut self, needle: &str) -> String {
        Self::wait_in(
            &mut self.child,
            &self.out_lines,
            &mut self.stdout,
            &[needle],
            "stdout",
        )
    }

    fn wait_in(
        child: &mut std::process::Child,
        lines: &std::sync::mpsc::Receiver<String>,
        seen: &mut Vec<String>,
        needles: &[&str],
        what: &str,
    ) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if needles.iter().any(|n| line.contains(n)) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("{what} never said any of {needles:?}:\n{}", seen.join("\n"));
                }
            }
        }
    }

    /// Sends it SIGINT, as Ctrl-C in a terminal does.
    fn interrupt(&self) {
        let kill = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(kill.success());
    }

    /// Kills it (a test that gave up on it).
    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the process to end: (exit status, all of stdout, all of stderr).
    fn finish(mut self) -> (Option<i32>, String, String) {
        let status = self.child.wait().expect("chronik ends");
        self.stderr.extend(self.lines.iter());
        self.stdout.extend(self.out_lines.iter());
        let mut stdout = self.stdout.join("\n");
        if !stdout.is_empty() {
            stdout.push('\n');
        }
        (status.code(), stdout, self.stderr.join("\n"))
    }
}

impl Schema {
    /// Starts `chronik args... --schema <this schema>` against the test database, its
    /// stderr read line by line.
    fn spawn(&self, args: &[&str]) -> Running {
        let mut all = args.to_vec();
        all.extend(["--schema", &self.name]);
        Running::spawn(&all, &database_url())
    }

    /// A transaction of another session that has run `sql` (a row or table lock,
    /// `pg_current_xact_id()` to hold the feed back) and stays open until
    /// [`Held::end`] or its drop.
    fn hold(&self, sql: &str) -> Held {
        self.runtime.block_on(async {
            let mut tx = self.store.pool().begin().await.expect("a transaction");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .expect("the held statement runs");
            let (pid, xid): (i32, Option<String>) =
                sqlx::query_as("SELECT pg_backend_pid(), pg_current_xact_id_if_assigned()::text")
                    .fetch_one(&mut *tx)
                    .await
                    .expect("its pid");
            Held {
                tx: Some(tx),
                pid,
                xid,
                runtime: self.runtime.handle().clone(),
            }
        })
    }
}

/// An open transaction of its own session ([`Schema::hold`]).
struct Held {
    tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    /// Its backend pid.
    pid: i32,
    /// Its transaction id, once it has one.
    xid: Option<String>,
    runtime: tokio::runtime::Handle,
}

/// For [`Schema::hold`]: a write transaction (it has a transaction id), which holds the
/// feed back for every reader while it is open.
const WRITE_TRANSACTION: &str = "SELECT pg_current_xact_id()";

impl Held {
    /// Its transaction id; fails the test when it has none.
    fn xid(&self) -> String {
        self.xid.clone().expect("a write transaction")
    }

    /// Rolls it back.
    fn end(mut self) {
        if let Some(tx) = self.tx.take() {
            self.runtime.block_on(tx.rollback()).expect("rolled back");
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Dropped inside the runtime even when a test fails: the rollback is sent there.
        let _entered = self.runtime.enter();
        drop(self.tx.take());
    }
}

/// The test database's URL with another user (the local server trusts local logins).
fn url_as(role: &str) -> String {
    let url = database_url();
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{role}@{host}")
}

/// Issue 14, item 9: `tail` on an unmigrated schema says what to run, like every command.
#[test]
fn tail_on_an_unmigrated_schema_says_what_to_run() {
    let bare = Schema::unmigrated();
    for args in [
        &["tail", "--no-follow"][..],
        &["tail"],
        &["tail", "-n", "5"],
    ] {
        let out = bare.chronik(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ")
                && stderr.contains(&format!("run `chronik migrate --schema {}`", bare.name)),
            "{args:?}: {stderr}"
        );
    }
}

/// Issue 14, items 9 and 12: `-n N` (the last N events), `--from-end`, `--stream ID`, and
/// one cursor format: `tail --json` prints the cursor `--after` takes.
#[test]
fn tail_starts_at_the_last_events_or_the_end_and_follows_one_stream() {
    let schema = Schema::migrated();
    let ids = schema.place_orders(3);
    let lines = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["tail", "--no-follow"];
        all.extend(args);
        schema.ok(&all).lines().map(str::to_owned).collect()
    };
    let everything = lines(&[]);
    assert_eq!(everything.len(), 6, "{everything:?}");
    assert_eq!(lines(&["-n", "2"]), everything[4..], "the last two");
    assert_eq!(
        lines(&["--last", "10"]),
        everything,
        "fewer than asked: all"
    );
    assert_eq!(lines(&["--from-end"]), Vec::<String>::new());
    let first = ids[0].as_str();
    let of_first: Vec<String> = everything
        .iter()
        .filter(|l| l.contains(&format!(" {first} v")))
        .cloned()
        .collect();
    assert_eq!(of_first.len(), 2, "{everything:?}");
    assert_eq!(lines(&["--stream", first]), of_first);
    assert_eq!(lines(&["--stream", first, "-n", "1"]), of_first[1..]);
    assert_eq!(
        lines(&["--stream", ids[2].as_str(), "--limit", "1"]),
        everything[4..5]
    );

    // The JSON cursor is the printed one, and `--after` takes it.
    let json_lines = lines(&["--json", "-n", "2"]);
    let docs: Vec<serde_json::Value> = json_lines.iter().map(|l| json(l)).collect();
    let printed = everything[4].split_whitespace().next().expect("a cursor");
    assert_eq!(docs[0]["cursor"], printed, "{json_lines:?}");
    let cursor = docs[0]["cursor"].as_str().expect("a string cursor");
    assert_eq!(lines(&["--after", cursor]), everything[5..]);

    for (args, expected) in [
        (
            &["tail", "--from-end", "--after", "1:1"][..],
            "cannot be used with",
        ),
        (&["tail", "-n", "2", "--from-end"], "cannot be used with"),
        (&["tail", "-n", "0"], "0 is not in 1..=1000000"),
        (
            &["tail", "--stream", "order 1"],
            "stream id contains whitespace",
        ),
        (
            &["tail", "--stream", "order-1", "--category", "order"],
            "cannot be used with",
        ),
    ] {
        check_refused(&os(args), 2, expected);
    }
}

/// Issue 14, item 9: a quiet feed says that `tail` is following, and a notification on
/// its channel (sent after the commit) wakes it.
#[test]
fn tail_says_it_is_following_and_wakes_on_notify() {
    let schema = Schema::migrated();
    let channel = format!("tailtest_{}", uuid::Uuid::new_v4().simple());
    let mut tail = Running::spawn(
        &[
            "tail",
            "--from-end",
            "--limit",
            "1",
            "--listen",
            &channel,
            "--schema",
            &schema.name,
        ],
        &database_url(),
    );
    let following = tail.wait_for("following the feed after ");
    assert!(
        following.contains(&format!(
            "woken by NOTIFY {channel}, polling at most every 1.0 s"
        )),
        "{following}"
    );
    let listening: i64 = schema
        .runtime
        .block_on(
            sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"' || $1 || '\"'",
            )
            .bind(&channel)
            .fetch_one(schema.store.pool()),
        )
        .expect("pg_stat_activity");
    assert_eq!(listening, 1, "tail LISTENs on {channel}");
    let placed = schema.place_orders(1);
    schema
        .runtime
        .block_on(chronik::postgres::notify_feed(
            schema.store.pool(),
            &channel,
        ))
        .expect("notified");
    let (code, stdout, stderr) = tail.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!(" {} v1 OrderPlaced v2 ", placed[0])),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
}

/// The cursor in a following `tail`'s "following the feed after CURSOR ..." line.
fn following_cursor(tail: &mut Running) -> String {
    let following = tail.wait_for("following the feed after ");
    following
        .strip_prefix("following the feed after ")
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a cursor")
        .to_owned()
}

/// A `tail` that lost its server and may not retry long enough: it exits 1 after printing
/// `printed` events, with the last cursor and the command that resumes after it.
fn assert_tail_gave_up(tail: Running, cursor: &str, printed: usize) {
    let (code, stdout, stderr) = tail.finish();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stdout.lines().count(), printed, "{stdout}");
    assert!(
        stderr.contains("error: gave up after retrying for ")
            && stderr.contains(&format!(
                ": the last cursor is {cursor}; resume with `chronik tail --after {cursor}`: "
            )),
        "{stderr}"
    );
}

/// Issue 14, item 9: following `tail` survives losing its connections: it retries with
/// backoff, says so, and resumes where it was once the server lets it in again; a tail
/// that may not retry that long gives up with the cursor to resume after. Here the server
/// refuses the role's connections (CONNECTION LIMIT 0); a real restart, which a test on
/// the shared cluster must not do, is `tail_follows_the_feed_through_a_server_restart`.
#[test]
fn tail_reconnects_after_losing_its_connection_and_gives_up_with_the_cursor() {
    let schema = Schema::migrated();
    let role = format!(
        "cli_tail_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let exec = |sql: String| {
        schema
            .runtime
            .block_on(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(schema.store.pool()))
            .expect("admin statement");
    };
    exec(format!("CREATE ROLE \"{role}\" LOGIN"));
    schema.ok(&["roles", "grant", &role]);
    let first = schema.place_orders(1);
    let category = "order";
    let args = |retry_for: &'static str, limit: &'static str| {
        vec![
            "tail".to_owned(),
            "--category".to_owned(),
            category.to_owned(),
            "--retry-for".to_owned(),
            retry_for.to_owned(),
            "--limit".to_owned(),
            limit.to_owned(),
            "--schema".to_owned(),
            schema.name.clone(),
        ]
    };
    let spawn = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        Running::spawn(&a, &url_as(&role))
    };
    // Prints the two events there are, then follows; the second waits for a third one.
    let mut patient = spawn(args("3600", "3"));
    let mut hasty = spawn(args("1", "3"));
    patient.wait_for("following the feed after ");
    let cursor = following_cursor(&mut hasty);

    exec(format!("ALTER ROLE \"{role}\" CONNECTION LIMIT 0"));
    exec(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    ));
    assert_tail_gave_up(hasty, &cursor, 2);
    patient.wait_for("retrying in ");

    exec(format!("ALTER ROLE \"{role}\" CONNECTION LIMIT -1"));
    patient.wait_for("reconnected after ");
    let placed = schema.place_orders(1);
    let (code, stdout, stderr) = patient.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].contains(&format!(" {} v1 OrderPlaced ", first[0]))
            && lines[2].contains(&format!(" {} v1 OrderPlaced ", placed[0])),
        "{stdout}"
    );
    exec(format!("DROP OWNED BY \"{role}\""));
    exec(format!("DROP ROLE \"{role}\""));
}

impl Schema {
    /// The first event of this schema's feed; fails the test when the feed is empty.
    fn first_event(&self) -> chronik::RecordedEvent {
        use chronik::EventStore as _;
        self.runtime
            .block_on(self.store.read_feed(
                chronik::FeedCursor::START,
                &chronik::FeedFilter::default(),
                1,
            ))
            .expect("the feed")
            .events
            .into_iter()
            .next()
            .expect("an event in the feed")
    }

    /// Appends one event as stored history may hold it (no validation beyond the store's),
    /// to a new stream; returns its id and feed cursor once it is visible.
    fn append_raw(
        &self,
        stream: &str,
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> (chronik::EventId, chronik::FeedCursor) {
        use chronik::EventStore as _;
        use chronik::{EventId, EventType, ExpectedVersion, Metadata, NewEvent, StreamId};
        let id = EventId::new(uuid::Uuid::new_v4()).expect("not nil");
        let event = NewEvent::new(
            id,
            EventType::new(event_type).expect("valid"),
            schema_version,
            payload,
            Metadata::default(),
        )
        .expect("valid event");
        let stream = StreamId::new(stream).expect("valid stream id");
        self.runtime.block_on(async {
            let cursor = self
                .store
                .append(&stream, ExpectedVersion::NoStream, &[event])
                .await
                .expect("append")
                .cursor;
            self.store
                .wait_for_feed(cursor, std::time::Duration::from_secs(60))
                .await
                .expect("visible");
            (id, cursor)
        })
    }

    /// Inserts, behind the store's back, a row that does not decode even as stored (a
    /// header that is not a string) as version 1 of a new stream `stream`; returns its id
    /// and cursor once it is visible.
    fn append_corrupt(&self, stream: &str) -> (uuid::Uuid, chronik::FeedCursor) {
        let id = uuid::Uuid::new_v4();
        self.runtime.block_on(async {
            let (tx, position): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "INSERT INTO \"{}\".events (stream_id, stream_type, version, event_id, event_type, \
                                         schema_version, payload, metadata) \
                 VALUES ($1, 'order', 1, $2, 'OrderPlaced', 2, '{{}}', '{{\"k\": 1}}') \
                 RETURNING transaction_id::text::bigint, global_position",
                self.name
            )))
            .bind(stream)
            .bind(id)
            .fetch_one(self.store.pool())
            .await
            .expect("the corrupt row is inserted");
            let cursor = chronik::FeedCursor::new(
                u64::try_from(tx).expect("positive"),
                u64::try_from(position).expect("positive"),
            )
            .expect("a cursor");
            self.store
                .wait_for_feed(cursor, std::time::Duration::from_secs(60))
                .await
                .expect("visible");
            (id, cursor)
        })
    }

    /// The projections `projections status --json` lists, by name.
    fn projection_names(&self) -> Vec<String> {
        let doc = json(&self.ok(&["projections", "status", "--json"]));
        doc["projections"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The statement that locks projection `name`'s checkpoint row (for [`Schema::hold`]):
    /// a rebuild waits for it before it replays (from scratch) or swaps (shadow).
    fn lock_checkpoint_row(&self, name: &str) -> String {
        format!(
            "SELECT 1 FROM \"{}\".projection_checkpoints WHERE name = '{name}' FOR UPDATE",
            self.name
        )
    }

    /// Whether table `table` exists in this schema.
    fn has_table(&self, table: &str) -> bool {
        self.runtime
            .block_on(
                sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                    .bind(format!("\"{}\".\"{table}\"", self.name))
                    .fetch_one(self.store.pool()),
            )
            .expect("to_regclass")
    }

    fn rows(&self, table: &str) -> u64 {
        self.runtime
            .block_on(self.store.count_rows(table))
            .expect("count")
    }
}

/// The v2 shape of `OrderPlaced` written as schema version 1: its upcaster cannot lift it.
fn mislabelled_order_placed() -> serde_json::Value {
    serde_json::json!({ "customer_id": "c-bad", "total_amount": 5 })
}

#[test]
fn a_rebuild_that_meets_an_undecodable_event_keeps_the_old_read_model() {
    let schema = Schema::migrated();
    schema.place_orders(2);
    schema.ok(&["projections", "rebuild", "orders"]);
    assert_eq!(schema.rows("order_summaries"), 2);
    let before = json(&schema.ok(&["projections", "status", "--json"]));
    let (bad, cursor) =
        schema.append_raw("order-bad", "OrderPlaced", 1, mislabelled_order_placed());

    for shadow in [false, true] {
        let mut args = vec!["projections", "rebuild", "orders"];
        if shadow {
            args.push("--shadow");
        }
        let out = schema.chronik(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "shadow {shadow}: {stderr}");
        for expected in [
            "error: rebuilding projection orders failed (".to_owned(),
            format!("order-bad v1 (event {bad}, cursor {cursor})"),
            format!("`chronik projections park orders {bad} --reason TEXT`"),
            "OrderPlaced v1 has no `amount`".to_owned(),
        ] {
            assert!(
                stderr.contains(&expected),
                "shadow {shadow}: lacks {expected:?}:\n{stderr}"
            );
        }
        // Not cleared, not half rebuilt, nothing left behind.
        assert_eq!(schema.rows("order_summaries"), 2, "shadow {shadow}");
        assert!(
            !schema.has_table("order_summaries__shadow"),
            "shadow {shadow}"
        );
        assert_eq!(schema.projection_names(), ["orders"], "shadow {shadow}");
        let now = json(&schema.ok(&["projections", "status", "--json"]));
        assert_eq!(
            now["projections"][0]["position"], before["projections"][0]["position"],
            "shadow {shadow}"
        );
    }
}

#[test]
fn commands_waiting_for_a_lock_say_who_holds_it_and_go_on() {
    let schema = Schema::migrated();
    schema.ok(&["append", "note-w1", "--type", "Noted", "--data", "{}"]);
    // (a lock, the command waiting behind it)
    let cases: [(String, &str, Vec<&str>); 2] = [
        (
            format!(
                "SELECT 1 FROM \"{}\".streams WHERE stream_id = 'note-w1' FOR UPDATE",
                schema.name
            ),
            "append",
            vec!["append", "note-w1", "--type", "Noted", "--data", "{}"],
        ),
        (
            format!(
                "LOCK TABLE \"{}\".streams IN ACCESS EXCLUSIVE MODE",
                schema.name
            ),
            "streams list",
            vec!["streams", "list"],
        ),
    ];
    for (lock, command, args) in cases {
        let blocker = schema.hold(&lock);
        let pid = blocker.pid;
        let mut running = schema.spawn(&args);
        // The command cannot finish while the lock is held: its first line on stderr is
        // the watchdog's, a warning as the commands' own are (no log timestamp or target).
        // A command that waits in silence (the defect) fails the test after its deadline.
        let line = running.wait_for_any(&["has waited", "error:"]);
        assert!(
            line.starts_with(&format!("warning: `chronik {command}` has waited "))
                && line.contains(&format!(
                    " s for a lock held by pid {pid} (chronik, idle in transaction, transaction open "
                ))
                && line.ends_with(&format!(
                    "; `SELECT pg_terminate_backend({pid})` ends it): it goes on once the lock is free"
                )),
            "{args:?}: {line}"
        );
        blocker.end();
        let (code, stdout, stderr) = running.finish();
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches("has waited").count(),
            1,
            "{args:?}: said once: {stderr}"
        );
        assert!(
            stdout.contains("note-w1"),
            "{args:?} went on once the lock was free: {stdout}"
        );
    }
}

/// Two rebuilds of one projection, from scratch and into a shadow table, raced: whichever
/// comes second while the first runs is refused with the first's pid, and the first
/// finishes and is the one `projections status` records (they used to run together and
/// write one `projection_rebuilds` row over the other). The first is held mid-way by a
/// transaction locking the live checkpoint row: a from-scratch rebuild waits there before
/// replaying, a shadow rebuild before its swap.
#[test]
fn a_rebuild_is_refused_while_the_other_kind_runs() {
    let schema = Schema::migrated();
    schema.place_orders(3);
    schema.ok(&["projections", "rebuild", "orders"]);
    let rebuild = |shadow: bool| {
        let mut args = vec!["projections", "rebuild", "orders"];
        if shadow {
            args.push("--shadow");
        }
        schema.spawn(&args)
    };
    for first_shadow in [false, true] {
        let blocker = schema.hold(&schema.lock_checkpoint_row("orders"));
        let mut first = rebuild(first_shadow);
        // It holds its locks and waits for the row.
        let seen = first.wait_for_any(&["has waited", "error:"]);
        assert!(
            seen.starts_with("warning: the rebuild of orders has waited "),
            "{seen}"
        );
        let first_pid: i64 = schema
            .runtime
            .block_on(
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT pid::int8 FROM \"{}\".projection_rebuilds WHERE name = 'orders' AND outcome = 'running'",
                    schema.name
                )))
                .fetch_one(schema.store.pool()),
            )
            .expect("the first rebuild is recorded as running");

        let mut second = rebuild(!first_shadow);
        // Refused at once, or (the defect) running until it too waits for the row.
        let said = second.wait_for_any(&["has waited", "error:"]);
        if said.contains("has waited") {
            second.kill();
        }
        let kind = if first_shadow {
            "a shadow rebuild"
        } else {
            "a rebuild from scratch"
        };
        assert!(
            said.contains("error: rebuilding projection orders failed (nothing was changed")
                && said.contains(&format!("{kind} of orders is running (pid {first_pid}, since "))
                && said.contains(&format!(
                    "projection orders__shadow is running in another session (pid {first_pid}); stop it or wait"
                )),
            "first shadow {first_shadow}: {said}"
        );
        let (code, _, said) = second.finish();
        assert_eq!(code, Some(1), "{said}");

        blocker.end();
        let (code, _, rest) = first.finish();
        assert_eq!(code, Some(0), "{rest}");
        let status = json(&schema.ok(&["projections", "status", "--json"]));
        let last = &status["projections"][0]["last_rebuild"];
        assert_eq!(last["outcome"], "succeeded", "{status}");
        assert_eq!(last["shadow"], first_shadow, "{status}");
        assert_eq!(last["pid"], first_pid, "{status}");
        assert_eq!(schema.rows("order_summaries"), 3);
    }
}

/// A rebuild whose session is ended under it (the server restarting, an administrator's
/// `pg_terminate_backend`) while its handler writes says that the connection was lost and
/// to run it again; it used to call that a failure of the event and say to park it, which
/// would leave a good event out of the read model. The handler is held inside its write by
/// another transaction's uncommitted row of the same order, then its session is ended.
#[test]
fn a_rebuild_that_loses_its_connection_says_so_and_not_to_park_the_event() {
    let schema = Schema::migrated();
    let ids = schema.place_orders(1);
    let blocker = schema.hold(&format!(
        "INSERT INTO \"{}\".order_summaries (order_id, customer_id, status, total_amount, \
         lines, placed_at, updated_at, version) VALUES ('{}', 'c', 'placed', 1, 0, now(), now(), 1)",
        schema.name, ids[0]
    ));
    let mut running = schema.spawn(&["projections", "rebuild", "orders"]);
    running.wait_for("rebuilding projection orders in schema ");
    // The rebuild's session, once it waits for the blocker's row.
    let waiter: i32 = schema.runtime.block_on(async {
        // A safety net only: it waits within a second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the rebuild never waited for the blocker's row"
            );
            let found: Option<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            )
            .bind(blocker.pid)
            .fetch_optional(schema.store.pool())
            .await
            .expect("pg_stat_activity");
            if let Some(pid) = found {
                return pid;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    schema
        .runtime
        .block_on(
            sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(waiter)
                .execute(schema.store.pool()),
        )
        .expect("terminated");
    let (code, _, stderr) = running.finish();
    blocker.end();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the connection to the server was lost (it stopped or restarted, or the session was \
             ended): nothing is wrong with the event; run the rebuild again once the server is back"
        ) && !stderr.contains("park it")
            && stderr
                .matches(
                    "database error 57P01: terminating connection due to administrator command"
                )
                .count()
                == 1
            && !stderr.contains(" at line "),
        "{stderr}"
    );
    assert_eq!(schema.rows("order_summaries"), 0, "rolled back");
}

/// Ctrl-C on an `append` that waits for its stream's lock writes nothing, then or later.
/// The process is gone at once, but its statement used to go on waiting in the server and
/// commit the event when the lock came free: an event nobody was told of. The store's
/// sessions now have `client_connection_check_interval` (`PgStoreConfig::
/// client_check_interval`), so the server notices the closed connection and rolls back.
/// Before the fix the waiting session went on until the 30-s statement timeout (this test's
/// 20-s wait for it gave up).
#[test]
fn an_append_interrupted_while_it_waits_for_its_stream_writes_nothing_later() {
    let schema = Schema::migrated();
    schema.ok(&["append", "note-c1", "--type", "Noted", "--data", "{}"]);
    assert_eq!(schema.rows("events"), 1);
    let blocker = schema.hold(&format!(
        "SELECT 1 FROM \"{}\".streams WHERE stream_id = 'note-c1' FOR UPDATE",
        schema.name
    ));
    let running = schema.spawn(&["append", "note-c1", "--type", "Noted", "--data", "{}"]);
    let waiting_session = |schema: &Schema| -> Option<i32> {
        schema.runtime.block_on(async {
            sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            )
            .bind(blocker.pid)
            .fetch_optional(schema.store.pool())
            .await
            .expect("pg_stat_activity")
        })
    };
    // A safety net only: each wait ends within a second or two.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let waiter = loop {
        if let Some(pid) = waiting_session(&schema) {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the append never waited for the stream's lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    running.interrupt();
    let (code, _, stderr) = running.finish();
    assert_ne!(code, Some(0), "{stderr}");
    // The server checks every second; without the check only the 30-s statement timeout
    // ended the wait (and a lock freed before that committed the event). 20 s tells the two
    // apart on any machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while waiting_session(&schema) == Some(waiter) {
        assert!(
            std::time::Instant::now() < deadline,
            "the interrupted append's statement still waits in the server (pid {waiter}): it \
             would commit once the lock is free"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    blocker.end();
    assert_eq!(
        schema.rows("events"),
        1,
        "the interrupted append wrote nothing"
    );
}

#[test]
fn ctrl_c_stops_a_rebuild_at_a_batch_boundary_and_changes_nothing() {
    let schema = Schema::migrated();
    schema.place_orders(3);
    schema.ok(&["projections", "rebuild", "orders"]);
    schema.place_orders(1);
    let before = json(&schema.ok(&["projections", "status", "--json"]));
    // The projection's checkpoint row, locked: the rebuild prints its first progress line,
    // then waits for this transaction, so it cannot finish before the signal is seen.
    let blocker = schema.hold(&schema.lock_checkpoint_row("orders"));
    let blocker_pid = blocker.pid;
    let mut running = schema.spawn(&["projections", "rebuild", "orders", "--batch", "1"]);
    running.wait_for("rebuilding projection orders in schema ");
    // Waiting for the checkpoint row, it says who holds it and how to end that.
    let line = running.wait_for("has waited");
    assert!(
        line.starts_with(
            "warning: the rebuild of orders has waited 2 s for the lock on its checkpoint row, held by "
        ) && line.contains(&format!(
            "pid {blocker_pid} (chronik, idle in transaction, transaction open "
        )) && line.contains(&format!(
            "; `SELECT pg_terminate_backend({blocker_pid})` ends it)"
        )),
        "{line}"
    );
    running.interrupt();
    running.wait_for("interrupted: stopping the rebuild of orders");
    blocker.end();
    let (code, _, seen) = running.finish();
    assert_eq!(code, Some(130), "{seen}");
    assert!(
        seen.contains("\nthe rebuild of orders was stopped after "),
        "{seen}"
    );
    assert!(
        seen.contains("error: the rebuild of projection orders was interrupted after ")
            && seen.contains(
                "its transaction was rolled back, so order_summaries and the checkpoint of orders \
                 are as they were before the rebuild; restart its runners, or run \
                 `chronik projections rebuild orders` again to start over"
            ),
        "{seen}"
    );
    assert!(!seen.contains("panicked"), "{seen}");
    // As it was: three rows, the same checkpoint, and nothing else.
    assert_eq!(schema.rows("order_summaries"), 3);
    let now = json(&schema.ok(&["projections", "status", "--json"]));
    for field in ["name", "position", "events_processed", "lag_events"] {
        assert_eq!(
            now["projections"][0][field], before["projections"][0][field],
            "{field}: {now}"
        );
    }
    assert_eq!(
        now["projections"].as_array().map(Vec::len),
        Some(1),
        "{now}"
    );
    // Recorded as a failed rebuild, saying how far it got.
    let last = &now["projections"][0]["last_rebuild"];
    assert_eq!(last["outcome"], "failed", "{now}");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("the rebuild of projection orders was stopped after ")),
        "{now}"
    );
    // And the rebuild works when let finish.
    let stdout = schema.ok(&["projections", "rebuild", "orders"]);
    assert!(
        stdout.contains("order_summaries now holds 4 rows"),
        "{stdout}"
    );
}

#[test]
fn parked_events_are_listed_parked_retried_and_dropped_and_projections_forgotten() {
    use chronik::postgres::{PgProjectionRunner, RunnerBuilder as _, RunnerOptions};
    use std::sync::Arc;
    let schema = Schema::migrated();
    let placed = schema.place_orders(2);
    let (bad, cursor) =
        schema.append_raw("order-bad", "OrderPlaced", 1, mislabelled_order_placed());
    let runner = {
        let _entered = schema.runtime.enter();
        let projection = Arc::new(orders::OrderProjection::new(schema.store.schema()));
        PgProjectionRunner::new(schema.store.clone(), projection)
            .with_upcasters(Arc::new(orders::upcasters().expect("valid")))
            .with_options(RunnerOptions {
                retry_base: std::time::Duration::from_millis(5),
                retry_max: std::time::Duration::from_millis(20),
                ..RunnerOptions::default()
            })
            .spawn()
            .expect("the runner starts")
    };
    let mut status = runner
        .subscribe(orders::OrderProjection::NAME)
        .expect("its status");
    schema
        .runtime
        .block_on(status.wait_for(|s| s.attempts >= 2))
        .expect("the runner fails on the bad event");
    assert!(
        runner
            .status(orders::OrderProjection::NAME)
            .expect("its status")
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("cursor {cursor}"))),
        "{:?}",
        runner.status(orders::OrderProjection::NAME)
    );

    // The failing event, not parked yet, and how to park it.
    let stdout = schema.ok(&["projections", "parked", "orders"]);
    assert!(
        stdout.contains("no open parked events for projection orders")
            && stdout.contains(&format!(
                "projection orders is failing on event {bad}, which is not parked ("
            ))
            && stdout.contains(&format!(
                "`chronik projections park orders {bad} --reason TEXT`"
            )),
        "{stdout}"
    );
    let stdout = schema.ok(&[
        "projections",
        "park",
        "orders",
        &bad.to_string(),
        "--reason",
        "v2 payload stored as v1",
        "--by",
        "ops",
    ]);
    assert!(
        stdout.starts_with(&format!(
            "parked event {bad} (order-bad v1, cursor {cursor}) for projection orders"
        )),
        "{stdout}"
    );
    schema
        .runtime
        .block_on(chronik::postgres::wait_for_projection(
            &schema.store,
            "orders",
            cursor,
            std::time::Duration::from_secs(60),
        ))
        .expect("the runner passes over it");
    let doc = json(&schema.ok(&["projections", "parked", "orders", "--json"]));
    let parked = &doc["parked"][0];
    assert_eq!(parked["event_id"], bad.to_string(), "{doc}");
    assert_eq!(parked["state"], "skipped", "{doc}");
    assert_eq!(parked["cursor"], cursor.to_string(), "{doc}");
    assert_eq!(parked["decided_by"], "ops", "{doc}");
    assert_eq!(doc["failing_event"], serde_json::Value::Null, "{doc}");
    // A rebuild passes over it too, beside the running runner, and says so in one plain
    // line that names the event and how to apply it (it was a log line with fields).
    let out = schema.chronik(&["projections", "rebuild", "orders", "--shadow"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("order_summaries now holds 2 rows"),
        "{stdout}"
    );
    assert!(
        stderr.lines().any(|l| l
            == format!(
                "warning: projection orders passes over parked event {bad} \
                 (order-bad v1, cursor {cursor}); \
                 `chronik projections retry orders {bad}` applies it"
            )),
        "{stderr}"
    );

    // Retried while it still cannot be applied: refused, and it stays parked.
    let out = schema.chronik(&[
        "projections",
        "retry",
        "orders",
        &bad.to_string(),
        "--by",
        "ops",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: event {bad} still fails for projection orders: it stays parked: "
        )) && stderr.contains(&format!("cursor {cursor}")),
        "{stderr}"
    );
    let doc = json(&schema.ok(&["projections", "parked", "orders", "--json"]));
    assert_eq!(doc["parked"][0]["state"], "skipped", "{doc}");

    // Dropped for good: it leaves the list, and a second drop finds nothing open.
    let stdout = schema.ok(&[
        "projections",
        "drop-parked",
        "orders",
        &bad.to_string(),
        "--by",
        "ops",
    ]);
    assert!(
        stdout.starts_with(&format!(
            "dropped event {bad} for projection orders for good"
        )),
        "{stdout}"
    );
    let stdout = schema.ok(&["projections", "parked", "orders"]);
    assert!(
        stdout.starts_with("no open parked events for projection orders"),
        "{stdout}"
    );
    let doc = json(&schema.ok(&["projections", "parked", "orders", "--all", "--json"]));
    assert_eq!(doc["parked"][0]["state"], "dropped", "{doc}");
    assert_eq!(doc["parked"][0]["resolved_by"], "ops", "{doc}");
    let out = schema.chronik(&[
        "projections",
        "drop-parked",
        "orders",
        &bad.to_string(),
        "--by",
        "ops",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(
        "is not parked for projection orders any more (its decision was resolved: dropped)"
    ));

    // An event that applies fine is retried: applied now, once (the read model's upserts
    // are guarded by version).
    let first = schema.first_event();
    assert_eq!(first.stream_id, placed[0]);
    schema.ok(&[
        "projections",
        "park",
        "orders",
        &first.event_id.to_string(),
        "--reason",
        "test",
        "--by",
        "ops",
    ]);
    let stdout = schema.ok(&[
        "projections",
        "retry",
        "orders",
        &first.event_id.to_string(),
        "--by",
        "ops",
    ]);
    assert!(
        stdout.contains("applied to order_summaries now"),
        "{stdout}"
    );
    assert_eq!(schema.rows("order_summaries"), 2);
    let out = schema.chronik(&[
        "projections",
        "retry",
        "orders",
        &uuid::Uuid::new_v4().to_string(),
        "--by",
        "ops",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    check_refused(
        &os(&["projections", "retry", "nope", &bad.to_string()]),
        2,
        "unknown projection \"nope\"; known projections: orders",
    );

    // A running projection is not forgotten; a stopped one is, and only its rows go.
    let owner = runner
        .status(orders::OrderProjection::NAME)
        .expect("its status")
        .lock_pid
        .expect("the runner holds the lock");
    let out = schema.chronik(&["projections", "forget", "orders"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: projection orders is running (owner pid {owner} "
        )),
        "{stderr}"
    );
    schema.runtime.block_on(runner.stop()).expect("stopped");
    let stdout = schema.ok(&["projections", "forget", "orders"]);
    assert!(
        stdout.starts_with(&format!(
            "forgot projection orders in schema {}: its checkpoint at ",
            schema.name
        )) && stdout.contains("1 runner row deleted"),
        "{stdout}"
    );
    assert!(schema.projection_names().is_empty());
    assert_eq!(schema.rows("order_summaries"), 2, "the read model stays");
    let out = schema.chronik(&["projections", "forget", "orders"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).trim_end(),
        format!(
            "error: projection orders has nothing to forget in schema {}: it is registered \
             but has no checkpoint and no runner there",
            schema.name
        )
    );
    // A mistyped name gets the message `park` and `parked` give.
    let out = schema.chronik(&["projections", "forget", "ordrs"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).trim_end(),
        format!(
            "error: no projection ordrs in schema {} (its projections: orders): check the name; \
             nothing was forgotten",
            schema.name
        )
    );
}

/// A mistyped projection name is refused by `park` (exit 3, the schema's projections named,
/// nothing recorded) and by `parked`: `park ordrs ...` said "parked" and recorded a decision
/// no runner reads, while the real projection stayed stuck on the event. Found walking the
/// commands on a fresh cluster.
#[test]
fn park_and_parked_refuse_a_projection_that_does_not_exist() {
    let schema = Schema::migrated();
    schema.place_orders(1);
    let id = schema.first_event().event_id.to_string();
    let out = schema.chronik(&[
        "projections",
        "park",
        "ordrs",
        &id,
        "--reason",
        "typo",
        "--by",
        "ops",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: no projection ordrs in schema {} (its projections: orders): check the name; \
             nothing was parked (a decision for a projection that does not exist is read by no runner)\n",
            schema.name
        )
    );
    let out = schema.chronik(&["projections", "parked", "ordrs", "--all"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("no projection ordrs in schema ")
            && stderr.contains("it has no parked events"),
        "{stderr}"
    );
    assert_eq!(schema.rows("projection_parked"), 0, "nothing recorded");
    // The registered projection, without a checkpoint yet, can be parked for.
    let stdout = schema.ok(&[
        "projections",
        "park",
        "orders",
        &id,
        "--reason",
        "known",
        "--by",
        "ops",
    ]);
    assert!(
        stdout.starts_with(&format!("parked event {id} ")),
        "{stdout}"
    );
}

/// An event whose park decision was retried (and so is no longer passed over) can be parked
/// again when it still fails: `park` said "parked" but kept the retried decision, so the
/// runner went on failing on it and `drop-parked` said it was not parked any more.
#[test]
fn an_event_retried_then_parked_again_is_parked() {
    let schema = Schema::migrated();
    schema.place_orders(1);
    let first = schema.first_event();
    let id = first.event_id.to_string();
    let park = |reason: &str| {
        schema.ok(&[
            "projections",
            "park",
            "orders",
            &id,
            "--reason",
            reason,
            "--by",
            "ops",
        ])
    };
    park("first");
    let stdout = schema.ok(&["projections", "retry", "orders", &id, "--by", "ops"]);
    assert!(
        stdout.contains("its park decision is withdrawn"),
        "{stdout}"
    );
    park("still fails");
    let doc = json(&schema.ok(&["projections", "parked", "orders", "--json"]));
    let parked = &doc["parked"][0];
    assert_eq!(parked["event_id"], id, "{doc}");
    assert_eq!(parked["state"], "pending", "open again: {doc}");
    assert!(
        parked["reason"].as_str().is_some_and(|r| r
            .starts_with("still fails (parked again; before: first, by ops at ")
            && r.contains(", retried by ops at ")),
        "{doc}"
    );
    let stdout = schema.ok(&["projections", "drop-parked", "orders", &id, "--by", "ops"]);
    assert!(stdout.contains(&id), "{stdout}");
}

#[test]
fn append_checks_registered_types_through_the_upcasters_and_defaults_to_the_current_version() {
    let schema = Schema::migrated();
    let v2 = r#"{"customer_id":"c","total_amount":5}"#;
    // The current shape without --schema-version: written at the current version, v2.
    let stdout = schema.ok(&["append", "order-a1", "--type", "OrderPlaced", "--data", v2]);
    assert!(
        stdout.starts_with("appended: order-a1 v1 OrderPlaced"),
        "{stdout}"
    );
    let shown = json(schema.ok(&["streams", "show", "order-a1", "--json"]).trim());
    assert_eq!(shown["schema_version"], 2, "{shown}");
    // Payloads that would not load: refused with exit status 2, nothing written.
    for (args, expected) in [
        (
            vec!["--schema-version", "1", "--data", v2],
            "the payload is not a OrderPlaced v1 that can be read: ",
        ),
        (
            vec!["--data", r#"{"customer_id":7,"total_amount":5}"#],
            "the payload does not decode as OrderPlaced v2: ",
        ),
        (
            vec![
                "--schema-version",
                "1",
                "--data",
                r#"{"customer_id":"c","amount":"x"}"#,
            ],
            "the payload does not decode as OrderPlaced v2 (upcast from v1): ",
        ),
        (
            vec!["--schema-version", "3", "--data", v2],
            "schema version 3 of OrderPlaced is newer than its current version 2",
        ),
    ] {
        let mut all = vec!["append", "order-a2", "--type", "OrderPlaced"];
        all.extend(&args);
        let out = schema.chronik(&all);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ")
                && stderr.contains(expected)
                && stderr.contains("nothing was written"),
            "{args:?}: {stderr}"
        );
    }
    let out = schema.chronik(&["streams", "show", "order-a2"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "nothing was written: {}",
        text(&out.stdout)
    );
    // History as it was written: a v1 payload at v1.
    schema.ok(&[
        "append",
        "order-a3",
        "--type",
        "OrderPlaced",
        "--schema-version",
        "1",
        "--data",
        r#"{"customer_id":"c","amount":5}"#,
    ]);
    // A type the binary does not know: written as given (v1), with a warning.
    let out = schema.chronik(&["append", "misc-1", "--type", "Noted", "--data", "{}"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "warning: event type Noted is not registered with chronik (no upcaster or event type names it): \
             it was written at schema version 1 without checking that it can be read"
        ),
        "{stderr}"
    );
}

#[test]
fn append_refuses_a_type_the_streams_aggregate_does_not_accept() {
    let schema = Schema::migrated();
    let placed = r#"{"customer_id":"c","total_amount":5}"#;
    schema.ok(&[
        "append",
        "order-u1",
        "--type",
        "OrderPlaced",
        "--data",
        placed,
    ]);
    // An order stream (category `order`, the Order aggregate's): a type it does not have
    // would make it unloadable, and events cannot be deleted.
    let out = schema.chronik(&[
        "append",
        "order-u1",
        "--type",
        "Unregistered",
        "--data",
        "{}",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(
            "error: event type Unregistered is not one that order-u1 accepts (it belongs to the aggregate of category order; its types: OrderPlaced, "
        ) && stderr.contains("the application could not load order-u1 after it")
            && stderr.contains("nothing was written")
            && stderr.contains("pass --allow-unregistered"),
        "{stderr}"
    );
    // A new stream of the category too: it would never load.
    let out = schema.chronik(&[
        "append",
        "order-u2",
        "--type",
        "Unregistered",
        "--data",
        "{}",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // A stream of another category that holds the aggregate's events is claimed by them.
    schema.ok(&[
        "append",
        "legacy-1",
        "--type",
        "OrderPlaced",
        "--data",
        placed,
    ]);
    let out = schema.chronik(&["append", "legacy-1", "--type", "Noted", "--data", "{}"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("event type Noted is not one that legacy-1 accepts (its events are of registered types (OrderPlaced); its types: "),
        "{stderr}"
    );
    let shown = schema.ok(&["streams", "show", "order-u1", "--json"]);
    assert_eq!(shown.lines().count(), 1, "nothing was written: {shown}");
    assert_eq!(
        schema
            .chronik(&["streams", "show", "order-u2"])
            .status
            .code(),
        Some(3),
        "nothing was written"
    );
    // The escape hatch writes it, and says what it did.
    let out = schema.chronik(&[
        "append",
        "order-u1",
        "--type",
        "Unregistered",
        "--data",
        "{}",
        "--allow-unregistered",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        text(&out.stdout).starts_with("appended: order-u1 v2 Unregistered"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        stderr.starts_with("warning: event type Unregistered is not one that order-u1 accepts")
            && stderr.contains("written because of --allow-unregistered"),
        "{stderr}"
    );
}

#[test]
fn snapshots_take_names_the_cursor_of_an_event_it_cannot_read() {
    let schema = Schema::migrated();
    let (bad, cursor) =
        schema.append_raw("order-bad", "OrderPlaced", 1, mislabelled_order_placed());
    let out = schema.chronik(&["snapshots", "take", "order-bad"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: event {bad} (order-bad v1, cursor {cursor}) cannot be read as the registered aggregate's event \
             (see it as stored: `chronik streams show order-bad --from 1`)"
        )) && stderr.contains("OrderPlaced v1 has no `amount`"),
        "{stderr}"
    );
}

#[test]
fn tail_prints_an_event_it_cannot_upcast_as_stored_and_goes_on() {
    let schema = Schema::migrated();
    let good = schema.place_orders(1).remove(0);
    let (bad, cursor) =
        schema.append_raw("order-bad", "OrderPlaced", 1, mislabelled_order_placed());
    let after = schema.place_orders(1).remove(0);
    for json in [false, true] {
        let mut args = vec!["tail", "--no-follow"];
        if json {
            args.push("--json");
        }
        let out = schema.chronik(&args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "json {json}: {stderr}");
        // Everything before and after it, and it as stored.
        assert_eq!(stdout.lines().count(), 5, "json {json}: {stdout}");
        assert!(
            stdout.contains(good.as_str()) && stdout.contains(after.as_str()),
            "json {json}: {stdout}"
        );
        let line = stdout
            .lines()
            .find(|l| l.contains("order-bad"))
            .unwrap_or_else(|| panic!("json {json}: no order-bad line:\n{stdout}"));
        if json {
            let doc = serde_json::from_str::<serde_json::Value>(line).expect("one JSON object");
            assert_eq!(doc["schema_version"], 1, "{doc}");
            assert_eq!(doc["payload"], mislabelled_order_placed(), "{doc}");
        } else {
            assert!(
                line.starts_with(&format!("{cursor} order-bad v1 OrderPlaced v1 ")),
                "{line}"
            );
        }
        assert!(
            stderr.contains(&format!(
                "warning: the event at cursor {cursor} (order-bad v1, OrderPlaced v1, event {bad}) cannot be upcast, so it is printed as stored: "
            )) && stderr.contains("OrderPlaced v1 has no `amount`"),
            "json {json}: {stderr}"
        );
    }
}

#[test]
fn ctrl_c_stops_a_shadow_rebuild_and_leaves_no_shadow_behind() {
    let schema = Schema::migrated();
    schema.place_orders(3);
    schema.ok(&["projections", "rebuild", "orders"]);
    let before = json(&schema.ok(&["projections", "status", "--json"]));
    // A leftover `orders__shadow` checkpoint (as a crashed rebuild leaves it), its row locked:
    // the rebuild prints its first progress line, then waits for this transaction.
    schema
        .runtime
        .block_on(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO \"{}\".projection_checkpoints (name, transaction_id, global_position, events_processed) \
                 VALUES ('orders__shadow', 0, 0, 0)",
                schema.name
            )))
            .execute(schema.store.pool()),
        )
        .expect("the leftover checkpoint");
    let blocker = schema.hold(&schema.lock_checkpoint_row("orders__shadow"));
    let mut running = schema.spawn(&[
        "projections",
        "rebuild",
        "orders",
        "--shadow",
        "--batch",
        "1",
    ]);
    running.wait_for("rebuilding projection orders in schema ");
    running.interrupt();
    running.wait_for("interrupted: stopping the rebuild of orders");
    blocker.end();
    let (code, _, seen) = running.finish();
    assert_eq!(code, Some(130), "{seen}");
    assert!(
        seen.contains(
            "the live table order_summaries kept serving and is unchanged; the shadow table \
             order_summaries__shadow and the checkpoint orders__shadow were dropped; run \
             `chronik projections rebuild orders --shadow` again to start over"
        ),
        "{seen}"
    );
    // Nothing left behind: no shadow table, no shadow checkpoint, the live one as it was.
    assert!(!schema.has_table("order_summaries__shadow"));
    assert_eq!(schema.projection_names(), ["orders"]);
    assert_eq!(schema.rows("order_summaries"), 3);
    let now = json(&schema.ok(&["projections", "status", "--json"]));
    assert_eq!(
        now["projections"][0]["position"], before["projections"][0]["position"],
        "{now}"
    );
    let (_, stdout, _) = doctor(&schema, &[]);
    assert!(!stdout.contains("__shadow"), "{stdout}");
}

/// Issue 14, item 4: a stored row that cannot be decoded even as stored does not hide the
/// events before and after it: tail prints them and names the one it leaves out by cursor.
#[test]
fn tail_leaves_out_a_row_it_cannot_read_naming_its_cursor_and_goes_on() {
    let schema = Schema::migrated();
    let before = schema.place_orders(2);
    let (bad, cursor) = schema.append_corrupt("order-corrupt");
    let after = schema.place_orders(1).remove(0);
    let out = schema.chronik(&["tail", "--no-follow"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for id in before.iter().chain([&after]) {
        assert!(stdout.contains(id.as_str()), "{id}: {stdout}");
    }
    assert!(!stdout.contains("order-corrupt"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "warning: the event at cursor {cursor} (order-corrupt v1, event {bad}) cannot be read even as stored, \
             so it is left out: metadata: "
        )),
        "{stderr}"
    );
    // The events before it are printed once, in feed order, and so are those after it.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert!(lines[5].contains(after.as_str()), "{stdout}");
}

/// Issue 14, item 12: a failed rebuild shows in `projections status` (text and JSON), with
/// when and why, until a later rebuild succeeds; doctor warns about it.
#[test]
fn a_failed_rebuild_shows_in_status_until_one_succeeds() {
    let schema = Schema::migrated();
    schema.place_orders(2);
    schema.ok(&["projections", "rebuild", "orders"]);
    let doc = json(&schema.ok(&["projections", "status", "--json"]));
    assert_eq!(
        doc["projections"][0]["last_rebuild"]["outcome"], "succeeded",
        "{doc}"
    );
    let (bad, cursor) =
        schema.append_raw("order-bad", "OrderPlaced", 1, mislabelled_order_placed());
    for shadow in [false, true] {
        let mut args = vec!["projections", "rebuild", "orders"];
        if shadow {
            args.push("--shadow");
        }
        let out = schema.chronik(&args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let status = schema.ok(&["projections", "status"]);
        let how = if shadow { "shadow" } else { "from scratch" };
        let line = status
            .lines()
            .find(|l| l.starts_with("last rebuild of orders failed at "))
            .unwrap_or_else(|| panic!("shadow {shadow}: no failed rebuild line:\n{status}"));
        assert!(
            line.contains(&format!(" ({how}, pid "))
                && line.contains(&format!("order-bad v1 (event {bad}, cursor {cursor})"))
                && line.ends_with(
                    "; its read model is the one from before that rebuild; rebuild again once the cause is fixed"
                ),
            "shadow {shadow}: {line}"
        );
        let doc = json(&schema.ok(&["projections", "status", "--json"]));
        let b = &doc["projections"][0]["last_rebuild"];
        assert_eq!(b["outcome"], "failed", "{doc}");
        assert_eq!(b["shadow"], shadow, "{doc}");
        assert!(b["finished_at"].is_string(), "{doc}");
        assert!(
            b["error"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("cursor {cursor}"))),
            "{doc}"
        );
        let (code, stdout, _) = doctor(&schema, &[]);
        assert_eq!(code, Some(0), "a failed rebuild is a warning: {stdout}");
        assert!(
            stdout.contains("  - last rebuild of orders failed at "),
            "{stdout}"
        );
    }
    // Parked, the event is passed over and the next rebuild succeeds: the line goes away.
    schema.ok(&[
        "projections",
        "park",
        "orders",
        &bad.to_string(),
        "--reason",
        "test",
        "--by",
        "ops",
    ]);
    schema.ok(&["projections", "rebuild", "orders"]);
    let status = schema.ok(&["projections", "status"]);
    assert!(!status.contains("last rebuild"), "{status}");
    let doc = json(&schema.ok(&["projections", "status", "--json"]));
    assert_eq!(
        doc["projections"][0]["last_rebuild"]["outcome"], "succeeded",
        "{doc}"
    );
    assert!(
        doc["projections"][0]["last_rebuild"]["error"].is_null(),
        "{doc}"
    );
}

/// Issue 14, item 5: what a killed shadow rebuild left (its checkpoint, its table) is a
/// problem for doctor, with the two ways out; `projections forget NAME__shadow` removes
/// both; a running shadow rebuild's are not leftovers, and forget refuses them.
#[test]
fn doctor_reports_a_killed_shadow_rebuilds_leftovers_and_forget_removes_them() {
    let schema = Schema::migrated();
    schema.place_orders(1);
    schema.ok(&["projections", "rebuild", "orders"]);
    let exec = |sql: String| {
        schema
            .runtime
            .block_on(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(schema.store.pool()))
            .expect("statement runs");
    };
    // As a shadow rebuild killed mid-way leaves them.
    exec(format!(
        "INSERT INTO \"{}\".projection_checkpoints (name, transaction_id, global_position, events_processed) \
         VALUES ('orders__shadow', 0, 0, 0)",
        schema.name
    ));
    exec(format!(
        "CREATE TABLE \"{0}\".order_summaries__shadow (LIKE \"{0}\".order_summaries INCLUDING ALL)",
        schema.name
    ));
    let (code, stdout, _) = doctor(&schema, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "  - a shadow rebuild of orders did not finish and left the checkpoint orders__shadow (at 0:0) \
             and the table order_summaries__shadow behind: re-run `chronik projections rebuild orders --shadow` \
             (it starts by dropping them) or remove them with `chronik projections forget orders__shadow`"
        ),
        "{stdout}"
    );
    // Not a projection: no lag reported for it.
    assert!(
        stdout.contains("  projections  1 projection, 1 caught up, 0 behind"),
        "{stdout}"
    );
    let doc = json(&doctor(&schema, &["--json", "--max-horizon-age", "3600"]).1);
    assert_eq!(
        doc["shadows"][0]["table"], "order_summaries__shadow",
        "{doc}"
    );
    assert_eq!(doc["shadows"][0]["checkpoint"], "0:0", "{doc}");

    // While a shadow rebuild holds its lock, they are its own: no problem, and forget refuses.
    let _entered = schema.runtime.enter();
    let mut holder = schema
        .runtime
        .block_on(schema.store.pool().acquire())
        .expect("a connection");
    let pid: i32 = schema
        .runtime
        .block_on(sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *holder))
        .expect("pid");
    schema
        .runtime
        .block_on(
            sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
                .bind(format!("chronik.projection:{}:orders__shadow", schema.name))
                .execute(&mut *holder),
        )
        .expect("the shadow lock");
    let (code, stdout, _) = doctor(&schema, &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "shadow rebuild of orders running (pid {pid}): the checkpoint"
        )),
        "{stdout}"
    );
    let out = schema.chronik(&["projections", "forget", "orders__shadow"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: a shadow rebuild of orders is running (projection orders__shadow is running in another session (pid {pid}); stop it or wait)"
        )),
        "{stderr}"
    );
    schema
        .runtime
        .block_on(sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut *holder))
        .expect("unlocked");
    drop(holder);

    let stdout = schema.ok(&["projections", "forget", "orders__shadow"]);
    assert_eq!(
        stdout,
        format!(
            "forgot what a shadow rebuild of orders left in schema {}: the checkpoint orders__shadow at 0:0 deleted, \
             the table order_summaries__shadow dropped; the live read model is untouched\n",
            schema.name
        )
    );
    assert!(!schema.has_table("order_summaries__shadow"));
    assert_eq!(schema.rows("order_summaries"), 1);
    let (code, stdout, _) = doctor(&schema, &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(!stdout.contains("__shadow"), "{stdout}");

    // A table alone (killed between creating it and its checkpoint) is found too.
    exec(format!(
        "CREATE TABLE \"{0}\".order_summaries__shadow (LIKE \"{0}\".order_summaries INCLUDING ALL)",
        schema.name
    ));
    let (code, stdout, _) = doctor(&schema, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("a shadow rebuild of orders did not finish and left the table order_summaries__shadow behind"),
        "{stdout}"
    );
    schema.ok(&["projections", "forget", "orders__shadow"]);
    let out = schema.chronik(&["projections", "forget", "orders__shadow"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // A bad name says what is wrong with it, without the store's `invalid request:`.
    let out = schema.chronik(&["projections", "forget", "Bad Name"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: projection name must be "),
        "{stderr}"
    );
}

/// The NATS server the relay tests use: NATS_URL, or the local default. Never skipped.
fn nats_url() -> String {
    std::env::var("NATS_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned())
}

/// A JetStream stream and subject prefix of one test's own on the test NATS server.
struct TestStream {
    url: String,
    prefix: String,
    stream: String,
}

impl TestStream {
    fn new() -> Self {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        Self {
            url: nats_url(),
            prefix: format!("clitest.r{tag}"),
            stream: format!("CLITEST_{tag}"),
        }
    }

    /// `relay nats` to this stream, under this prefix.
    fn relay_args(&self) -> Vec<&str> {
        vec![
            "relay",
            "nats",
            "--url",
            &self.url,
            "--subject-prefix",
            &self.prefix,
            "--stream-name",
            &self.stream,
        ]
    }

    /// A JetStream client of the test server.
    fn jetstream(&self, schema: &Schema) -> chronik::relay::async_nats::jetstream::Context {
        let url = &self.url;
        schema.runtime.block_on(async {
            chronik::relay::async_nats::jetstream::new(
                chronik::relay::async_nats::connect(url.as_str())
                    .await
                    .unwrap_or_else(|e| panic!("NATS must run at {url} with -js: {e}")),
            )
        })
    }
}

#[test]
fn relay_nats_publishes_the_feed_for_a_consumer_and_shows_in_projections_status() {
    let schema = Schema::migrated();
    let ids = schema.place_orders(2);
    let target = TestStream::new();
    let (url, prefix, stream) = (&target.url, &target.prefix, &target.stream);
    let mut relay = target.relay_args();
    relay.extend(["--category", "order", "--until-caught-up"]);
    let stdout = schema.ok(&relay);
    assert!(
        stdout.contains(&format!("to stream {stream} ({prefix}.>)")),
        "{stdout}"
    );
    assert!(stdout.contains("4 acknowledged (0 duplicates"), "{stdout}");

    let js = target.jetstream(&schema);
    let first = schema.runtime.block_on(async {
        let s = js
            .get_stream(stream)
            .await
            .expect("the relay created the stream");
        assert_eq!(s.cached_info().state.messages, 4);
        s.get_raw_message(1).await.expect("the first message")
    });
    assert_eq!(first.subject.as_str(), format!("{prefix}.order.{}", ids[0]));

    // The relay is a projection like any other.
    let doc = json(&schema.ok(&["projections", "status", "--json"]));
    let name = format!("relay-nats-{stream}");
    let relay_status = doc["projections"]
        .as_array()
        .expect("projections")
        .iter()
        .find(|p| p["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} in {doc}"));
    assert_eq!(relay_status["lag_events"], 0, "{doc}");
    assert_ne!(relay_status["position"], "0:0", "{doc}");

    // Again: nothing new to publish.
    let stdout = schema.ok(&relay);
    assert!(stdout.contains("0 acknowledged"), "{stdout}");

    // The sibling service reads them through a durable consumer.
    let consumer = Command::new(env!("CARGO_BIN_EXE_order-consumer"))
        .args([
            "--url",
            url,
            "--stream-name",
            stream,
            "--subject-prefix",
            prefix,
            "--durable",
            "clitest",
            "--count",
            "4",
        ])
        .output()
        .expect("order-consumer runs");
    let printed = text(&consumer.stdout);
    assert!(
        consumer.status.success(),
        "{printed}\n{}",
        text(&consumer.stderr)
    );
    assert_eq!(printed.lines().count(), 4, "{printed}");
    assert!(
        printed
            .lines()
            .next()
            .is_some_and(|l| l.starts_with(&format!("{} v1 OrderPlaced", ids[0]))),
        "{printed}"
    );

    schema
        .runtime
        .block_on(js.delete_stream(&stream))
        .expect("the test's stream is deleted");
}

#[test]
fn relay_nats_names_an_unreachable_server_and_refuses_bad_prefixes() {
    let schema = Schema::migrated();
    let out = schema.chronik(&[
        "relay",
        "nats",
        "--url",
        "nats://127.0.0.1:1",
        "--until-caught-up",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot reach NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );

    let out = schema.chronik(&[
        "relay",
        "nats",
        "--url",
        "nats://127.0.0.1:1",
        "--subject-prefix",
        "a.*",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn projections_run_and_relay_nats_refuse_a_standby_url_that_is_no_standby() {
    let schema = Schema::migrated();
    let url = database_url();
    let nats = nats_url();
    for command in [
        &["projections", "run", "orders"][..],
        &["relay", "nats", "--url", &nats][..],
    ] {
        let mut args = command.to_vec();
        args.extend(["--standby-url", &url, "--until-caught-up"]);
        let out = schema.chronik(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {stderr}");
        assert!(stderr.contains("is not a hot standby"), "{stderr}");
        assert!(!stderr.contains(&url), "the URL is never shown: {stderr}");
    }
    let out = schema.chronik(&["projections", "run", "no-such-projection"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// `chronik args...` on `url`: (exit status, stdout, stderr); it must not panic.
fn chronik_at(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("the chronik binary runs");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code(), stdout, stderr)
}

/// Issue 14, item 9: a following `tail` survives a real server restart (on a throwaway
/// cluster of its own): it says that it lost the server and retries, then that it
/// reconnected, and prints what comes next, nothing lost and nothing twice; a tail that may
/// not retry that long gives up with the last cursor and the command that resumes.
#[test]
fn tail_follows_the_feed_through_a_server_restart() {
    let replica = chronik::testkit::replica::Replica::start().expect("a primary and a standby");
    let url = replica.primary_url();
    let run = |args: &[&str]| chronik_at(&url, args);
    let append = |order: &str| {
        let data = r#"{"customer_id":"c-restart","total_amount":100}"#;
        let (code, _, stderr) = run(&["append", order, "--type", "OrderPlaced", "--data", data]);
        assert_eq!(code, Some(0), "{stderr}");
    };
    let (code, _, stderr) = run(&["migrate"]);
    assert_eq!(code, Some(0), "{stderr}");
    append("order-before-1");
    append("order-before-2");
    let tail =
        |retry_for: &str| Running::spawn(&["tail", "--retry-for", retry_for, "--limit", "3"], &url);
    let mut patient = tail("3600");
    let mut hasty = tail("1");
    patient.wait_for("following the feed after ");
    let cursor = following_cursor(&mut hasty);
    // A projection runner on the same server says the outage once, too.
    let mut runner = Running::spawn(&["projections", "run", "orders"], &url);
    runner.wait_for_stdout("running projection orders on schema ");

    replica.stop_primary().expect("the primary stops");
    assert_tail_gave_up(hasty, &cursor, 2);
    let lost = patient.wait_for(&format!("cannot read the feed after {cursor} ("));
    assert!(lost.contains("); retrying in "), "{lost}");
    let lost = runner.wait_for("projection orders cannot reach the database (");
    assert!(lost.ends_with("; retrying until it is back"), "{lost}");

    replica.start_primary().expect("the primary starts again");
    let back = patient.wait_for("reconnected after ");
    assert!(
        back.ends_with(&format!("; resuming after {cursor}")),
        "{back}"
    );
    runner.wait_for("projection orders reconnected after ");
    append("order-after");
    runner.interrupt();
    let (code, stdout, stderr) = runner.finish();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let said = |needle: &str| stderr.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(said("cannot reach the database"), 1, "{stderr}");
    assert_eq!(said("reconnected after "), 1, "{stderr}");
    assert_eq!(said("projection failing"), 0, "{stderr}");
    let (code, stdout, stderr) = patient.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let streams: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        streams,
        ["order-before-1", "order-before-2", "order-after"],
        "{stdout}"
    );
}

/// Issue 14, item 3, at the command line: a wrong password is named once, with what to
/// check, and the password is never shown. On a throwaway cluster of its own whose
/// pg_hba.conf asks one role for a password (the shared one trusts every local login).
#[test]
fn a_wrong_password_is_named_once_without_the_password() {
    let replica = chronik::testkit::replica::Replica::start().expect("a primary and a standby");
    let url = replica.primary_url();
    let role = "chronik_pw";
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await.expect("the primary");
        let hba: String = sqlx::query_scalar("SHOW hba_file")
            .fetch_one(&pool)
            .await
            .expect("its pg_hba.conf");
        let lines = [
            "local all all trust".to_owned(),
            format!("host all {role} 127.0.0.1/32 scram-sha-256"),
            "host all all 127.0.0.1/32 trust".to_owned(),
            "host replication all 127.0.0.1/32 trust".to_owned(),
        ];
        let rows: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("({i}, '{l}')"))
            .collect();
        for sql in [
            format!("CREATE ROLE {role} LOGIN PASSWORD 'the-right-one'"),
            format!(
                "COPY (SELECT line FROM (VALUES {}) AS hba(n, line) ORDER BY n) TO '{hba}'",
                rows.join(", ")
            ),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect("set up");
        }
    });
    let port = replica.primary_port();
    let wrong = format!("postgres://{role}:hunter2@127.0.0.1:{port}/postgres");
    for command in [&["doctor"][..], &["tail", "--no-follow"], &["migrate"]] {
        let (code, stdout, stderr) = chronik_at(&wrong, command);
        assert_eq!(code, Some(1), "{command:?}: {stdout}\n{stderr}");
        assert!(stderr.starts_with("error: "), "{command:?}: {stderr}");
        assert_eq!(
            stderr
                .matches(&format!(
                    "password authentication failed for user \"{role}\""
                ))
                .count(),
            1,
            "{command:?}: {stderr}"
        );
        assert!(
            stderr.contains("check the user and password"),
            "{command:?}: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{command:?}: {stderr}");
    }
    // The right one gets in.
    let right = format!("postgres://{role}:the-right-one@127.0.0.1:{port}/postgres");
    let (code, _, stderr) = chronik_at(&right, &["tail", "--no-follow"]);
    assert_eq!(code, Some(4), "not migrated, but connected: {stderr}");
}

/// Issue 14: a shadow rebuild that fails because the server went away says what it could
/// not know, not that the shadow table was dropped: its clean-up could not reach the
/// server either. Once the server is back, doctor lists the leftovers and forget removes
/// them, as the message says. On a throwaway cluster of its own, stopped under the rebuild
/// while it waits for the live checkpoint row at its swap.
#[test]
fn a_shadow_rebuild_cut_off_from_the_server_does_not_claim_it_cleaned_up() {
    let replica = chronik::testkit::replica::Replica::start().expect("a primary and a standby");
    let url = replica.primary_url();
    let run = |args: &[&str]| chronik_at(&url, args);
    let (code, _, stderr) = run(&["migrate"]);
    assert_eq!(code, Some(0), "{stderr}");
    let data = r#"{"customer_id":"c-shadow","total_amount":100}"#;
    let (code, _, stderr) = run(&[
        "append",
        "order-s1",
        "--type",
        "OrderPlaced",
        "--data",
        data,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = run(&["projections", "run", "orders", "--until-caught-up"]);
    assert_eq!(code, Some(0), "{stderr}");

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let pool = runtime
        .block_on(sqlx::PgPool::connect(&url))
        .expect("the primary");
    // The live checkpoint row, locked: the rebuild replays into its shadow, then waits here.
    let mut held = runtime.block_on(pool.begin()).expect("a transaction");
    runtime
        .block_on(
            sqlx::query(
                "SELECT 1 FROM public.projection_checkpoints WHERE name = 'orders' FOR UPDATE",
            )
            .execute(&mut *held),
        )
        .expect("locked");
    let mut rebuild = Running::spawn(&["projections", "rebuild", "orders", "--shadow"], &url);
    rebuild.wait_for("for the lock on its checkpoint row, held by ");
    replica.stop_primary().expect("the primary stops");
    let (code, _, stderr) = rebuild.finish();
    {
        // Its session is gone with the server; dropped inside the runtime.
        let _entered = runtime.enter();
        drop(held);
    }
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("the shadow table was dropped"), "{stderr}");
    assert!(
        stderr.contains(
            "whether the shadow table order_summaries__shadow and the checkpoint orders__shadow \
             were dropped is not known, the server cannot be asked ("
        ) && stderr.contains(
            "once it is back, `chronik doctor` lists what is left and `chronik projections forget \
             orders__shadow` removes them"
        ),
        "{stderr}"
    );

    replica.start_primary().expect("the primary starts again");
    let (code, stdout, _) = run(&["doctor"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("left the checkpoint orders__shadow (at ")
            && stdout.contains("and the table order_summaries__shadow behind"),
        "{stdout}"
    );
    let (code, _, stderr) = run(&["projections", "forget", "orders__shadow"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, _) = run(&["doctor"]);
    assert!(!stdout.contains("__shadow"), "{code:?} {stdout}");
}

/// `projections run --standby-url` on a throwaway primary and its hot standby: the Orders
/// read model built from the standby's feed, written to the primary; doctor and
/// `projections status` (text and JSON) list the runner with its standby's lag while it runs.
#[test]
fn projections_run_reads_the_feed_from_a_hot_standby_and_doctor_reports_its_lag() {
    let replica = chronik::testkit::replica::Replica::start().expect("a primary and a standby");
    let primary = replica.primary_url();
    let standby = replica.standby_url();
    let run = |args: &[&str]| chronik_at(&primary, args);
    let (code, _, stderr) = run(&["migrate"]);
    assert_eq!(code, Some(0), "{stderr}");
    for i in 0..3 {
        let order = format!("order-standby-{i}");
        let data = format!(r#"{{"customer_id":"c-{i}","total_amount":100}}"#);
        let (code, _, stderr) = run(&["append", &order, "--type", "OrderPlaced", "--data", &data]);
        assert_eq!(code, Some(0), "{stderr}");
    }
    let (code, stdout, stderr) = run(&[
        "projections",
        "run",
        "orders",
        "--standby-url",
        &standby,
        "--until-caught-up",
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let at = format!(
        "reading the feed from the hot standby at 127.0.0.1:{}",
        replica.standby_port()
    );
    assert!(stdout.contains(&at), "{stdout}");
    assert!(stdout.contains("3 events processed in all"), "{stdout}");

    // The relay reads the feed from the standby too.
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let stream = format!("CLITEST_S{tag}");
    let (code, stdout, stderr) = run(&[
        "relay",
        "nats",
        "--url",
        &nats_url(),
        "--stream-name",
        &stream,
        "--subject-prefix",
        &format!("clitest.s{tag}"),
        "--standby-url",
        &standby,
        "--until-caught-up",
    ]);
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(async {
            if let Ok(client) = chronik::relay::async_nats::connect(nats_url().as_str()).await {
                let js = chronik::relay::async_nats::jetstream::new(client);
                let _ = js.delete_stream(&stream).await;
            }
        });
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let from = format!(
        "from the hot standby at 127.0.0.1:{}",
        replica.standby_port()
    );
    assert!(stdout.contains(&from), "{stdout}");
    assert!(stdout.contains("3 events relayed in all"), "{stdout}");

    // While a runner follows the standby, doctor reports its replication lag.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(["projections", "run", "orders", "--standby-url", &standby])
        .env("DATABASE_URL", &primary)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the chronik binary runs");
    let line = format!("orders reads 127.0.0.1:{}: ", replica.standby_port());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let report = loop {
        let (_, stdout, _) = run(&["doctor", "--max-horizon-age", "3600"]);
        if stdout.contains(&line) && stdout.contains("of WAL behind") {
            break stdout;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "doctor never listed the runner:\n{stdout}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // So does `projections status`, as text and as JSON, from the same measure.
    let (code, status, stderr) = run(&["projections", "status"]);
    let (json_code, status_json, json_stderr) = run(&["projections", "status", "--json"]);
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        report.contains("1 runner reading the feed from a hot standby"),
        "{report}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        status.contains(&format!("hot standby: {line}")) && status.contains("of WAL behind"),
        "{status}"
    );
    assert_eq!(json_code, Some(0), "{json_stderr}");
    let doc: serde_json::Value = serde_json::from_str(&status_json).expect("one JSON object");
    let standbys = doc["standbys"].as_array().expect("a standbys array");
    assert_eq!(standbys.len(), 1, "{doc}");
    assert_eq!(standbys[0]["projection"], "orders", "{doc}");
    assert_eq!(
        standbys[0]["standby"],
        format!("127.0.0.1:{}", replica.standby_port()),
        "{doc}"
    );
    assert!(standbys[0]["lag_bytes"].is_u64(), "{doc}");
    assert_eq!(standbys[0]["paused"], false, "{doc}");
}

/// While it follows the feed, `relay nats` listens for the notifications writers send after
/// their commits (`--listen`, default `chronik_feed`), on a session of its own.
#[test]
fn relay_nats_listens_for_notifications_while_it_follows_the_feed() {
    let schema = Schema::migrated();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let channel = format!("clitest_wake_{tag}");
    let stream = format!("CLITEST_W{tag}");
    let url = nats_url();
    let mut relay = Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(["relay", "nats", "--url", &url, "--stream-name", &stream])
        .args([
            "--subject-prefix",
            &format!("clitest.w{tag}"),
            "--listen",
            &channel,
        ])
        .args(["--schema", &schema.name])
        .env("DATABASE_URL", database_url())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the chronik binary runs");
    let listening = schema.runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%LISTEN%' || $1 || '%'",
            )
            .bind(&channel)
            .fetch_one(schema.store.pool())
            .await
            .expect("pg_stat_activity is readable");
            if n > 0 || tokio::time::Instant::now() >= deadline {
                return n > 0;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    let _ = relay.kill();
    let _ = relay.wait();
    schema.runtime.block_on(async {
        let js = chronik::relay::async_nats::jetstream::new(
            chronik::relay::async_nats::connect(url.as_str())
                .await
                .expect("NATS runs"),
        );
        let _ = js.delete_stream(&stream).await;
    });
    assert!(listening, "no session LISTENs on {channel}");
}

/// Issue 14: Ctrl-C on a following `tail` stops it at once with status 130, saying how many
/// events it printed and the cursor to resume after; resuming there loses and repeats
/// nothing. (It was killed by the signal, saying nothing.)
#[test]
fn ctrl_c_stops_tail_with_the_cursor_to_resume_after() {
    let schema = Schema::migrated();
    schema.place_orders(2);
    let mut tail = schema.spawn(&["tail"]);
    tail.wait_for("following the feed after ");
    tail.interrupt();
    let (code, stdout, stderr) = tail.finish();
    assert_eq!(code, Some(130), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    let last = lines[3].split_whitespace().next().expect("a cursor");
    assert!(
        stderr.ends_with(&format!(
            "error: tail was stopped by Ctrl-C after 4 events: the last cursor is {last}; resume \
             with `chronik tail --after {last}`"
        )),
        "{stderr}"
    );
    let placed = schema.place_orders(1);
    let resumed = schema.ok(&["tail", "--no-follow", "--after", last]);
    assert_eq!(resumed.lines().count(), 2, "{resumed}");
    assert!(
        resumed.contains(&format!(" {} v1 OrderPlaced ", placed[0])),
        "{resumed}"
    );
}

/// Issue 14: Ctrl-C right after `projections run` says it started stops the runner (status
/// 0, its documented stop) at the checkpoint it reports, and leaves the projection free for
/// the next run. It listens before the start line: a Ctrl-C that came before its first wait
/// killed it without the line.
#[test]
fn ctrl_c_stops_projections_run_at_the_checkpoint_it_reports() {
    let schema = Schema::migrated();
    schema.place_orders(2);
    let mut run = schema.spawn(&["projections", "run", "orders"]);
    run.wait_for_stdout("running projection orders on schema ");
    run.interrupt();
    let (code, stdout, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let stopped = stdout
        .lines()
        .find_map(|l| l.strip_prefix("stopped at "))
        .unwrap_or_else(|| panic!("no stopped-at line:\n{stdout}\n{stderr}"));
    let at = stopped.split(':').take(2).collect::<Vec<_>>().join(":");
    let doc = json(&schema.ok(&["projections", "status", "--json"]));
    let orders = doc["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "orders"));
    match orders {
        Some(p) => assert_eq!(p["position"], at.as_str(), "{doc}"),
        // Stopped before its first batch: no checkpoint yet.
        None => assert_eq!(at, "0:0", "{doc}"),
    }
    // Nothing left held: the next run takes the projection and catches up.
    let stdout = schema.ok(&["projections", "run", "orders", "--until-caught-up"]);
    assert!(stdout.contains("stopped at "), "{stdout}");
    assert_eq!(schema.rows("order_summaries"), 2);
}

/// Issue 14: Ctrl-C stops a following `relay nats` (status 0) at the checkpoint it reports.
#[test]
fn ctrl_c_stops_relay_nats_at_the_checkpoint_it_reports() {
    let schema = Schema::migrated();
    schema.place_orders(1);
    let target = TestStream::new();
    let mut relay = schema.spawn(&target.relay_args());
    relay.wait_for_stdout("relaying schema ");
    relay.interrupt();
    let (code, stdout, stderr) = relay.finish();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("stopped at ") && stdout.contains(" events relayed in all"),
        "{stdout}\n{stderr}"
    );
    let js = target.jetstream(&schema);
    // Created before it was stopped (or not at all, when stopped first).
    let _ = schema.runtime.block_on(js.delete_stream(&target.stream));
}

/// Issue 14: Ctrl-C stops the console (status 0) even while a live tail is open: the tail's
/// event stream never ends by itself, and the graceful shutdown waited for it forever.
#[test]
fn ctrl_c_stops_the_console_with_a_live_tail_open() {
    use std::io::{BufRead as _, Write as _};
    let schema = Schema::migrated();
    let mut console = schema.spawn(&["console", "--listen", "127.0.0.1:0"]);
    let line = console.wait_for_stdout("console listening on http://");
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("an address")
        .to_owned();
    let mut live = std::net::TcpStream::connect(&address).expect("the console accepts");
    write!(
        live,
        "GET /api/tail HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("the request is sent");
    let mut status = String::new();
    std::io::BufReader::new(live.try_clone().expect("a clone"))
        .read_line(&mut status)
        .expect("a status line");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    console.interrupt();
    console.wait_for("interrupted: stopping the console: its live tails are ended");
    console.wait_for_stdout(&format!("console on http://{address}/ stopped"));
    let (code, stdout, stderr) = console.finish();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
}

/// Issue 14: Ctrl-C stops the demo at once with status 130, saying what stays (on
/// PostgreSQL: its events; its one-off checkpoints are removed, so `doctor` finds none of
/// them). It was killed by the signal, leaving the reactor's checkpoint when it came in
/// the last step.
#[test]
fn ctrl_c_stops_the_demo_saying_what_stays() {
    let mut memory = Running::spawn(&["demo", "--orders", "100000"], "");
    memory.wait_for_stdout("[1/8] placing orders from concurrent tasks");
    memory.interrupt();
    let (code, _, stderr) = memory.finish();
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(
        stderr,
        "error: the demo was stopped by Ctrl-C: its in-memory store is gone with it"
    );

    let mut pg = Running::spawn(&["demo", "--orders", "100000"], &database_url());
    pg.wait_for_stdout("[1/8] placing orders from concurrent tasks");
    pg.interrupt();
    let (code, _, stderr) = pg.finish();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.starts_with("error: the demo was stopped by Ctrl-C: the events it wrote stay in schema public of ")
            && stderr.contains(" (events are never deleted) and ")
            && stderr.ends_with(
                "; `chronik projections run orders --until-caught-up` brings the orders read model up to date"
            ),
        "{stderr}"
    );
    assert_no_demo_checkpoints();
}
