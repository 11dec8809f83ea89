//! [`OneOf`]: two aggregate types behind one, so that one command across streams can
//! change streams of both types atomically (a checkout that places orders and requests
//! their payments).

use serde_json::Value;
use thiserror::Error;

use crate::aggregate::{Aggregate, DomainEvent, EncodeError, EncodedEvent};

/// A command, an event or a refusal of the first or of the second aggregate of a
/// [`OneOf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Either<L, R> {
    /// Of the first aggregate type.
    First(L),
    /// Of the second aggregate type.
    Second(R),
}

/// A stream that is an `A` or a `B`: an aggregate over both, for decisions that change
/// streams of two types at once through one `Repository::execute_all` (all or nothing, one
/// retry policy). `execute_all(&[(order, Either::First(place)), (payment,
/// Either::Second(request))], metadata)` places an order and requests its payment in one
/// atomic append.
///
/// - **Streams keep their own types.** The events stored are `A`'s and `B`'s own, under
///   their own type names, so `Repository<A, _>` and `Repository<B, _>` (and projections)
///   read the same streams as before. Name streams with `A::stream_id` and `B::stream_id`;
///   `OneOf`'s own [`Aggregate::TYPE`] is not a stream category.
/// - **The first event decides.** A stream with no events is [`OneOf::Empty`] and takes the
///   type of the command sent to it; after that, a command of the other type is refused
///   ([`OneOfError::WrongType`], nothing written).
/// - **Events are told apart by type name** ([`DomainEvent::EVENT_TYPES`] of each, as the
///   derive lists them): the two event enums must not share a type name.
/// - [`Aggregate::retry_safe`] is each command's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OneOf<A, B> {
    /// No event yet.
    #[default]
    Empty,
    /// A stream of the first type.
    First(A),
    /// A stream of the second type.
    Second(B),
}

/// Why a [`OneOf`] refused a command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OneOfError<E1, E2> {
    /// The first aggregate refused it.
    #[error(transparent)]
    First(E1),
    /// The second aggregate refused it.
    #[error(transparent)]
    Second(E2),
    /// A command of one type was sent to a stream of the other.
    #[error("a command for {command} streams was sent to a {stream} stream")]
    WrongType {
        /// The stream's type ([`Aggregate::TYPE`]).
        stream: &'static str,
        /// The command's type.
        command: &'static str,
    },
}

/// What [`OneOf`]'s `handle` returns.
type Decision<A, B> = Result<
    Vec<Either<<A as Aggregate>::Event, <B as Aggregate>::Event>>,
    OneOfError<<A as Aggregate>::Error, <B as Aggregate>::Error>,
>;

impl<A: Aggregate, B: Aggregate> Aggregate for OneOf<A, B> {
    const TYPE: &'static str = "one-of";
    type Command = Either<A::Command, B::Command>;
    type Event = Either<A::Event, B::Event>;
    type Error = OneOfError<A::Error, B::Error>;

    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error> {
        fn first<A: Aggregate, B: Aggregate>(a: &A, c: &A::Command) -> Decision<A, B> {
            a.handle(c)
                .map(|events| events.into_iter().map(Either::First).collect())
                .map_err(OneOfError::First)
        }
        fn second<A: Aggregate, B: Aggregate>(b: &B, c: &B::Command) -> Decision<A, B> {
            b.handle(c)
                .map(|events| events.into_iter().map(Either::Second).collect())
                .map_err(OneOfError::Second)
        }
        match (self, command) {
            (Self::First(a), Either::First(c)) => first::<A, B>(a, c),
            (Self::Empty, Either::First(c)) => first::<A, B>(&A::default(), c),
            (Self::Second(b), Either::Second(c)) => second::<A, B>(b, c),
            (Self::Empty, Either::Second(c)) => second::<A, B>(&B::default(), c),
            (Self::First(_), Either::Second(_)) => Err(OneOfError::WrongType {
                stream: A::TYPE,
                command: B::TYPE,
            }),
            (Self::Second(_), Either::First(_)) => Err(OneOfError::WrongType {
                stream: B::TYPE,
                command: A::TYPE,
            }),
        }
    }

    /// Applies the event to the state of its type. An event of the other type (which
    /// `OneOf` never decides, but another writer could append) starts that type's state
    /// from its default: `apply` is total.
    fn apply(&mut self, event: &Self::Event) {
        match event {
            Either::First(e) => {
                if !matches!(self, Self::First(_)) {
                    *self = Self::First(A::default());
                }
                if let Self::First(a) = self {
                    a.apply(e);
                }
            }
            Either::Second(e) => {
                if !matches!(self, Self::Second(_)) {
                    *self = Self::Second(B::default());
                }
                if let Self::Second(b) = self {
                    b.apply(e);
                }
            }
        }
    }

    fn retry_safe(command: &Self::Command) -> bool {
        match command {
            Either::First(c) => A::retry_safe(c),
            Either::Second(c) => B::retry_safe(c),
        }
    }
}

/// Which of the two event enums stores `event_type`: `Some(true)` the first, `Some(false)`
/// the second, `None` when neither lists its types.
fn first_stores<X: DomainEvent, Y: DomainEvent>(event_type: &str) -> Option<bool> {
    let lists =
        |types: &[crate::aggregate::EventTypeInfo]| types.iter().any(|t| t.name == event_type);
    if lists(X::EVENT_TYPES) {
        Some(true)
    } else if lists(Y::EVENT_TYPES) {
        Some(false)
    } else {
        None
    }
}

