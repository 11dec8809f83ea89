//! What a session's statements cost the tables, from PostgreSQL's cumulative statistics
//! (`pg_stat_user_tables`, `pg_stat_user_indexes`): sequential scans and rows read, in the
//! schema the session works in.

use sqlx::PgPool;

/// Makes this session's counters reach the statistics views now, not when it next goes
/// idle after a while: call it on the session measured, then read on the same session (in
/// a new transaction, so not from a cached snapshot of the views).
pub async fn flush(session: &PgPool) {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(session)
        .await
        .expect("flush statistics");
}

/// `(table, seq_scan)` of `tables` in the current schema, by name, after [`flush`]: the
/// sequential scans so far.
pub async fn seq_scans(session: &PgPool, tables: &[&str]) -> Vec<(String, i64)> {
    flush(session).await;
    sqlx::query_as(
        "SELECT relname::text, seq_scan FROM pg_stat_user_tables \
          WHERE schemaname = current_schema() AND relname = ANY($1) ORDER BY relname",
    )
    .bind(tables)
    .fetch_all(session)
    .await
    .expect("read statistics")
}

/// How `events` was read so far, by every session whose counters have reached the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsReads {
    /// Sequential scans.
    pub seq_scans: i64,
    /// Rows read, sequentially and through its indexes (bitmap scans included).
    pub rows: i64,
}

/// [`EventsReads`] of the current schema's `events`, after [`flush`] of `session`'s own
/// counters. (Another session's reach the views when it goes idle or ends.)
pub async fn events_reads(session: &PgPool) -> EventsReads {
    flush(session).await;
    let (seq_scans, rows) = sqlx::query_as(
        "SELECT t.seq_scan, (t.seq_tup_read \
                 + coalesce((SELECT sum(i.idx_tup_read) FROM pg_stat_user_indexes i \
                              WHERE i.relid = t.relid), 0))::bigint \
           FROM pg_stat_user_tables t \
          WHERE t.schemaname = current_schema() AND t.relname = 'events'",
    )
    .fetch_one(session)
    .await
    .expect("read statistics");
    EventsReads { seq_scans, rows }
}
