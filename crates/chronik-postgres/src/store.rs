use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use chronik_core::{
    EventId, ExpectedVersion, FeedCursor, NewEvent, StreamId, Version, validate_batch,
};
use chronik_store::{
    AppendResult, BoxSession, EventStore, EventStream, FeedFilter, FeedHead, FeedPage,
    MAX_FEED_PAGE, PayloadStream, SessionFuture, StoreError, StoreSession, StreamAppend,
};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Executor, PgConnection, PgPool, Postgres, Row};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::MIGRATOR;
use crate::config::{PgStoreConfig, SchemaName};
use crate::error::{aborted, backend};
use crate::lock_wait::Sessions;
use crate::row::{self, to_u64};
use crate::sql::Sql;
use crate::wake::Notifier;

/// The PostgreSQL event store: implements [`EventStore`], and (in this crate's other
/// modules) [`SnapshotStore`](chronik_store::SnapshotStore) and
/// [`CheckpointStore`](chronik_store::CheckpointStore).
///
/// Cloning is cheap and shares the pool. Every statement is qualified with the configured
/// schema, so several stores can share one database (and one pool).
///
/// Contract, beyond the port's:
/// - an owned [`append`](EventStore::append) is one statement, hence one round trip and
///   one implicit transaction, whatever the number of events;
/// - the feed is ordered by `(transaction_id, global_position)` and shows only events of
///   transactions older than every running one (see `docs/ordering.md`): it never skips
///   and never shows version `n + 1` of a stream before version `n`;
/// - [`read_stream`](EventStore::read_stream) streams rows as the server sends them
///   (bounded memory for any stream length) and holds one pooled connection until the
///   stream is exhausted or dropped: do not append through a one-connection pool while
///   iterating.
#[derive(Clone)]
pub struct PgEventStore {
    pub(crate) pool: PgPool,
    pub(crate) schema: SchemaName,
    pub(crate) sql: Arc<Sql>,
    pub(crate) order_retries: u32,
    /// The notification after commit ([`PgStoreConfig::notify_channel`]), started on first
    /// use (it spawns a task, so it needs the runtime an append runs on).
    pub(crate) notifier: Option<Arc<(String, OnceLock<Notifier>)>>,
    /// Whether the pool's sessions plan with `enable_seqscan = off` (always for
    /// [`PgEventStore::connect_with`]; for a pool of the caller's, when its options say
    /// so): the fast path for appends to existing streams is used only then.
    pub(crate) fast_next: bool,
    /// The sessions its own pool opened, for [`PgEventStore::lock_holders`].
    pub(crate) sessions: Arc<Sessions>,
}

impl fmt::Debug for PgEventStore {
    // By hand: the pool's options are never printed (they may hold a password).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgEventStore")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

/// One append's arguments, validated and converted once (re-used by retries).
pub(crate) struct AppendArgs<'a> {
    pub(crate) stream: &'a StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) code: i64,
    pub(crate) ids: Vec<Uuid>,
    pub(crate) types: Vec<&'a str>,
    pub(crate) schema_versions: Vec<i64>,
    pub(crate) payloads: Vec<String>,
    pub(crate) headers: Vec<String>,
    pub(crate) correlations: Vec<Option<Uuid>>,
    pub(crate) causations: Vec<Option<Uuid>>,
}

impl<'a> AppendArgs<'a> {
    pub(crate) fn new(
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
    ) -> Result<Self, StoreError> {
        validate_batch(events)?;
        let code = match expected {
            ExpectedVersion::Exact(v) => v.as_i64(),
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::StreamExists => -1,
            ExpectedVersion::Any => -2,
        };
        let json = |r: Result<String, serde_json::Error>| {
            r.map_err(|e| {
                StoreError::InvalidRequest(format!("event does not serialize as JSON: {e}"))
            })
        };
        let mut payloads = Vec::with_capacity(events.len());
        let mut headers = Vec::with_capacity(events.len());
        for e in events {
            payloads.push(json(crate::json::to_jsonb_text(e.payload()))?);
            headers.push(json(serde_json::to_string(&e.metadata().headers))?);
        }
        Ok(Self {
            stream,
            expected,
            code,
            ids: events.iter().map(|e| e.event_id().as_uuid()).collect(),
            types: events.iter().map(|e| e.event_type().as_str()).collect(),
            schema_versions: events
                .iter()
                .map(|e| i64::from(e.schema_version()))
                .collect(),
            payloads,
            headers,
            correlations: events
                .iter()
                .map(|e| e.metadata().correlation_id.map(|c| c.as_uuid()))
                .collect(),
            causations: events
                .iter()
                .map(|e| e.metadata().causation_id.map(|c| c.as_uuid()))
                .collect(),
        })
    }

