//! Every public constructor meets arbitrary input with a value or a typed error, never a
//! panic, and accepts exactly what its contract says.
//!
//! Case counts: 512 per property (7 properties: 3,584 cases).

use chronik_core::{
    EventId, EventType, FeedCursor, InvalidInput, MAX_HEADER_BYTES, MAX_PAYLOAD_DEPTH, Metadata,
    NewEvent, RetryPolicy, SnapshotPolicy, StreamId, Version,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<i64>().prop_map(Value::from),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".*", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn stream_ids_accept_exactly_the_contract(s in ".{0,300}") {
        let ok = !s.is_empty() && s.len() <= 255 && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        let r = StreamId::new(s.clone());
        prop_assert_eq!(r.is_ok(), ok, "{:?}", s);
        if let Ok(id) = r {
            prop_assert!(s.starts_with(id.category()));
        }
    }

    #[test]
    fn event_types_accept_exactly_the_contract(s in ".{0,300}") {
        let ok = !s.is_empty() && s.len() <= 255 && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        prop_assert_eq!(EventType::new(s).is_ok(), ok);
    }

    #[test]
    fn versions_fit_the_store(v in any::<u64>(), add in any::<u64>()) {
        prop_assert_eq!(Version::new(v).is_ok(), v <= i64::MAX as u64);
        if let Ok(ver) = Version::new(v) {
            let sum = ver.checked_add(add);
            prop_assert_eq!(sum.is_ok(), v.checked_add(add).is_some_and(|s| s <= i64::MAX as u64));
        }
        prop_assert_eq!(Version::from_i64(v as i64).is_ok(), (v as i64) >= 0);
    }

    #[test]
    fn payloads_are_objects_or_typed_errors(payload in arbitrary_json(), sv in any::<u32>()) {
        let id = EventId::new(Uuid::from_u128(9)).expect("non-nil");
        let r = NewEvent::new(id, EventType::new("E").expect("valid"), sv, payload.clone(), Metadata::default());
        match r {
            Ok(e) => {
                prop_assert!(payload.is_object() && sv >= 1);
                prop_assert_eq!(e.payload(), &payload);
            }
            Err(InvalidInput::ZeroSchemaVersion) => prop_assert_eq!(sv, 0),
            Err(InvalidInput::PayloadNotObject { .. }) => prop_assert!(!payload.is_object()),
            Err(InvalidInput::PayloadNul) => prop_assert!(payload.to_string().contains("\\u0000")),
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
    }

    #[test]
    fn cursors_parse_or_fail_typed(s in ".{0,40}", t in any::<u64>(), p in any::<u64>()) {
        let _ = s.parse::<FeedCursor>();
        let text = format!("{t}:{p}");
        prop_assert_eq!(text.parse::<FeedCursor>().is_ok(), t <= i64::MAX as u64 && p <= i64::MAX as u64);
    }

    #[test]
    fn headers_are_nul_free_and_bounded(
        headers in prop::collection::btree_map(".{0,40}", ".{0,600}", 0..48),
        nul in any::<bool>(),
    ) {
        let mut headers = headers;
        if nul {
            headers.insert("k\0".to_owned(), String::new());
        }
        let has_nul = headers.iter().any(|(k, v)| k.contains('\0') || v.contains('\0'));
        let size = 2 + headers.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>();
        let metadata = Metadata { headers, ..Metadata::default() };
        let id = EventId::new(Uuid::from_u128(9)).expect("non-nil");
        let r = NewEvent::new(id, EventType::new("E").expect("valid"), 1, json!({}), metadata.clone());
        match &r {
            Ok(e) => {
                prop_assert!(!has_nul && size <= MAX_HEADER_BYTES);
                prop_assert_eq!(e.metadata(), &metadata);
            }
            Err(InvalidInput::PayloadNul) => prop_assert!(has_nul),
            Err(InvalidInput::HeadersTooLarge { .. }) => prop_assert!(!has_nul && size > MAX_HEADER_BYTES),
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
        // Replacing the metadata validates it the same way.
        let plain = NewEvent::new(id, EventType::new("E").expect("valid"), 1, json!({}), Metadata::default()).expect("valid");
        prop_assert_eq!(plain.with_metadata(metadata).is_ok(), r.is_ok());
    }

    #[test]
    fn policies_validate(n in any::<u64>(), attempts in any::<u32>(), a in any::<u64>(), b in any::<u64>()) {
        prop_assert_eq!(SnapshotPolicy::every(n).is_ok(), n > 0);
        let (base, max) = (std::time::Duration::from_nanos(a), std::time::Duration::from_nanos(b));
        prop_assert_eq!(RetryPolicy::new(attempts, base, max).is_ok(), attempts > 0 && a <= b);
    }
}

#[test]
fn hostile_nesting_is_rejected_without_overflowing_the_stack() {
    // Far deeper than the limit. (Not 100k levels: serde_json's own recursive `Drop`
    // would overflow the test's stack on such a value, whoever validates it.)
    let mut v = json!({});
    for _ in 0..500 {
        v = json!({ "a": v });
    }
    let r = NewEvent::new(
        EventId::new(Uuid::from_u128(9)).expect("non-nil"),
        EventType::new("E").expect("valid"),
        1,
        v,
        Metadata::default(),
    );
    assert_eq!(
        r,
        Err(InvalidInput::PayloadTooDeep {
            max: MAX_PAYLOAD_DEPTH
        })
    );
}
