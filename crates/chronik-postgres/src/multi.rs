//! Multi-stream appends: several streams in one statement and one transaction, all or
//! nothing (`append_streams`, migration 0008).

use chronik_store::{AppendResult, StoreError, StreamAppend, StreamConflict, validate_appends};
use sqlx::{Executor, PgConnection, Postgres, Row};
use uuid::Uuid;

use crate::PgEventStore;
use crate::error::{aborted, backend};
use crate::store::{AppendArgs, outcome};

/// The arrays `append_streams` takes, built once from every part's [`AppendArgs`]
/// (validated and converted once, re-used by retries).
struct MultiArgs<'a> {
    stream_ids: Vec<&'a str>,
    stream_types: Vec<&'a str>,
    codes: Vec<i64>,
    counts: Vec<i32>,
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    schema_versions: Vec<i64>,
    payloads: Vec<&'a str>,
    headers: Vec<&'a str>,
    correlations: Vec<Option<Uuid>>,
    causations: Vec<Option<Uuid>>,
}

impl<'a> MultiArgs<'a> {
    fn new(appends: &'a [StreamAppend], parts: &'a [AppendArgs<'a>]) -> Result<Self, StoreError> {
        let mut m = MultiArgs {
            stream_ids: appends.iter().map(|a| a.stream.as_str()).collect(),
            stream_types: appends.iter().map(|a| a.stream.category()).collect(),
            codes: parts.iter().map(|p| p.code).collect(),
            counts: Vec::with_capacity(parts.len()),
            ids: Vec::new(),
            types: Vec::new(),
            schema_versions: Vec::new(),
            payloads: Vec::new(),
            headers: Vec::new(),
            correlations: Vec::new(),
            causations: Vec::new(),
        };
        for p in parts {
            m.counts.push(i32::try_from(p.ids.len()).map_err(|_| {
                StoreError::InvalidRequest("too many events in one part".to_owned())
            })?);
            m.ids.extend_from_slice(&p.ids);
            m.types.extend_from_slice(&p.types);
            m.schema_versions.extend_from_slice(&p.schema_versions);
            m.payloads.extend(p.payloads.iter().map(String::as_str));
            m.headers.extend(p.headers.iter().map(String::as_str));
            m.correlations.extend_from_slice(&p.correlations);
            m.causations.extend_from_slice(&p.causations);
        }
        Ok(m)
    }
}

fn part_args(appends: &[StreamAppend]) -> Result<Vec<AppendArgs<'_>>, StoreError> {
    validate_appends(appends)?;
    appends
        .iter()
        .map(|a| AppendArgs::new(&a.stream, a.expected, &a.events))
        .collect()
}