    /// `append_events`' parameters $1 to $10 (the stream, its category, the expectation's
    /// code and one array per column), which the batch statements share.
    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.stream.as_str())
            .bind(self.stream.category())
            .bind(self.code)
            .bind(&self.ids)
            .bind(&self.types)
            .bind(&self.schema_versions)
            .bind(&self.payloads)
            .bind(&self.headers)
            .bind(&self.correlations)
            .bind(&self.causations)
    }
}

impl PgEventStore {
    /// Connects with the default [`PgStoreConfig`] (schema `public`).
    ///
    /// The URL is never included in errors or logs.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] for a malformed URL, [`StoreError::Backend`] when the
    /// server cannot be reached (retryable).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PgStoreConfig::default()).await
    }

    /// Connects with `config`: a pool of `max_connections`, each session with
    /// `statement_timeout`, `application_name` (the URL's, else `chronik`),
    /// `client_connection_check_interval` (from `client_check_interval`, on PostgreSQL 14 and
    /// later) and `enable_seqscan = off`.
    /// Connections are not pinged on acquire, so an owned append costs exactly one round
    /// trip.
    ///
    /// `enable_seqscan = off`: a session plans each prepared statement once for good after
    /// a few executions, with the statistics of that moment; on a new or small store a
    /// lookup by key (a stream's events, a feed page, a snapshot) is then a sequential scan,
    /// kept while the table grows until something re-analyzes it (`tests/plans.rs`). Every
    /// statement chronik runs reads by an index, which the setting makes the planner keep
    /// choosing. A table without a usable index is still scanned: statements of your own on
    /// these sessions (a projection's writes) only lose plans that scan where an index
    /// exists. A pool passed to [`PgEventStore::from_pool_with`] keeps its own settings;
    /// give it the same option (`PgConnectOptions::options([("enable_seqscan", "off")])`).
    ///
    /// It first opens one connection directly, so a server that is down, a wrong port, a
    /// refused password or a missing database fail at once with that cause (never after
    /// the pool's acquire timeout as "pool timed out"); only a server that does not answer
    /// at all takes `acquire_timeout`.
    ///
    /// # Errors
    /// As [`PgEventStore::connect`]; the message says what was refused and what to check
    /// (`connection refused: is PostgreSQL running on 127.0.0.1:5499?`), once.
    pub async fn connect_with(url: &str, config: PgStoreConfig) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|_| {
                StoreError::InvalidRequest(
                    "malformed database url (not shown: it may hold a password)".to_owned(),
                )
            })?
            .options([("enable_seqscan", "off")]);
        // The URL's `?application_name=billing-api` names the service in `pg_stat_activity`
        // and in projection status; `chronik` only when it names none.
        if options.get_application_name().is_none() {
            options = options.application_name("chronik");
        }
        if let Some(timeout) = config.statement_timeout {
            options = options.options([("statement_timeout", timeout.as_millis().to_string())]);
        }
        // One direct connection first. A pool retries a refused connection until its
        // acquire timeout and then says only "pool timed out"; a direct connection fails at
        // once with the real cause, which `connect_error` words for an operator.
        // A server of another kind on the port may never answer PostgreSQL's first message
        // (Redis stays silent): when the connection takes a moment, look at what answers,
        // while it goes on.
        let probe = {
            let connecting = tokio::time::timeout(
                config.acquire_timeout,
                <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
            );
            tokio::pin!(connecting);
            tokio::select! {
                r = &mut connecting => r,
                () = tokio::time::sleep(NOT_POSTGRES_AFTER) => {
                    let look = not_postgres_error(&options);
                    tokio::pin!(look);
                    tokio::select! {
                        r = &mut connecting => r,
                        e = &mut look => match e {
                            Some(e) => return Err(e),
                            None => connecting.await,
                        },
                    }
                }
            }
        };
        match probe {
            Ok(Ok(conn)) => {
                // The server checks that the client is still there while a statement runs
                // (PostgreSQL 14 and later; an older server would refuse the parameter).
                if let Some(interval) = config.client_check_interval
                    && conn.server_version_num().is_some_and(|v| v >= 140_000)
                {
                    options = options.options([(
                        "client_connection_check_interval",
                        interval.as_millis().max(1).to_string(),
                    )]);
                }
                // Only a courtesy to the server: the pool opens its own connections.
                let _ = sqlx::Connection::close(conn).await;
            }
            Ok(Err(e)) => {
                // Protocol noise (`expected to read 1414811696 bytes`) or a connection
                // closed at once: is it PostgreSQL at all?
                if !matches!(&e, sqlx::Error::Database(_) | sqlx::Error::Tls(_))
                    && !matches!(&e, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused || io.kind() == std::io::ErrorKind::NotFound)
                    && let Some(not_pg) = not_postgres_error(&options).await
                {
                    return Err(not_pg);
                }
                return Err(connect_error(e, &options));
            }
            Err(_) => {
                return Err(StoreError::Backend {
                    message: format!(
                        "no answer from PostgreSQL at {} within {} s: is the host right, and \
                         does a firewall drop the connection?",
                        endpoint(&options),
                        config.acquire_timeout.as_secs_f64()
                    ),
                    retryable: true,
                    source: None,
                });
            }
        }
        let sessions = Arc::new(Sessions::default());
        let recorder = Arc::clone(&sessions);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            // Who each session is, so that a command waiting for a lock can say who holds it.
            .after_connect(move |conn, _| {
                let recorder = Arc::clone(&recorder);
                Box::pin(async move {
                    recorder.record(conn).await;
                    Ok(())
                })
            })
            .acquire_timeout(config.acquire_timeout)
            // sqlx already pings every connection when it is released (off the caller's
            // path) and drops broken ones; a second ping on acquire would double an
            // append's round trips.
            .test_before_acquire(false)
            .connect_lazy_with(options);
        let mut store = Self::from_pool_with(pool, &config);
        store.sessions = sessions;
        Ok(store)
    }

    /// Uses an existing pool, schema `public`.
    #[must_use]
    pub fn from_pool(pool: PgPool) -> Self {
        Self::from_pool_with(pool, &PgStoreConfig::default())
    }

    /// Uses an existing pool with `config`'s schema and retry setting (the pool keeps its
    /// own connection settings: see [`PgEventStore::connect_with`] for the one chronik's
    /// reads want, `enable_seqscan = off`).
    #[must_use]
    pub fn from_pool_with(pool: PgPool, config: &PgStoreConfig) -> Self {
        Self {
            sql: Arc::new(Sql::new(&config.schema)),
            schema: config.schema.clone(),
            order_retries: config.transaction_order_retries,
            notifier: config
                .notify_channel
                .clone()
                .map(|channel| Arc::new((channel, OnceLock::new()))),
            fast_next: plans_without_seqscan(pool.connect_options().get_options()),
            sessions: Arc::default(),
            pool,
        }
    }

    /// The pool (for transactions that append with [`PgEventStore::append_in`]).
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the server answers now: one connection opened directly with the pool's
    /// options (a pool retries a refused connection until its acquire timeout) and closed
    /// again. A runner asks it after a failed attempt, to tell an outage (said once, see
    /// `chronik_projections::Outage`) from a failure of its own.
    ///
    /// # Errors
    /// [`StoreError::Backend`] (retryable) with the cause worded as [`PgEventStore::connect`]
    /// words it (`connection refused: is PostgreSQL running on 127.0.0.1:5499?`), or that the
    /// server did not answer within the pool's acquire timeout.
    pub async fn check_connection(&self) -> Result<(), StoreError> {
        let options = self.pool.connect_options();
        let patience = self.pool.options().get_acquire_timeout();
        match tokio::time::timeout(
            patience,
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&*options),
        )
        .await
        {
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
                Ok(())
            }
            Ok(Err(e)) => Err(connect_error(e, &options)),
            Err(_) => Err(StoreError::Backend {
                message: format!(
                    "no answer from PostgreSQL at {} within {} s",
                    endpoint(&options),
                    patience.as_secs_f64()
                ),
                retryable: true,
                source: None,
            }),
        }
    }

    /// The schema this store's tables live in.
    #[must_use]
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// Creates the schema if needed and applies every pending migration of [`MIGRATOR`]
    /// inside it. Safe to run concurrently (sqlx takes an advisory lock) and repeatedly.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when a migration fails or an applied migration was edited.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        // A connection of its own, detached from the pool: `search_path` is changed for
        // the migrator and must not leak into pooled sessions.
        let mut conn = self.pool.acquire().await.map_err(backend)?.detach();
        let schema = self.schema.quoted();
        conn.execute(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .await
        .map_err(backend)?;
        conn.execute(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
            .await
            .map_err(backend)?;
        let result = MIGRATOR.run(&mut conn).await;
        // Closing is best effort: the connection is not pooled either way.
        let _ = sqlx::Connection::close(conn).await;
        result.map_err(|e| {
            StoreError::backend(format!("migrating schema {}: {e}", self.schema), false)
        })
    }

    /// Appends inside the caller's transaction (or session): `conn` is typically
    /// `&mut *tx` for a `sqlx::Transaction<'_, Postgres>`. [`PgEventStore::begin`] gives a
    /// transaction that also refuses to commit once it is aborted.
    ///
    /// **Append first.** Make the append the first write of the transaction. A transaction
    /// that wrote before holds an older transaction id; if the stream was appended to by a
    /// newer, already committed transaction meanwhile, the append is refused with the
    /// retryable [`StoreError::TransactionOrder`] (otherwise the feed would show this
    /// stream's new events before its previous ones). Roll back and retry the whole unit
    /// of work in a new transaction. Unlike [`EventStore::append`], nothing is retried here.
    ///
    /// **After an error**, one of two things holds, and the error says which:
    /// - a refusal, [`StoreError::Conflict`], [`StoreError::TransactionOrder`],
    ///   [`StoreError::DuplicateEventId`], [`StoreError::EventIdReused`] (and
    ///   [`StoreError::Invalid`] / [`StoreError::InvalidRequest`], raised before anything
    ///   is sent): nothing was written and **the transaction is still usable**, whatever
    ///   found the refusal, including a race with a concurrent transaction that held the
    ///   same event id or created the same stream (the append waits for it, then answers);
    ///   what the transaction did before is kept, and commits if it commits;
    /// - [`StoreError::TransactionAborted`]: the server raised an error (deadlock, statement
    ///   or lock timeout, cancellation, serialization failure, a terminated session) or the
    ///   connection was lost, and PostgreSQL has **aborted the transaction**: nothing in it
    ///   will commit. Roll it back. Do not commit it: PostgreSQL answers the COMMIT of an
    ///   aborted transaction with a ROLLBACK, which sqlx reports as success.
    ///
    /// Events become visible in the feed when the transaction commits and every older
    /// transaction has finished. Under `REPEATABLE READ` or `SERIALIZABLE`, a concurrent
    /// append to the same stream or with the same event id surfaces as a retryable
    /// [`StoreError::TransactionAborted`] (serialization failure): retry the unit of work.
    ///
    /// # Errors
    /// As [`EventStore::append`], with [`StoreError::TransactionAborted`] in place of
    /// [`StoreError::Backend`].
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        let args = AppendArgs::new(stream, expected, events)?;
        self.attempt(Some(conn), &args, false)
            .await
            .map_err(aborted)?
    }

    /// An owned append ([`EventStore::append`]) on `conn`, or on a pooled connection of its
    /// own when `None`.
    async fn append_owned(
        &self,
        conn: Option<&mut PgConnection>,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let span = crate::spans::append(stream, expected, events.len());
        let result = self
            .append_retrying(conn, stream, expected, events)
            .instrument(span.clone())
            .await;
        crate::spans::record_append(&span, result.as_ref());
        if matches!(&result, Ok(r) if !r.already_appended) {
            self.committed();
        }
        #[cfg(feature = "metrics")]
        {
            crate::metrics::append_duration(started.elapsed());
            crate::metrics::append_outcome(stream, events.len(), result.as_ref());
        }
        result
    }

    /// [`PgEventStore::append_owned`] without its metrics.
    async fn append_retrying(
        &self,
        mut conn: Option<&mut PgConnection>,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        let args = AppendArgs::new(stream, expected, events)?;
        let retry_order = matches!(
            expected,
            ExpectedVersion::Any | ExpectedVersion::StreamExists
        );
        let mut order_retries = 0;
        loop {
            // One statement in autocommit: its own transaction, the append its first write.
            let attempt = self.attempt(conn.as_deref_mut(), &args, true).await;
            match attempt.map_err(backend)? {
                Err(StoreError::TransactionOrder { .. })
                    if retry_order && order_retries < self.order_retries =>
                {
                    order_retries += 1;
                    tracing::debug!(stream = %stream, order_retries, "append behind a newer writer, retrying");
                }
                r => return r,
            }
        }
    }

    /// Tells listeners that something committed, when the config names a channel
    /// ([`PgStoreConfig::notify_channel`]): never waits.
    pub(crate) fn committed(&self) {
        if let Some(notifier) = &self.notifier {
            let (channel, cell) = &**notifier;
            cell.get_or_init(|| {
                Notifier::start((*self.pool.connect_options()).clone(), channel.clone())
            })
            .poke();
        }
    }

    /// `read_payloads` on `executor`.
    fn payloads<'e, E>(&'e self, executor: E, stream: &StreamId, from: Version) -> PayloadStream<'e>
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        sqlx::query(self.sql.read_payloads.clone())
            .bind(stream.as_str().to_owned())
            .bind(from.as_i64())
            .fetch(executor)
            .map(|r| r.map_err(backend).and_then(|row| row::stream_event(&row)))
            .boxed()
    }

    /// One append on `conn` (a pooled connection when `None`): the one-statement fast path
    /// where it applies and writes, else `append_events`, which decides every outcome.
    /// `owned`: the append is its own transaction (autocommit), so a statement that raises
    /// undoes only itself; false in a caller's transaction, which an error would abort.
    async fn attempt(
        &self,
        conn: Option<&mut PgConnection>,
        args: &AppendArgs<'_>,
        owned: bool,
    ) -> Result<Result<AppendResult, StoreError>, sqlx::Error> {
        match conn {
            Some(c) => {
                if let Some(done) = self.fast_append(&mut *c, args, owned).await? {
                    return Ok(done);
                }
                self.append_events(c, args).await
            }
            None => {
                if let Some(done) = self.fast_append(&self.pool, args, owned).await? {
                    return Ok(done);
                }
                self.append_events(&self.pool, args).await
            }
        }
    }

    /// The fast path of an append expecting no stream or an exact version (what
    /// `Repository::execute` sends): one plain statement instead of `append_events`,
    /// whose PL/pgSQL call costs more server time than the insert itself (docs/benchmarks.md,
    /// "The write path"). It writes only when every check of the function passes (the
    /// version, the feed-order guard, and the ids stored nowhere: their unique index refuses
    /// them otherwise, waiting first for a transaction that holds the same key, as the
    /// function's insert does), so its one outcome is "appended". `None` when it does not
    /// apply or wrote nothing: the caller then runs `append_events`, which finds out why
    /// (an idempotent retry, a conflict, a duplicate id) and reports it.
    ///
    /// In a caller's transaction (one event only) it never raises on a refusal, so that
    /// transaction stays usable, as with the function (`ON CONFLICT DO NOTHING`). Owned (its
    /// own transaction), a refusal by a unique index (the stream exists, an id is stored)
    /// raises a unique violation, which undoes the whole statement, and is then the
    /// function's to report like every other refusal: cheaper on every append that
    /// succeeds, since a speculative insert probes both unique indexes first and logs a
    /// confirmation (docs/benchmarks.md, "The command's WAL, record by record").
    async fn fast_append<'e, E>(
        &self,
        executor: E,
        args: &AppendArgs<'_>,
        owned: bool,
    ) -> Result<Option<Result<AppendResult, StoreError>>, sqlx::Error>
    where
        E: Executor<'e, Database = Postgres>,
    {
        let n = args.ids.len();
        if args.code < 0 || (args.code > 0 && !self.fast_next) || (n > 1 && !owned) {
            return Ok(None);
        }
        // No stream reaches past the last version there is; the function answers such a
        // request (and validation bounds `n` far below `i64::MAX`).
        let Some(last) = i64::try_from(n).ok().and_then(|n| args.code.checked_add(n)) else {
            return Ok(None);
        };
        if n > 1 {
            return self.fast_batch(executor, args, last).await;
        }
        let sql = match (args.code == 0, owned) {
            (true, true) => &self.sql.append_first_owned,
            (true, false) => &self.sql.append_first,
            (false, true) => &self.sql.append_next_owned,
            (false, false) => &self.sql.append_next,
        };
        let mut query = sqlx::query(sql.clone())
            .bind(args.stream.as_str())
            .bind(args.stream.category())
            .bind(args.ids[0])
            .bind(args.types[0])
            .bind(args.schema_versions[0])
            .bind(&args.payloads[0])
            .bind(&args.headers[0])
            .bind(args.correlations[0])
            .bind(args.causations[0]);
        if args.code > 0 {
            query = query.bind(args.code).bind(last);
        }
        match query.fetch_optional(executor).await {
            Ok(Some(row)) => Ok(Some(appended(&row, last, last))),
            Ok(None) => Ok(None),
            Err(sqlx::Error::Database(e)) if owned && e.is_unique_violation() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`PgEventStore::fast_append`] for a batch of several events, ending at `last`.
    async fn fast_batch<'e, E>(
        &self,
        executor: E,
        args: &AppendArgs<'_>,
        last: i64,
    ) -> Result<Option<Result<AppendResult, StoreError>>, sqlx::Error>
    where
        E: Executor<'e, Database = Postgres>,
    {
        let sql = if args.code == 0 {
            &self.sql.batch_first
        } else {
            &self.sql.batch_next
        };
        let query = args.bind(sqlx::query(sql.clone())).bind(last - args.code);
        match query.fetch_optional(executor).await {
            Ok(Some(row)) => Ok(Some(appended(&row, args.code + 1, last))),
            Ok(None) => Ok(None),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One execution of `append_events`: the outcome it reported, or the statement's error.
    async fn append_events<'e, E>(
        &self,
        executor: E,
        args: &AppendArgs<'_>,
    ) -> Result<Result<AppendResult, StoreError>, sqlx::Error>
    where
        E: Executor<'e, Database = Postgres>,
    {
        let row = args
            .bind(sqlx::query(self.sql.append.clone()))
            .fetch_one(executor)
            .await?;
        Ok(outcome(&row, args))
    }

    /// The bind parameters of a cursor: the transaction as text (cast to `xid8` in SQL)
    /// and the position. Both fit by construction ([`FeedCursor`] checks its range).
    pub(crate) fn cursor_params(cursor: FeedCursor) -> (String, i64) {
        (cursor.transaction().to_string(), cursor.position_i64())
    }

    /// The last visible event's cursor: [`EventStore::feed_head`]'s `last`, without counting
    /// the feed (one backward step of the feed index).
    pub(crate) async fn feed_last(&self) -> Result<Option<FeedCursor>, StoreError> {
        let row: Option<(i64, i64)> = sqlx::query_as(self.sql.feed_last.clone())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|(t, p)| {
            Ok(FeedCursor::new(
                to_u64(t, "transaction id")?,
                to_u64(p, "position")?,
            )?)
        })
        .transpose()
    }

    /// [`EventStore::read_feed`] restricted to partition `index` of `count` (streams whose
    /// `chronik_projections::stream_hash % count == index`), filtered in the database.
    pub(crate) async fn read_feed_partition(
        &self,
        after: FeedCursor,
        filter: &FeedFilter,
        (index, count): (u32, u32),
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        let limit = check_limit(limit)?;
        let (tx, position) = Self::cursor_params(after);
        let events: Vec<_> = sqlx::query(self.sql.read_feed_partition.clone())
            .bind(tx)
            .bind(position)
            .bind(limit)
            .bind(&filter.event_types)
            .bind(&filter.categories)
            .bind(i64::from(count))
            .bind(i64::from(index))
            .fetch(&self.pool)
            .map_err(backend)
            .and_then(|row| futures::future::ready(row::recorded(&row)))
            .try_collect()
            .await?;
        let next = events.last().map_or(after, |e| e.cursor);
        Ok(FeedPage { events, next })
    }
}

