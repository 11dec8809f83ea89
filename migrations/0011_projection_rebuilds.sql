-- The last rebuild of each projection and how it ended, so that `projections status` can
-- say that it failed, when and why (a handler or decode error, an interruption, a process
-- that died while it ran) until a later rebuild succeeds. One row per projection, under
-- its live name (a shadow rebuild's too), written only by the rebuild holding the
-- projection's lock. Append-only migration: never edit it once applied.

CREATE TABLE projection_rebuilds (
    name          text        NOT NULL,
    shadow        boolean     NOT NULL,
    outcome       text        NOT NULL CHECK (outcome IN ('running', 'succeeded', 'failed')),
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    -- the rebuild's lock session: a `running` row whose session is gone did not finish
    pid           integer,
    backend_start timestamptz,
    -- feed events examined, and visible when it started (0 while running)
    scanned       bigint      NOT NULL DEFAULT 0 CHECK (scanned >= 0),
    total         bigint      NOT NULL DEFAULT 0 CHECK (total >= 0),
    error         text,
    CONSTRAINT projection_rebuilds_pkey PRIMARY KEY (name)
);
