use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{
    CreateStreamErrorKind, GetStreamErrorKind, PublishAckFuture, PublishErrorKind,
};
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::{ConnectErrorKind, HeaderMap, header};
use async_trait::async_trait;
use chronik_core::{EventId, RecordedEvent, UpcasterRegistry};
use chronik_projections::RunnerBuilder as _;
use chronik_projections::{HandlerError, Projection, ProjectionRunner};
use chronik_store::{CheckpointStore, EventStore, FeedFilter};
use tokio::sync::Mutex;
use tracing::Instrument as _;

use crate::config::{PayloadMode, RelayConfig};
use crate::error::{RelayError, redact_url};
use crate::subject::SubjectPrefix;

/// The headers every relayed message carries (besides `Nats-Msg-Id`, the event id, and
/// `Nats-Expected-Last-Msg-Id`, the order guard).
pub mod headers {
    /// The stored (or upcast) event type.
    pub const EVENT_TYPE: &str = "Chronik-Event-Type";
    /// The payload's schema version.
    pub const SCHEMA_VERSION: &str = "Chronik-Schema-Version";
    /// The stream id as text (the subject holds it percent-encoded).
    pub const STREAM_ID: &str = "Chronik-Stream-Id";
    /// The event's version in its stream (from 1).
    pub const STREAM_VERSION: &str = "Chronik-Stream-Version";
    /// The event's position in the global feed (`<transaction>:<position>`).
    pub const CURSOR: &str = "Chronik-Cursor";
    /// When the store recorded it (RFC 3339).
    pub const RECORDED_AT: &str = "Chronik-Recorded-At";
    /// The correlation id, when the event has one.
    pub const CORRELATION_ID: &str = "Chronik-Correlation-Id";
    /// The causation id, when the event has one.
    pub const CAUSATION_ID: &str = "Chronik-Causation-Id";
}

/// The duplicate window the relay gives a stream it creates, unless its configuration
/// needs a longer one (JetStream's own default).
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Relays the global feed to a NATS JetStream stream, as a projection on the projection
/// engine: its checkpoint is a projection checkpoint (so `projections status` shows its
/// lag), and it runs on any store through the ports.
///
/// **Delivery contract:** every committed event that passes the filter is published at
/// least once and, within the stream's duplicate window, stored once in JetStream, in
/// feed order (so in per-stream order).
/// - Subject `<prefix>.<category>.<stream id>` ([`SubjectPrefix::subject`]), headers in
///   [`headers`], the payload as JSON (upcast or raw, [`PayloadMode`]).
/// - `Nats-Msg-Id` is the event id, so JetStream discards a re-send within the duplicate
///   window; the relay refuses to start on a stream whose window is shorter than
///   [`RelayConfig::required_duplicate_window`].
/// - Publishes are pipelined in feed order, at most `max_in_flight` awaiting their
///   acknowledgement, acknowledgements awaited in order; the checkpoint is saved only
///   after every event it covers was acknowledged ([`Projection::flush`]).
/// - Every message but the first of a session carries `Nats-Expected-Last-Msg-Id`, the
///   previous event's id: if one publish is lost (a dropped connection), JetStream rejects
///   the ones behind it instead of storing them out of order, and the relay re-sends from
///   the first unacknowledged event.
///
/// A relay is the only publisher of its stream: another publisher's message makes the
/// order guard reject the relay's next one (the status names the cause).
#[derive(Debug)]
pub struct NatsRelay {
    name: String,
    url: String,
    stream: String,
    prefix: SubjectPrefix,
    filter: FeedFilter,
    config: RelayConfig,
    js: async_nats::jetstream::Context,
    window: Mutex<Window>,
    stats: Arc<Counters>,
}

/// Counters of one relay since it was connected.
#[derive(Debug, Default)]
struct Counters {
    acknowledged: AtomicU64,
    duplicates: AtomicU64,
    resends: AtomicU64,
}