/// `host:port` (or the socket directory) of a connection's target, for messages: never
/// the user, password or any other part of the URL.
pub(crate) fn endpoint(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(dir) => format!(
            "the socket in {} (port {})",
            dir.display(),
            options.get_port()
        ),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

/// How long the first connection may take before [`not_postgres_error`] looks at what
/// answers on the port.
const NOT_POSTGRES_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The error for a server at `options`' host and port that is not PostgreSQL, when the
/// probe can tell (`None` for a socket, or when it is PostgreSQL or cannot be reached).
async fn not_postgres_error(options: &PgConnectOptions) -> Option<StoreError> {
    if options.get_socket().is_some() {
        return None;
    }
    let what = crate::probe::not_postgres(options.get_host(), options.get_port()).await?;
    Some(StoreError::Backend {
        message: format!(
            "the server at {} is not PostgreSQL: {what}; is the port right?",
            endpoint(options)
        ),
        retryable: false,
        source: None,
    })
}

/// A failed first connection, said once and with what to do next. The message is the whole
/// story, so no `source` repeats it.
fn connect_error(err: sqlx::Error, options: &PgConnectOptions) -> StoreError {
    let at = endpoint(options);
    let retryable = crate::error::is_retryable(&err);
    let message = match &err {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused: is PostgreSQL running on {at}?")
        }
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            format!(
                "no PostgreSQL socket at {at}: is the server running, and is the socket directory right?"
            )
        }
        sqlx::Error::Io(io) => format!("cannot reach PostgreSQL at {at}: {io}"),
        sqlx::Error::Tls(tls) => format!("TLS with PostgreSQL at {at} failed: {tls}"),
        sqlx::Error::Database(db) => {
            let code = db
                .code()
                .map(std::borrow::Cow::into_owned)
                .unwrap_or_default();
            let hint = match code.as_str() {
                "28P01" | "28000" => {
                    "; check the user and password in the URL, and the server's pg_hba.conf"
                }
                "3D000" => "; create it (createdb) or fix the database name in the URL",
                "53300" => {
                    "; the server has no free connection slot: lower max_connections of the pools using it, or raise the server's"
                }
                "57P03" => "; the server is starting up or shutting down: try again shortly",
                _ => "",
            };
            format!(
                "PostgreSQL at {at} refused the connection: {} (SQLSTATE {code}){hint}",
                db.message()
            )
        }
        _ => {
            let (message, _, _) = crate::error::parts(err);
            return StoreError::Backend {
                message: format!("cannot connect to PostgreSQL at {at}: {message}"),
                retryable,
                source: None,
            };
        }
    };
    StoreError::Backend {
        message,
        retryable,
        source: None,
    }
}

