//! The runner's task: the lock, standby, idling and retries around the batch loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronik_projections::{
    EventRef, LagMeter, Outage, ProjectionState, ProjectionStatus, RunnerOptions, RunnerTask,
};
use chronik_store::catch_panic;
use chrono::Utc;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use uuid::Uuid;

use super::engine::{Batch, Engine};
use super::lock::{SessionInfo, release};
use crate::projection::handler::PgProjection;
use crate::standby::StandbyMeter;

/// Spawns the task of `engine`, which stops when `stop` turns `true`. With `owner`, the
/// engine's lock is held by that session (a partitioned worker's), which the task records
/// as its own and never takes itself.
pub(crate) fn spawn_task<P: PgProjection>(
    engine: Engine<P>,
    options: RunnerOptions,
    owner: Option<SessionInfo>,
    stop: watch::Receiver<bool>,
) -> RunnerTask {
    let name = engine.name().to_owned();
    let status = Arc::new(watch::Sender::new(ProjectionStatus::new(engine.name())));
    let standby_meter = engine
        .standby
        .clone()
        .map(|s| StandbyMeter::new(s, options.lag_every, engine.sql.record_standby_lag.clone()));
    let task = Task {
        engine,
        standby_meter,
        lag: LagMeter::new(options.lag_every),
        outage: Outage::new(),
        options,
        status: Arc::clone(&status),
        stop,
        lock: None,
        held: false,
        external: owner.is_some(),
        listener: None,
        instance: Uuid::new_v4(),
        session: owner,
        saved: None,
        pinged: None,
    };
    RunnerTask {
        name,
        status,
        join: tokio::spawn(task.run()),
    }
}

struct Task<P> {
    engine: Engine<P>,
    /// Records the standby's replication lag, for a standby-fed runner.
    standby_meter: Option<StandbyMeter>,
    options: RunnerOptions,
    status: Arc<watch::Sender<ProjectionStatus>>,
    stop: watch::Receiver<bool>,
    /// The dedicated lock session (kept while in standby too, to retry on it).
    lock: Option<PgConnection>,
    /// Whether `lock` holds the projection's advisory lock (or, `external`, the owner's
    /// session does).
    held: bool,
    /// The lock is held by another session (a partitioned worker's: `session`), never
    /// taken or released here.
    external: bool,
    listener: Option<PgListener>,
    /// This instance's id: the key of its own status row.
    instance: Uuid,
    /// `lock`'s session, as recorded in the status row.
    session: Option<SessionInfo>,
    /// What the status row last received: state and lock session.
    saved: Option<(ProjectionState, Option<i32>)>,
    /// Measures the lag into the status every `lag_every`.
    lag: LagMeter,
    /// The database unreachable since when: said once, and once when it is back.
    outage: Outage,
    /// When `lock` last answered (a ping, or taking the lock).
    pinged: Option<Instant>,
}

/// How often a runner holding its lock checks that the lock session is still alive.
///
/// Not a safety check: the session can die right after any ping. What keeps two runners
/// from applying the same events is the batch itself: it locks the checkpoint row
/// `FOR UPDATE`, reads the feed after the cursor it locked and writes the new cursor in the
/// same transaction, so a runner (or rebuild) that took the advisory lock after this
/// session died waits on that row until the batch commits, then reads the moved cursor.
/// The ping only bounds how long a runner that lost its lock keeps working next to the
/// new owner (their batches serialized on the row) and shows a stale `lock_pid`: a second
/// is as good as a batch for that, and spares a round trip per batch.
const LOCK_PING_EVERY: Duration = Duration::from_secs(1);

struct Stopping;