/// What a relay has done since it was connected ([`NatsRelay::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    /// Publishes JetStream acknowledged (stored or discarded as duplicates).
    pub acknowledged: u64,
    /// Of those, discarded by JetStream as duplicates (re-sends of stored events).
    pub duplicates: u64,
    /// Publishes sent again after a failure.
    pub resends: u64,
}

/// Events published (or to be published again) whose acknowledgement is still due, in
/// feed order.
#[derive(Debug, Default)]
struct Window {
    pending: VecDeque<Pending>,
    /// How many of `pending`, from the front, are sent with their acknowledgement due
    /// (the rest are to be sent, in order).
    sent: usize,
    /// The last event JetStream acknowledged in this session.
    last_acked: Option<EventId>,
}

struct Pending {
    event: String,
    event_id: EventId,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
    /// `None`: not sent yet, or to be sent again.
    ack: Option<PublishAckFuture>,
    sent_before: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("event", &self.event)
            .field("subject", &self.subject)
            .field("sent", &self.ack.is_some())
            .finish_non_exhaustive()
    }
}

impl Window {
    /// Forgets every pending acknowledgement: all pending events are sent again, in order.
    fn reset(&mut self) {
        for p in &mut self.pending {
            p.ack = None;
        }
        self.sent = 0;
    }
}

impl NatsRelay {
    /// Connects to NATS, checks that it has JetStream, and creates the stream (subjects
    /// `<prefix>.>`, file storage, duplicate window the longer of 2 minutes and
    /// [`RelayConfig::required_duplicate_window`]) or verifies the existing one.
    ///
    /// Fails fast: an unreachable server is an error after at most the connect timeout,
    /// not a retry loop. Once connected, the client reconnects by itself, and publishing
    /// failures are retried by the runner.
    ///
    /// # Errors
    /// [`RelayError::InvalidConfig`], [`RelayError::Unreachable`],
    /// [`RelayError::ConnectionRefused`], [`RelayError::NoJetStream`],
    /// [`RelayError::Refused`], [`RelayError::StreamMismatch`].
    pub async fn connect(config: RelayConfig) -> Result<Self, RelayError> {
        config.validate()?;
        let url = redact_url(&config.url);
        let client = async_nats::ConnectOptions::new()
            .name("chronik-relay")
            .connection_timeout(config.connect_timeout)
            .connect(config.url.as_str())
            .await
            .map_err(|source| match source.kind() {
                ConnectErrorKind::Authentication
                | ConnectErrorKind::AuthorizationViolation
                | ConnectErrorKind::Tls => RelayError::ConnectionRefused {
                    url: url.clone(),
                    source,
                },
                _ => RelayError::Unreachable {
                    url: url.clone(),
                    source,
                },
            })?;
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .build(client);
        let stream = config.resolved_stream_name();
        ensure_stream(&js, &url, &config, &stream).await?;
        Ok(Self {
            name: config.resolved_name(),
            url,
            stream,
            prefix: config.prefix.clone(),
            filter: config.filter.clone(),
            config,
            js,
            window: Mutex::new(Window::default()),
            stats: Arc::new(Counters::default()),
        })
    }

    /// The relay's projection name (its checkpoint key).
    #[must_use]
    pub fn projection_name(&self) -> &str {
        &self.name
    }

    /// The NATS server's URL, without credentials.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The JetStream stream it publishes into.
    #[must_use]
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// The subject prefix.
    #[must_use]
    pub fn prefix(&self) -> &SubjectPrefix {
        &self.prefix
    }

