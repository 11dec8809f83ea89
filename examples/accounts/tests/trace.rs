//! `accounts-admin trace`: a transfer (one command, two streams) and a reaction to its
//! debit (a fee, recorded with `Metadata::caused_by`) print as one causation tree; the
//! ids recorded at every step are the ones the tree is built from.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::{Command, Output};

use accounts::{Account, AccountCommand, transfer};
use chronik::{
    Aggregate as _, EventStore as _, Metadata, PgEventStore, PgStoreConfig, RecordedEvent,
    Repository, SchemaName, StreamId, Uuid, Version,
};
use futures::TryStreamExt as _;
use serde_json::Value;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn admin(schema: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accounts-admin"))
        .args(args)
        .args(["--schema", schema])
        .env("DATABASE_URL", database_url())
        .env_remove("RUST_LOG")
        .output()
        .expect("accounts-admin runs")
}

async fn last(store: &PgEventStore, id: &StreamId) -> RecordedEvent {
    let events: Vec<RecordedEvent> = store
        .read_stream(id, Version::ZERO)
        .try_collect()
        .await
        .unwrap();
    events.last().cloned().unwrap()
}

/// The tree lines without their time and cursor (which differ per run), indentation kept.
fn shape(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| {
            let rest = l.trim_start();
            let indent = l.len() - rest.len();
            format!(
                "{}{}",
                " ".repeat(indent),
                rest.split("  ").next().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_and_its_reaction_trace_as_one_tree() {
    let schema = format!("acct_trace_{}", Uuid::new_v4().simple());
    let store = PgEventStore::connect_with(
        &database_url(),
        PgStoreConfig::with_schema(SchemaName::new(schema.clone()).unwrap()),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let accounts = Repository::<Account, _>::new(store.clone());
    let open = |name: &'static str| {
        let accounts = &accounts;
        async move {
            let id = Account::stream_id(name).unwrap();
            accounts
                .execute(
                    &id,
                    AccountCommand::Open {
                        owner: name.to_owned(),
                    },
                )
                .await
                .unwrap();
            id
        }
    };
    let (alice, bob, fees) = (open("alice").await, open("bob").await, open("fees").await);
    accounts
        .execute(
            &alice,
            AccountCommand::Credit {
                amount: 100,
                transfer: None,
            },
        )
        .await
        .unwrap();

    // The command: a transfer, two streams, one command id.
    transfer(&accounts, &alice, &bob, 40, "t-1", Metadata::default())
        .await
        .unwrap();
    let debit = last(&store, &alice).await;
    let credit = last(&store, &bob).await;
    let correlation = debit.metadata.correlation_id.unwrap();
    assert_eq!(credit.metadata.correlation_id, Some(correlation));
    assert_eq!(debit.metadata.causation_id, credit.metadata.causation_id);
    assert_eq!(
        debit.metadata.causation_id.map(|c| c.as_uuid()),
        Some(correlation.as_uuid()),
        "a command that starts a chain: causation = correlation = the command's id"
    );

    // A reaction to the debit: a fee, caused by the debit event, in the same chain; and a
    // reaction to the fee (a second level).
    accounts
        .execute_with(
            &fees,
            AccountCommand::Credit {
                amount: 1,
                transfer: None,
            },
            Metadata::caused_by(&debit),
        )
        .await
        .unwrap();
    let fee = last(&store, &fees).await;
    assert_eq!(fee.metadata.correlation_id, Some(correlation));
    assert_eq!(
        fee.metadata.causation_id.map(|c| c.as_uuid()),
        Some(debit.event_id.as_uuid())
    );
    accounts
        .execute_with(
            &alice,
            AccountCommand::Debit {
                amount: 1,
                transfer: None,
            },
            Metadata::caused_by(&fee),
        )
        .await
        .unwrap();

    let out = admin(&schema, &["trace", &correlation.to_string()]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        shape(&stdout),
        [
            format!("correlation {correlation}: 4 events in 3 streams"),
            format!("command {correlation}"),
            "  account-alice v3 Debited".to_owned(),
            "    account-fees v2 Credited".to_owned(),
            "      account-alice v4 Debited".to_owned(),
            "  account-bob v2 Credited".to_owned(),
        ],
        "{stdout}"
    );

    // --event finds the chain from any of its events and marks it.
    let out = admin(&schema, &["trace", "--event", &fee.event_id.to_string()]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("    account-fees v2 Credited") && l.ends_with("<- this event")),
        "{stdout}"
    );

    // --json: the same tree, with depth and parent.
    let out = admin(&schema, &["trace", &correlation.to_string(), "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes: Vec<(u64, String, Value)> = doc["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["depth"].as_u64().unwrap(),
                n["stream_id"].as_str().unwrap().to_owned(),
                n["parent"].clone(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [
            (1, "account-alice".to_owned(), Value::Null),
            (
                2,
                "account-fees".to_owned(),
                Value::String(debit.event_id.to_string())
            ),
            (
                3,
                "account-alice".to_owned(),
                Value::String(fee.event_id.to_string())
            ),
            (1, "account-bob".to_owned(), Value::Null),
        ]
    );

    // Bad input: an unknown correlation (3), a malformed id (2), neither or both (2).
    let out = admin(&schema, &["trace", &Uuid::new_v4().to_string()]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no committed event has correlation id"));
    assert_eq!(
        admin(&schema, &["trace", "not-a-uuid"]).status.code(),
        Some(2)
    );
    assert_eq!(admin(&schema, &["trace"]).status.code(), Some(2));
    let out = admin(&schema, &["trace", "--event", &Uuid::new_v4().to_string()]);
    assert_eq!(out.status.code(), Some(3));

    chronik::postgres::sqlx::query(chronik::postgres::sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(store.pool())
    .await
    .unwrap();
}
