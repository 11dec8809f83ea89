//! The library's messages for the operator ([`chronik_postgres::OPERATOR_TARGET`]: who holds
//! the lock a command waits for, what a failed clean-up left), printed on stderr as
//! `warning: <message>`, like the commands' own warnings: not as log lines with a
//! timestamp, level and target.

use std::fmt;
use std::io::Write as _;

use chronik_postgres::OPERATOR_TARGET;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Whether `meta` is one of those messages (warnings and errors of the target).
pub(crate) fn is_for_the_operator(meta: &Metadata<'_>) -> bool {
    meta.target() == OPERATOR_TARGET && *meta.level() <= Level::WARN
}

/// The layer that prints them (with the per-layer filter [`is_for_the_operator`]; the log
/// layer has the opposite one).
pub(crate) struct OperatorWarnings;

impl<S: Subscriber> Layer<S> for OperatorWarnings {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if !is_for_the_operator(event.metadata()) {
            return;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        // Best effort, as any log line: a closed stderr has no one to tell.
        let _ = writeln!(std::io::stderr().lock(), "warning: {}", message.0);
    }
}

/// The `message` field, and any other field after it as `name=value`.
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}
