//! SQL of the projection runner, qualified with the store's schema.

use sqlx::SqlStr;

use crate::config::SchemaName;
use crate::sql::sql;

#[derive(Debug, Clone)]
pub(crate) struct ProjectionSql {
    pub(crate) lock_checkpoint: SqlStr,
    pub(crate) create_checkpoint: SqlStr,
    pub(crate) set_checkpoint: SqlStr,
    pub(crate) read_checkpoint: SqlStr,
    pub(crate) delete_checkpoint: SqlStr,
    pub(crate) is_parked: SqlStr,
    /// `is_parked` under any of the names `$1` (a partition's, and its projection's).
    pub(crate) is_parked_any: SqlStr,
    pub(crate) park: SqlStr,
    pub(crate) parked: SqlStr,
    pub(crate) park_records: SqlStr,
    pub(crate) lock_decision: SqlStr,
    pub(crate) resolve: SqlStr,
    /// `$1`: the runner rows of these names.
    pub(crate) forget_runners: SqlStr,
    /// `$1` the projection: the names of runner rows that may be its partitions'
    /// (checked by the caller, as for `family`).
    pub(crate) family_runners: SqlStr,
    /// The events a rebuild of `$1` passes over (those the runner skips).
    pub(crate) skipped_ids: SqlStr,
    pub(crate) save_status: SqlStr,
    /// `$1` name, `$2` shadow: a rebuild starts. Run on its lock session, whose pid and
    /// start time identify it.
    pub(crate) rebuild_started: SqlStr,
    /// `$1` name, `$2` outcome, `$3` scanned, `$4` total, `$5` error, `$6` the pid of the
    /// rebuild's lock session (a later rebuild's row is never overwritten).
    pub(crate) rebuild_finished: SqlStr,
    pub(crate) rebuilds: SqlStr,
    pub(crate) forget_rebuild: SqlStr,
    pub(crate) delete_status: SqlStr,
    pub(crate) prune_statuses: SqlStr,
    pub(crate) statuses: SqlStr,
    pub(crate) runners: SqlStr,
    /// Every shadow rebuild's checkpoint (`<name>__shadow`).
    pub(crate) shadow_checkpoints: SqlStr,
    /// `$1` schema, `$2` table: whether the table exists.
    pub(crate) table_exists: &'static str,
    /// The current session as `pg_stat_activity` shows it to itself.
    pub(crate) session_info: &'static str,
    /// `$1`: the lock key text; bigint key derived in SQL.
    pub(crate) try_lock: &'static str,
    /// `$1`: the lock key text: releases one hold of a session-level lock.
    pub(crate) unlock: &'static str,
    /// `$1` the projection: the names of its checkpoint rows of every layout (its own
    /// name, and `<name>#<index>/<count>` partition names, checked by the caller).
    pub(crate) family: SqlStr,
    /// `$1` the projection, `$2` the partition names: inserts the missing ones at the start.
    pub(crate) create_partitions: SqlStr,
    /// `$1`: checkpoint names to delete.
    pub(crate) delete_checkpoints: SqlStr,
    /// `$1`: a lock key text, taken until the transaction ends (a layout's check and
    /// creation are serialized by it).
    pub(crate) xact_lock: &'static str,
    /// `$1`: a lock key text, taken in shared mode for the life of the session.
    pub(crate) shared_lock: &'static str,
    /// `$1`: a lock key text: the pids of the sessions holding it in shared mode, in order.
    pub(crate) shared_holders: &'static str,
    /// The live runners that read the feed from a hot standby, with their last measure.
    pub(crate) standby_reports: SqlStr,
    /// `$1` name, `$2` instance: records its standby `$3` and that standby's lag (`$4`
    /// bytes, `$5` seconds, `$6` paused) in its status row.
    pub(crate) record_standby_lag: SqlStr,
}

/// Whether runner row `r`'s lock session still exists. Without `pg_read_all_stats` another
/// role's `backend_start` reads as NULL, and the pid alone has to do.
const ALIVE: &str = "EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.pid \
                      AND (a.backend_start IS NULL OR a.backend_start = r.backend_start))";

