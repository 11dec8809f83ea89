//! What every task of a run shares: the stores, the plan, the stop signal, the counters
//! and the model's records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chronik_postgres::PgEventStore;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::model::AppendRecord;

/// Declares the counters: one name each, printed and written to the JSON summary.
macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// A counter of the run.
        #[derive(Debug, Clone, Copy)]
        #[allow(non_camel_case_types)]
        pub(crate) enum C { $($name),* }
        /// Every counter's name, in declaration order.
        pub(crate) const COUNTER_NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

counters!(
    appends_ok,
    appends_ok_in_caller_tx,
    multi_stream_appends_ok,
    multi_stream_refused,
    racing_transactions,
    refused_in_caller_tx,
    contested_won,
    contested_duplicates,
    commits_refused,
    events_ok,
    conflicts,
    order_errors,
    pool_timeouts,
    failed_other,
    ambiguous,
    ambiguous_already_appended,
    ambiguous_appended_on_resend,
    ambiguous_not_stored,
    unresolved,
    anomalies,
    idempotent_resends,
    reuse_resends,
    client_timeouts,
    held_open_committed,
    held_open_rolled_back,
    prepared_committed,
    prepared_rolled_back,
    killed_mid_append,
    killed_mid_projection_batch,
    killed_held_transaction,
    pool_exhausted,
    runner_aborts,
    runner_stops,
    runner_starts,
    handler_failures,
    handler_panics,
    all_connections_dropped,
    connections_dropped,
    database_restarts,
    checkpoint_samples,
    reactions_executed,
    reactions_already_done,
    reactor_crashes,
    reactor_runner_starts,
    reactor_runner_aborts,
    partition_workers_started,
    partition_workers_killed,
    partition_workers_stopped,
    relay_starts,
    relay_kills,
    relay_kills_mid_batch,
    relay_kills_during_outage,
    relay_stops,
    relay_resends,
    relay_duplicates,
    nats_restarts,
);

/// The run's counters.
#[derive(Debug)]
pub(crate) struct Counts(Vec<AtomicU64>);

impl Counts {
    fn new() -> Self {
        Self(COUNTER_NAMES.iter().map(|_| AtomicU64::new(0)).collect())
    }

    /// Adds `n` to `c`.
    pub(crate) fn add(&self, c: C, n: u64) {
        self.0[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to `c`.
    pub(crate) fn inc(&self, c: C) {
        self.add(c, 1);
    }

    /// The value of `c`.
    pub(crate) fn get(&self, c: C) -> u64 {
        self.0[c as usize].load(Ordering::Relaxed)
    }

    /// Every counter with its name.
    pub(crate) fn all(&self) -> Vec<(&'static str, u64)> {
        COUNTER_NAMES
            .iter()
            .zip(&self.0)
            .map(|(n, v)| (*n, v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Sizes and rates of a run (smoke and full differ).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) seed: u64,
    pub(crate) duration: Duration,
    pub(crate) max_ops: Option<u64>,
    pub(crate) writers: usize,
    pub(crate) hot_streams: usize,
    pub(crate) cold_streams: usize,
    /// Longest time a held-open or prepared transaction stays open.
    pub(crate) hold_max: Duration,
    /// Pause between two kills (random up to this).
    pub(crate) kill_every: Duration,
    /// Pause between two "drop every connection" (random between half and all of it).
    pub(crate) massacre_every: Duration,
    /// Pause between two restarts, when a restart command is given.
    pub(crate) restart_every: Duration,
}

/// State shared by every task.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) plan: Plan,
    /// The writers' store (a pool as large as the writers).
    pub(crate) store: PgEventStore,
    /// A store over a two-connection pool with a tiny acquire timeout.
    pub(crate) tiny: PgEventStore,
    /// The store held-open and prepared transactions use.
    pub(crate) holder: PgEventStore,
    pub(crate) counts: Counts,
    records: Mutex<Vec<AppendRecord>>,
    resend_violations: Mutex<Vec<String>>,
    sample_violations: Mutex<Vec<String>>,
    runner_crashes: Mutex<Vec<String>>,
    ops_started: AtomicU64,
    transactions: AtomicU64,
    deadline: Instant,
    stop: watch::Sender<bool>,
}

impl World {
    pub(crate) fn new(
        plan: Plan,
        store: PgEventStore,
        tiny: PgEventStore,
        holder: PgEventStore,
    ) -> Self {
        Self {
            deadline: Instant::now() + plan.duration,
            plan,
            store,
            tiny,
            holder,
            counts: Counts::new(),
            records: Mutex::default(),
            resend_violations: Mutex::default(),
            sample_violations: Mutex::default(),
            runner_crashes: Mutex::default(),
            ops_started: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            stop: watch::Sender::new(false),
        }
    }

    /// A generator for task `name`, derived from the seed only: the same seed gives every
    /// task the same sequence of decisions.
    pub(crate) fn rng(&self, name: &str, index: usize) -> ChaCha8Rng {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.plan.seed.to_le_bytes());
        seed[8..16].copy_from_slice(&(index as u64).to_le_bytes());
        for (i, b) in name.bytes().take(16).enumerate() {
            seed[16 + i] = b;
        }
        ChaCha8Rng::from_seed(seed)
    }

    /// Whether the run goes on (no stop, before the deadline).
    pub(crate) fn running(&self) -> bool {
        !*self.stop.borrow() && Instant::now() < self.deadline
    }

    /// Claims one operation of the budget; false when the run is over.
    pub(crate) fn take_op(&self) -> bool {
        if !self.running() {
            return false;
        }
        let n = self.ops_started.fetch_add(1, Ordering::Relaxed);
        self.plan.max_ops.is_none_or(|max| n < max)
    }

    /// A fresh caller-transaction number (from 1), for the model's records.
    pub(crate) fn next_tx(&self) -> u64 {
        self.transactions.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Operations started.
    pub(crate) fn ops(&self) -> u64 {
        self.ops_started.load(Ordering::Relaxed)
    }

    /// Ends the run.
    pub(crate) fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Sleeps `d`, or less if the run ends meanwhile; returns whether it is still running.
    pub(crate) async fn pause(&self, d: Duration) -> bool {
        let until = (Instant::now() + d).min(self.deadline);
        let mut stop = self.stop.subscribe();
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        self.running()
    }

    /// Records an append's outcome for the model.
    pub(crate) fn record(&self, r: AppendRecord) {
        lock(&self.records).push(r);
    }

    pub(crate) fn resend_violation(&self, v: String) {
        lock(&self.resend_violations).push(v);
    }

    pub(crate) fn sample_violation(&self, v: String) {
        lock(&self.sample_violations).push(v);
    }

    /// A runner that was stopped and reported its task dead (`Crashed`).
    pub(crate) fn runner_crash(&self, v: String) {
        lock(&self.runner_crashes).push(v);
    }

    pub(crate) fn runner_crashes(&self) -> Vec<String> {
        lock(&self.runner_crashes).clone()
    }

    pub(crate) fn take_records(&self) -> Vec<AppendRecord> {
        std::mem::take(&mut *lock(&self.records))
    }

    pub(crate) fn resend_violations(&self) -> Vec<String> {
        lock(&self.resend_violations).clone()
    }

    pub(crate) fn sample_violations(&self) -> Vec<String> {
        lock(&self.sample_violations).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A random duration in `[lo, hi)` (or `lo` when empty).
pub(crate) fn between(rng: &mut ChaCha8Rng, lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    let span = u64::try_from((hi - lo).as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    lo + Duration::from_micros(rng.gen_range(0..span))
}
