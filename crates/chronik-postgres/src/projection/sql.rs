//! SQL of the projection runner, qualified with the store's schema.

use crate::config::SchemaName;

#[derive(Debug, Clone)]
pub(crate) struct ProjectionSql {
    pub(crate) lock_checkpoint: String,
    pub(crate) create_checkpoint: String,
    pub(crate) set_checkpoint: String,
    pub(crate) read_checkpoint: String,
    pub(crate) delete_checkpoint: String,
    pub(crate) is_parked: String,
    pub(crate) park: String,
    pub(crate) parked: String,
    pub(crate) save_status: String,
    pub(crate) statuses: String,
    /// `$1`: the lock key text; bigint key derived in SQL.
    pub(crate) try_lock: &'static str,
}

impl ProjectionSql {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        Self {
            lock_checkpoint: format!(
                "SELECT transaction_id, global_position, events_processed \
                   FROM {s}.projection_checkpoints WHERE name = $1 FOR UPDATE"
            ),
            create_checkpoint: format!(
                "INSERT INTO {s}.projection_checkpoints \
                        (name, transaction_id, global_position, events_processed) \
                 VALUES ($1, 0, 0, 0) ON CONFLICT (name) DO NOTHING"
            ),
            set_checkpoint: format!(
                "INSERT INTO {s}.projection_checkpoints \
                        (name, transaction_id, global_position, events_processed) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE \
                    SET transaction_id = EXCLUDED.transaction_id, \
                        global_position = EXCLUDED.global_position, \
                        events_processed = EXCLUDED.events_processed, \
                        updated_at = now()"
            ),
            read_checkpoint: format!(
                "SELECT transaction_id, global_position, events_processed \
                   FROM {s}.projection_checkpoints WHERE name = $1"
            ),
            delete_checkpoint: format!("DELETE FROM {s}.projection_checkpoints WHERE name = $1"),
            is_parked: format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.projection_parked \
                                 WHERE name = $1 AND event_id = $2)"
            ),
            park: format!(
                "INSERT INTO {s}.projection_parked \
                        (name, event_id, stream_id, version, reason, decided_by) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name, event_id) DO NOTHING"
            ),
            parked: format!(
                "SELECT event_id, stream_id, version, reason, decided_by, decided_at \
                   FROM {s}.projection_parked WHERE name = $1 ORDER BY decided_at, event_id"
            ),
            save_status: format!(
                "INSERT INTO {s}.projection_status \
                        (name, state, owner_pid, last_error, last_error_at, \
                         failing_event_id, attempts, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, now()) \
                 ON CONFLICT (name) DO UPDATE \
                    SET state = EXCLUDED.state, owner_pid = EXCLUDED.owner_pid, \
                        last_error = EXCLUDED.last_error, \
                        last_error_at = EXCLUDED.last_error_at, \
                        failing_event_id = EXCLUDED.failing_event_id, \
                        attempts = EXCLUDED.attempts, updated_at = now()"
            ),
            statuses: format!(
                "SELECT coalesce(c.name, s.name), c.transaction_id, c.global_position, \
                        c.events_processed, s.state, s.owner_pid, s.last_error, \
                        s.last_error_at, s.failing_event_id, coalesce(s.attempts, 0) \
                   FROM {s}.projection_checkpoints c \
                   FULL JOIN {s}.projection_status s ON s.name = c.name \
                  ORDER BY coalesce(c.name, s.name) COLLATE \"C\""
            ),
            try_lock: "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
        }
    }
}

/// The advisory-lock key text of a projection (schema-scoped).
pub(crate) fn lock_key(schema: &SchemaName, name: &str) -> String {
    format!("chronik.projection:{}:{name}", schema.as_str())
}