/// Whether a session's startup `options` (libpq's `-c name=value` list, as
/// `PgConnectOptions::get_options` gives it) turn sequential scans off.
fn plans_without_seqscan(options: Option<&str>) -> bool {
    let mut off = false;
    let mut words = options.unwrap_or_default().split_whitespace();
    while let Some(word) = words.next() {
        let setting = match word {
            "-c" => words.next().unwrap_or_default(),
            w => w
                .strip_prefix("-c")
                .or_else(|| w.strip_prefix("--"))
                .unwrap_or_default(),
        };
        if let Some((name, value)) = setting.split_once('=')
            && name.trim().eq_ignore_ascii_case("enable_seqscan")
        {
            off = matches!(
                value.trim().to_ascii_lowercase().as_str(),
                "off" | "false" | "no" | "0"
            );
        }
    }
    off
}

/// What the fast path reported when it wrote the events from `first` to `last` (the
/// transaction and the position of the last event): the append's result.
fn appended(row: &PgRow, first: i64, last: i64) -> Result<AppendResult, StoreError> {
    let tx: i64 = row.try_get(0).map_err(backend)?;
    let pos: i64 = row.try_get(1).map_err(backend)?;
    let version = |v| Version::from_i64(v).map_err(StoreError::Invalid);
    Ok(AppendResult {
        first_version: version(first)?,
        last_version: version(last)?,
        cursor: FeedCursor::new(to_u64(tx, "transaction id")?, to_u64(pos, "position")?)?,
        already_appended: false,
    })
}

