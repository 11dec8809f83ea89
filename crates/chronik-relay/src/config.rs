use std::time::Duration;

use chronik_projections::{ProjectionName, RunnerOptions};
use chronik_store::FeedFilter;

use crate::error::RelayError;
use crate::subject::SubjectPrefix;

/// Which payload the relay publishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PayloadMode {
    /// As read through the service's upcasters: the current schema of each type, so that
    /// consumers know one version per type (the `Chronik-Schema-Version` header says it).
    /// Without upcasters this is the same as [`PayloadMode::Raw`].
    #[default]
    Upcast,
    /// As stored: every historical schema version reaches consumers as it was written.
    Raw,
}

/// Settings of a [`crate::NatsRelay`]. `RelayConfig::new(url)` suits most services.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub(crate) url: String,
    pub(crate) prefix: SubjectPrefix,
    pub(crate) stream_name: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) filter: FeedFilter,
    pub(crate) payload: PayloadMode,
    pub(crate) ack_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) runner: RunnerOptions,
}

impl RelayConfig {
    /// Relays everything to the NATS server at `url` (e.g. `nats://127.0.0.1:4222`), under
    /// prefix `chronik`, into JetStream stream `CHRONIK`, upcast, with up to 256
    /// publishes awaiting their acknowledgement, a 5 s acknowledgement timeout, a 2 s
    /// connect timeout and the runner's default options.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: SubjectPrefix::default(),
            stream_name: None,
            name: None,
            filter: FeedFilter::all(),
            payload: PayloadMode::Upcast,
            ack_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_in_flight: 256,
            runner: RunnerOptions::default(),
        }
    }

    /// Subjects start with `prefix` (default `chronik`).
    #[must_use]
    pub fn subject_prefix(mut self, prefix: SubjectPrefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// The JetStream stream to publish into (default: the prefix in capitals, `.` as `_`:
    /// `CHRONIK`). Created when missing, verified when present.
    #[must_use]
    pub fn stream_name(mut self, name: impl Into<String>) -> Self {
        self.stream_name = Some(name.into());
        self
    }

    /// The relay's projection name, which keys its checkpoint (default
    /// `relay-nats-<stream name>`). Two relays with different filters into one stream need
    /// different names.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Only events of streams of these categories (default: all).
    #[must_use]
    pub fn categories(mut self, categories: Vec<String>) -> Self {
        self.filter.categories = categories;
        self
    }

    /// Only events of these stored types (default: all).
    #[must_use]
    pub fn event_types(mut self, event_types: Vec<String>) -> Self {
        self.filter.event_types = event_types;
        self
    }

    /// Upcast (default) or raw payloads.
    #[must_use]
    pub fn payload(mut self, mode: PayloadMode) -> Self {
        self.payload = mode;
        self
    }

    /// How long to wait for JetStream's acknowledgement of one publish (and for its API
    /// requests) before treating it as lost and re-sending (default 5 s).
    #[must_use]
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// How long connecting may take before the relay fails to start (default 2 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Publishes awaiting their acknowledgement at most (1 to 10 000; default 256).
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// The projection runner's options (batch size, polling, retry backoff).
    #[must_use]
    pub fn runner_options(mut self, options: RunnerOptions) -> Self {
        self.runner = options;
        self
    }

    /// The subject prefix.
    #[must_use]
    pub fn prefix(&self) -> &SubjectPrefix {
        &self.prefix
    }

    /// The JetStream stream's name.
    #[must_use]
    pub fn resolved_stream_name(&self) -> String {
        self.stream_name
            .clone()
            .unwrap_or_else(|| self.prefix.as_str().replace('.', "_").to_uppercase())
    }

    /// The relay's projection (checkpoint) name.
    #[must_use]
    pub fn resolved_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("relay-nats-{}", self.resolved_stream_name()))
    }

    /// The shortest duplicate window the stream may have: three acknowledgement timeouts
    /// plus the longest retry backoff. A re-send happens after an acknowledgement timed
    /// out (or the publish failed) and a backoff, so within one failure it reaches
    /// JetStream inside this window of the first send, and is discarded as a duplicate.
    #[must_use]
    pub fn required_duplicate_window(&self) -> Duration {
        self.ack_timeout * 3 + self.runner.retry_max
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// [`RelayError::InvalidConfig`] naming the setting.
    pub fn validate(&self) -> Result<(), RelayError> {
        let invalid = |s: String| Err(RelayError::InvalidConfig(s));
        if self.url.trim().is_empty() {
            return invalid("the NATS url is empty".to_owned());
        }
        let stream = self.resolved_stream_name();
        if stream.is_empty()
            || stream.len() > 64
            || !stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid(format!(
                "stream name {stream:?}: 1 to 64 ASCII letters, digits, `-` or `_`"
            ));
        }
        ProjectionName::new(self.resolved_name())
            .map_err(|e| RelayError::InvalidConfig(e.to_string()))?;
        if self.max_in_flight == 0 || self.max_in_flight > 10_000 {
            return invalid("max_in_flight must be 1 to 10000".to_owned());
        }
        if self.ack_timeout.is_zero() || self.connect_timeout.is_zero() {
            return invalid("the ack and connect timeouts must be positive".to_owned());
        }
        self.runner
            .validate()
            .map_err(|e| RelayError::InvalidConfig(e.to_string()))
    }
}
