//! The faults, each one a task that runs until the run ends and counts what it did.

use std::sync::Arc;
use std::time::Duration;

use chronik_store::EventStore as _;
use rand::Rng as _;
use rand_chacha::ChaCha8Rng;
use sqlx::{PgPool, Row as _};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::model::Outcome;
use crate::workload::{Part, definite_failure, new_events, pick_expected, pick_stream, resolve};
use crate::world::{C, World, between};

/// Application names of the harness's sessions: the killer picks its victims by them.
pub(crate) mod app {
    /// Writers' pool.
    pub(crate) const WRITER: &str = "torture-writer";
    /// The tiny, exhaustible pool.
    pub(crate) const TINY: &str = "torture-tiny";
    /// Held-open and prepared transactions.
    pub(crate) const HOLDER: &str = "torture-holder";
    /// Projection runners (batches and lock sessions).
    pub(crate) const PROJECTION: &str = "torture-projection";
    /// Fault injection and verification.
    pub(crate) const CONTROL: &str = "torture-control";
    /// The checkpoint sampler.
    pub(crate) const SAMPLER: &str = "torture-sampler";
    /// Reactor runners (their feed reads, checkpoints and reactions).
    pub(crate) const REACTOR: &str = "torture-reactor";
}

/// A part for a fault task: mostly cold streams, some hot ones (to block writers).
async fn fault_part(world: &World, rng: &mut ChaCha8Rng, writer: &str) -> Part {
    let stream = pick_stream(world, rng, 0.3);
    let known = if rng.gen_bool(0.7) {
        world
            .store
            .stream_version(&stream)
            .await
            .ok()
            .map(chronik_core::Version::get)
    } else {
        None
    };
    let n = rng.gen_range(1..=3);
    Part {
        expected: pick_expected(rng, known),
        events: new_events(rng, n, writer),
        stream,
    }
}

/// Transactions that append, stay open for a random time, then commit or roll back.
pub(crate) async fn held_open(world: Arc<World>, index: usize) {
    let mut rng = world.rng("held-open", index);
    let hold_max = world.plan.hold_max;
    while world
        .pause(between(&mut rng, Duration::from_millis(5), hold_max / 2))
        .await
    {
        let part = fault_part(&world, &mut rng, "held").await;
        let hold = between(&mut rng, Duration::from_millis(1), hold_max);
        let commit = rng.gen_bool(0.65);
        let Ok(mut tx) = world.holder.pool().begin().await else {
            continue;
        };
        match world
            .holder
            .append_in(&mut tx, &part.stream, part.expected, &part.events)
            .await
        {
            Ok(r) => {
                tokio::time::sleep(hold).await;
                if commit {
                    let outcome = match tx.commit().await {
                        Ok(()) => {
                            world.counts.inc(C::held_open_committed);
                            world.counts.inc(C::appends_ok_in_caller_tx);
                            world.counts.inc(C::appends_ok);
                            world.counts.add(C::events_ok, part.events.len() as u64);
                            Outcome::Stored {
                                first: r.first_version.get(),
                            }
                        }
                        Err(_) => resolve(&world, &part).await,
                    };
                    world.record(part.record("held-open", outcome));
                } else {
                    // Whether the rollback is acknowledged or the session died, nothing
                    // of an uncommitted transaction remains.
                    let _ = tx.rollback().await;
                    world.counts.inc(C::held_open_rolled_back);
                    world.record(part.record(
                        "held-open",
                        Outcome::Failed {
                            why: "rolled back".to_owned(),
                        },
                    ));
                }
            }
            Err(e) => {
                drop(tx);
                let outcome = definite_failure(&world, &e);
                world.record(part.record("held-open", outcome));
            }
        }
    }
}

/// The prepared-transaction id prefix of this database's runs.
pub(crate) const GID_PREFIX: &str = "chronik_torture_";