impl PgEventStore {
    /// [`EventStore::append_streams`](chronik_store::EventStore::append_streams) in autocommit:
    /// one statement, its own transaction. A part can still meet the feed-order guard here,
    /// rarely: the append takes every stream's advisory lock before its transaction has an
    /// id (migration 0010), so no other multi-stream append can commit a newer id to one of
    /// its streams first, but a single-stream append (which takes no advisory lock) can
    /// slip in between two of its parts. Then nothing was written, and the whole append is
    /// re-run in a new transaction, up to the configured `transaction_order_retries`, after
    /// a random wait, whatever the parts expect (a part that expected an exact version then
    /// reports the conflict that is now true).
    pub(crate) async fn append_streams_owned(
        &self,
        appends: &[StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let span = crate::spans::append_streams(appends);
        let result =
            tracing::Instrument::instrument(self.append_streams_retrying(appends), span.clone())
                .await;
        crate::spans::record_append_streams(&span, result.as_deref());
        if matches!(&result, Ok(r) if r.iter().any(|p| !p.already_appended)) {
            self.committed();
        }
        #[cfg(feature = "metrics")]
        {
            crate::metrics::append_duration(started.elapsed());
            crate::metrics::append_streams_outcome(appends, result.as_deref());
        }
        result
    }

    /// [`PgEventStore::append_streams_owned`] without its metrics.
    async fn append_streams_retrying(
        &self,
        appends: &[StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        let parts = part_args(appends)?;
        let args = MultiArgs::new(appends, &parts)?;
        let mut order_retries = 0;
        loop {
            match self
                .attempt_streams(&self.pool, &args, &parts)
                .await
                .map_err(backend)?
            {
                Err(StoreError::TransactionOrder { stream })
                    if order_retries < self.order_retries =>
                {
                    order_retries += 1;
                    tracing::debug!(%stream, order_retries, "multi-stream append behind a newer writer, retrying");
                    // The writer that slipped in may be one of several racing on that
                    // stream: wait a random moment, up to 1 ms doubling per retry, so that
                    // the retry does not meet the same race at the same moment.
                    let cap = 1_000u64 << order_retries.min(5);
                    #[allow(clippy::cast_possible_truncation)] // low bits of a random id
                    let jitter = (Uuid::new_v4().as_u128() as u64) % cap;
                    tokio::time::sleep(std::time::Duration::from_micros(jitter)).await;
                }
                r => return r,
            }
        }
    }

    /// [`EventStore::append_streams`](chronik_store::EventStore::append_streams) inside the
    /// caller's transaction, with the contract of [`PgEventStore::append_in`]: a refusal
    /// ([`StoreError::Conflicts`], [`StoreError::TransactionOrder`],
    /// [`StoreError::DuplicateEventId`], [`StoreError::EventIdReused`], and the validation
    /// errors) wrote nothing and leaves the transaction usable, with what it did before
    /// kept; [`StoreError::TransactionAborted`] means PostgreSQL aborted the transaction:
    /// roll it back. Nothing is retried here.
    ///
    /// # Errors
    /// As [`EventStore::append_streams`](chronik_store::EventStore::append_streams), with
    /// [`StoreError::TransactionAborted`] in place of [`StoreError::Backend`].
    pub async fn append_streams_in(
        &self,
        conn: &mut PgConnection,
        appends: &[StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        let parts = part_args(appends)?;
        let args = MultiArgs::new(appends, &parts)?;
        self.attempt_streams(&mut *conn, &args, &parts)
            .await
            .map_err(aborted)?
    }

    /// One execution of `append_streams`: the port's outcome, or the statement's error.
    async fn attempt_streams<'e, E>(
        &self,
        executor: E,
        args: &MultiArgs<'_>,
        parts: &[AppendArgs<'_>],
    ) -> Result<Result<Vec<AppendResult>, StoreError>, sqlx::Error>
    where
        E: Executor<'e, Database = Postgres>,
    {
        let rows = sqlx::query(self.sql.append_streams.clone())
            .bind(&args.stream_ids)
            .bind(&args.stream_types)
            .bind(&args.codes)
            .bind(&args.counts)
            .bind(&args.ids)
            .bind(&args.types)
            .bind(&args.schema_versions)
            .bind(&args.payloads)
            .bind(&args.headers)
            .bind(&args.correlations)
            .bind(&args.causations)
            .fetch_all(executor)
            .await?;
        Ok(combine(&rows, parts))
    }
}

/// The append's result from one row per part (in the order given): every part's result,
/// or the first refusal that is not a conflict, or every conflict.
fn combine(
    rows: &[sqlx::postgres::PgRow],
    parts: &[AppendArgs<'_>],
) -> Result<Vec<AppendResult>, StoreError> {
    if rows.len() != parts.len() {
        return Err(StoreError::backend(
            format!(
                "append_streams returned {} rows for {} parts",
                rows.len(),
                parts.len()
            ),
            false,
        ));
    }
    let mut results = Vec::with_capacity(parts.len());
    let mut conflicts = Vec::new();
    for (row, part) in rows.iter().zip(parts) {
        let index: i32 = row.try_get(8).map_err(backend)?;
        if usize::try_from(index).ok() != Some(results.len() + conflicts.len() + 1) {
            return Err(StoreError::backend(
                "append_streams returned its parts out of order",
                false,
            ));
        }
        match outcome(row, part) {
            Ok(r) => results.push(r),
            Err(StoreError::Conflict {
                stream,
                expected,
                actual,
            }) => conflicts.push(StreamConflict {
                stream,
                expected,
                actual,
            }),
            Err(other) => return Err(other),
        }
    }
    if conflicts.is_empty() {
        Ok(results)
    } else {
        Err(StoreError::Conflicts { conflicts })
    }
}
