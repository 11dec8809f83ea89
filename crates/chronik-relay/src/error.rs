use thiserror::Error;

/// Why the relay could not start: every variant says what to do about it.
///
/// Publishing failures after the start are not errors of this type: the runner retries
/// them with backoff and shows them in the relay's projection status.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RelayError {
    /// A setting is out of range (nothing was contacted).
    #[error("invalid relay configuration: {0}")]
    InvalidConfig(String),
    /// No NATS server answered at the URL (refused, timed out, name not resolved).
    #[error("cannot reach NATS at {url}: {source} (is nats-server running there?)")]
    Unreachable {
        /// The URL, without credentials.
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server refused the connection (authentication, authorization, TLS).
    #[error("NATS at {url} refused the connection: {source}")]
    ConnectionRefused {
        /// The URL, without credentials.
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server answers but has no JetStream (started without `-js`, or JetStream is not
    /// enabled for the account).
    #[error(
        "NATS at {url} has no JetStream: start nats-server with -js (or enable jetstream for this account)"
    )]
    NoJetStream {
        /// The URL, without credentials.
        url: String,
    },
    /// JetStream refused a request of the relay (creating or reading the stream):
    /// permissions, account limits, or a timeout.
    #[error("JetStream at {url} refused to {action}: {message}")]
    Refused {
        /// The URL, without credentials.
        url: String,
        /// What the relay asked for.
        action: String,
        /// The server's or client's reason.
        message: String,
    },
    /// The JetStream stream exists but cannot hold the relay's contract.
    #[error(
        "JetStream stream {stream} does not suit the relay: {problem}; change the stream (nats stream edit {stream}) or relay to another one (--stream-name)"
    )]
    StreamMismatch {
        /// The stream's name.
        stream: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// `url` without its user information (`nats://user:secret@host` becomes
/// `nats://***@host`), for messages and logs.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").map_or(("", url), |(s, r)| (s, r));
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => rest.to_owned(),
    };
    if scheme.is_empty() {
        rest
    } else {
        format!("{scheme}://{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_never_reach_a_message() {
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("tok@h"), "***@h");
    }
}