/// What `append_events` reported (columns 0 to 7 of `row`, as `Sql::append` selects them),
/// as the port's result or refusal.
pub(crate) fn outcome(row: &PgRow, args: &AppendArgs<'_>) -> Result<AppendResult, StoreError> {
    let get_i64 = |i: usize| -> Result<i64, StoreError> {
        row.try_get::<Option<i64>, _>(i)
            .map_err(backend)?
            .ok_or_else(|| StoreError::backend("append_events returned no value", false))
    };
    let version = |v: i64| Version::from_i64(v).map_err(StoreError::Invalid);
    let code: i16 = row.try_get(0).map_err(backend)?;
    match code {
        0 | 1 => Ok(AppendResult {
            first_version: version(get_i64(1)?)?,
            last_version: version(get_i64(2)?)?,
            cursor: FeedCursor::new(
                to_u64(get_i64(3)?, "transaction id")?,
                to_u64(get_i64(4)?, "position")?,
            )?,
            already_appended: code == 1,
        }),
        2 => Err(StoreError::Conflict {
            stream: args.stream.clone(),
            expected: args.expected,
            actual: version(get_i64(7)?)?,
        }),
        3 => Err(StoreError::TransactionOrder {
            stream: args.stream.clone(),
        }),
        4 | 5 => {
            let id: Option<Uuid> = row.try_get(5).map_err(backend)?;
            let id = id.ok_or_else(|| StoreError::backend("append_events: no event id", false))?;
            let stream: Option<String> = row.try_get(6).map_err(backend)?;
            let (event_id, stream, version) = (
                EventId::new(id).map_err(StoreError::Invalid)?,
                stored_stream_id(stream.unwrap_or_default())?,
                version(get_i64(7)?)?,
            );
            Err(if code == 4 {
                StoreError::DuplicateEventId {
                    event_id,
                    stream,
                    version,
                }
            } else {
                StoreError::EventIdReused {
                    event_id,
                    stream,
                    version,
                }
            })
        }
        other => Err(StoreError::backend(
            format!("append_events returned unknown outcome {other}"),
            false,
        )),
    }
}

