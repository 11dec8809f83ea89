//! `order-consumer`: a sibling service of the Orders example that never reads chronik's
//! database. It subscribes to the order events `chronik relay nats` publishes to NATS
//! JetStream, with a durable consumer (it resumes where it left off after a restart), and
//! handles each event once: decoded as the service's own `OrderEvent`, printed, acknowledged.
//!
//! ```sh
//! chronik relay nats --url nats://127.0.0.1:4222 &      # fills stream CHRONIK
//! cargo run --bin order-consumer -- --url nats://127.0.0.1:4222
//! ```
//!
//! Delivery from JetStream is at least once (a message whose acknowledgement is lost comes
//! again), so the handler is idempotent: it remembers the last version it handled per stream
//! and passes over anything at or below it. The relay publishes each stream's events in
//! order, so versions only go up.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use chronik::DomainEvent as _;
use chronik::relay::async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};
use chronik::relay::{SubjectPrefix, headers};
use clap::Parser;
use futures::StreamExt as _;
use orders::OrderEvent;

/// Prints the order events relayed to NATS JetStream, with a durable consumer.
#[derive(Debug, Parser)]
#[command(name = "order-consumer", version)]
struct Args {
    /// The NATS server.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// The JetStream stream the relay fills (`chronik relay nats --stream-name`).
    #[arg(long, default_value = "CHRONIK")]
    stream_name: String,
    /// The relay's subject prefix (`chronik relay nats --subject-prefix`).
    #[arg(long, default_value = SubjectPrefix::DEFAULT, value_parser = |s: &str| SubjectPrefix::new(s).map_err(|e| e.to_string()))]
    subject_prefix: SubjectPrefix,
    /// The durable consumer's name: where this service left off is kept under it.
    #[arg(long, default_value = "order-consumer")]
    durable: String,
    /// Exit after handling this many events (default: run until Ctrl-C); fail when the
    /// next one does not come within `--wait` seconds.
    #[arg(long)]
    count: Option<u64>,
    /// With `--count`: how long to wait for each event, in seconds.
    #[arg(long, default_value_t = 30)]
    wait: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = chronik::relay::async_nats::ConnectOptions::new()
        .name("order-consumer")
        .connection_timeout(Duration::from_secs(2))
        .connect(args.url.as_str())
        .await
        .with_context(|| {
            format!(
                "cannot reach NATS at {}",
                chronik::relay::redact_url(&args.url)
            )
        })?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&args.stream_name).await.with_context(|| {
        format!(
            "no JetStream stream {} (run `chronik relay nats` first: it creates it)",
            args.stream_name
        )
    })?;
    let consumer = stream
        .get_or_create_consumer(
            &args.durable,
            pull::Config {
                durable_name: Some(args.durable.clone()),
                filter_subject: args.subject_prefix.category_wildcard("order"),
                ack_policy: AckPolicy::Explicit,
                ..pull::Config::default()
            },
        )
        .await
        .context("cannot create the durable consumer")?;
    let mut messages = consumer.messages().await.context("cannot pull messages")?;
    let mut last_version: HashMap<String, u64> = HashMap::new();
    let mut handled = 0_u64;
    while args.count.is_none_or(|n| handled < n) {
        let next = match args.count {
            Some(_) => tokio::time::timeout(Duration::from_secs(args.wait), messages.next())
                .await
                .with_context(|| format!("no event for {} s after {handled} handled", args.wait))?,
            None => messages.next().await,
        };
        let Some(message) = next else {
            break;
        };
        let message = message.map_err(|e| anyhow::anyhow!(e)).context("pulling")?;
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        let stream_id = header(headers::STREAM_ID);
        let version: u64 = header(headers::STREAM_VERSION).parse().unwrap_or(0);
        let event_type = header(headers::EVENT_TYPE);
        if last_version.get(&stream_id).is_some_and(|&v| version <= v) {
            // Delivered again: handled already.
        } else {
            let payload: serde_json::Value =
                serde_json::from_slice(&message.payload).context("the payload is not JSON")?;
            match OrderEvent::from_payload(&event_type, payload) {
                Ok(event) => println!("{stream_id} v{version} {event:?}"),
                Err(e) => println!(
                    "{stream_id} v{version} {event_type} (not an order event this service knows: {e})"
                ),
            }
            last_version.insert(stream_id, version);
            handled += 1;
        }
        // Confirmed by the server, so that a restart does not see it again.
        message
            .double_ack()
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("acknowledging")?;
    }
    Ok(())
}
