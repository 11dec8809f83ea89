-- chronik projections: one status row per runner *instance*. Until now every runner of a
-- projection upserted the same `projection_status` row, so a standby's `standby` or
-- `stopped` overwrote what the active runner had written, and the report named no owner
-- while one was live. Now each instance writes only its own row, and
-- `projection_reports` tells the active owner (the session that holds the projection's
-- advisory lock, read from `pg_locks`), the standbys and the dead apart.
-- Unqualified names: run with `search_path` set to the store's schema (see 0001).
-- Append-only: never edit an applied migration, add a new file.

CREATE TABLE projection_runners (
    name             text        NOT NULL,
    -- random, one per spawned runner
    instance_id      uuid        NOT NULL,
    -- starting | catching_up | live | failing | standby | stopped
    state            text        NOT NULL,
    -- the instance's lock session: a pid identifies a session only together with its
    -- start (pids are reused); NULL while it has none
    pid              integer,
    backend_start    timestamptz,
    -- where it runs, as the server sees the lock session
    application_name text,
    client_addr      text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    -- when it took the projection's lock; NULL while it does not hold it
    owner_since      timestamptz,
    last_error       text,
    last_error_at    timestamptz,
    -- the event being retried while state = 'failing' (what a park decision names)
    failing_event_id uuid,
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projection_runners_pkey PRIMARY KEY (name, instance_id)
);

-- The shared row is replaced: nothing reads or writes it any more. Its last error is not
-- carried over; a failing runner records it again on its next attempt.
DROP TABLE projection_status;