/// Whether `gid` is prepared, asked until the server answers (a fault may have killed the
/// pooled session the first attempts use).
async fn is_prepared(pool: &PgPool, gid: &str) -> Result<bool, sqlx::Error> {
    let mut attempt = 0;
    loop {
        let r =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE gid = $1)")
                .bind(gid)
                .fetch_one(pool)
                .await;
        match r {
            Err(_) if attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

/// Ends prepared transaction `gid` with `COMMIT PREPARED` or `ROLLBACK PREPARED`, retrying
/// while it is still prepared. Returns whether it was committed (`None`: unknown).
async fn finish_prepared(pool: &PgPool, gid: &str, commit: bool) -> Option<bool> {
    let verb = if commit { "COMMIT" } else { "ROLLBACK" };
    // `gid` is built from digits and the constant prefix only.
    let sql = format!("{verb} PREPARED '{gid}'");
    for attempt in 0..400u32 {
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str()))
            .execute(pool)
            .await
        {
            Ok(_) => return Some(commit),
            Err(_) => match is_prepared(pool, gid).await {
                // Gone: our own command took effect (nothing else ends our transactions).
                Ok(false) => return Some(commit),
                Ok(true) | Err(_) => {
                    let ms = 10u64.saturating_mul(1 << attempt.min(6)).min(500);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            },
        }
    }
    None
}

/// Prepared transactions: `BEGIN`, `append_in`, `PREPARE TRANSACTION`; later, from another
/// session, `COMMIT PREPARED` or `ROLLBACK PREPARED`.
pub(crate) async fn prepared(world: Arc<World>, control: PgPool) {
    let mut rng = world.rng("prepared", 0);
    let outstanding = Arc::new(Semaphore::new(4));
    let mut finishers = JoinSet::new();
    let mut n = 0u64;
    let hold_max = world.plan.hold_max;
    while world
        .pause(between(&mut rng, Duration::from_millis(5), hold_max / 2))
        .await
    {
        let Ok(permit) = Arc::clone(&outstanding).acquire_owned().await else {
            break;
        };
        n += 1;
        let gid = format!("{GID_PREFIX}{}_{n}", world.plan.seed);
        let part = fault_part(&world, &mut rng, "prepared").await;
        let hold = between(&mut rng, Duration::from_millis(1), hold_max);
        let commit = rng.gen_bool(0.6);
        let Ok(mut conn) = world.holder.pool().acquire().await else {
            continue;
        };
        // Raw `BEGIN`: `PREPARE TRANSACTION` ends the transaction, which sqlx's own
        // transaction type would not know. On any error the session is closed, never
        // returned to the pool with a transaction open.
        if sqlx::query("BEGIN").execute(&mut *conn).await.is_err() {
            let _ = conn.close().await;
            continue;
        }
        let appended = world
            .holder
            .append_in(&mut conn, &part.stream, part.expected, &part.events)
            .await;
        let first = match appended {
            Ok(r) => r.first_version.get(),
            Err(e) => {
                let _ = conn.close().await;
                let outcome = definite_failure(&world, &e);
                world.record(part.record("prepared", outcome));
                continue;
            }
        };
        let prepare = format!("PREPARE TRANSACTION '{gid}'");
        if sqlx::query(sqlx::AssertSqlSafe(prepare.as_str()))
            .persistent(false)
            .execute(&mut *conn)
            .await
            .is_ok()
        {
            // Out of the transaction again: the session can go back to the pool.
            drop(conn);
        } else {
            let _ = conn.close().await;
            // The acknowledgement may be lost after the server prepared it.
            match is_prepared(&control, &gid).await {
                Ok(true) => {}
                Ok(false) => {
                    world.record(part.record(
                        "prepared",
                        Outcome::Failed {
                            why: "prepare failed".to_owned(),
                        },
                    ));
                    continue;
                }
                Err(e) => {
                    world.counts.inc(C::unresolved);
                    world.record(part.record(
                        "prepared",
                        Outcome::Unresolved {
                            why: format!("cannot tell whether {gid} was prepared: {e}"),
                        },
                    ));
                    continue;
                }
            }
        }
        let (world, control) = (Arc::clone(&world), control.clone());
        finishers.spawn(async move {
            world.pause(hold).await;
            let outcome = match finish_prepared(&control, &gid, commit).await {
                Some(true) => {
                    world.counts.inc(C::prepared_committed);
                    world.counts.inc(C::appends_ok);
                    world.counts.add(C::events_ok, part.events.len() as u64);
                    Outcome::Stored { first }
                }
                Some(false) => {
                    world.counts.inc(C::prepared_rolled_back);
                    Outcome::Failed {
                        why: "rolled back prepared".to_owned(),
                    }
                }
                None => {
                    world.counts.inc(C::unresolved);
                    Outcome::Unresolved {
                        why: format!("prepared transaction {gid} could not be ended"),
                    }
                }
            };
            world.record(part.record("prepared", outcome));
            drop(permit);
        });
    }
    while finishers.join_next().await.is_some() {}
}

/// Rolls back every prepared transaction of the current database left by a run (returns
/// how many). Must run on a session connected to that database.
pub(crate) async fn roll_back_leftovers(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let gids: Vec<String> = sqlx::query_scalar(
        "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE $1",
    )
    .bind(format!("{GID_PREFIX}%"))
    .fetch_all(pool)
    .await?;
    for gid in &gids {
        let sql = format!("ROLLBACK PREPARED '{}'", gid.replace('\'', "''"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str()))
            .execute(pool)
            .await?;
    }
    Ok(gids.len() as u64)
}

/// Which sessions a kill targets.
#[derive(Debug, Clone, Copy)]
enum Victim {
    MidAppend,
    MidProjectionBatch,
    HeldTransaction,
}

impl Victim {
    fn query(self) -> String {
        let base = "SELECT pid FROM pg_stat_activity \
                    WHERE datname = current_database() AND pid <> pg_backend_pid()";
        match self {
            Self::MidAppend => format!(
                "{base} AND application_name IN ('{}', '{}') AND state = 'active' \
                 AND (query LIKE '%append_events%' OR query LIKE '%append_streams%')",
                app::WRITER,
                app::TINY
            ),
            Self::MidProjectionBatch => format!(
                "{base} AND application_name = '{}' AND xact_start IS NOT NULL \
                 AND state <> 'idle'",
                app::PROJECTION
            ),
            Self::HeldTransaction => format!(
                "{base} AND application_name = '{}' AND state = 'idle in transaction'",
                app::HOLDER
            ),
        }
    }

    fn counter(self) -> C {
        match self {
            Self::MidAppend => C::killed_mid_append,
            Self::MidProjectionBatch => C::killed_mid_projection_batch,
            Self::HeldTransaction => C::killed_held_transaction,
        }
    }
}

/// Kills sessions with `pg_terminate_backend`: mid-append, mid-projection-batch, or while
/// holding a transaction open.
pub(crate) async fn killer(world: Arc<World>, control: PgPool) {
    let mut rng = world.rng("killer", 0);
    let every = world.plan.kill_every;
    while world.pause(between(&mut rng, every / 8, every)).await {
        let victim = match rng.gen_range(0..100) {
            0..60 => Victim::MidAppend,
            60..85 => Victim::MidProjectionBatch,
            _ => Victim::HeldTransaction,
        };
        let pick = rng.r#gen::<u32>();
        let query = victim.query();
        // Catch one in the act: look a few times, a few milliseconds apart.
        for _ in 0..25 {
            let Ok(pids) = sqlx::query_scalar::<_, i32>(sqlx::AssertSqlSafe(query.as_str()))
                .fetch_all(&control)
                .await
            else {
                break;
            };
            if pids.is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            let pid = pids[pick as usize % pids.len()];
            let killed: Result<bool, _> = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&control)
                .await;
            if matches!(killed, Ok(true)) {
                world.counts.inc(victim.counter());
            }
            break;
        }
    }
}

