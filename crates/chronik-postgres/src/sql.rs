//! Every SQL statement the adapter runs, qualified with the store's schema once, at
//! construction. Runtime `query` strings: no database is needed at build time.

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

use crate::config::SchemaName;

/// Columns of `events` that make a `RecordedEvent`, in the order `row::recorded` reads them.
const EVENT_COLUMNS: &str = "stream_id, version, transaction_id::text::bigint AS tx, \
     global_position, event_id, event_type, schema_version, payload, metadata, \
     correlation_id, causation_id, recorded_at";

/// The columns of `events` an append writes (the rest are defaults).
const INSERT_COLUMNS: &str = "stream_id, stream_type, version, event_id, event_type, \
     schema_version, payload, metadata, correlation_id, causation_id";

/// A batch's events as rows, from `append`'s array parameters $4 to $10 (payloads and
/// headers as JSON text), numbered from 1 in `ord` ...
const BATCH_ROWS: &str = "unnest($4::uuid[], $5::text[], $6::bigint[], $7::text[], \
     $8::text[], $9::uuid[], $10::uuid[]) WITH ORDINALITY AS u(id, typ, sv, p, m, c, k, ord)";

/// ... and as [`INSERT_COLUMNS`], each at version `$3 + ord` (after the expected one).
const BATCH_VALUES: &str =
    "$1, $2, $3 + u.ord, u.id, u.typ, u.sv, u.p::jsonb, u.m::jsonb, u.c, u.k";

/// Rows below this are finished (committed or rolled back): the feed's visibility horizon.
const HORIZON: &str = "pg_snapshot_xmin(pg_current_snapshot())";

/// `chronik_projections::stream_hash(stream_id)` in SQL, as a `bigint` (0 to 2^32 - 1): the
/// first four bytes of the MD5 digest of the id's UTF-8 bytes. MD5 and these casts are
/// fixed by their definitions, never by a PostgreSQL version (unlike `hashtext`).
pub(crate) const STREAM_HASH: &str =
    "('x' || left(md5(convert_to(stream_id, 'UTF8')), 8))::bit(32)::bigint";

#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) append: SqlStr,
    pub(crate) append_first: SqlStr,
    pub(crate) append_next: SqlStr,
    /// `append_first` and `append_next` for an owned append (its own transaction): without
    /// `ON CONFLICT DO NOTHING`, so a refusal by a unique index raises (and undoes only the
    /// statement) instead of being probed for before the insert.
    pub(crate) append_first_owned: SqlStr,
    pub(crate) append_next_owned: SqlStr,
    pub(crate) batch_first: SqlStr,
    pub(crate) batch_next: SqlStr,
    pub(crate) append_streams: SqlStr,
    pub(crate) read_stream: SqlStr,
    pub(crate) correlated: SqlStr,
    pub(crate) event_by_id: SqlStr,
    pub(crate) read_payloads: SqlStr,
    pub(crate) stream_version: SqlStr,
    pub(crate) read_feed: SqlStr,
    pub(crate) read_feed_filtered: SqlStr,
    /// `read_feed_filtered` for one partition: `$6` the count, `$7` the index.
    pub(crate) read_feed_partition: SqlStr,
    pub(crate) feed_head: SqlStr,
    pub(crate) count_after: SqlStr,
    pub(crate) newest_committed: SqlStr,
    pub(crate) horizon: SqlStr,
    pub(crate) load_snapshot: SqlStr,
    pub(crate) save_snapshot: SqlStr,
    pub(crate) list_snapshots: SqlStr,
    pub(crate) delete_snapshots: SqlStr,
    pub(crate) load_checkpoint: SqlStr,
    pub(crate) save_checkpoint: SqlStr,
    pub(crate) delete_checkpoint: SqlStr,
    pub(crate) list_checkpoints: SqlStr,
    pub(crate) horizon_holders: SqlStr,
    /// On a standby, in its read transaction: whether it is in recovery, and its horizon.
    pub(crate) standby_horizon: SqlStr,
    /// The last cursor below the horizon (the head without `feed_head`'s count).
    pub(crate) feed_last: SqlStr,
}

