//! Test support for chronik and for services built on it.
//!
//! - [`conformance`]: the one conformance suite every adapter runs (plain async functions
//!   over any store, listed once in [`conformance_cases!`]).
//! - [`given`]: given/when/then for aggregates, without a database.
//! - [`strategies`]: proptest strategies for ids, payloads and any aggregate's histories.
//! - [`replica`]: a throwaway primary cluster and a hot standby of it, for tests of
//!   standby-fed readers (needs PostgreSQL's server binaries).
//! - [`nats_server`]: a throwaway `nats-server` (with or without JetStream) that a test
//!   restarts, for tests of the relay under a dropped connection.
//! - [`typed`]: the events and upcasters of every engine's typed-projection tests.
//! - [`Interloper`]: a store wrapper that lets a competing writer in between a command's
//!   load and its append, to race a real concurrent write.
//! - [`SpanCapture`]: a `tracing` layer recording every span and event, to check what
//!   chronik's spans carry and what they never carry.

pub mod conformance;
mod gwt;
mod interloper;
pub mod nats_server;
pub mod projections;
pub mod replica;
mod spans;
pub mod strategies;
pub mod typed;

pub use gwt::{Scenario, given};
pub use interloper::Interloper;
pub use spans::{CapturedSpan, SpanCapture};
