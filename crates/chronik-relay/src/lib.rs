//! The relay of chronik's gap-free event feed to NATS JetStream, for sibling services
//! that should see the events without reading the database.
//!
//! [`NatsRelay`] is a projection on the projection engine: it follows the feed from its
//! checkpoint, publishes each event (optionally filtered by category and type) to
//! `<prefix>.<category>.<stream id>` with the event id as `Nats-Msg-Id`, and checkpoints
//! only after JetStream acknowledged everything the checkpoint covers.
//!
//! ```no_run
//! # async fn run(store: std::sync::Arc<chronik_memory::MemoryStore>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use chronik_relay::{NatsRelay, RelayConfig};
//!
//! let relay = Arc::new(NatsRelay::connect(RelayConfig::new("nats://127.0.0.1:4222")).await?);
//! let handle = Arc::clone(&relay).runner(store, None).spawn()?;
//! // ... until shutdown:
//! handle.stop().await?;
//! # Ok(()) }
//! ```
//!
//! **Delivery contract:** every committed event is published at least once and, within the
//! JetStream stream's duplicate window, stored once in JetStream, in per-stream order (in
//! feed order, in fact). `docs/relay.md` has the subjects, headers and failure modes.
//!
//! **Invariant:** the relay knows the store only through the `chronik-store` ports and
//! names no database; it is the only crate that talks to NATS.

mod config;
mod error;
mod relay;
mod subject;

pub use config::{PayloadMode, RelayConfig};
pub use error::{RelayError, redact_url};
pub use relay::{NatsRelay, RelayStats, headers};
pub use subject::{SubjectPrefix, decode_token, encode_token};

/// The NATS client the relay uses, for consumers and tests in the same process.
pub use async_nats;