impl Sql {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        let snapshot_columns = "stream_id, version, state_schema_version, state, taken_at";
        let checkpoint_columns =
            "name, transaction_id, global_position, events_processed, updated_at";
        // The one-statement fast path of `append_events` for one event creating a stream
        // (see `PgEventStore::fast_append`): its first event's key `(stream_id, 1)` is
        // the stream's lock, as in the function; no row back means that nothing was
        // written and the function must say why. Plan-proof: an insert's conflicts are
        // found through its arbiter indexes whatever the plan.
        let append_first = format!(
            "WITH e AS ( \
               INSERT INTO {s}.events (stream_id, stream_type, version, event_id, \
                                       event_type, schema_version, payload, metadata, \
                                       correlation_id, causation_id) \
               VALUES ($1, $2, 1, $3, $4, $5, $6::text::jsonb, $7::text::jsonb, $8, $9) \
               ON CONFLICT DO NOTHING \
               RETURNING transaction_id, global_position), \
             s AS ( \
               INSERT INTO {s}.streams (stream_id, stream_type, version, last_xid) \
               SELECT $1, $2, 1, e.transaction_id FROM e) \
             SELECT e.transaction_id::text::bigint, e.global_position FROM e"
        );
        // The fast path for one event after an exact version $10 >= 1 (at $11 = $10 + 1):
        // the stream's row locked, the version and the feed-order guard checked after
        // the lock (the transaction id is taken after it, as in the function), the
        // event, the row. Looks the row up by key twice: only for sessions that plan
        // without sequential scans (`PgEventStore::fast_next`).
        let append_next = format!(
            "WITH s AS ( \
               SELECT last_xid FROM {s}.streams \
                WHERE stream_id = $1 AND version = $10 FOR UPDATE), \
             e AS ( \
               INSERT INTO {s}.events (stream_id, stream_type, version, event_id, \
                                       event_type, schema_version, payload, metadata, \
                                       correlation_id, causation_id) \
               SELECT $1, $2, $11, $3, $4, $5, $6::text::jsonb, $7::text::jsonb, $8, $9 \
                 FROM s WHERE s.last_xid <= pg_current_xact_id() \
               ON CONFLICT DO NOTHING \
               RETURNING transaction_id, global_position), \
             u AS ( \
               UPDATE {s}.streams t SET version = $11, last_xid = e.transaction_id \
                 FROM e WHERE t.stream_id = $1) \
             SELECT e.transaction_id::text::bigint, e.global_position FROM e"
        );
        Self {
            append: sql(format!(
                "SELECT outcome, first_version, last_version, tx, pos, \
                        other_event_id, other_stream_id, other_version \
                   FROM {s}.append_events($1, $2, $3, $4, $5, $6, $7::text[]::jsonb[], \
                                          $8::text[]::jsonb[], $9, $10)"
            )),
            append_first_owned: sql(owned(&append_first)),
            append_next_owned: sql(owned(&append_next)),
            append_first: sql(append_first),
            append_next: sql(append_next),
            // The fast path for several events creating a stream, for owned appends only
            // (`PgEventStore::fast_append`), with `append`'s parameters ($3 = 0) and $11 the
            // count: the first event is written as in `append_first_owned` (its key
            // `(stream_id, 1)` the stream's lock), the others only after it, in version
            // order. Any refusal (the stream exists, an event id is stored) raises a unique
            // violation, which undoes the whole statement (the store then asks
            // `append_events` why). Plan-proof: no lookups, only the inserts' unique
            // indexes.
            batch_first: sql(format!(
                "WITH f AS ( \
                   INSERT INTO {s}.events ({INSERT_COLUMNS}) \
                   VALUES ($1, $2, 1, $4[1], $5[1], $6[1], $7[1]::jsonb, $8[1]::jsonb, \
                           $9[1], $10[1]) \
                   RETURNING transaction_id), \
                 r AS ( \
                   INSERT INTO {s}.events ({INSERT_COLUMNS}) \
                   SELECT {BATCH_VALUES} FROM f, {BATCH_ROWS} \
                    WHERE u.ord > 1 ORDER BY u.ord \
                   RETURNING global_position), \
                 s AS ( \
                   INSERT INTO {s}.streams (stream_id, stream_type, version, last_xid) \
                   SELECT $1, $2, $11, f.transaction_id FROM f) \
                 SELECT f.transaction_id::text::bigint, r.global_position FROM f, r \
                  ORDER BY r.global_position DESC LIMIT 1"
            )),
            // The fast path for several events after an exact version $3 >= 1 (to
            // $3 + $11), owned appends only: `append_next` for a batch. The row locked at
            // the expected version, the order guard checked after the lock, the events in
            // version order (no other writer can hold these versions while the row is
            // locked at $3), the row updated. An event id stored in another stream raises
            // a unique violation that undoes the statement, as in `batch_first`. Looks the
            // row up by key: only for sessions that plan without sequential scans.
            batch_next: sql(format!(
                "WITH s AS ( \
                   SELECT last_xid FROM {s}.streams \
                    WHERE stream_id = $1 AND version = $3 FOR UPDATE), \
                 e AS ( \
                   INSERT INTO {s}.events ({INSERT_COLUMNS}) \
                   SELECT {BATCH_VALUES} FROM s, {BATCH_ROWS} \
                    WHERE s.last_xid <= pg_current_xact_id() ORDER BY u.ord \
                   RETURNING transaction_id, global_position), \
                 u AS ( \
                   UPDATE {s}.streams t SET version = $3 + $11, last_xid = pg_current_xact_id() \
                    WHERE t.stream_id = $1 AND EXISTS (SELECT 1 FROM e)) \
                 SELECT e.transaction_id::text::bigint, e.global_position FROM e \
                  ORDER BY e.global_position DESC LIMIT 1"
            )),
            // The same columns as `append`, in the same order, then the part's index.
            append_streams: sql(format!(
                "SELECT r_outcome, r_first_version, r_last_version, r_tx, r_pos, \
                        r_other_event_id, r_other_stream_id, r_other_version, r_part \
                   FROM {s}.append_streams($1, $2, $3, $4, $5, $6, $7, $8::text[]::jsonb[], \
                                           $9::text[]::jsonb[], $10, $11)"
            )),
            // Through events_correlation_id_idx (partial: correlation_id IS NOT NULL), then
            // sorted: never a scan of the table (docs/commands.md shows the plan).
            correlated: sql(format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events \
                  WHERE correlation_id = $1 \
                  ORDER BY transaction_id, global_position LIMIT $2"
            )),
            event_by_id: sql(format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE event_id = $1"
            )),
            read_stream: sql(format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events \
                  WHERE stream_id = $1 AND version >= $2 ORDER BY version"
            )),
            // What a fold needs, in the order `row::stream_event` reads it; the payload as
            // text (what jsonb's binary output is anyway), decoded by the typed event.
            read_payloads: sql(format!(
                "SELECT version, event_id, event_type, schema_version, payload::text FROM {s}.events \
                  WHERE stream_id = $1 AND version >= $2 ORDER BY version"
            )),
            stream_version: sql(format!(
                "SELECT version FROM {s}.streams WHERE stream_id = $1"
            )),
            read_feed: sql(format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events \
                  WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
                    AND transaction_id < {HORIZON} \
                  ORDER BY transaction_id, global_position LIMIT $3"
            )),
            // The filter is wrapped in a CASE, which the planner cannot estimate (it takes
            // half the rows): estimated as the few rows it may be, it chose a bitmap scan of
            // everything after the cursor and a sort instead of walking the feed index in
            // order up to the limit, so every page of a filtered projection read the rest
            // of the feed (`a_filtered_runner_does_not_count_the_feed_before_every_page`).
            read_feed_filtered: sql(format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events \
                  WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
                    AND transaction_id < {HORIZON} \
                    AND CASE WHEN (cardinality($4::text[]) = 0 OR event_type = ANY($4)) \
                               AND (cardinality($5::text[]) = 0 OR stream_type = ANY($5)) \
                             THEN true ELSE false END \
                  ORDER BY transaction_id, global_position LIMIT $3"
            )),
            // The partition is computed here, so that a partition's runner receives only
            // its own events (the feed index is still walked in order: the feed's order
            // and its horizon are exactly those of `read_feed`; the CASE as in
            // `read_feed_filtered`).
            read_feed_partition: sql(format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events \
                  WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
                    AND transaction_id < {HORIZON} \
                    AND CASE WHEN (cardinality($4::text[]) = 0 OR event_type = ANY($4)) \
                               AND (cardinality($5::text[]) = 0 OR stream_type = ANY($5)) \
                               AND {STREAM_HASH} % $6 = $7 \
                             THEN true ELSE false END \
                  ORDER BY transaction_id, global_position LIMIT $3"
            )),
            // One statement, one snapshot: the count and the last event agree.
            feed_head: sql(format!(
                "SELECT l.tx, l.pos, c.n FROM \
                   (SELECT count(*) AS n FROM {s}.events WHERE transaction_id < {HORIZON}) c \
                   LEFT JOIN LATERAL \
                   (SELECT transaction_id::text::bigint AS tx, global_position AS pos \
                      FROM {s}.events WHERE transaction_id < {HORIZON} \
                     ORDER BY transaction_id DESC, global_position DESC LIMIT 1) l ON true"
            )),
            count_after: sql(format!(
                "SELECT count(*) FROM {s}.events \
                  WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
                    AND transaction_id < {HORIZON}"
            )),
            newest_committed: sql(format!(
                "SELECT transaction_id::text::bigint, global_position FROM {s}.events \
                  ORDER BY transaction_id DESC, global_position DESC LIMIT 1"
            )),
            horizon: sql(format!("SELECT {HORIZON}::text::bigint")),
            standby_horizon: sql(format!(
                "SELECT pg_is_in_recovery(), {HORIZON}::text::bigint"
            )),
            // ORDER BY names the table's columns: the output column
            // `transaction_id::text::bigint` is also called `transaction_id`, and ordering
            // by it (a bigint, which no index has) was a sequential scan and a sort of the
            // whole feed on every call.
            feed_last: sql(format!(
                "SELECT transaction_id::text::bigint, global_position FROM {s}.events \
                  WHERE transaction_id < {HORIZON} \
                  ORDER BY events.transaction_id DESC, events.global_position DESC LIMIT 1"
            )),
            load_snapshot: sql(format!(
                "SELECT {snapshot_columns} FROM {s}.snapshots \
                  WHERE stream_id = $1 AND state_schema_version = $2"
            )),
            save_snapshot: sql(format!(
                "INSERT INTO {s}.snapshots AS o \
                        (stream_id, stream_type, version, state_schema_version, state) \
                 VALUES ($1, $2, $3, $4, $5::text::jsonb) \
                 ON CONFLICT (stream_id) DO UPDATE \
                    SET version = EXCLUDED.version, \
                        state_schema_version = EXCLUDED.state_schema_version, \
                        state = EXCLUDED.state, taken_at = EXCLUDED.taken_at \
                  WHERE EXCLUDED.version > o.version \
                     OR EXCLUDED.state_schema_version <> o.state_schema_version"
            )),
            list_snapshots: sql(format!(
                "SELECT {snapshot_columns} FROM {s}.snapshots WHERE stream_id = $1"
            )),
            delete_snapshots: sql(format!("DELETE FROM {s}.snapshots WHERE stream_type = $1")),
            load_checkpoint: sql(format!(
                "SELECT {checkpoint_columns} FROM {s}.projection_checkpoints WHERE name = $1"
            )),
            save_checkpoint: sql(format!(
                "INSERT INTO {s}.projection_checkpoints \
                        (name, transaction_id, global_position, events_processed) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE \
                    SET transaction_id = EXCLUDED.transaction_id, \
                        global_position = EXCLUDED.global_position, \
                        events_processed = EXCLUDED.events_processed, \
                        updated_at = now()"
            )),
            delete_checkpoint: sql(format!(
                "DELETE FROM {s}.projection_checkpoints WHERE name = $1"
            )),
            // Byte order, like the reference model's BTreeMap, whatever the collation.
            list_checkpoints: sql(format!(
                "SELECT {checkpoint_columns} FROM {s}.projection_checkpoints \
                  ORDER BY name COLLATE \"C\""
            )),
            // Ordered oldest first: the first row is what holds the feed back.
            // 32-bit xids as the views show them, and the snapshot's 64-bit xmax (taken in
            // the same statement) to widen them with; the horizon is the oldest of them.
            horizon_holders: SqlStr::from_static(
                "SELECT 'session' AS kind, pid, datname::text AS database, \
                     backend_xid::text::bigint AS xid, \
                     extract(epoch FROM now() - xact_start)::float8 AS age_seconds, \
                     coalesce(state, '') || ': ' || left(query, 200) AS detail, \
                     pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS reference, \
                     usename::text AS user_name, nullif(application_name, '') AS application_name, \
                     coalesce(host(client_addr), 'local socket') AS client_addr, NULL::text AS gid \
                FROM pg_stat_activity WHERE backend_xid IS NOT NULL \
              UNION ALL \
              SELECT 'prepared', NULL, database::text, transaction::text::bigint, \
                     extract(epoch FROM now() - prepared)::float8, 'prepared transaction ' || gid, \
                     pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
                     owner::text, NULL, NULL, gid \
                FROM pg_prepared_xacts",
            ),
        }
    }
}

