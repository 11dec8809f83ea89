//! The relay to NATS JetStream under chaos: a `nats-server -js` of the harness's own (a
//! free port, a store in a directory of its own) restarted now and then, so that the
//! relay's connection drops with publishes in flight; the relay killed as a process death
//! would kill it (task aborted, its pool closed, its NATS client dropped), often with
//! events published beyond its checkpoint, and started again. The checker then reads the
//! JetStream stream back and finds every committed event stored once, each stream in
//! version order.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chronik_core::FeedCursor;
use chronik_postgres::PgEventStore;
use chronik_projections::{RunnerHandle, RunnerOptions};
use chronik_relay::async_nats::jetstream;
use chronik_relay::{NatsRelay, RelayConfig, SubjectPrefix, headers};
use chronik_store::EventStore as _;
use futures::StreamExt as _;
use rand::Rng as _;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use uuid::Uuid;

use crate::model::RelayedMessage;
use crate::nats_server::NatsServer;
use crate::partitions::own_pool;
use crate::world::{C, World, between};

/// The JetStream stream the relay fills (on the harness's own server).
pub(crate) const STREAM: &str = "TORTURE";

/// The subject prefix.
const PREFIX: &str = "torture";

/// The harness's NATS server, restarted by [`relay_chaos`].
pub(crate) type Server = Arc<Mutex<NatsServer>>;

/// Starts the harness's own `nats-server -js`.
pub(crate) async fn start_server() -> std::io::Result<Server> {
    let server = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .map_err(std::io::Error::other)??;
    Ok(Arc::new(Mutex::new(server)))
}

fn url(server: &Server) -> String {
    server.lock().unwrap_or_else(PoisonError::into_inner).url()
}

fn options(rng: &mut ChaCha8Rng) -> (RunnerOptions, usize) {
    let runner = RunnerOptions {
        batch_size: [1, 7, 50, 500][rng.gen_range(0..4)],
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(100),
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(300),
        lag_every: Duration::from_millis(200),
        ..RunnerOptions::default()
    };
    (runner, [1, 4, 32, 256][rng.gen_range(0..4)])
}

/// A running relay: its runner, the relay (for its counters) and the store (pool) it alone
/// uses.
struct Relay {
    handle: RunnerHandle,
    relay: Arc<NatsRelay>,
    store: PgEventStore,
}

/// Connects a relay (on a pool of its own, made from `like`'s connection options) and
/// starts its runner; `None` when NATS or PostgreSQL refuses for now (a fault).
async fn start(
    like: &PgEventStore,
    server: &Server,
    (runner, in_flight): (RunnerOptions, usize),
    world: &World,
) -> Option<Relay> {
    let config = RelayConfig::new(url(server))
        .subject_prefix(SubjectPrefix::new(PREFIX).ok()?)
        .stream_name(STREAM)
        .ack_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .max_in_flight(in_flight)
        .runner_options(runner);
    let relay = match NatsRelay::connect(config).await {
        Ok(r) => Arc::new(r),
        Err(e) => {
            // The server may be restarting: not a finding, the next attempt will do.
            eprintln!("warning: cannot connect the relay: {e}");
            return None;
        }
    };
    let store = own_pool(like, 2, "the relay").await?;
    match Arc::clone(&relay)
        .runner(Arc::new(store.clone()), None)
        .spawn()
    {
        Ok(handle) => {
            world.counts.inc(C::relay_starts);
            Some(Relay {
                handle,
                relay,
                store,
            })
        }
        Err(e) => {
            eprintln!("warning: cannot start the relay's runner: {e}");
            store.pool().close().await;
            None
        }
    }
}

/// The cursor of the last message JetStream stored, `None` when the stream is empty or
/// cannot be asked (a restart).
async fn last_stored(js: &jetstream::Context) -> Option<FeedCursor> {
    let mut stream = js.get_stream(STREAM).await.ok()?;
    let last = stream.info().await.ok()?.state.last_sequence;
    if last == 0 {
        return None;
    }
    let message = stream.get_raw_message(last).await.ok()?;
    message.headers.get(headers::CURSOR)?.as_str().parse().ok()
}

/// Kills `r` as a process death would: the runner's task is aborted (wherever it was in a
/// batch), its sessions end and its NATS connection closes. Counts it, and whether
/// JetStream held events beyond its checkpoint (killed mid-batch: a restart sends them
/// again, and JetStream must discard them).
async fn kill(r: Relay, world: &World) {
    let Relay {
        handle,
        relay,
        store,
    } = r;
    let status = handle.subscribe(relay.projection_name());
    handle.abort().await;
    world.counts.inc(C::relay_kills);
    let checkpoint = status.map(|s| s.borrow().checkpoint);
    if let (Some(stored), Some(checkpoint)) = (last_stored(relay.jetstream()).await, checkpoint)
        && stored > checkpoint
    {
        world.counts.inc(C::relay_kills_mid_batch);
    }
    count(&relay, world);
    let _ = tokio::time::timeout(Duration::from_secs(10), store.pool().close()).await;
}

/// Adds what `relay` did to the run's counters.
fn count(relay: &NatsRelay, world: &World) {
    let stats = relay.stats();
    world.counts.add(C::relay_resends, stats.resends);
    world.counts.add(C::relay_duplicates, stats.duplicates);
}