pub(crate) fn check_limit(limit: usize) -> Result<i64, StoreError> {
    if limit == 0 || limit > MAX_FEED_PAGE {
        return Err(StoreError::InvalidRequest(format!(
            "feed page limit must be 1 to {MAX_FEED_PAGE}, got {limit}"
        )));
    }
    i64::try_from(limit).map_err(|_| StoreError::InvalidRequest("limit".to_owned()))
}

impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        self.append_owned(None, stream, expected, events).await
    }

    async fn append_streams(
        &self,
        appends: &[StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        self.append_streams_owned(appends).await
    }

    fn read_stream(&self, stream: &StreamId, from: Version) -> EventStream<'_> {
        sqlx::query(self.sql.read_stream.clone())
            .bind(stream.as_str().to_owned())
            .bind(from.as_i64())
            .fetch(&self.pool)
            .map(|r| r.map_err(backend).and_then(|row| row::recorded(&row)))
            .boxed()
    }

    fn read_payloads(&self, stream: &StreamId, from: Version) -> PayloadStream<'_> {
        self.payloads(&self.pool, stream, from)
    }

    /// One pooled connection for the command's read and its append (sqlx pings every
    /// connection it gets back, so a second acquire would cost a round trip).
    fn session(&self) -> SessionFuture<'_> {
        Box::pin(async move {
            let conn = self.pool.acquire().await.map_err(backend)?;
            Ok(Some(Box::new(PgSession {
                store: self.clone(),
                conn,
            }) as BoxSession))
        })
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        let v: Option<i64> = sqlx::query_scalar(self.sql.stream_version.clone())
            .bind(stream.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Version::from_i64(v.unwrap_or(0)).map_err(StoreError::Invalid)
    }

    async fn read_feed(
        &self,
        after: FeedCursor,
        filter: &FeedFilter,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        let limit = check_limit(limit)?;
        let (tx, position) = Self::cursor_params(after);
        let query = if filter.event_types.is_empty() && filter.categories.is_empty() {
            sqlx::query(self.sql.read_feed.clone())
                .bind(tx)
                .bind(position)
                .bind(limit)
        } else {
            sqlx::query(self.sql.read_feed_filtered.clone())
                .bind(tx)
                .bind(position)
                .bind(limit)
                .bind(&filter.event_types)
                .bind(&filter.categories)
        };
        let events: Vec<_> = query
            .fetch(&self.pool)
            .map_err(backend)
            .and_then(|row| futures::future::ready(row::recorded(&row)))
            .try_collect()
            .await?;
        let next = events.last().map_or(after, |e| e.cursor);
        Ok(FeedPage { events, next })
    }

    async fn feed_head(&self) -> Result<FeedHead, StoreError> {
        let row = sqlx::query(self.sql.feed_head.clone())
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        let tx: Option<i64> = row.try_get(0).map_err(backend)?;
        let pos: Option<i64> = row.try_get(1).map_err(backend)?;
        let n: i64 = row.try_get(2).map_err(backend)?;
        let last = match (tx, pos) {
            (Some(t), Some(p)) => Some(FeedCursor::new(
                to_u64(t, "transaction id")?,
                to_u64(p, "position")?,
            )?),
            _ => None,
        };
        Ok(FeedHead {
            last,
            visible_events: to_u64(n, "count")?,
        })
    }

    async fn feed_last(&self) -> Result<Option<FeedCursor>, StoreError> {
        // The inherent one: one backward step of the feed index, no count.
        PgEventStore::feed_last(self).await
    }

    async fn count_after(&self, after: FeedCursor) -> Result<u64, StoreError> {
        let (tx, position) = Self::cursor_params(after);
        let n: i64 = sqlx::query_scalar(self.sql.count_after.clone())
            .bind(tx)
            .bind(position)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        to_u64(n, "count")
    }
}