/// A statement built once (schema-qualified at construction, from validated names), kept
/// shared: a clone for each execution is a reference count, not a copy of the text.
/// A one-event fast-path statement for an owned append: the same statement without its
/// `ON CONFLICT DO NOTHING`. Speculative insertion costs every insert a probe of both
/// unique indexes before it (about 7 of a command's 35 buffers) and a confirmation record
/// in the WAL after it (docs/benchmarks.md, "The command's WAL, record by record"); an
/// owned append may raise instead, since the statement is its own transaction and a
/// refusal is then the function's to explain, as for a batch.
fn owned(statement: &str) -> String {
    statement.replacen("ON CONFLICT DO NOTHING ", "", 1)
}

pub(crate) fn sql(text: String) -> SqlStr {
    AssertSqlSafe(std::sync::Arc::<str>::from(text)).into_sql_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned append's fast path raises on a refusal instead of probing for it first
    /// (no speculative insert), and a caller's transaction keeps the statements that never
    /// raise: the same statements otherwise.
    #[test]
    fn owned_appends_insert_without_on_conflict() {
        let sql = Sql::new(&SchemaName::default());
        for (caller, owned) in [
            (&sql.append_first, &sql.append_first_owned),
            (&sql.append_next, &sql.append_next_owned),
        ] {
            assert_eq!(caller.as_str().matches("ON CONFLICT DO NOTHING").count(), 1);
            assert!(
                !owned.as_str().contains("ON CONFLICT"),
                "{}",
                owned.as_str()
            );
            assert_eq!(
                owned.as_str(),
                caller.as_str().replacen("ON CONFLICT DO NOTHING ", "", 1)
            );
        }
        assert!(!sql.batch_first.as_str().contains("ON CONFLICT"));
    }
}
