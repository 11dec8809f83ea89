//! `projections run NAME`: a registered projection's exactly-once runner until Ctrl-C (or,
//! with `--until-caught-up`, up to the primary's feed head at the start), reading the feed
//! from the primary or, with `--standby-url`, from a hot standby of it.

use std::io::Write as _;

use anyhow::Context as _;
use chronik_core::FeedCursor;
use chronik_postgres::{PgEventStore, PgStandby, PgStoreConfig, ProjectionState};
use chronik_store::{EventStore as _, StoreError};

use crate::interrupt::Interrupts;
use crate::{RegisteredProjection, Registry, Usage};

/// The hot standby of `store` at `url` (none when `url` is absent or blank), connected and
/// checked to replicate `store`'s database: a URL that is no standby of it is a usage
/// error (status 2), never shown.
pub(crate) async fn connect_standby(
    store: &PgEventStore,
    url: Option<String>,
) -> anyhow::Result<Option<PgStandby>> {
    let Some(url) = url.filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    let config = PgStoreConfig::with_schema(store.schema().clone());
    let standby = match PgStandby::connect(&url, config).await {
        Ok(s) => s,
        Err(StoreError::InvalidRequest(why)) => return Err(Usage(why).into()),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot connect to the standby")),
    };
    match standby.check_replicates(store).await {
        Ok(()) => Ok(Some(standby)),
        Err(StoreError::InvalidRequest(why)) => Err(Usage(why).into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot check the standby")),
    }
}

/// With `until_caught_up`, the head of `store`'s feed now (`Some(None)`: the feed is
/// empty), where a `--until-caught-up` runner stops; `None` otherwise.
pub(crate) async fn head_at_start(
    store: &PgEventStore,
    until_caught_up: bool,
) -> anyhow::Result<Option<Option<FeedCursor>>> {
    if !until_caught_up {
        return Ok(None);
    }
    let head = store
        .feed_head()
        .await
        .context("cannot read the feed's head")?;
    Ok(Some(head.last))
}

/// Runs `projection` on `store` until Ctrl-C or, with `until_caught_up`, until its
/// checkpoint reaches the head of the primary's feed at the start: a standby that lags
/// makes it wait, never stop early.
pub(crate) async fn run(
    registry: &Registry,
    store: &PgEventStore,
    projection: &RegisteredProjection,
    standby_url: Option<String>,
    until_caught_up: bool,
) -> anyhow::Result<()> {
    let standby = connect_standby(store, standby_url).await?;
    // The primary's head: what a standby has not replayed yet is still to be applied.
    let head = head_at_start(store, until_caught_up).await?;
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
            "running projection {} on schema {}, reading the feed from {source} ({})",
            projection.name,
            store.schema(),
            if until_caught_up {
                "until caught up"
            } else {
                "Ctrl-C stops it"
            }
        )?;
        out.flush()?;
    }
    let handle = (projection.run)(store, registry.upcasters.clone(), standby)
        .context("cannot start the projection's runner")?;
    let mut status = handle
        .subscribe(&projection.name)
        .context("the runner does not run the projection")?;
    let done = async {
        match head {
            // Nothing to apply yet.
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
    // A task that ended abnormally is shown crashed in its status, which says why.
    let _ = handle.stop().await;
    let last = status.borrow().clone();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "stopped at {}: {} events processed in all{}",
        last.checkpoint,
        last.events_processed,
        last.last_error
            .as_deref()
            .filter(|_| last.state == ProjectionState::Crashed)
            .map_or_else(String::new, |e| format!(" (crashed: {e})"))
    )?;
    if last.state == ProjectionState::Crashed {
        anyhow::bail!("the runner of projection {} crashed", projection.name);
    }
    Ok(())
}