impl ProjectionSql {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        Self {
            lock_checkpoint: sql(format!(
                "SELECT transaction_id, global_position, events_processed \
                   FROM {s}.projection_checkpoints WHERE name = $1 FOR UPDATE"
            )),
            create_checkpoint: sql(format!(
                "INSERT INTO {s}.projection_checkpoints \
                        (name, transaction_id, global_position, events_processed) \
                 VALUES ($1, 0, 0, 0) ON CONFLICT (name) DO NOTHING"
            )),
            set_checkpoint: sql(format!(
                "INSERT INTO {s}.projection_checkpoints \
                        (name, transaction_id, global_position, events_processed) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE \
                    SET transaction_id = EXCLUDED.transaction_id, \
                        global_position = EXCLUDED.global_position, \
                        events_processed = EXCLUDED.events_processed, \
                        updated_at = now()"
            )),
            // The projection's own checkpoint, or its partitions' (checked by the caller).
            read_checkpoint: sql(format!(
                "SELECT name, transaction_id, global_position \
                   FROM {s}.projection_checkpoints \
                  WHERE name = $1 OR left(name, length($1) + 1) = $1 || '#'"
            )),
            delete_checkpoint: sql(format!(
                "DELETE FROM {s}.projection_checkpoints WHERE name = $1"
            )),
            // A decision resolved as `retried` no longer skips its event.
            is_parked: sql(format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.projection_parked \
                                 WHERE name = $1 AND event_id = $2 \
                                   AND resolution IS DISTINCT FROM 'retried')"
            )),
            is_parked_any: sql(format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.projection_parked \
                                 WHERE name = ANY($1::text[]) AND event_id = $2 \
                                   AND resolution IS DISTINCT FROM 'retried')"
            )),
            // A decision resolved as retried no longer passes over the event: parking it
            // again reopens it, keeping the earlier decision and its retry in the reason.
            park: sql(format!(
                "INSERT INTO {s}.projection_parked AS p \
                        (name, event_id, stream_id, version, reason, decided_by) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name, event_id) DO UPDATE \
                 SET reason = EXCLUDED.reason || ' (parked again; before: ' || p.reason \
                              || ', by ' || p.decided_by || ' at ' || p.decided_at::text \
                              || ', retried by ' || p.resolved_by || ' at ' || p.resolved_at::text || ')', \
                     decided_by = EXCLUDED.decided_by, decided_at = now(), \
                     resolution = NULL, resolved_by = NULL, resolved_at = NULL \
                 WHERE p.resolution = 'retried'"
            )),
            parked: sql(format!(
                "SELECT event_id, stream_id, version, reason, decided_by, decided_at \
                   FROM {s}.projection_parked WHERE name = $1 ORDER BY decided_at, event_id"
            )),
            park_records: sql(format!(
                "SELECT p.event_id, p.stream_id, p.version, p.reason, p.decided_by, p.decided_at, \
                        e.transaction_id::text::bigint, e.global_position, \
                        p.resolution, p.resolved_by, p.resolved_at, \
                        coalesce((c.transaction_id, c.global_position) \
                                 >= (e.transaction_id::text::bigint, e.global_position), false) \
                   FROM {s}.projection_parked p \
                   LEFT JOIN {s}.events e ON e.event_id = p.event_id \
                   LEFT JOIN {s}.projection_checkpoints c ON c.name = p.name \
                  WHERE p.name = $1 ORDER BY p.decided_at, p.event_id"
            )),
            lock_decision: sql(format!(
                "SELECT resolution FROM {s}.projection_parked \
                  WHERE name = $1 AND event_id = $2 FOR UPDATE"
            )),
            resolve: sql(format!(
                "UPDATE {s}.projection_parked \
                    SET resolution = $3, resolved_by = $4, resolved_at = now() \
                  WHERE name = $1 AND event_id = $2 AND resolution IS NULL"
            )),
            forget_runners: sql(format!(
                "DELETE FROM {s}.projection_runners WHERE name = ANY($1::text[])"
            )),
            family_runners: sql(format!(
                "SELECT DISTINCT name FROM {s}.projection_runners \
                  WHERE left(name, length($1) + 1) = $1 || '#'"
            )),
            skipped_ids: sql(format!(
                "SELECT event_id FROM {s}.projection_parked \
                  WHERE name = $1 AND resolution IS DISTINCT FROM 'retried'"
            )),
            // One row per runner instance, written only by that instance. `$8`: whether
            // it holds the projection's lock (`owner_since` keeps the first time it took it).
            save_status: sql(format!(
                "INSERT INTO {s}.projection_runners AS r \
                        (name, instance_id, state, pid, backend_start, application_name, \
                         client_addr, owner_since, last_error, last_error_at, \
                         failing_event_id, attempts, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $8 THEN now() END, \
                         $9, $10, $11, $12, now()) \
                 ON CONFLICT (name, instance_id) DO UPDATE \
                    SET state = EXCLUDED.state, pid = EXCLUDED.pid, \
                        backend_start = EXCLUDED.backend_start, \
                        application_name = EXCLUDED.application_name, \
                        client_addr = EXCLUDED.client_addr, \
                        owner_since = CASE WHEN $8 THEN coalesce(r.owner_since, now()) END, \
                        last_error = EXCLUDED.last_error, \
                        last_error_at = EXCLUDED.last_error_at, \
                        failing_event_id = EXCLUDED.failing_event_id, \
                        attempts = EXCLUDED.attempts, updated_at = now()"
            )),
            rebuild_started: sql(format!(
                "INSERT INTO {s}.projection_rebuilds AS r \
                        (name, shadow, outcome, started_at, finished_at, pid, backend_start, \
                         scanned, total, error) \
                 SELECT $1, $2, 'running', clock_timestamp(), NULL, a.pid, a.backend_start, \
                        0, 0, NULL \
                   FROM pg_stat_activity a WHERE a.pid = pg_backend_pid() \
                 ON CONFLICT (name) DO UPDATE \
                    SET shadow = EXCLUDED.shadow, outcome = 'running', \
                        started_at = EXCLUDED.started_at, finished_at = NULL, \
                        pid = EXCLUDED.pid, backend_start = EXCLUDED.backend_start, \
                        scanned = 0, total = 0, error = NULL"
            )),
            // clock_timestamp(): a success is recorded inside the rebuild's transaction,
            // whose now() is when it began.
            rebuild_finished: sql(format!(
                "UPDATE {s}.projection_rebuilds \
                    SET outcome = $2, finished_at = clock_timestamp(), scanned = $3, \
                        total = $4, error = $5 \
                  WHERE name = $1 AND pid = $6"
            )),
            rebuilds: sql(format!(
                "SELECT r.name, r.shadow, r.outcome, r.started_at, r.finished_at, r.pid, \
                        r.scanned, r.total, r.error, {ALIVE} \
                   FROM {s}.projection_rebuilds r"
            )),
            forget_rebuild: sql(format!(
                "DELETE FROM {s}.projection_rebuilds WHERE name = $1"
            )),
            delete_status: sql(format!(
                "DELETE FROM {s}.projection_runners WHERE name = $1 AND instance_id = $2"
            )),
            // Run by a new owner: the rows of stopped instances and of instances whose
            // session is gone are history once someone else holds the lock.
            prune_statuses: sql(format!(
                "DELETE FROM {s}.projection_runners r \
                  WHERE r.name = $1 AND r.instance_id <> $2 \
                    AND (r.state = 'stopped' OR NOT {ALIVE})"
            )),
            // Every projection with a checkpoint, a runner row or a rebuild record, and the backend pid of
            // the session holding its advisory lock (`lock_key`, a bigint key: `pg_locks`
            // shows its high half as classid, its low half as objid, objsubid 1).
            statuses: sql(format!(
                "SELECT n.name, c.transaction_id, c.global_position, c.events_processed, \
                        (SELECT l.pid FROM pg_locks l \
                          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                            AND l.database = (SELECT oid FROM pg_database \
                                               WHERE datname = current_database()) \
                            AND l.classid::bigint = (k.key >> 32) & 4294967295 \
                            AND l.objid::bigint = k.key & 4294967295 \
                          LIMIT 1) \
                   FROM (SELECT name FROM {s}.projection_checkpoints \
                         UNION SELECT name FROM {s}.projection_runners \
                         UNION SELECT name FROM {s}.projection_rebuilds) n \
                  CROSS JOIN LATERAL (SELECT hashtextextended( \
                         'chronik.projection:' || $1 || ':' || n.name, 0) AS key) k \
                   LEFT JOIN {s}.projection_checkpoints c ON c.name = n.name \
                  ORDER BY n.name COLLATE \"C\""
            )),
            runners: sql(format!(
                "SELECT r.name, r.instance_id, r.state, r.pid, r.application_name, \
                        r.client_addr, r.started_at, r.owner_since, r.updated_at, \
                        r.last_error, r.last_error_at, r.failing_event_id, r.attempts, {ALIVE} \
                   FROM {s}.projection_runners r \
                  ORDER BY r.name COLLATE \"C\", r.started_at, r.instance_id"
            )),
            shadow_checkpoints: sql(format!(
                "SELECT name, transaction_id, global_position FROM {s}.projection_checkpoints \
                  WHERE right(name, 8) = '__shadow' ORDER BY name"
            )),
            table_exists: "SELECT EXISTS (SELECT 1 FROM pg_tables \
                            WHERE schemaname = $1 AND tablename = $2)",
            session_info: "SELECT pid, backend_start, application_name, \
                                  coalesce(host(client_addr), 'local socket') \
                             FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            try_lock: "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
            unlock: "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
            family: sql(format!(
                "SELECT name FROM {s}.projection_checkpoints \
                  WHERE name = $1 OR left(name, length($1) + 1) = $1 || '#'"
            )),
            create_partitions: sql(format!(
                "INSERT INTO {s}.projection_checkpoints \
                        (name, transaction_id, global_position, events_processed) \
                 SELECT p, 0, 0, 0 FROM unnest($2::text[]) p ON CONFLICT (name) DO NOTHING"
            )),
            delete_checkpoints: sql(format!(
                "DELETE FROM {s}.projection_checkpoints WHERE name = ANY($1::text[])"
            )),
            xact_lock: "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            shared_lock: "SELECT pg_advisory_lock_shared(hashtextextended($1, 0))",
            shared_holders: "SELECT l.pid FROM pg_locks l \
                 CROSS JOIN (SELECT hashtextextended($1, 0) AS key) k \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ShareLock' \
                   AND l.objsubid = 1 \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND l.classid::bigint = (k.key >> 32) & 4294967295 \
                   AND l.objid::bigint = k.key & 4294967295 \
                 ORDER BY l.pid",
            standby_reports: sql(format!(
                "SELECT r.name, r.instance_id, r.standby, r.standby_lag_bytes, \
                        r.standby_lag_seconds, r.standby_paused, \
                        extract(epoch FROM now() - r.standby_measured_at)::float8 \
                   FROM {s}.projection_runners r \
                  WHERE r.standby IS NOT NULL AND r.state <> 'stopped' AND {ALIVE} \
                  ORDER BY r.name COLLATE \"C\", r.started_at, r.instance_id"
            )),
            record_standby_lag: sql(format!(
                "UPDATE {s}.projection_runners \
                    SET standby = $3, standby_lag_bytes = $4, standby_lag_seconds = $5, \
                        standby_paused = $6, standby_measured_at = now() \
                  WHERE name = $1 AND instance_id = $2"
            )),
        }
    }
}

