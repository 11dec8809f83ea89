//! The test aggregate several PostgreSQL test binaries share: a running total of the
//! numbers it is commanded to add, whose snapshot state holds that number (`total`), so a
//! state that does not decode is one with text there.

use chronik_core::{Aggregate, DomainEvent, SnapshotState};

#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub total: i64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, DomainEvent)]
#[serde(tag = "type", content = "data")]
pub enum TallyEvent {
    Added { n: i64 },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = i64;
    type Event = TallyEvent;
    type Error = Never;

    fn handle(&self, n: &i64) -> Result<Vec<TallyEvent>, Never> {
        Ok(vec![TallyEvent::Added { n: *n }])
    }

    fn apply(&mut self, TallyEvent::Added { n }: &TallyEvent) {
        self.total += n;
    }
}

impl SnapshotState for Tally {
    const STATE_SCHEMA_VERSION: u32 = 1;

    fn to_state(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    fn from_state(state: serde_json::Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(state)
    }
}
