-- chronik projections: operator-visible runner status, recorded park decisions, and the
-- Orders example read model. Unqualified names: run with `search_path` set to the store's
-- schema (see 0001). Append-only: never edit an applied migration, add a new file.

-- One row per projection, written by the PostgreSQL runner on every state change and
-- failure (not on every batch): what `chronik projections status` shows next to the
-- checkpoint and the lag.
CREATE TABLE projection_status (
    name             text        NOT NULL,
    -- starting | catching_up | live | failing | standby | stopped
    state            text        NOT NULL,
    -- backend pid of the session holding the projection's advisory lock
    owner_pid        integer,
    last_error       text,
    last_error_at    timestamptz,
    -- the event being retried while state = 'failing' (what a park decision names)
    failing_event_id uuid,
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projection_status_pkey PRIMARY KEY (name)
);

-- An operator's explicit, recorded decision to skip one poison event for one projection.
-- Runners skip an event only when it is listed here; nothing ever deletes a row.
CREATE TABLE projection_parked (
    name       text        NOT NULL,
    event_id   uuid        NOT NULL,
    stream_id  text        NOT NULL,
    version    bigint      NOT NULL CHECK (version >= 1),
    reason     text        NOT NULL CHECK (reason <> ''),
    decided_by text        NOT NULL CHECK (decided_by <> ''),
    decided_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projection_parked_pkey PRIMARY KEY (name, event_id)
);

-- The Orders example read model, maintained by `OrderProjection` (exactly once: its writes
-- commit with the checkpoint). `version` is the last applied stream version; upserts are
-- guarded by it, so a replayed event is a no-op as well.
CREATE TABLE order_summaries (
    order_id     text        NOT NULL,
    customer_id  text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('placed', 'shipped', 'cancelled')),
    total_amount bigint      NOT NULL,
    lines        bigint      NOT NULL DEFAULT 0 CHECK (lines >= 0),
    carrier      text,
    placed_at    timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    version      bigint      NOT NULL CHECK (version >= 1),
    CONSTRAINT order_summaries_pkey PRIMARY KEY (order_id)
);

CREATE INDEX order_summaries_customer_idx ON order_summaries (customer_id);
