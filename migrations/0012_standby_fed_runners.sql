-- Projections fed from a hot standby: a runner that reads the feed from a streaming replica
-- (while it writes its read model and checkpoint here, on the primary) records in its own
-- status row which standby it reads and how far that standby was behind when it last
-- measured, so that `doctor` can report replication lag for such runners from the primary
-- alone. NULL for a runner that reads the primary.
-- Unqualified names: run with `search_path` set to the store's schema (see 0001).
-- Append-only migration: never edit it once applied.

ALTER TABLE projection_runners
    -- the standby, `host:port` (never a user or password)
    ADD COLUMN standby             text,
    -- WAL bytes the primary had written that the standby had not replayed
    ADD COLUMN standby_lag_bytes   bigint CHECK (standby_lag_bytes >= 0),
    -- seconds since the last replayed commit (0 when it had replayed everything)
    ADD COLUMN standby_lag_seconds float8,
    -- whether its replay was paused (pg_wal_replay_pause())
    ADD COLUMN standby_paused      boolean,
    ADD COLUMN standby_measured_at timestamptz;