/// [`PgEventStore::session`](EventStore::session): one pooled connection, held until the
/// session is dropped. A connection that failed is dropped with it, and sqlx closes it if it
/// does not answer; the next attempt of the command acquires another.
struct PgSession {
    store: PgEventStore,
    conn: PoolConnection<Postgres>,
}

impl StoreSession for PgSession {
    fn read_payloads(&mut self, stream: &StreamId, from: Version) -> PayloadStream<'_> {
        self.store.payloads(&mut *self.conn, stream, from)
    }

    fn append<'s>(
        &'s mut self,
        stream: &'s StreamId,
        expected: ExpectedVersion,
        events: &'s [NewEvent],
    ) -> BoxFuture<'s, Result<AppendResult, StoreError>> {
        Box::pin(
            self.store
                .append_owned(Some(&mut *self.conn), stream, expected, events),
        )
    }
}

/// A stream id read back from the database: valid by construction, so a failure here means
/// the table was written around chronik.
fn stored_stream_id(id: String) -> Result<StreamId, StoreError> {
    StreamId::new(id)
        .map_err(|e| StoreError::backend(format!("stored stream id is invalid: {e}"), false))
}

#[cfg(test)]
mod tests {
    use super::plans_without_seqscan;

    #[test]
    fn session_options_that_turn_sequential_scans_off_are_recognised() {
        assert!(plans_without_seqscan(Some("-c enable_seqscan=off")));
        assert!(plans_without_seqscan(Some(
            "-c application_name=x -c enable_seqscan=off -c statement_timeout=5000"
        )));
        assert!(plans_without_seqscan(Some("-cenable_seqscan=false")));
        assert!(plans_without_seqscan(Some("--enable_seqscan=0")));
        assert!(!plans_without_seqscan(None));
        assert!(!plans_without_seqscan(Some("-c geqo=off")));
        assert!(!plans_without_seqscan(Some("-c enable_seqscan=on")));
        // The last setting wins, as in libpq.
        assert!(!plans_without_seqscan(Some(
            "-c enable_seqscan=off -c enable_seqscan=on"
        )));
    }
}
