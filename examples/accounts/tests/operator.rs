//! The accounts service's own operator binary (`accounts-admin`) on its own data, on
//! PostgreSQL: `migrate` (chronik's migrations and the service's table), `projections
//! rebuild` and `status`, `streams list | show`, `tail` through the service's upcaster,
//! `snapshots take`, and bad input refused with its own exit status, writing nothing.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::{Command, Output};
use std::sync::Arc;

use accounts::{Account, AccountCommand, AccountError, Balances};
use chronik::postgres::sqlx;
use chronik::{
    Aggregate as _, EventId, EventStore as _, EventType, ExpectedVersion, Metadata, NewEvent,
    PgEventStore, PgStoreConfig, Repository, RepositoryError, SchemaName, Upcasting, Uuid,
};
use serde_json::{Value, json};

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Runs `accounts-admin args... --schema schema` against the test database.
fn admin(schema: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accounts-admin"))
        .args(args)
        .args(["--schema", schema])
        .env("DATABASE_URL", database_url())
        .env_remove("RUST_LOG")
        .output()
        .expect("accounts-admin runs")
}

/// stdout of a command that must succeed.
fn ok(schema: &str, args: &[&str]) -> String {
    let out = admin(schema, args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// (exit code, stderr) of a command that must fail.
fn refused(schema: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = admin(schema, args);
    assert!(!out.status.success(), "{args:?} succeeded");
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_operator_binary_rebuilds_and_shows_its_own_data() {
    let schema = format!("acct_{}", Uuid::new_v4().simple());
    let store = PgEventStore::connect_with(
        &database_url(),
        PgStoreConfig::with_schema(SchemaName::new(schema.clone()).unwrap()),
    )
    .await
    .unwrap();

    // Before `migrate`: every store-reading command says what to run, with status 4.
    for args in [
        &["streams", "list"][..],
        &["projections", "status"],
        &["tail", "--no-follow"],
        &["projections", "rebuild", "balances"],
    ] {
        let (code, stderr) = refused(&schema, args);
        assert_eq!(code, Some(4), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("run `accounts-admin migrate --schema {schema}`")),
            "{stderr}"
        );
    }
    // Bad input: status 2, before the database is touched.
    let (code, stderr) = refused(&schema, &["projections", "rebuild", "orders"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("[possible values: balances]"), "{stderr}");
    let (code, stderr) = refused(&schema, &["snapshots", "take", "order-1"]);
    assert_eq!(code, Some(4), "the schema check comes first: {stderr}");
    assert!(
        store.migration_status().await.unwrap().applied.is_empty(),
        "nothing was migrated or written"
    );

    let migrated = ok(&schema, &["migrate"]);
    assert!(
        migrated.contains("read models: account_balances"),
        "{migrated}"
    );

    // The service at work: two accounts, a transfer, a refused overdraft, and an account
    // opened long ago at schema v1 (`holder`), read through the upcaster.
    let registry = Arc::new(accounts::upcasters().unwrap());
    let repo = Repository::<Account, _>::new(Upcasting::new(store.clone(), registry));
    let (a, b, legacy) = (
        Account::stream_id("a-1").unwrap(),
        Account::stream_id("a-2").unwrap(),
        Account::stream_id("legacy").unwrap(),
    );
    repo.execute(
        &a,
        AccountCommand::Open {
            owner: "ann".into(),
        },
    )
    .await
    .unwrap();
    repo.execute(
        &a,
        AccountCommand::Credit {
            amount: 500,
            transfer: None,
        },
    )
    .await
    .unwrap();
    repo.execute(
        &b,
        AccountCommand::Open {
            owner: "bob".into(),
        },
    )
    .await
    .unwrap();
    let transfer = Some("t-1".to_owned());
    repo.execute(
        &a,
        AccountCommand::Debit {
            amount: 200,
            transfer: transfer.clone(),
        },
    )
    .await
    .unwrap();
    repo.execute(
        &b,
        AccountCommand::Credit {
            amount: 200,
            transfer,
        },
    )
    .await
    .unwrap();
    let overdraft = repo
        .execute(
            &b,
            AccountCommand::Debit {
                amount: 1_000,
                transfer: None,
            },
        )
        .await;
    assert!(
        matches!(
            overdraft,
            Err(RepositoryError::Domain(AccountError::InsufficientFunds {
                balance: 200,
                ..
            }))
        ),
        "{overdraft:?}"
    );
    let v1 = NewEvent::new(
        EventId::new(Uuid::new_v4()).unwrap(),
        EventType::new("AccountOpened").unwrap(),
        1,
        json!({ "holder": "old" }),
        Metadata::default(),
    )
    .unwrap();
    store
        .append(&legacy, ExpectedVersion::NoStream, &[v1])
        .await
        .unwrap();
    repo.execute(
        &legacy,
        AccountCommand::Credit {
            amount: 7,
            transfer: None,
        },
    )
    .await
    .unwrap();

    // Its operator binary rebuilds its read model from its events.
    let rebuilt = ok(&schema, &["projections", "rebuild", "balances"]);
    assert!(
        rebuilt.contains("rebuilt projection balances")
            && rebuilt.contains("account_balances now holds 3 rows"),
        "{rebuilt}"
    );
    let rows = Balances::new(store.schema())
        .all(store.pool())
        .await
        .unwrap();
    assert_eq!(
        rows,
        [
            ("account-a-1".to_owned(), "ann".to_owned(), 300, true, 3),
            ("account-a-2".to_owned(), "bob".to_owned(), 200, true, 2),
            ("account-legacy".to_owned(), "old".to_owned(), 7, true, 2),
        ]
    );
    let shadow: Value = serde_json::from_str(&ok(
        &schema,
        &["projections", "rebuild", "balances", "--shadow", "--json"],
    ))
    .unwrap();
    assert_eq!(
        (shadow["rows"].clone(), shadow["shadow"].clone()),
        (json!(3), json!(true))
    );

    let status: Value =
        serde_json::from_str(&ok(&schema, &["projections", "status", "--json"])).unwrap();
    let balances = status["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "balances")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(balances["lag_events"], 0, "{balances}");

    let listed: Value = serde_json::from_str(&ok(
        &schema,
        &["streams", "list", "--category", "account", "--json"],
    ))
    .unwrap();
    assert_eq!(
        listed["streams"],
        json!([
            { "stream_id": "account-a-1", "category": "account", "version": 3 },
            { "stream_id": "account-a-2", "category": "account", "version": 2 },
            { "stream_id": "account-legacy", "category": "account", "version": 2 },
        ])
    );

    // `streams show` prints what is stored (v1); `tail` reads through the upcaster (v2).
    let shown = ok(&schema, &["streams", "show", "account-legacy", "--json"]);
    let stored: Vec<Value> = shown
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(stored.len(), 2, "{shown}");
    assert_eq!(
        (&stored[0]["schema_version"], &stored[0]["payload"]),
        (&json!(1), &json!({ "holder": "old" }))
    );
    let table = ok(&schema, &["streams", "show", "account-a-1", "--from", "3"]);
    assert!(
        table.contains("Debited") && table.contains("t-1") && !table.contains("Credited"),
        "{table}"
    );
    let tailed = ok(
        &schema,
        &["tail", "--no-follow", "--type", "AccountOpened", "--json"],
    );
    let opened: Vec<Value> = tailed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let old = opened
        .iter()
        .find(|e| e["stream_id"] == "account-legacy")
        .unwrap_or_else(|| panic!("{tailed}"));
    assert_eq!(
        (&old["schema_version"], &old["payload"]),
        (&json!(2), &json!({ "owner": "old" }))
    );

    let taken = ok(&schema, &["snapshots", "take", "account-a-1"]);
    assert!(taken.contains("taken at version 3"), "{taken}");
    let (code, stderr) = refused(&schema, &["snapshots", "take", "order-1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("streams of category `account` only"),
        "{stderr}"
    );
    let (code, stderr) = refused(&schema, &["streams", "show", "account-nope"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("stream account-nope has no events"),
        "{stderr}"
    );

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(store.pool())
    .await
    .unwrap();
}
