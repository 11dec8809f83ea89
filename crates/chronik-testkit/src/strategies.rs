//! proptest strategies for chronik values and for Orders histories, and the generic
//! law checks that every adapter runs with them.

use chronik_core::{Aggregate, EventId, EventType, Metadata, NewEvent, StreamId, Version};
use chronik_store::Repository;
use proptest::prelude::*;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::conformance::Store;
use crate::orders::{Order, OrderCommand, OrderEvent};

/// Valid stream ids: a category, a dash and an id of safe characters.
pub fn stream_id() -> impl Strategy<Value = StreamId> {
    ("[a-z]{1,8}", "[A-Za-z0-9_.-]{1,40}")
        .prop_map(|(c, id)| StreamId::new(format!("{c}-{id}")).expect("valid by construction"))
}

/// Arbitrary text that may or may not be a valid stream id (for bad-input tests).
pub fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,300}", "[ \t\n\u{0}-\u{1f}]{0,4}", "\\PC{250,260}"]
}

/// Valid event type names.
pub fn event_type() -> impl Strategy<Value = EventType> {
    "[A-Z][A-Za-z0-9]{0,30}".prop_map(|t| EventType::new(t).expect("valid by construction"))
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1.0e12..1.0e12f64).prop_map(Value::from),
        "[^\u{0}]{0,20}".prop_map(Value::String),
    ]
}

/// JSON values without NUL characters, nested a few levels.
pub fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Valid payloads: JSON objects.
pub fn payload() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Valid new events with fresh ids.
pub fn new_event() -> impl Strategy<Value = NewEvent> {
    (event_type(), 1..4u32, payload(), any::<u128>()).prop_map(|(t, v, p, id)| {
        let id = EventId::new(Uuid::from_u128(id | 1)).expect("never nil");
        NewEvent::new(id, t, v, p, Metadata::default()).expect("valid by construction")
    })
}

/// Order commands, valid or not: the aggregate decides.
pub fn order_command() -> impl Strategy<Value = OrderCommand> {
    prop_oneof![
        1 => ("[a-z]{0,4}", -5..10_000i64).prop_map(|(c, a)| OrderCommand::Place { customer_id: c, total_amount: a }),
        6 => ("[a-z]{0,3}", 0..5u32, -2..500i64).prop_map(|(sku, quantity, unit_price)| OrderCommand::AddLine { sku, quantity, unit_price }),
        1 => "[a-z]{0,3}".prop_map(|carrier| OrderCommand::Ship { carrier }),
        1 => "[a-z]{0,3}".prop_map(|reason| OrderCommand::Cancel { reason }),
    ]
}

/// A history the Orders aggregate really produces: commands folded through `handle`,
/// refused ones dropped. Starts with a placement so histories are rarely empty.
pub fn order_history(max_commands: usize) -> impl Strategy<Value = Vec<OrderEvent>> {
    prop::collection::vec(order_command(), 0..max_commands).prop_map(|commands| {
        let mut state = Order::default();
        let mut history = Vec::new();
        let place = OrderCommand::Place {
            customer_id: "c".into(),
            total_amount: 100,
        };
        for c in std::iter::once(&place).chain(&commands) {
            if let Ok(events) = state.handle(c) {
                for e in events {
                    state.apply(&e);
                    history.push(e);
                }
            }
        }
        history
    })
}

/// Law: loading with a snapshot taken at `snapshot_at` plus the tail equals a full
/// replay, and the snapshot load replays only the tail. Runs on any adapter.
///
/// # Panics
/// When the law is violated (a test assertion).
pub async fn check_snapshot_plus_tail_equals_replay<S: Store>(
    store: S,
    history: Vec<OrderEvent>,
    snapshot_at: usize,
) {
    let id = StreamId::for_category(Order::TYPE, Uuid::new_v4()).expect("valid");
    let plain = Repository::<Order, _>::new(store.clone());
    let mut version = Version::ZERO;
    for chunk in history.chunks(7) {
        version = plain
            .save(&id, version, chunk, &Metadata::default())
            .await
            .expect("save")
            .last_version;
    }
    let k = snapshot_at.min(history.len());
    let at_k = Order::replay(&history[..k]);
    let state = <Order as chronik_core::SnapshotState>::to_state(&at_k).expect("state");
    let snap_version = Version::new(k as u64).expect("small");
    if k > 0 {
        store
            .save_snapshot(
                &id,
                snap_version,
                <Order as chronik_core::SnapshotState>::STATE_SCHEMA_VERSION,
                &state,
            )
            .await
            .expect("snapshot");
    }
    let full = plain.load(&id).await.expect("full load");
    let with_snapshot =
        Repository::<Order, _>::new(store).with_snapshots(chronik_core::SnapshotPolicy::Never);
    let fast = with_snapshot.load(&id).await.expect("snapshot load");
    assert_eq!(
        full.state,
        Order::replay(&history),
        "full load is the fold of the history"
    );
    assert_eq!(fast.state, full.state, "snapshot + tail == full replay");
    assert_eq!(fast.version, full.version);
    assert_eq!(
        fast.snapshot_version,
        if k > 0 { snap_version } else { Version::ZERO }
    );
    assert_eq!(
        fast.events_replayed,
        (history.len() - if k > 0 { k } else { 0 }) as u64
    );
}
