//! The README's example: `cargo run -p chronik --example quickstart` (in memory), or with
//! `DATABASE_URL=postgres://...` set, on PostgreSQL.
use chronik::{
    Aggregate, DomainEvent, EventStore, MemoryStore, PgEventStore, PgStoreConfig, Repository,
    RepositoryError, Uuid,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", content = "data")] // stored as type `Incremented`, payload `{"by": n}`
enum CounterEvent {
    Incremented { by: u32 },
}

#[derive(Debug, thiserror::Error)]
#[error("a counter never goes past 10")]
struct TooHigh;

#[derive(Debug, Default)]
struct Counter {
    value: u32,
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter"; // streams are named `counter-<id>`
    type Command = u32; // "increment by n"
    type Event = CounterEvent;
    type Error = TooHigh;

    fn handle(&self, by: &u32) -> Result<Vec<CounterEvent>, TooHigh> {
        match self.value.checked_add(*by) {
            Some(v) if v <= 10 => Ok(vec![CounterEvent::Incremented { by: *by }]),
            _ => Err(TooHigh),
        }
    }

    fn apply(&mut self, CounterEvent::Incremented { by }: &CounterEvent) {
        self.value += by;
    }
}

async fn count<S: EventStore>(store: S) -> anyhow::Result<()> {
    let repo: Repository<Counter, S> = Repository::new(store); // retries conflicts, with backoff
    let id = Counter::stream_id(Uuid::new_v4())?; // `counter-<uuid>`
    repo.execute(&id, 4).await?;
    repo.execute(&id, 5).await?;
    let refused = repo.execute(&id, 2).await;
    assert!(matches!(refused, Err(RepositoryError::Domain(TooHigh))));
    let counter = repo.load(&id).await?;
    assert_eq!((counter.state.value, counter.version.get()), (9, 2));
    println!(
        "{id} is at {} after {} events",
        counter.state.value, counter.version
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let config = PgStoreConfig::default().with_max_connections(10); // the pool
            let store = PgEventStore::connect_with(&url, config).await?;
            store.migrate().await?; // creates or upgrades the tables; idempotent
            count(store).await
        }
        Err(_) => count(MemoryStore::new()).await,
    }
}