/// Each event as its own enum stores it. Reading, the type name picks the enum (from their
/// [`DomainEvent::EVENT_TYPES`]; for hand-written enums that list none, the first that
/// decodes it). [`DomainEvent::EVENT_TYPES`] of the pair itself is empty.
impl<X: DomainEvent, Y: DomainEvent> DomainEvent for Either<X, Y> {
    fn event_type(&self) -> &'static str {
        match self {
            Self::First(e) => e.event_type(),
            Self::Second(e) => e.event_type(),
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            Self::First(e) => e.schema_version(),
            Self::Second(e) => e.schema_version(),
        }
    }

    fn to_payload(&self) -> Result<Value, serde_json::Error> {
        match self {
            Self::First(e) => e.to_payload(),
            Self::Second(e) => e.to_payload(),
        }
    }

    fn from_payload(event_type: &str, payload: Value) -> Result<Self, serde_json::Error> {
        match first_stores::<X, Y>(event_type) {
            Some(true) => X::from_payload(event_type, payload).map(Self::First),
            Some(false) => Y::from_payload(event_type, payload).map(Self::Second),
            None => X::from_payload(event_type, payload.clone())
                .map(Self::First)
                .or_else(|_| Y::from_payload(event_type, payload).map(Self::Second)),
        }
    }

    fn encode(&self) -> Result<EncodedEvent, EncodeError> {
        match self {
            Self::First(e) => e.encode(),
            Self::Second(e) => e.encode(),
        }
    }

    fn from_json(event_type: &str, payload: &str) -> Result<Self, serde_json::Error> {
        match first_stores::<X, Y>(event_type) {
            Some(true) => X::from_json(event_type, payload).map(Self::First),
            Some(false) => Y::from_json(event_type, payload).map(Self::Second),
            None => X::from_json(event_type, payload)
                .map(Self::First)
                .or_else(|_| Y::from_json(event_type, payload).map(Self::Second)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Default, PartialEq)]
    struct Counter(i64);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, chronik_macros::DomainEvent)]
    #[serde(tag = "type", content = "data")]
    enum CounterEvent {
        Counted { n: i64 },
    }

    #[derive(Debug, Default, PartialEq)]
    struct Note(String);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, chronik_macros::DomainEvent)]
    #[serde(tag = "type", content = "data")]
    enum NoteEvent {
        #[event(schema_version = 2)]
        Noted { text: String },
    }

    #[derive(Debug, Clone, PartialEq, Eq, Error)]
    #[error("refused")]
    struct Refused;

    impl Aggregate for Counter {
        const TYPE: &'static str = "counter";
        type Command = i64;
        type Event = CounterEvent;
        type Error = Refused;
        fn handle(&self, n: &i64) -> Result<Vec<CounterEvent>, Refused> {
            if *n > 0 {
                Ok(vec![CounterEvent::Counted { n: *n }])
            } else {
                Err(Refused)
            }
        }
        fn apply(&mut self, CounterEvent::Counted { n }: &CounterEvent) {
            self.0 += n;
        }
        fn retry_safe(n: &i64) -> bool {
            *n != 7
        }
    }

    impl Aggregate for Note {
        const TYPE: &'static str = "note";
        type Command = String;
        type Event = NoteEvent;
        type Error = Refused;
        fn handle(&self, text: &String) -> Result<Vec<NoteEvent>, Refused> {
            Ok(vec![NoteEvent::Noted { text: text.clone() }])
        }
        fn apply(&mut self, NoteEvent::Noted { text }: &NoteEvent) {
            self.0.clone_from(text);
        }
    }

    type Both = OneOf<Counter, Note>;

    #[test]
    fn the_first_event_decides_the_type_and_the_other_type_is_refused() {
        let empty = Both::default();
        let events = empty.handle(&Either::First(2)).unwrap_or_default();
        assert_eq!(events, [Either::First(CounterEvent::Counted { n: 2 })]);
        let state = Both::replay(&events);
        assert_eq!(state, OneOf::First(Counter(2)));
        assert_eq!(
            state.handle(&Either::Second("x".to_owned())),
            Err(OneOfError::WrongType {
                stream: "counter",
                command: "note"
            })
        );
        assert_eq!(
            state.handle(&Either::First(0)),
            Err(OneOfError::First(Refused))
        );
        let note = Both::replay(
            &empty
                .handle(&Either::Second("hi".to_owned()))
                .unwrap_or_default(),
        );
        assert_eq!(note, OneOf::Second(Note("hi".to_owned())));
        assert!(matches!(
            note.handle(&Either::First(1)),
            Err(OneOfError::WrongType { stream: "note", .. })
        ));
        assert!(!Both::retry_safe(&Either::First(7)));
        assert!(Both::retry_safe(&Either::First(1)));
        assert!(Both::retry_safe(&Either::Second(String::new())));
    }

    #[test]
    fn events_are_stored_as_their_own_enum_stores_them_and_read_back_by_type_name() {
        for event in [
            Either::First(CounterEvent::Counted { n: 3 }),
            Either::Second(NoteEvent::Noted {
                text: "a".to_owned(),
            }),
        ] {
            let encoded = event.encode().unwrap_or_else(|e| panic!("{e}"));
            let own = match &event {
                Either::First(e) => e.encode(),
                Either::Second(e) => e.encode(),
            };
            assert_eq!(
                Ok(&encoded),
                own.as_ref(),
                "stored as its own enum stores it"
            );
            let text = encoded.payload.to_string();
            let back: Either<CounterEvent, NoteEvent> =
                Either::from_json(encoded.event_type, &text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, event);
            let back: Either<CounterEvent, NoteEvent> =
                Either::from_payload(encoded.event_type, encoded.payload.clone())
                    .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, event);
        }
        assert_eq!(
            Either::<CounterEvent, NoteEvent>::Second(NoteEvent::Noted {
                text: String::new()
            })
            .schema_version(),
            2
        );
        assert!(Either::<CounterEvent, NoteEvent>::from_json("Unknown", "{}").is_err());
    }
}