impl<P: PgProjection> Task<P> {
    async fn pause(&mut self, d: Duration) -> Result<(), Stopping> {
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            _ = self.stop.wait_for(|s| *s) => Err(Stopping),
        }
    }

    /// Waits `d` or until a notification; returns whether one came.
    async fn idle(&mut self, d: Duration) -> Result<bool, Stopping> {
        let Some(listener) = self.listener.as_mut() else {
            return self.pause(d).await.map(|()| false);
        };
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(false),
            r = listener.recv() => {
                if r.is_err() {
                    // Lost connection: polling carries on; reconnect on the next start.
                    self.listener = None;
                }
                Ok(r.is_ok())
            }
            _ = self.stop.wait_for(|s| *s) => Err(Stopping),
        }
    }

    /// [`Task::idle`], then the next idle interval: a notification read by a standby-fed
    /// runner starts polling again from `poll_min`, since the standby may not have replayed
    /// the commit it announces yet.
    async fn idle_next(&mut self, d: Duration) -> Result<Duration, Stopping> {
        let woken = self.idle(d).await?;
        Ok(if woken && self.engine.standby.is_some() {
            self.options.poll_min
        } else {
            d
        })
    }

    /// Sets the state. Persists it first when it or the lock session changed, so that a
    /// watcher of the in-process status that sees the new state finds it stored too.
    async fn set_state(&mut self, state: ProjectionState) {
        self.set_state_with(state, |_| {}).await;
    }

    /// [`Task::set_state`], with `also` applied to the same update.
    async fn set_state_with(
        &mut self,
        state: ProjectionState,
        also: impl FnOnce(&mut ProjectionStatus),
    ) {
        let mut next = self.status.borrow().clone();
        next.state = state;
        also(&mut next);
        if state != ProjectionState::Failing {
            next.failing_event = None;
            next.attempts = 0;
        }
        let pid = self.session.as_ref().map(|x| x.pid);
        if self.saved != Some((state, pid)) {
            self.persist(&next).await;
        }
        self.status.send_replace(next);
    }

    /// Writes `s` to this instance's status row.
    async fn persist(&mut self, s: &ProjectionStatus) {
        let saved = self
            .engine
            .save_status(self.instance, s, self.session.as_ref())
            .await;
        if let Err(e) = saved {
            let projection = self.engine.name();
            if self.outage.is_on() {
                tracing::debug!(projection, error = %e, "could not save projection status");
            } else {
                tracing::warn!(projection, error = %e, "could not save projection status");
            }
        }
        self.saved = Some((s.state, self.session.as_ref().map(|x| x.pid)));
    }

    async fn fail(
        &mut self,
        attempt: u32,
        error: String,
        event: Option<EventRef>,
    ) -> Result<(), Stopping> {
        if self.outage.is_on() {
            tracing::debug!(projection = self.engine.name(), attempt, %error, "projection failing; retrying");
        } else {
            tracing::warn!(projection = self.engine.name(), attempt, %error, "projection failing; retrying");
        }
        let mut next = self.status.borrow().clone();
        next.fail(attempt, error, event, Utc::now());
        self.persist(&next).await;
        self.status.send_replace(next);
        self.refresh_lag(true).await;
        self.pause(self.options.backoff(attempt)).await
    }

    /// After a failed attempt: whether the server answers at all. A failure it
    /// answers through (a handler's deadlock, a constraint) is this projection's own; one it
    /// does not answer is an outage, said once ([`Outage`]).
    async fn check_outage(&mut self) {
        if self.outage.is_on() {
            return;
        }
        if let Err(e) = self.engine.store.check_connection().await {
            let name = self.engine.name().to_owned();
            self.outage.lost(&name, "the database", &e.to_string());
        }
    }

    /// Measures the lag of the checkpoint (due every `lag_every`, or now with `force`).
    async fn refresh_lag(&mut self, force: bool) {
        self.lag
            .refresh(&self.engine.store, &self.status, force)
            .await;
        if let Some(meter) = self.standby_meter.as_mut() {
            meter
                .refresh(&self.engine.store, &self.engine.name, self.instance)
                .await;
        }
    }

    async fn run(mut self) {
        // A handler's panic is caught per event (`handle_guarded`); this catches the rest,
        // so that the status says the task is gone instead of showing its last state.
        let crashed = catch_panic(self.run_inner()).await.err();
        // Recorded before the lock session closes, so that a standby taking over never
        // finds this instance's row still claiming the lock.
        let owned = self.held;
        self.status.send_modify(|s| s.lock_pid = None);
        self.session = None;
        if let Some(panic) = crashed {
            tracing::error!(projection = self.engine.name(), %panic, "projection runner task panicked");
            self.set_state_with(ProjectionState::Crashed, |s| {
                s.crash(format!("runner task panicked: {panic}"), Utc::now());
            })
            .await;
        } else if owned {
            self.set_state(ProjectionState::Stopped).await;
        } else {
            // A standby that stops leaves no row behind.
            self.engine.delete_status(self.instance).await;
            self.status
                .send_modify(|s| s.state = ProjectionState::Stopped);
        }
        if let Some(conn) = self.lock.take() {
            // Unlocked before the close, so that a rebuild started right after `stop`
            // returns finds the lock free.
            release(conn).await;
        }
    }

    /// Holds the lock (taking it when free), or waits in standby.
    async fn ensure_lock(&mut self) -> Result<bool, Stopping> {
        if self.external {
            if !self.held {
                self.held = true;
                let pid = self.session.as_ref().map(|x| x.pid);
                self.begin_owning(pid).await;
            }
            return Ok(true);
        }
        if let Some(conn) = self.lock.as_mut() {
            if self.held && self.pinged.is_some_and(|t| t.elapsed() < LOCK_PING_EVERY) {
                return Ok(true);
            }
            if conn.ping().await.is_ok() {
                self.pinged = Some(Instant::now());
                if self.held {
                    return Ok(true);
                }
            } else {
                // The session died (and any lock with it): another runner may be active now.
                self.lock = None;
                self.session = None;
                self.held = false;
                self.pinged = None;
                self.status.send_modify(|s| s.lock_pid = None);
            }
        }
        let conn = match self.lock.take() {
            Some(conn) => Ok(conn),
            None => match self.engine.lock_session().await {
                Ok(mut conn) => match self.engine.session_info(&mut conn).await {
                    Ok(info) => {
                        self.session = Some(info);
                        Ok(conn)
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        };
        let name = self.engine.name().to_owned();
        let attempt = match conn {
            Ok(mut conn) => {
                let r = self.engine.try_lock_on(&mut conn, &name).await;
                self.lock = Some(conn);
                r
            }
            Err(e) => Err(e),
        };
        match attempt {
            Ok(Some(pid)) => {
                self.held = true;
                self.pinged = Some(Instant::now());
                self.begin_owning(Some(pid)).await;
                Ok(true)
            }
            Ok(None) => {
                self.set_state(ProjectionState::Standby).await;
                self.pause(self.options.standby_poll).await?;
                Ok(false)
            }
            Err(e) => {
                self.lock = None;
                self.session = None;
                self.check_outage().await;
                let attempt = self.status.borrow().attempts + 1;
                self.fail(attempt, format!("taking the projection lock: {e}"), None)
                    .await?;
                Ok(false)
            }
        }
    }

    /// Just took the lock (held by session `pid`): prunes the history rows, listens, and
    /// says so.
    async fn begin_owning(&mut self, pid: Option<i32>) {
        self.engine.prune_statuses(self.instance).await;
        if let Some(channel) = self.options.listen_channel.clone() {
            match PgListener::connect_with(self.engine.store.pool()).await {
                Ok(mut l) => {
                    if l.listen(&channel).await.is_ok() {
                        self.listener = Some(l);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen; polling only"),
            }
        }
        // The lock pid and the new state become visible together.
        self.set_state_with(ProjectionState::CatchingUp, |s| s.lock_pid = pid)
            .await;
    }

    async fn run_inner(&mut self) -> Result<(), Stopping> {
        let batch = self.options.batch_size;
        let mut limit = batch;
        let mut retrying = false;
        let mut attempt = 0;
        let mut idle = self.options.poll_min;
        while !*self.stop.borrow() {
            if !self.ensure_lock().await? {
                continue;
            }
            match self.engine.batch(limit, retrying).await {
                Ok(Batch::Committed {
                    cursor,
                    processed,
                    events,
                    full,
                    parked,
                    ..
                }) => {
                    self.outage.back(self.engine.name(), cursor);
                    self.status.send_modify(|s| {
                        s.checkpoint = cursor;
                        s.events_processed = processed;
                        s.batches += 1;
                        s.parked_skipped += parked;
                    });
                    let was_limited = limit < batch;
                    limit = batch;
                    retrying = false;
                    attempt = 0;
                    if full || was_limited {
                        self.set_state(ProjectionState::CatchingUp).await;
                        self.refresh_lag(false).await;
                        continue;
                    }
                    self.set_state(ProjectionState::Live).await;
                    self.refresh_lag(true).await;
                    idle = if events > 0 {
                        self.options.poll_min
                    } else {
                        (idle * 2).min(self.options.poll_max)
                    };
                    idle = self.idle_next(idle).await?;
                }
                Ok(Batch::Idle { cursor, processed }) => {
                    self.outage.back(self.engine.name(), cursor);
                    self.status.send_modify(|s| {
                        s.checkpoint = cursor;
                        s.events_processed = processed;
                    });
                    self.set_state(ProjectionState::Live).await;
                    self.refresh_lag(false).await;
                    idle = (idle * 2).min(self.options.poll_max);
                    idle = self.idle_next(idle).await?;
                }
                Ok(Batch::Failed { index, .. }) if index > 0 => {
                    // Commit the good events before the failing one first.
                    limit = index;
                }
                Ok(Batch::Failed { event, failure, .. }) => {
                    attempt += 1;
                    limit = 1;
                    retrying = true;
                    let message = format!(
                        "{} v{} (event {}, cursor {}): {failure}",
                        event.stream_id, event.version, event.event_id, event.cursor
                    );
                    let at = EventRef {
                        stream_id: event.stream_id,
                        version: event.version,
                        event_id: event.event_id,
                        cursor: event.cursor,
                    };
                    self.fail(attempt, message, Some(at)).await?;
                }
                Err(e) => {
                    // The lock session may have gone with whatever failed: ask it first.
                    self.pinged = None;
                    attempt += 1;
                    self.check_outage().await;
                    self.fail(attempt, e.to_string(), None).await?;
                }
            }
        }
        Ok(())
    }
}
