use chronik_core::{StreamId, Version};
use chronik_store::{Snapshot, SnapshotStore, StoreError};
use futures::TryStreamExt;
use serde_json::Value;

use crate::error::backend;
use crate::row;
use crate::store::PgEventStore;

/// PostgreSQL's `jsonb` cannot hold `\u0000`; reject it before any I/O.
fn check_state(state: &Value) -> Result<(), StoreError> {
    let mut stack = vec![state];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => {
                return Err(StoreError::InvalidRequest(
                    "snapshot state holds a NUL character (\\u0000), which cannot be stored"
                        .to_owned(),
                ));
            }
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    return Err(StoreError::InvalidRequest(
                        "snapshot state holds a NUL character (\\u0000) in a key".to_owned(),
                    ));
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    Ok(())
}

impl SnapshotStore for PgEventStore {
    async fn load_snapshot(
        &self,
        stream: &StreamId,
        state_schema_version: u32,
    ) -> Result<Option<Snapshot>, StoreError> {
        sqlx::query(self.sql.load_snapshot.clone())
            .bind(stream.as_str())
            .bind(i64::from(state_schema_version))
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|r| row::snapshot(&r))
            .transpose()
    }

    async fn save_snapshot(
        &self,
        stream: &StreamId,
        version: Version,
        state_schema_version: u32,
        state: &Value,
    ) -> Result<(), StoreError> {
        check_state(state)?;
        let state = crate::json::to_jsonb_text(state).map_err(|e| {
            StoreError::InvalidRequest(format!("snapshot state does not serialize: {e}"))
        })?;
        // One upsert: replaced only by a higher version or another schema version.
        sqlx::query(self.sql.save_snapshot.clone())
            .bind(stream.as_str())
            .bind(stream.category())
            .bind(version.as_i64())
            .bind(i64::from(state_schema_version))
            .bind(state)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn list_snapshots(&self, stream: &StreamId) -> Result<Vec<Snapshot>, StoreError> {
        sqlx::query(self.sql.list_snapshots.clone())
            .bind(stream.as_str())
            .fetch(&self.pool)
            .map_err(backend)
            .and_then(|r| futures::future::ready(row::snapshot(&r)))
            .try_collect()
            .await
    }

    async fn delete_snapshots(&self, category: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(self.sql.delete_snapshots.clone())
            .bind(category)
            .execute(&self.pool)
            .await
            .map_err(backend)?
            .rows_affected())
    }
}
