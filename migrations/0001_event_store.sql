-- chronik event store: events, streams (order guard), snapshots, projection checkpoints.
--
-- Names are unqualified on purpose: the library runs this with `search_path` set to the
-- store's schema, so several stores can share one database. Append-only: never edit an
-- applied migration, add a new file.
--
-- Sharding plan (write side, by stream id): every unique key holds `stream_id`, except
-- `events_event_id_key`. Event ids are global by contract (a retried append must find its
-- ids wherever they landed); on a sharded cluster that key becomes `(stream_id, event_id)`
-- and the cross-stream check is the lookup `append_events` already does before writing.

CREATE TABLE streams (
    stream_id   text   NOT NULL,
    -- the stream's category (`order` for `order-42`)
    stream_type text   NOT NULL,
    -- version of the last event; 0 never persists (a row exists once a stream has events)
    version     bigint NOT NULL CHECK (version >= 0),
    -- xid of the last transaction that appended: the feed-order guard (DESIGN invariant 6)
    last_xid    xid8   NOT NULL,
    CONSTRAINT streams_pkey PRIMARY KEY (stream_id)
);

CREATE TABLE events (
    -- identity values are handed out at insert and commit out of order: never read the
    -- feed by this column alone (see docs/ordering.md)
    global_position bigint      GENERATED ALWAYS AS IDENTITY,
    -- the writing transaction; the feed is ordered by (transaction_id, global_position)
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    stream_id       text        NOT NULL CHECK (stream_id <> ''),
    stream_type     text        NOT NULL,
    version         bigint      NOT NULL CHECK (version >= 1),
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL CHECK (event_type <> ''),
    -- bigint so that every u32 schema version fits
    schema_version  bigint      NOT NULL CHECK (schema_version BETWEEN 1 AND 4294967295),
    payload         jsonb       NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    -- free-form string headers; correlation and causation have their own columns
    metadata        jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    correlation_id  uuid,
    causation_id    uuid,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (stream_id, version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

CREATE INDEX events_feed_idx ON events (transaction_id, global_position);
CREATE INDEX events_correlation_id_idx ON events (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX events_causation_id_idx ON events (causation_id) WHERE causation_id IS NOT NULL;

-- Invariant 1: the database itself refuses to change history.
CREATE FUNCTION events_are_immutable() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'chronik events are immutable: % on %.% is not allowed',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'CKI01',
              HINT = 'append a compensating event instead; erasing data is a separate, explicit mechanism';
END
$fn$;

CREATE TRIGGER events_reject_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();

CREATE TRIGGER events_reject_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();

CREATE TABLE snapshots (
    stream_id            text        NOT NULL,
    stream_type          text        NOT NULL,
    version              bigint      NOT NULL CHECK (version >= 0),
    state_schema_version bigint      NOT NULL CHECK (state_schema_version BETWEEN 0 AND 4294967295),
    state                jsonb       NOT NULL,
    taken_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT snapshots_pkey PRIMARY KEY (stream_id)
);

CREATE INDEX snapshots_stream_type_idx ON snapshots (stream_type);

CREATE TABLE projection_checkpoints (
    name             text        NOT NULL,
    -- the feed cursor: (transaction_id, global_position), never a bare position
    transaction_id   bigint      NOT NULL CHECK (transaction_id >= 0),
    global_position  bigint      NOT NULL CHECK (global_position >= 0),
    events_processed bigint      NOT NULL CHECK (events_processed >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projection_checkpoints_pkey PRIMARY KEY (name)
);

-- One append, one round trip, any number of events.
--
-- p_expected: >= 0 exact version (0 = no stream), -1 stream exists, -2 any.
-- Outcomes (no exception is raised for them, so a caller's transaction stays usable):
--   0 appended          first_version, last_version, tx, pos (the last event's cursor)
--   1 already appended  same columns, from the stored events (idempotent retry)
--   2 conflict          other_version = the stream's actual version
--   3 transaction order the stream's last writer is newer than this transaction
--   4 duplicate id      other_event_id stored at (other_stream_id, other_version)
-- Order of checks (the reference model's): idempotency, expected version, order guard.
-- No EXCEPTION block (it would open a subtransaction on every call) and no pg_notify.
CREATE FUNCTION append_events(
    p_stream_id       text,
    p_stream_type     text,
    p_expected        bigint,
    p_event_ids       uuid[],
    p_event_types     text[],
    p_schema_versions bigint[],
    p_payloads        jsonb[],
    p_metadata        jsonb[],
    p_correlation_ids uuid[],
    p_causation_ids   uuid[],
    OUT outcome         smallint,
    OUT first_version   bigint,
    OUT last_version    bigint,
    OUT tx              bigint,
    OUT pos             bigint,
    OUT other_event_id  uuid,
    OUT other_stream_id text,
    OUT other_version   bigint
)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    n          bigint := coalesce(cardinality(p_event_ids), 0);
    v_current  bigint;
    v_last_xid xid8;
    v_exists   boolean;
    v_xid      xid8;
    v_ord      bigint;
    v_matched  bigint;
    v_attempt  integer := 0;
BEGIN
    IF n = 0 THEN
        RAISE EXCEPTION 'an append needs at least one event' USING ERRCODE = 'CKA01';
    END IF;
    LOOP
        v_attempt := v_attempt + 1;
        -- Serializes appenders of this stream (a row lock, nothing global).
        SELECT s.version, s.last_xid INTO v_current, v_last_xid
          FROM streams s WHERE s.stream_id = p_stream_id FOR UPDATE;
        v_exists := FOUND;
        IF NOT v_exists THEN
            v_current := 0;
        END IF;

        -- 1. Idempotency, before the expected version.
        SELECT u.ord, e.event_id, e.stream_id, e.version
          INTO v_ord, other_event_id, other_stream_id, other_version
          FROM unnest(p_event_ids) WITH ORDINALITY AS u(id, ord)
          JOIN events e ON e.event_id = u.id
         ORDER BY u.ord
         LIMIT 1;
        IF FOUND THEN
            IF v_ord = 1 AND other_stream_id = p_stream_id
               AND (p_expected < 0 OR other_version = p_expected + 1) THEN
                SELECT count(*) INTO v_matched
                  FROM unnest(p_event_ids) WITH ORDINALITY AS u(id, ord)
                  JOIN events e ON e.event_id = u.id
                 WHERE e.stream_id = p_stream_id AND e.version = other_version + u.ord - 1;
                IF v_matched = n THEN
                    SELECT e.transaction_id::text::bigint, e.global_position INTO tx, pos
                      FROM events e WHERE e.event_id = p_event_ids[n];
                    outcome := 1;
                    first_version := other_version;
                    last_version := other_version + n - 1;
                    other_event_id := NULL;
                    other_stream_id := NULL;
                    other_version := NULL;
                    RETURN;
                END IF;
            END IF;
            outcome := 4;
            RETURN;
        END IF;

        -- 2. Expected version.
        IF NOT (p_expected = -2
                OR (p_expected = -1 AND v_current > 0)
                OR (p_expected >= 0 AND v_current = p_expected)) THEN
            outcome := 2;
            other_version := v_current;
            RETURN;
        END IF;

        -- 3. Feed order agrees with stream order (DESIGN invariant 6).
        v_xid := pg_current_xact_id();
        IF v_exists AND v_last_xid > v_xid THEN
            outcome := 3;
            other_version := v_current;
            RETURN;
        END IF;

        -- 4. Write.
        IF v_exists THEN
            UPDATE streams s SET version = v_current + n, last_xid = v_xid
             WHERE s.stream_id = p_stream_id;
        ELSE
            INSERT INTO streams (stream_id, stream_type, version, last_xid)
            VALUES (p_stream_id, p_stream_type, n, v_xid)
            ON CONFLICT (stream_id) DO NOTHING;
            IF NOT FOUND THEN
                -- A concurrent appender created the stream and committed: start over
                -- under its row lock (it exists now, so this happens at most once).
                IF v_attempt >= 3 THEN
                    RAISE EXCEPTION 'stream % could not be created', p_stream_id
                        USING ERRCODE = '40001';
                END IF;
                CONTINUE;
            END IF;
        END IF;

        WITH ins AS (
            INSERT INTO events (stream_id, stream_type, version, event_id, event_type,
                                schema_version, payload, metadata, correlation_id, causation_id)
            SELECT p_stream_id, p_stream_type, v_current + u.ord, u.id, u.typ,
                   u.sv, u.payload, u.meta, u.corr, u.caus
              FROM unnest(p_event_ids, p_event_types, p_schema_versions, p_payloads,
                          p_metadata, p_correlation_ids, p_causation_ids)
                   WITH ORDINALITY AS u(id, typ, sv, payload, meta, corr, caus, ord)
             ORDER BY u.ord
            RETURNING global_position
        )
        SELECT max(ins.global_position) INTO pos FROM ins;

        outcome := 0;
        first_version := v_current + 1;
        last_version := v_current + n;
        tx := v_xid::text::bigint;
        RETURN;
    END LOOP;
END
$fn$;

-- Pin the function's name resolution to the schema it was created in (and pg_catalog
-- first), so neither a caller's search_path nor a look-alike table can redirect it.
DO $pin$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION %I.append_events(text, text, bigint, uuid[], text[], bigint[], jsonb[], jsonb[], uuid[], uuid[]) SET search_path = pg_catalog, %I',
        current_schema(), current_schema());
END
$pin$;