/// Drops every connection to the scratch database at once (all pools, runners, sampler).
pub(crate) async fn massacre(world: Arc<World>, control: PgPool) {
    let mut rng = world.rng("massacre", 0);
    let every = world.plan.massacre_every;
    while world.pause(between(&mut rng, every / 2, every)).await {
        let killed = sqlx::query(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&control)
        .await
        .and_then(|r| r.try_get::<i64, _>(0));
        if let Ok(n) = killed {
            world.counts.inc(C::all_connections_dropped);
            world
                .counts
                .add(C::connections_dropped, u64::try_from(n).unwrap_or(0));
        }
    }
}

/// Fills the tiny pool and holds it, so that its users time out acquiring a connection.
pub(crate) async fn pool_hog(world: Arc<World>) {
    let mut rng = world.rng("pool-hog", 0);
    let pool = world.tiny.pool().clone();
    let size = pool.options().get_max_connections();
    let every = world.plan.kill_every * 4;
    while world.pause(between(&mut rng, every / 4, every)).await {
        let mut held = Vec::new();
        for _ in 0..size {
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(1), pool.acquire()).await {
                held.push(c);
            }
        }
        if held.len() == size as usize {
            world.counts.inc(C::pool_exhausted);
        }
        tokio::time::sleep(between(
            &mut rng,
            Duration::from_millis(20),
            Duration::from_millis(300),
        ))
        .await;
        drop(held);
    }
}

/// Restarts the database server with `cmd` (run by `sh -c`), now and then.
pub(crate) async fn restarter(world: Arc<World>, cmd: String, control: PgPool) {
    let mut rng = world.rng("restart", 0);
    let every = world.plan.restart_every;
    while world.pause(between(&mut rng, every / 2, every)).await {
        let cmd = cmd.clone();
        // std's Command on a blocking thread: no tokio `process` feature for the workspace.
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .stdin(std::process::Stdio::null())
                .status()
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match status {
            Ok(s) if s.success() => world.counts.inc(C::database_restarts),
            Ok(s) => eprintln!("warning: the restart command failed ({s})"),
            Err(e) => eprintln!("warning: cannot run the restart command: {e}"),
        }
        // Wait until the server answers again before the next restart can be scheduled.
        for _ in 0..600 {
            if sqlx::query("SELECT 1").execute(&control).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
