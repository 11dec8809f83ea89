//! Scenario `relay`: the relay to NATS JetStream against publishing the same messages with
//! async-nats directly, measured in the same run. Both publish every event of an in-memory
//! feed with the same subjects and headers (`Nats-Msg-Id`, `Nats-Expected-Last-Msg-Id`, the
//! chronik headers), pipelined the same way (256 awaiting their acknowledgement, acks in
//! order), each into a fresh stream of its own. The ratio is what the relay's feed reads,
//! runner and checkpoints cost on top of the publishing itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronik_core::{ExpectedVersion, FeedCursor, RecordedEvent, StreamId};
use chronik_memory::MemoryStore;
use chronik_relay::async_nats::{self, HeaderMap, header, jetstream};
use chronik_relay::{NatsRelay, RelayConfig, SubjectPrefix, headers};
use chronik_store::{EventStore, FeedFilter, MAX_FEED_PAGE};
use uuid::Uuid;

use crate::Plan;
use crate::harness;
use crate::memory::new_event;
use crate::report::Report;

const WINDOW: usize = 256;

pub(crate) async fn run(url: &str, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let client = match async_nats::connect(url).await {
        Ok(c) => c,
        Err(e) => {
            report.notes.push(format!(
                "no NATS at {} ({e}): relay scenario skipped",
                chronik_relay::redact_url(url)
            ));
            return Ok(());
        }
    };
    let js = jetstream::new(client);
    let n = plan.relay_events;
    let store = Arc::new(MemoryStore::new());
    // Streams of 10 events, appended 10 at a time.
    for _ in 0..n.div_ceil(10) {
        let events: Vec<_> = (0..10).map(|_| new_event()).collect();
        store
            .append(
                &StreamId::for_category("order", Uuid::new_v4())?,
                ExpectedVersion::NoStream,
                &events,
            )
            .await?;
    }
    let events = all_events(&store).await?;
    let head = events.last().map_or(FeedCursor::START, |e| e.cursor);
    let mut relay_runs = (Vec::new(), 0_u64, Duration::ZERO);
    let mut direct_runs = (Vec::new(), 0_u64, Duration::ZERO);
    for _ in 0..plan.rounds.max(1) {
        let tag = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let prefix = SubjectPrefix::new(format!("bench.r{tag}"))?;
        let stream = format!("BENCH_R{tag}");
        let relay = Arc::new(
            NatsRelay::connect(
                RelayConfig::new(url)
                    .subject_prefix(prefix.clone())
                    .stream_name(stream.clone()),
            )
            .await?,
        );
        let name = relay.projection_name().to_owned();
        let started = Instant::now();
        let handle = Arc::clone(&relay)
            .runner(Arc::clone(&store), None)
            .spawn()?;
        handle
            .wait_for(&name, head, Duration::from_secs(600))
            .await?;
        let elapsed = started.elapsed();
        handle.stop().await?;
        relay_runs.0.push(micros(elapsed));
        relay_runs.1 += relay.stats().acknowledged;
        relay_runs.2 += elapsed;
        js.delete_stream(&stream).await?;

        let tag = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let prefix = SubjectPrefix::new(format!("bench.d{tag}"))?;
        let stream = format!("BENCH_D{tag}");
        js.create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![prefix.wildcard()],
            duplicate_window: Duration::from_secs(120),
            ..jetstream::stream::Config::default()
        })
        .await?;
        let started = Instant::now();
        publish_directly(&js, &prefix, &events).await?;
        let elapsed = started.elapsed();
        direct_runs.0.push(micros(elapsed));
        direct_runs.1 += events.len() as u64;
        direct_runs.2 += elapsed;
        js.delete_stream(&stream).await?;
    }
    report.push(
        "relay",
        "chronik-relay",
        1,
        harness::stats(relay_runs.0, relay_runs.1, relay_runs.2),
    );
    report.push(
        "relay",
        "async-nats-direct",
        1,
        harness::stats(direct_runs.0, direct_runs.1, direct_runs.2),
    );
    report.ratio("relay", "chronik-relay", "async-nats-direct", 1, None);
    report.notes.push(format!(
        "relay: {n} events of an in-memory feed published and acknowledged per round; latency columns are whole rounds"
    ));
    Ok(())
}

async fn all_events(store: &MemoryStore) -> anyhow::Result<Vec<RecordedEvent>> {
    let mut out = Vec::new();
    let mut cursor = FeedCursor::START;
    loop {
        let page = store
            .read_feed(cursor, &FeedFilter::all(), MAX_FEED_PAGE)
            .await?;
        let Some(last) = page.events.last() else {
            return Ok(out);
        };
        cursor = last.cursor;
        out.extend(page.events);
    }
}

/// The relay's messages, published by hand: same subjects, headers and window.
async fn publish_directly(
    js: &jetstream::Context,
    prefix: &SubjectPrefix,
    events: &[RecordedEvent],
) -> anyhow::Result<()> {
    let mut window = VecDeque::with_capacity(WINDOW);
    let mut previous: Option<String> = None;
    for e in events {
        let mut h = HeaderMap::new();
        let id = e.event_id.to_string();
        h.insert(header::NATS_MESSAGE_ID, id.as_str());
        if let Some(p) = &previous {
            h.insert(header::NATS_EXPECTED_LAST_MESSAGE_ID, p.as_str());
        }
        h.insert(headers::EVENT_TYPE, e.event_type.as_str());
        h.insert(
            headers::SCHEMA_VERSION,
            e.schema_version.to_string().as_str(),
        );
        h.insert(headers::STREAM_ID, e.stream_id.as_str());
        h.insert(headers::STREAM_VERSION, e.version.to_string().as_str());
        h.insert(headers::CURSOR, e.cursor.to_string().as_str());
        h.insert(headers::RECORDED_AT, e.recorded_at.to_rfc3339().as_str());
        if window.len() >= WINDOW
            && let Some(ack) = window.pop_front()
        {
            ack.await?;
        }
        let ack = js
            .publish_with_headers(
                prefix.subject(&e.stream_id),
                h,
                e.payload.to_string().into_bytes().into(),
            )
            .await?;
        window.push_back(ack);
        previous = Some(id);
    }
    for ack in window {
        ack.await?;
    }
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
