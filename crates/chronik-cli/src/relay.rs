//! `relay nats`: the feed published to NATS JetStream until Ctrl-C (or, with
//! `--until-caught-up`, up to the feed's head at the start), read from the primary or, with
//! `--standby-url`, from a hot standby of it.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use chronik_core::UpcasterRegistry;
use chronik_postgres::{PgEventStore, PgWakeSource};
use chronik_projections::{ProjectionState, RunnerHandle};
use chronik_relay::{NatsRelay, PayloadMode, RelayConfig, RelayError, SubjectPrefix};
use chronik_store::{CheckpointStore, EventStore};

use crate::interrupt::Interrupts;
use crate::{Registry, Usage, runner};

/// What `relay nats` was asked for.
pub(crate) struct Options {
    pub(crate) url: String,
    pub(crate) prefix: SubjectPrefix,
    pub(crate) categories: Vec<String>,
    pub(crate) event_types: Vec<String>,
    pub(crate) stream_name: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) raw: bool,
    /// Read the feed from this hot standby of the database instead.
    pub(crate) standby_url: Option<String>,
    pub(crate) until_caught_up: bool,
    /// The channel whose notifications wake the relay (it polls too).
    pub(crate) listen: String,
}

/// Starts `relay`'s runner over `store` (the primary, or its feed read from a standby).
fn start<S: EventStore + CheckpointStore + 'static>(
    relay: &Arc<NatsRelay>,
    store: Arc<S>,
    upcasters: Option<Arc<UpcasterRegistry>>,
    wake: Option<PgWakeSource>,
) -> anyhow::Result<RunnerHandle> {
    let mut runner = Arc::clone(relay).runner(store, upcasters);
    if let Some(wake) = wake {
        runner = runner.with_wake(wake);
    }
    runner.spawn().context("cannot start the relay's runner")
}

pub(crate) fn parse_prefix(text: &str) -> Result<SubjectPrefix, String> {
    SubjectPrefix::new(text).map_err(|e| e.to_string())
}

pub(crate) async fn nats(
    registry: &Registry,
    store: PgEventStore,
    options: Options,
) -> anyhow::Result<()> {
    let mut config = RelayConfig::new(options.url)
        .subject_prefix(options.prefix)
        .categories(options.categories)
        .event_types(options.event_types)
        .payload(if options.raw {
            PayloadMode::Raw
        } else {
            PayloadMode::Upcast
        });
    if let Some(s) = options.stream_name {
        config = config.stream_name(s);
    }
    if let Some(n) = options.name {
        config = config.name(n);
    }
    let standby = runner::connect_standby(&store, options.standby_url).await?;
    let relay = match NatsRelay::connect(config.clone()).await {
        Ok(r) => Arc::new(r),
        Err(e @ RelayError::InvalidConfig(_)) => return Err(Usage(e.to_string()).into()),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot start the relay")),
    };
    let name = relay.projection_name().to_owned();
    // The primary's head: what a standby has not replayed yet is still to be relayed.
    let head = runner::head_at_start(&store, options.until_caught_up).await?;
    // Before the start line: a Ctrl-C right after it stops the runner as any other does.
    let mut interrupts = Interrupts::listen().context("cannot listen for Ctrl-C")?;
    {
        let mut out = std::io::stdout().lock();
        let source = standby.as_ref().map_or_else(
            || "the primary".to_owned(),
            |s| format!("the hot standby at {}", s.endpoint()),
        );
        writeln!(
            out,
            "relaying schema {} from {source} to stream {} ({}) at {} as projection {name}, woken by NOTIFY {} ({})",
            store.schema(),
            relay.stream_name(),
            relay.prefix().wildcard(),
            relay.url(),
            options.listen,
            if options.until_caught_up {
                "until caught up"
            } else {
                "Ctrl-C stops it"
            }
        )?;
        out.flush()?;
    }
    // Woken by NOTIFY after commits (on the primary: a standby cannot LISTEN; there a
    // notification is a hint after which it polls), polling as the fallback: a channel it
    // cannot listen on costs latency (at most the poll interval), never events.
    let wake = match store.wake_source(&options.listen).await {
        Ok(wake) => Some(wake),
        Err(e) => {
            tracing::warn!(channel = %options.listen, error = %e, "cannot LISTEN; the relay polls only");
            None
        }
    };
    let upcasters = registry.upcasters.clone();
    let handle = match standby {
        None => start(&relay, Arc::new(store), upcasters, wake),
        Some(standby) => start(&relay, Arc::new(standby.feed_of(store)), upcasters, wake),
    }?;
    let mut status = handle
        .subscribe(&name)
        .context("the relay's runner has no status")?;
    let done = async {
        match head {
            // Nothing to relay yet.
            Some(None) => {}
            Some(Some(head)) => {
                let _ = status
                    .wait_for(|s| {
                        s.checkpoint >= head
                            || matches!(
                                s.state,
                                ProjectionState::Stopped | ProjectionState::Crashed
                            )
                    })
                    .await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = done => {}
        true = interrupts.next() => {}
    }
    let statuses = handle
        .stop()
        .await
        .context("the relay stopped abnormally")?;
    let stats = relay.stats();
    let mut out = std::io::stdout().lock();
    if let Some(s) = statuses.first() {
        writeln!(
            out,
            "stopped at {}: {} acknowledged ({} duplicates discarded by JetStream), {} events relayed in all",
            s.checkpoint, stats.acknowledged, stats.duplicates, s.events_processed
        )?;
    }
    Ok(())
}
