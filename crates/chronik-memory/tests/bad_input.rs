//! Bad input on the in-memory reference model: every refused append leaves the streams
//! and the feed exactly as they were, and hostile but valid events round-trip. The same
//! checks run on PostgreSQL (`crates/chronik-postgres/tests/bad_input.rs`).
//!
//! Case counts: 512 refused appends, 256 hostile round trips.

use chronik_memory::MemoryStore;
use chronik_testkit::strategies::{
    bad_append, check_hostile_events_round_trip, check_rejected_append_changes_nothing,
    hostile_event, hostile_stream_id, new_event,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
}

#[test]
fn refused_appends_change_nothing() {
    let rt = runtime();
    let mut runner = TestRunner::new(Config::with_cases(512));
    runner
        .run(
            &(prop::collection::vec(new_event(), 0..6), bad_append()),
            |(history, bad)| {
                rt.block_on(check_rejected_append_changes_nothing(
                    MemoryStore::new(),
                    history,
                    bad,
                ));
                Ok(())
            },
        )
        .expect("refused appends change nothing");
}

#[test]
fn hostile_events_round_trip() {
    let rt = runtime();
    let mut runner = TestRunner::new(Config::with_cases(256));
    runner
        .run(
            &(
                hostile_stream_id(),
                prop::collection::vec(hostile_event(), 1..5),
            ),
            |(stream, events)| {
                rt.block_on(check_hostile_events_round_trip(
                    MemoryStore::new(),
                    stream,
                    events,
                ));
                Ok(())
            },
        )
        .expect("hostile events round-trip");
}
