//! Define an aggregate, execute commands through the Repository on the in-memory store.
use chronik_core::{Aggregate, DomainEvent, Metadata, decode_event, encode_event};
use chronik_memory::MemoryStore;
use chronik_store::{Repository, RepositoryError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum CounterEvent {
    Incremented { by: u32 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> &'static str {
        "Incremented"
    }
    fn to_payload(&self) -> Result<Value, serde_json::Error> {
        encode_event(self)
    }
    fn from_payload(event_type: &str, payload: Value) -> Result<Self, serde_json::Error> {
        decode_event(event_type, payload)
    }
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let repo = Repository::<Counter, _>::new(MemoryStore::new());
    let id = Repository::<Counter, MemoryStore>::stream_id("kitchen")?;
    repo.execute(&id, &4, &Metadata::default()).await?;
    repo.execute(&id, &5, &Metadata::default()).await?;
    let refused = repo.execute(&id, &2, &Metadata::default()).await;
    assert!(matches!(refused, Err(RepositoryError::Domain(TooHigh))));
    let counter = repo.load(&id).await?;
    assert_eq!((counter.state.value, counter.version.get()), (9, 2));
    println!(
        "{id} is at {} after {} events",
        counter.state.value, counter.version
    );
    Ok(())
}