impl Relay {
    /// Stops it (after its current batch is acknowledged and checkpointed), within 10 s.
    async fn stop(self, world: &World) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle.stop()).await;
        count(&self.relay, world);
        self.store.pool().close().await;
    }
}

/// Runs the relay until the run ends, under its faults: killed (as a process death kills
/// it) and started again, stopped and started, its NATS server restarted under it (every
/// connection drops, publishes in flight included), and killed while that server is down.
pub(crate) async fn relay_chaos(world: Arc<World>, like: PgEventStore, server: Server) {
    let mut rng = world.rng("relay", 0);
    let mut relay = start(&like, &server, options(&mut rng), &world).await;
    let every = world.plan.kill_every * 3;
    while world.pause(between(&mut rng, every / 4, every)).await {
        let down = between(&mut rng, Duration::ZERO, Duration::from_millis(400));
        match (rng.gen_range(0..100), relay.take()) {
            (0..40, Some(r)) => kill(r, &world).await,
            (40..50, Some(r)) => {
                r.stop(&world).await;
                world.counts.inc(C::relay_stops);
            }
            (50..75, r) => {
                relay = r;
                restart_nats(&server, down, &world, None).await;
            }
            (_, r) => restart_nats(&server, down, &world, r).await,
        }
        if relay.is_none() {
            relay = start(&like, &server, options(&mut rng), &world).await;
        }
    }
    if let Some(r) = relay {
        kill(r, &world).await;
    }
}

/// Restarts the harness's NATS server (SIGTERM, `down` later the same port and store),
/// killing `victim` while the server is down.
async fn restart_nats(server: &Server, down: Duration, world: &World, victim: Option<Relay>) {
    let blocking = |f: fn(&mut NatsServer) -> std::io::Result<()>| {
        let server = Arc::clone(server);
        async move {
            tokio::task::spawn_blocking(move || {
                f(&mut server.lock().unwrap_or_else(PoisonError::into_inner))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
        }
    };
    if let Err(e) = blocking(NatsServer::stop).await {
        eprintln!("warning: cannot stop the NATS server: {e}");
    }
    tokio::time::sleep(down).await;
    if let Some(r) = victim {
        kill(r, world).await;
        world.counts.inc(C::relay_kills_during_outage);
    }
    match blocking(NatsServer::run).await {
        Ok(()) => world.counts.inc(C::nats_restarts),
        Err(e) => eprintln!("warning: cannot start the NATS server again: {e}"),
    }
}

/// Runs one relay (no faults) until its checkpoint reaches the feed's end, then stops it;
/// returns why not, if its checkpoint did not move for `stall`.
pub(crate) async fn catch_up(
    world: &World,
    store: &PgEventStore,
    server: &Server,
    stall: Duration,
) -> Result<(), String> {
    let head = store
        .feed_head()
        .await
        .map_err(|e| format!("cannot read the feed's head: {e}"))?
        .last;
    let mut deadline = Instant::now() + stall;
    let relay = loop {
        let mut rng = world.rng("final-relay", 0);
        let (runner, _) = options(&mut rng);
        let settle = RunnerOptions {
            batch_size: 500,
            ..runner
        };
        if let Some(r) = start(store, server, (settle, 256), world).await {
            break r;
        }
        if Instant::now() >= deadline {
            return Err("cannot start the final relay".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let name = relay.relay.projection_name().to_owned();
    let Some(head) = head else {
        relay.stop(world).await;
        return Ok(());
    };
    let mut last = None;
    let result = loop {
        let status = relay.handle.status(&name);
        let checkpoint = status.as_ref().map(|s| s.checkpoint);
        if checkpoint.is_some_and(|c| c >= head) {
            break Ok(());
        }
        if checkpoint != last {
            last = checkpoint;
            deadline = Instant::now() + stall;
        }
        if Instant::now() >= deadline {
            break Err(format!(
                "the relay stopped short of the feed's end {head} (no progress for {stall:?}): {status:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    relay.stop(world).await;
    result
}

/// Every message of the relay's JetStream stream, in the stream's order, read on a
/// connection of its own.
pub(crate) async fn read_back(server: &Server) -> anyhow::Result<Vec<RelayedMessage>> {
    let client = chronik_relay::async_nats::connect(url(server)).await?;
    let js = jetstream::new(client);
    let mut stream = js.get_stream(STREAM).await?;
    let state = stream.info().await?.state.clone();
    if state.messages == 0 {
        return Ok(Vec::new());
    }
    let stream = &stream;
    let messages: Vec<_> = futures::stream::iter(state.first_sequence..=state.last_sequence)
        .map(|seq| async move { (seq, stream.get_raw_message(seq).await) })
        .buffered(64)
        .collect()
        .await;
    messages
        .into_iter()
        .map(|(seq, m)| {
            let m = m.map_err(|e| anyhow::anyhow!("cannot read message {seq}: {e}"))?;
            let header = |name: &str| {
                m.headers
                    .get(name)
                    .map(|v| v.as_str().to_owned())
                    .ok_or_else(|| anyhow::anyhow!("message {seq} has no {name} header"))
            };
            Ok(RelayedMessage {
                seq,
                stream: header(headers::STREAM_ID)?,
                version: header(headers::STREAM_VERSION)?.parse()?,
                event_id: Uuid::parse_str(&header("Nats-Msg-Id")?)?,
            })
        })
        .collect()
}
