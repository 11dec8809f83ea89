//! `#[derive(DomainEvent)]`: the stored event type is always serde's variant tag, and a
//! hand-written implementation whose type drifts from it is refused when written.

use chronik_core::{DomainEvent, EncodeError, EventTypeInfo, decode_event, encode_event};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", content = "data")]
enum Plain {
    Opened {
        by: String,
    },
    #[event(schema_version = 3)]
    Moved(Moved),
    Closed,
    #[serde(rename = "ThingRenamed")]
    Renamed {
        to: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Moved {
    to: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
enum Snake {
    StockReceived {
        quantity: u32,
    },
    ItemRemoved,
    #[serde(rename(serialize = "Kept", deserialize = "Kept"))]
    KeptName,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", content = "data", rename_all = "SCREAMING-KEBAB-CASE")]
enum Kebab {
    LineAdded { n: u8 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", content = "data", rename_all = "camelCase")]
enum Camel {
    LineAdded,
}

/// serde's own tag for `event`.
fn serde_tag<E: Serialize>(event: &E) -> String {
    serde_json::to_value(event).expect("serializes")["type"]
        .as_str()
        .expect("tagged")
        .to_owned()
}

fn check<E: DomainEvent + Serialize + std::fmt::Debug + PartialEq>(events: &[E]) {
    for e in events {
        assert_eq!(e.event_type(), serde_tag(e), "{e:?}");
        let encoded = e.encode().expect("encodes");
        assert_eq!(encoded.event_type, e.event_type());
        assert_eq!(encoded.payload, encode_event(e).expect("payload"));
        let text = encoded.payload.to_string();
        let back = E::from_payload(encoded.event_type, encoded.payload).expect("reads back");
        assert_eq!(&back, e);
        // The derived `from_json` decodes the stored text to the same event.
        let from_text = E::from_json(encoded.event_type, &text).expect("reads back from text");
        assert_eq!(&from_text, e);
        assert!(
            E::EVENT_TYPES
                .iter()
                .any(|t| t.name == e.event_type() && t.schema_version == e.schema_version())
        );
    }
}

#[test]
fn the_stored_type_is_serdes_tag_under_every_rename_rule() {
    check(&[
        Plain::Opened { by: "ann".into() },
        Plain::Moved(Moved { to: 7 }),
        Plain::Closed,
        Plain::Renamed { to: "x".into() },
    ]);
    check(&[
        Snake::StockReceived { quantity: 2 },
        Snake::ItemRemoved,
        Snake::KeptName,
    ]);
    check(&[Kebab::LineAdded { n: 1 }]);
    check(&[Camel::LineAdded]);
    assert_eq!(Snake::ItemRemoved.event_type(), "item_removed");
    assert_eq!(Kebab::LineAdded { n: 1 }.event_type(), "LINE-ADDED");
    assert_eq!(Camel::LineAdded.event_type(), "lineAdded");
}

#[test]
fn event_types_list_every_variant_with_its_schema_version() {
    assert_eq!(
        Plain::EVENT_TYPES,
        &[
            EventTypeInfo {
                name: "Opened",
                schema_version: 1
            },
            EventTypeInfo {
                name: "Moved",
                schema_version: 3
            },
            EventTypeInfo {
                name: "Closed",
                schema_version: 1
            },
            EventTypeInfo {
                name: "ThingRenamed",
                schema_version: 1
            },
        ]
    );
    assert_eq!(Plain::Moved(Moved { to: 1 }).schema_version(), 3);
    assert_eq!(Plain::Closed.encode().expect("unit").payload, json!({}));
}

/// The footgun the derive removes: a hand-written `event_type()` that says `Incremented`
/// while serde tags the variant `Increment`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum Drifted {
    Increment { by: u32 },
}

impl DomainEvent for Drifted {
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

#[test]
fn a_hand_written_type_that_drifts_from_serde_is_refused_when_encoded() {
    let drifted = Drifted::Increment { by: 1 };
    match drifted.encode() {
        Err(EncodeError::TypeMismatch { declared, found }) => {
            assert_eq!(declared, "Incremented");
            assert!(found.contains("does not read back"), "{found}");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
    // The derive's check catches the same drift from serde's side.
    match chronik_core::encode_tagged(&Drifted::Increment { by: 1 }, "Incremented", 1) {
        Err(EncodeError::TypeMismatch { found, .. }) => {
            assert_eq!(found, "serializes as \"Increment\"");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
}
