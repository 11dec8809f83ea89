use std::fmt;
use std::time::Duration;

use chronik_store::StoreError;

/// A validated PostgreSQL schema name: the namespace one store's tables live in.
///
/// Contract: 1 to 63 bytes of ASCII lowercase letters, digits and `_`, not starting with
/// a digit and not starting with `pg_` (reserved by PostgreSQL). It is always quoted when
/// put into SQL, so it can never inject anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

impl SchemaName {
    /// Validates a schema name.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] naming the rule that was broken.
    pub fn new(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        check_identifier("schema", &name, &[])?;
        Ok(Self(name))
    }

    /// The name, unquoted.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier (`"name"`).
    #[must_use]
    pub fn quoted(&self) -> String {
        // Validation admits no `"`, so plain wrapping is a correct quote.
        format!("\"{}\"", self.0)
    }
}

/// Checks `name` as a plain SQL identifier of `kind` (`schema`, `role`): 1 to 63 bytes of
/// ASCII lowercase letters, digits and `_`, not starting with a digit or `pg_`, and not one
/// of `reserved`. Such a name, wrapped in `"`, is a correct quoted identifier.
pub(crate) fn check_identifier(
    kind: &str,
    name: &str,
    reserved: &[&str],
) -> Result<(), StoreError> {
    let bad = |why: &str| {
        StoreError::InvalidRequest(format!(
            "invalid {kind} name {:?}: {why}",
            name.chars().take(64).collect::<String>()
        ))
    };
    if name.is_empty() || name.len() > 63 {
        return Err(bad("it must be 1 to 63 bytes long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(bad(
            "only lowercase ascii letters, digits and `_` are allowed",
        ));
    }
    if name.as_bytes()[0].is_ascii_digit() {
        return Err(bad("it must not start with a digit"));
    }
    if name.starts_with("pg_") {
        return Err(bad("the `pg_` prefix is reserved by PostgreSQL"));
    }
    if reserved.contains(&name) {
        return Err(bad(
            "PostgreSQL gives this name a special meaning in grants",
        ));
    }
    Ok(())
}

impl Default for SchemaName {
    /// `public`, PostgreSQL's default schema.
    fn default() -> Self {
        Self("public".to_owned())
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a [`PgEventStore`](crate::PgEventStore) connects and where its tables are.
///
/// Pool settings (`max_connections`, `acquire_timeout`, `statement_timeout`) apply to
/// pools the store creates itself ([`PgEventStore::connect_with`](crate::PgEventStore::connect_with));
/// a pool passed to [`PgEventStore::from_pool_with`](crate::PgEventStore::from_pool_with)
/// keeps its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgStoreConfig {
    /// Schema holding this store's tables (default `public`).
    pub schema: SchemaName,
    /// Largest number of pooled connections (default 10).
    pub max_connections: u32,
    /// How long to wait for a pooled connection before a retryable error (default 10 s);
    /// also the bound on the first connection `connect` opens, which only a server that
    /// does not answer at all reaches (a refusal fails at once, with its cause).
    pub acquire_timeout: Duration,
    /// Server-side limit for every statement; `None` keeps the server's setting
    /// (default 30 s). A statement that hits it fails with a retryable error.
    pub statement_timeout: Option<Duration>,
    /// How many times an owned `Any` / `StreamExists` append is retried in a fresh
    /// transaction after a concurrent appender legitimately tripped the order guard
    /// (default 5).
    pub transaction_order_retries: u32,
    /// A channel to `NOTIFY` after every owned append and every committed
    /// [`PgStoreTransaction`](crate::PgStoreTransaction) of this store, for listeners such as
    /// [`PgEventStore::wake_source`](crate::PgEventStore::wake_source) and `chronik tail`
    /// (e.g. [`FEED_CHANNEL`](crate::FEED_CHANNEL)); `None` (the default) notifies nothing.
    /// Sent after the commit, never inside it, by one task on a connection of its own (one
    /// more than `max_connections`), one `NOTIFY` per burst of commits: the writer does not
    /// wait for it.
    pub notify_channel: Option<String>,
    /// How often the server checks, while one of this store's statements runs (a wait for a
    /// lock included), that the client is still connected: PostgreSQL's
    /// `client_connection_check_interval`, set on PostgreSQL 14 and later; `None` keeps the
    /// server's setting (off unless configured). Default 1 s.
    ///
    /// Without it, a process that dies while its append waits for a stream's lock (Ctrl-C on
    /// `chronik append`, a killed service) leaves the statement running in the server, which
    /// commits it once the lock is free: an event written after its caller was gone, and
    /// never confirmed to anyone. With it, the server notices the closed connection within
    /// the interval and rolls the statement back.
    pub client_check_interval: Option<Duration>,
}

impl Default for PgStoreConfig {
    fn default() -> Self {
        Self {
            schema: SchemaName::default(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Some(Duration::from_secs(30)),
            transaction_order_retries: 5,
            notify_channel: None,
            client_check_interval: Some(Duration::from_secs(1)),
        }
    }
}

impl PgStoreConfig {
    /// The default configuration with another schema.
    #[must_use]
    pub fn with_schema(schema: SchemaName) -> Self {
        Self {
            schema,
            ..Self::default()
        }
    }

    /// The same configuration with a pool of `n` connections (at least 1). Size it to the
    /// commands the service runs at once plus one per projection runner and per stream
    /// being read: a `read_stream` holds its connection until it is exhausted.
    #[must_use]
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_validated() {
        for bad in [
            "",
            "Upper",
            "with space",
            "quo\"te",
            "1abc",
            "pg_catalog",
            "semi;colon",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(SchemaName::new(bad), Err(StoreError::InvalidRequest(_))),
                "{bad}"
            );
        }
        let ok = SchemaName::new("tenant_7").expect("valid");
        assert_eq!(ok.quoted(), "\"tenant_7\"");
        assert_eq!(SchemaName::default().as_str(), "public");
    }
}
