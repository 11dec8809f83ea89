//! Transfers between accounts: one atomic multi-stream append each, on the in-memory
//! store and on PostgreSQL. A refused debit writes nothing on either account; concurrent
//! transfers over a few hot accounts all succeed or give up with the typed error, and the
//! final balances are what applying the successes one after another gives; every event of
//! a transfer carries the command's correlation and causation ids.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use accounts::{Account, AccountCommand, AccountError, transfer};
use chronik::{
    Aggregate as _, CorrelationId, EventStore, MemoryStore, Metadata, PgEventStore, PgStoreConfig,
    RecordedEvent, Repository, RepositoryError, RetryPolicy, SchemaName, StoreError, StreamId,
    Uuid, Version,
};
use futures::TryStreamExt as _;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn postgres() -> (PgEventStore, String) {
    let schema = format!("acct_tr_{}", Uuid::new_v4().simple());
    let store = PgEventStore::connect_with(
        &database_url(),
        PgStoreConfig {
            max_connections: 16,
            ..PgStoreConfig::with_schema(SchemaName::new(schema.clone()).unwrap())
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    (store, schema)
}

async fn drop_schema(store: &PgEventStore, schema: &str) {
    chronik::postgres::sqlx::query(chronik::postgres::sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(store.pool())
    .await
    .unwrap();
}

async fn events<S: EventStore>(store: &S, id: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(id, Version::ZERO)
        .try_collect()
        .await
        .unwrap()
}

async fn open<S: EventStore>(
    accounts: &Repository<Account, S>,
    owner: &str,
    cents: i64,
) -> StreamId {
    let id = Account::stream_id(format!("{owner}-{}", Uuid::new_v4().simple())).unwrap();
    accounts
        .execute(
            &id,
            AccountCommand::Open {
                owner: owner.to_owned(),
            },
        )
        .await
        .unwrap();
    if cents > 0 {
        accounts
            .execute(
                &id,
                AccountCommand::Credit {
                    amount: cents,
                    transfer: None,
                },
            )
            .await
            .unwrap();
    }
    id
}

async fn balance<S: EventStore>(accounts: &Repository<Account, S>, id: &StreamId) -> i64 {
    accounts.load(id).await.unwrap().state.balance
}

/// A transfer debits and credits in one transaction, with one correlation and causation;
/// a refused debit (insufficient funds) writes nothing on either account.
async fn a_transfer_is_all_or_nothing<S: EventStore>(store: S) {
    let accounts = Repository::<Account, _>::new(store);
    let (alice, bob) = (
        open(&accounts, "alice", 100).await,
        open(&accounts, "bob", 0).await,
    );
    let outcome = transfer(&accounts, &alice, &bob, 30, "t-1", Metadata::default())
        .await
        .unwrap();
    assert_eq!(outcome.events_written, [1, 1]);
    assert_eq!(
        outcome.appends[0].cursor.transaction(),
        outcome.appends[1].cursor.transaction()
    );
    assert_eq!(
        (
            balance(&accounts, &alice).await,
            balance(&accounts, &bob).await
        ),
        (70, 30)
    );
    let (debit, credit) = (
        events(accounts.store(), &alice).await.pop().unwrap(),
        events(accounts.store(), &bob).await.pop().unwrap(),
    );
    assert_eq!(
        debit.metadata.correlation_id,
        credit.metadata.correlation_id
    );
    assert_eq!(debit.metadata.causation_id, credit.metadata.causation_id);
    assert!(
        debit.metadata.correlation_id.is_some(),
        "a new chain gets a correlation id"
    );
    assert_eq!(
        debit.metadata.correlation_id.map(|c| c.as_uuid()),
        debit.metadata.causation_id.map(|c| c.as_uuid()),
        "a command that starts a chain is its own correlation"
    );

    let before = (
        events(accounts.store(), &alice).await.len(),
        events(accounts.store(), &bob).await.len(),
    );
    let given = CorrelationId::new(Uuid::new_v4());
    let refused = transfer(
        &accounts,
        &alice,
        &bob,
        500,
        "t-2",
        Metadata::default().with_correlation(given),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(RepositoryError::Domain(AccountError::InsufficientFunds {
                balance: 70,
                amount: 500
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(
        (
            events(accounts.store(), &alice).await.len(),
            events(accounts.store(), &bob).await.len()
        ),
        before,
        "nothing written on either account"
    );
    let same = transfer(&accounts, &alice, &alice, 1, "t-3", Metadata::default()).await;
    assert!(
        matches!(
            same,
            Err(RepositoryError::Store(StoreError::InvalidRequest(_)))
        ),
        "{same:?}"
    );
    // A given correlation is kept.
    transfer(
        &accounts,
        &bob,
        &alice,
        5,
        "t-4",
        Metadata::default().with_correlation(given),
    )
    .await
    .unwrap();
    assert_eq!(
        events(accounts.store(), &bob)
            .await
            .pop()
            .unwrap()
            .metadata
            .correlation_id,
        Some(given)
    );
}

/// 12 tasks move money between three hot accounts in both directions at once: every
/// transfer succeeds or gives up with `RetriesExhausted` (keeping the last `Conflicts`),
/// nothing is ever half-done, and the balances are what applying the successful
/// transfers one after another gives.
async fn concurrent_transfers_keep_the_books<S: EventStore + Clone + 'static>(store: S) -> u32 {
    let accounts = Arc::new(
        Repository::<Account, _>::new(store).with_retry(
            RetryPolicy::new(
                8,
                std::time::Duration::from_millis(1),
                std::time::Duration::from_millis(20),
            )
            .unwrap(),
        ),
    );
    let ids = Arc::new(vec![
        open(&accounts, "a", 1_000).await,
        open(&accounts, "b", 1_000).await,
        open(&accounts, "c", 1_000).await,
    ]);
    let handles: Vec<_> = (0..12usize)
        .map(|t| {
            let (accounts, ids) = (accounts.clone(), ids.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                for i in 0..8usize {
                    let (from, to) = ((t + i) % 3, (t + i + 1 + t % 2) % 3);
                    let amount = 1 + ((t * 7 + i) % 13) as i64;
                    match transfer(
                        &accounts,
                        &ids[from],
                        &ids[to],
                        amount,
                        &format!("{t}-{i}"),
                        Metadata::default(),
                    )
                    .await
                    {
                        Ok(outcome) => done.push((from, to, amount, outcome.conflicts)),
                        Err(RepositoryError::RetriesExhausted { last, .. }) => {
                            assert!(matches!(last, StoreError::Conflicts { .. }), "{last}");
                        }
                        Err(e) => panic!("transfer {t}-{i}: {e}"),
                    }
                }
                done
            })
        })
        .collect();
    let mut expected = [1_000_i64; 3];
    let (mut successes, mut conflicts) = (0, 0);
    for h in handles {
        for (from, to, amount, c) in h.await.unwrap() {
            expected[from] -= amount;
            expected[to] += amount;
            successes += 1;
            conflicts += c;
        }
    }
    let mut actual = [0_i64; 3];
    for (slot, id) in actual.iter_mut().zip(ids.iter()) {
        *slot = balance(&accounts, id).await;
    }
    assert_eq!(
        actual, expected,
        "{successes} transfers, {conflicts} conflicts retried"
    );
    assert_eq!(
        actual.iter().sum::<i64>(),
        3_000,
        "money is neither made nor lost"
    );
    assert!(successes > 0);
    // Every debit has its credit, by transfer id.
    let mut debits = std::collections::BTreeMap::new();
    for id in ids.iter() {
        for e in events(accounts.store(), id).await {
            let typed = <accounts::AccountEvent as chronik::DomainEvent>::from_payload(
                e.event_type.as_str(),
                e.payload.clone(),
            )
            .unwrap();
            match typed {
                accounts::AccountEvent::Debited {
                    transfer: Some(t),
                    amount,
                } => *debits.entry(t).or_insert(0) += amount,
                accounts::AccountEvent::Credited {
                    transfer: Some(t),
                    amount,
                } => *debits.entry(t).or_insert(0) -= amount,
                _ => {}
            }
        }
    }
    assert!(
        debits.values().all(|&v| v == 0),
        "a debit without its credit: {debits:?}"
    );
    conflicts
}

#[tokio::test]
async fn a_transfer_is_all_or_nothing_in_memory() {
    a_transfer_is_all_or_nothing(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_is_all_or_nothing_on_postgres() {
    let (store, schema) = postgres().await;
    a_transfer_is_all_or_nothing(store.clone()).await;
    drop_schema(&store, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_keep_the_books_in_memory() {
    concurrent_transfers_keep_the_books(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_keep_the_books_on_postgres() {
    let (store, schema) = postgres().await;
    let conflicts = concurrent_transfers_keep_the_books(store.clone()).await;
    drop_schema(&store, &schema).await;
    assert!(
        conflicts > 0,
        "the race must really happen: 12 tasks over 3 accounts"
    );
}
