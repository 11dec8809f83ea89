//! Golden fixtures: stored payloads of every historical version of the Orders events,
//! kept as files in `fixtures/<EventType>.v<N>.json`. Each is read through the
//! current upcasters and decoded by the current code. Changing an event's shape without
//! an upcaster (or bumping its version without a fixture) fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chronik::DomainEvent;
use orders::{self, LineAdded, OrderCancelled, OrderEvent, OrderPlaced, OrderShipped};
use serde_json::Value;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// `(event type, schema version, fixture)` for every fixture file.
fn fixtures() -> Vec<(String, u32, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures_dir()).expect("fixtures dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_owned();
        let stem = name
            .strip_suffix(".json")
            .unwrap_or_else(|| panic!("{name}: fixtures are .json files"));
        let (event_type, version) = stem
            .rsplit_once(".v")
            .unwrap_or_else(|| panic!("{name}: expected <Type>.v<N>.json"));
        let version: u32 = version
            .parse()
            .unwrap_or_else(|_| panic!("{name}: bad version"));
        let text = std::fs::read_to_string(&path).expect("read fixture");
        out.push((
            event_type.to_owned(),
            version,
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}")),
        ));
    }
    out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    out
}

#[test]
fn every_historical_payload_reads_through_the_current_code() {
    let registry = orders::upcasters().expect("valid chain");
    let all = fixtures();
    assert!(all.len() >= 5, "fixtures are missing");
    for (event_type, version, fixture) in all {
        let stored = fixture["stored"].clone();
        let (t, v, payload) = registry
            .upcast(&event_type, version, stored)
            .unwrap_or_else(|e| panic!("{event_type} v{version}: upcast failed: {e}"));
        assert_eq!(
            Some(v),
            registry.current_version(&t),
            "{event_type} v{version} lifted to the current version"
        );
        let decoded = OrderEvent::from_payload(&t, payload)
            .unwrap_or_else(|e| panic!("{event_type} v{version}: does not decode: {e}"));
        let expected: OrderEvent =
            serde_json::from_value(fixture["expected"].clone()).expect("expected event");
        assert_eq!(decoded, expected, "{event_type} v{version}");
    }
}

fn one_of_each() -> Vec<OrderEvent> {
    vec![
        OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: "c".into(),
            total_amount: 1,
        }),
        OrderEvent::LineAdded(LineAdded {
            sku: "s".into(),
            quantity: 1,
            unit_price: 1,
        }),
        OrderEvent::OrderShipped(OrderShipped {
            carrier: "x".into(),
        }),
        OrderEvent::OrderCancelled(OrderCancelled { reason: "r".into() }),
    ]
}

#[test]
fn every_version_the_code_writes_has_a_fixture_and_a_declared_chain() {
    let registry = orders::upcasters().expect("valid chain");
    let have: BTreeSet<(String, u32)> = fixtures().into_iter().map(|(t, v, _)| (t, v)).collect();
    for e in one_of_each() {
        let (t, v) = (e.event_type(), e.schema_version());
        assert_eq!(
            registry.current_version(t),
            Some(v),
            "{t}: the registry's current version must be the one the code writes"
        );
        for old in 1..=v {
            assert!(
                have.contains(&(t.to_owned(), old)),
                "{t} v{old}: add fixtures/orders/{t}.v{old}.json"
            );
        }
    }
}

#[test]
fn current_fixtures_match_what_the_code_writes_today() {
    // Serializing today's event must reproduce the current-version fixture byte for byte
    // (as JSON values): a renamed or retyped field without a version bump fails here.
    let all = fixtures();
    for e in one_of_each() {
        let (t, v) = (e.event_type(), e.schema_version());
        let (_, _, fixture) = all
            .iter()
            .find(|(ft, fv, _)| ft == t && *fv == v)
            .expect("fixture exists");
        let expected: OrderEvent =
            serde_json::from_value(fixture["expected"].clone()).expect("expected event");
        assert_eq!(
            expected.to_payload().expect("payload"),
            fixture["stored"],
            "{t} v{v}"
        );
    }
}