    /// The JetStream context the relay publishes with (for reading back, or consumers in
    /// the same process).
    #[must_use]
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.js
    }

    /// Counters since [`NatsRelay::connect`].
    #[must_use]
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            acknowledged: self.stats.acknowledged.load(Ordering::Relaxed),
            duplicates: self.stats.duplicates.load(Ordering::Relaxed),
            resends: self.stats.resends.load(Ordering::Relaxed),
        }
    }

    /// A projection runner with this relay registered, over `store`, with the relay's
    /// runner options; `upcasters` are applied when the payload mode is
    /// [`PayloadMode::Upcast`]. Spawn it with [`ProjectionRunner::spawn`]; the relay's
    /// status is `handle.status(relay.projection_name())`.
    pub fn runner<S: EventStore + CheckpointStore + 'static>(
        self: Arc<Self>,
        store: Arc<S>,
        upcasters: Option<Arc<UpcasterRegistry>>,
    ) -> ProjectionRunner<S> {
        let mut runner = ProjectionRunner::new(store)
            .with_options(self.config.runner.clone())
            .with_projection(self.clone());
        if let (PayloadMode::Upcast, Some(registry)) = (self.config.payload, upcasters) {
            runner = runner.with_upcasters(registry);
        }
        runner
    }

    fn message(&self, event: &RecordedEvent) -> Pending {
        let mut h = HeaderMap::new();
        h.insert(header::NATS_MESSAGE_ID, event.event_id.to_string().as_str());
        h.insert(headers::EVENT_TYPE, event.event_type.as_str());
        h.insert(
            headers::SCHEMA_VERSION,
            event.schema_version.to_string().as_str(),
        );
        h.insert(headers::STREAM_ID, event.stream_id.as_str());
        h.insert(headers::STREAM_VERSION, event.version.to_string().as_str());
        h.insert(headers::CURSOR, event.cursor.to_string().as_str());
        h.insert(
            headers::RECORDED_AT,
            event.recorded_at.to_rfc3339().as_str(),
        );
        if let Some(id) = &event.metadata.correlation_id {
            h.insert(headers::CORRELATION_ID, id.to_string().as_str());
        }
        if let Some(id) = &event.metadata.causation_id {
            h.insert(headers::CAUSATION_ID, id.to_string().as_str());
        }
        Pending {
            event: format!(
                "{} v{} ({})",
                event.stream_id, event.version, event.event_id
            ),
            event_id: event.event_id,
            subject: self.prefix.subject(&event.stream_id),
            headers: h,
            payload: event.payload.to_string().into_bytes().into(),
            ack: None,
            sent_before: false,
        }
    }

    /// Sends every pending event that has no acknowledgement due, in order, each expecting
    /// its predecessor as JetStream's last message.
    async fn send_unsent(&self, w: &mut Window) -> Result<(), HandlerError> {
        for i in w.sent..w.pending.len() {
            let expected = match i.checked_sub(1) {
                Some(prev) => Some(w.pending[prev].event_id),
                None => w.last_acked,
            };
            let p = &w.pending[i];
            let mut h = p.headers.clone();
            if let Some(prev) = expected {
                h.insert(
                    header::NATS_EXPECTED_LAST_MESSAGE_ID,
                    prev.to_string().as_str(),
                );
            }
            match self
                .js
                .publish_with_headers(p.subject.clone(), h, p.payload.clone())
                .await
            {
                Ok(ack) => {
                    let p = &mut w.pending[i];
                    if p.sent_before {
                        self.stats.resends.fetch_add(1, Ordering::Relaxed);
                    }
                    p.sent_before = true;
                    p.ack = Some(ack);
                    w.sent = i + 1;
                }
                Err(e) => {
                    let error =
                        self.describe(&w.pending[i].event, &w.pending[i].subject, e.kind(), &e);
                    w.reset();
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Awaits the oldest pending acknowledgement. On failure every pending event is to be
    /// sent again (the ones behind it may have been rejected by the order guard).
    async fn await_front(&self, w: &mut Window) -> Result<(), HandlerError> {
        // A front without an acknowledgement due was never sent, or its wait was
        // cancelled (an aborted runner task): send it, and everything behind it, again.
        if w.pending.front().is_some_and(|p| p.ack.is_none()) {
            w.reset();
            self.send_unsent(w).await?;
        }
        let Some(front) = w.pending.front_mut() else {
            return Ok(());
        };
        let Some(ack) = front.ack.take() else {
            return Ok(());
        };
        match ack.await {
            Ok(ack) => {
                self.stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                if ack.duplicate {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(done) = w.pending.pop_front() {
                    w.last_acked = Some(done.event_id);
                    w.sent = w.sent.saturating_sub(1);
                }
                Ok(())
            }
            Err(e) => {
                let error = self.describe(&front.event, &front.subject, e.kind(), &e);
                w.reset();
                Err(error)
            }
        }
    }

    /// A publishing failure, with what the operator can do about it.
    fn describe(
        &self,
        event: &str,
        subject: &str,
        kind: PublishErrorKind,
        error: &dyn std::error::Error,
    ) -> HandlerError {
        let hint = match kind {
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => format!(
                "no acknowledgement from {} within {:?}; will send again",
                self.url, self.config.ack_timeout
            ),
            PublishErrorKind::StreamNotFound => format!(
                "no JetStream stream takes this subject (was stream {} deleted? restart the relay to create it)",
                self.stream
            ),
            PublishErrorKind::WrongLastMessageId => format!(
                "JetStream's last message in {} is not the previous event: another publisher writes to the stream, or a re-send came after the duplicate window",
                self.stream
            ),
            PublishErrorKind::MaxPayloadExceeded => {
                "the message exceeds the server's max_payload: raise it in nats-server's configuration".to_owned()
            }
            _ => "will send again".to_owned(),
        };
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        HandlerError::new(format!(
            "publishing {event} to {subject}: {message} ({hint})"
        ))
    }
}

#[async_trait]
impl Projection for NatsRelay {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> FeedFilter {
        self.filter.clone()
    }

    /// Publishes `event` behind the ones in flight, first waiting for the oldest
    /// acknowledgement while `max_in_flight` are due.
    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        // Inside the runner's `chronik.projection.batch`; never the payload.
        let span = tracing::info_span!(
            "chronik.relay.publish",
            relay = %self.name,
            stream = %event.stream_id,
            version = event.version.get(),
            event_id = %event.event_id,
            cursor = %event.cursor,
            jetstream = %self.stream,
            in_flight = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let result = async {
            let mut w = self.window.lock().await;
            self.send_unsent(&mut w).await?;
            while w.pending.len() >= self.config.max_in_flight {
                self.await_front(&mut w).await?;
            }
            w.pending.push_back(self.message(event));
            if let Err(e) = self.send_unsent(&mut w).await {
                // Not sent: the runner hands this event over again (or skips it when parked).
                w.pending.pop_back();
                return Err(e);
            }
            tracing::Span::current().record("in_flight", w.pending.len());
            Ok(())
        }
        .instrument(span.clone())
        .await;
        span.record("outcome", if result.is_ok() { "sent" } else { "failed" });
        result
    }

    /// Sends what is unsent and awaits every acknowledgement, in order.
    async fn flush(&self) -> Result<(), HandlerError> {
        let span = tracing::info_span!(
            "chronik.relay.flush",
            relay = %self.name,
            jetstream = %self.stream,
            pending = tracing::field::Empty,
            acknowledged = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let result = async {
            let mut w = self.window.lock().await;
            tracing::Span::current().record("pending", w.pending.len());
            let before = self.stats.acknowledged.load(Ordering::Relaxed);
            self.send_unsent(&mut w).await?;
            while !w.pending.is_empty() {
                self.await_front(&mut w).await?;
            }
            let acked = self
                .stats
                .acknowledged
                .load(Ordering::Relaxed)
                .saturating_sub(before);
            tracing::Span::current().record("acknowledged", acked);
            Ok(())
        }
        .instrument(span.clone())
        .await;
        span.record(
            "outcome",
            if result.is_ok() {
                "acknowledged"
            } else {
                "failed"
            },
        );
        result
    }

    /// A relay has no read model: what it published stays in JetStream. A rebuild
    /// publishes everything again (discarded as duplicates within the window).
    async fn clear(&self) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn ensure_stream(
    js: &async_nats::jetstream::Context,
    url: &str,
    config: &RelayConfig,
    stream: &str,
) -> Result<(), RelayError> {
    let refused = |action: &str, message: String| RelayError::Refused {
        url: url.to_owned(),
        action: action.to_owned(),
        message,
    };
    let no_js = || RelayError::NoJetStream {
        url: url.to_owned(),
    };
    let not_enabled = |code: ErrorCode| {
        code == ErrorCode::JETSTREAM_NOT_ENABLED
            || code == ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
    };
    // The account's JetStream info: no responders means no JetStream at all. (Parsed
    // loosely: the client's typed `query_account` expects fields older servers lack.)
    let probe = tokio::time::timeout(
        config.ack_timeout,
        js.client().request("$JS.API.INFO", bytes::Bytes::new()),
    )
    .await;
    match probe {
        Err(_) => {
            return Err(refused(
                "report the account's JetStream status",
                format!("no answer within {:?}", config.ack_timeout),
            ));
        }
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => return Err(no_js()),
        Ok(Err(e)) => {
            return Err(refused(
                "report the account's JetStream status",
                e.to_string(),
            ));
        }
        Ok(Ok(reply)) => {
            let body: serde_json::Value =
                serde_json::from_slice(&reply.payload).unwrap_or_default();
            if let Some(error) = body.get("error") {
                let code = error.get("err_code").and_then(serde_json::Value::as_u64);
                if code.is_some_and(|c| not_enabled(ErrorCode(c))) {
                    return Err(no_js());
                }
                return Err(refused(
                    "report the account's JetStream status",
                    error.to_string(),
                ));
            }
        }
    }
    let required = config.required_duplicate_window();
    match js.get_stream(stream).await {
        Ok(mut s) => {
            let info = s
                .info()
                .await
                .map_err(|e| refused(&format!("describe stream {stream}"), e.to_string()))?;
            verify(&info.config, config, required)
        }
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(err)
                if err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                let wanted = StreamConfig {
                    name: stream.to_owned(),
                    description: Some(
                        "chronik's event feed, published by chronik-relay".to_owned(),
                    ),
                    subjects: vec![config.prefix.wildcard()],
                    storage: StorageType::File,
                    duplicate_window: required.max(DEFAULT_DUPLICATE_WINDOW),
                    ..StreamConfig::default()
                };
                match js.create_stream(wanted).await {
                    Ok(_) => {
                        tracing::info!(stream, subjects = %config.prefix.wildcard(), "created JetStream stream");
                        Ok(())
                    }
                    Err(e) => match e.kind() {
                        CreateStreamErrorKind::JetStreamUnavailable => Err(no_js()),
                        // Created meanwhile by another relay: verify it instead.
                        _ => match js.get_stream(stream).await {
                            Ok(s) => verify(&s.cached_info().config, config, required),
                            Err(_) => {
                                Err(refused(&format!("create stream {stream}"), e.to_string()))
                            }
                        },
                    },
                }
            }
            _ => Err(refused(&format!("look up stream {stream}"), e.to_string())),
        },
    }
}

fn verify(
    found: &StreamConfig,
    config: &RelayConfig,
    required: Duration,
) -> Result<(), RelayError> {
    let mismatch = |problem: String| RelayError::StreamMismatch {
        stream: found.name.clone(),
        problem,
    };
    if !found
        .subjects
        .iter()
        .any(|s| config.prefix.is_covered_by(s))
    {
        return Err(mismatch(format!(
            "its subjects {:?} do not cover {}",
            found.subjects,
            config.prefix.wildcard()
        )));
    }
    if found.duplicate_window < required {
        return Err(mismatch(format!(
            "its duplicate window {:?} is shorter than the {required:?} a re-send may take (3 ack timeouts + the longest retry backoff)",
            found.duplicate_window
        )));
    }
    if found.no_ack {
        return Err(mismatch(
            "it does not acknowledge publishes (no_ack)".to_owned(),
        ));
    }
    Ok(())
}