/// The backend pid of the session holding the advisory lock of key text `$1` in this
/// database (no row when nobody holds it). A bigint key shows in `pg_locks` as its high
/// half in classid and its low half in objid, objsubid 1.
pub(crate) const LOCK_HOLDER: &str = "SELECT l.pid FROM pg_locks l \
     CROSS JOIN (SELECT hashtextextended($1, 0) AS key) k \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND l.classid::bigint = (k.key >> 32) & 4294967295 \
       AND l.objid::bigint = k.key & 4294967295 \
     LIMIT 1";

/// The advisory-lock key text serializing the check and creation of projection `name`'s
/// checkpoint layout (held per transaction).
pub(crate) fn layout_key(schema: &SchemaName, name: &str) -> String {
    format!("chronik.projection-layout:{}:{name}", schema.as_str())
}

/// The advisory-lock key text that every worker of partitioned projection `name` holds
/// in shared mode: the holders are the live workers, which share its partitions out.
pub(crate) fn workers_key(schema: &SchemaName, name: &str) -> String {
    format!("chronik.projection-workers:{}:{name}", schema.as_str())
}

/// The advisory-lock key text of a projection (schema-scoped). `statuses` builds the same
/// text in SQL to find the lock's holder in `pg_locks`.
pub(crate) fn lock_key(schema: &SchemaName, name: &str) -> String {
    format!("chronik.projection:{}:{name}", schema.as_str())
}
