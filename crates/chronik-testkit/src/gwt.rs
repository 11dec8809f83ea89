use std::fmt::Debug;

use chronik_core::Aggregate;

/// Starts a given/when/then scenario from past events.
///
/// ```
/// use chronik_core::{Aggregate, DomainEvent};
/// use chronik_testkit::given;
/// use serde::{Deserialize, Serialize};
///
/// /// A door: opened and closed, never twice in a row.
/// #[derive(Debug, Default, PartialEq)]
/// struct Door { open: bool }
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
/// #[serde(tag = "type", content = "data")]
/// enum DoorEvent { Opened, Closed }
///
/// #[derive(Debug, PartialEq, thiserror::Error)]
/// #[error("the door is already {0}")]
/// struct Already(&'static str);
///
/// impl Aggregate for Door {
///     const TYPE: &'static str = "door";
///     type Command = bool; // open?
///     type Event = DoorEvent;
///     type Error = Already;
///
///     fn handle(&self, open: &bool) -> Result<Vec<DoorEvent>, Already> {
///         match (*open, self.open) {
///             (true, true) => Err(Already("open")),
///             (false, false) => Err(Already("closed")),
///             (true, false) => Ok(vec![DoorEvent::Opened]),
///             (false, true) => Ok(vec![DoorEvent::Closed]),
///         }
///     }
///
///     fn apply(&mut self, event: &DoorEvent) {
///         self.open = matches!(event, DoorEvent::Opened);
///     }
/// }
///
/// given::<Door>([DoorEvent::Opened]).when(&false).then_expect([DoorEvent::Closed]);
/// given::<Door>([DoorEvent::Opened]).when(&true).then_error(&Already("open"));
/// ```
pub fn given<A: Aggregate>(history: impl IntoIterator<Item = A::Event>) -> Scenario<A> {
    let history: Vec<A::Event> = history.into_iter().collect();
    Scenario {
        state: A::replay(&history),
    }
}

/// A scenario under way: the state folded from the `given` events.
#[derive(Debug)]
pub struct Scenario<A> {
    state: A,
}

/// The outcome of `when`, to be checked with `then_*`.
#[derive(Debug)]
#[must_use = "a scenario checks nothing until a then_* method is called"]
pub struct Outcome<A: Aggregate> {
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Scenario<A> {
    /// Handles `command` against the state.
    pub fn when(self, command: &A::Command) -> Outcome<A> {
        Outcome {
            result: self.state.handle(command),
        }
    }

    /// The state, for assertions on the fold itself.
    pub fn state(&self) -> &A {
        &self.state
    }
}

impl<A: Aggregate> Outcome<A>
where
    A::Event: PartialEq + Debug,
    A::Error: PartialEq + Debug,
{
    /// Asserts the command produced exactly `expected`.
    ///
    /// # Panics
    /// When it did not (this is a test assertion).
    #[track_caller]
    pub fn then_expect(self, expected: impl IntoIterator<Item = A::Event>) {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => assert_eq!(events, expected, "unexpected events"),
            Err(e) => panic!("expected events {expected:?}, the command was refused: {e:?}"),
        }
    }

    /// Asserts the command was refused with `expected`.
    ///
    /// # Panics
    /// When it was not.
    #[track_caller]
    pub fn then_error(self, expected: &A::Error) {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, got events {events:?}"),
            Err(e) => assert_eq!(&e, expected, "unexpected error"),
        }
    }
}
