-- append_events reports every outcome as a value, also when it is found by a race, and
-- compares content on the duplicate path (issue 11). Same signature and columns as 0003.
--
-- Why: 0003 probed the ids and then inserted. When a concurrent, uncommitted transaction
-- held one of the ids, the INSERT waited for it and then raised unique_violation. In a
-- caller's transaction that error aborted the transaction: its later statements failed
-- and its COMMIT was answered with ROLLBACK, which sqlx reports as success, so appends
-- already acknowledged in it were silently lost. Now:
--
-- * One event is written with `INSERT ... ON CONFLICT DO NOTHING`: speculative insertion
--   waits for a transaction that holds the same key and then, instead of raising, inserts
--   nothing; the function then finds out why (below) and says so.
-- * Several events are written inside a subtransaction (a BEGIN ... EXCEPTION block),
--   entered only on that path: if the batch loses a race on any of its ids (or on its
--   first version, to a concurrent creator of the stream), the rows already inserted are
--   rolled back with the subtransaction, which no statement of the function could do (the
--   events are immutable and the application role has no DELETE). One event cannot be
--   half-written, so it needs none. See docs/reliability.md, "Caller transactions", for
--   the measured cost and the alternatives.
-- * The `streams` row is written only after the events went in, so nothing ever has to be
--   taken back. A new stream's row lock is its first event's key `(stream_id, 1)`: every
--   creator inserts it first, and a second creator waits on it.
-- * Nothing is probed before writing. On the way that writes (the common one) the
--   statements are: the stream row's lock (skipped for "no stream"), the insert, the
--   stream row's write. Every lookup is equality on a unique key, one key at a time.
-- * The same ids at the same place with another event type, schema version or payload
--   (compared as jsonb text, so `1` and `1.0` differ as they do in serde_json) are the new
--   outcome 5, checked only on the duplicate path.
--
-- The contract (what callers, including batching writers, can rely on):
--   p_expected: >= 0 exact version (0 = no stream), -1 stream exists, -2 any.
--   Outcomes, never raised, so a caller's transaction stays usable after each of them:
--     0 appended          first_version, last_version, tx, pos (the last event's cursor)
--     1 already appended  the same columns, from the stored events (an idempotent retry)
--     2 conflict          other_version = the stream's actual version
--     3 transaction order the stream's last writer is newer than this transaction;
--                         other_version = the stream's version
--     4 duplicate id      other_event_id is stored at (other_stream_id, other_version),
--                         not at this append's place
--     5 id reused         other_event_id is stored at this append's place,
--                         (other_stream_id, other_version), with other content
--   Checks in the reference model's order: idempotency (1, 4, 5), expected version (2),
--   order guard (3). Nothing is written unless the outcome is 0.
--   Raised, aborting the caller's transaction (PostgreSQL aborts on any error): CKA01 for
--   an empty batch (the library validates first); 40001 when the stream cannot be decided
--   after repeated concurrent changes (under REPEATABLE READ or SERIALIZABLE a concurrent
--   append also raises 40001, from PostgreSQL itself); and any backend error (deadlock,
--   statement or lock timeout, cancellation, lost connection).
--
-- Append-only: never edit an applied migration, add a new file.

DO $migration$
BEGIN
    EXECUTE format($ddl$
CREATE OR REPLACE FUNCTION %1$I.append_events(
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
    v_current  bigint := 0;
    v_last_xid xid8;
    v_exists   boolean := false;
    v_read     boolean;
    v_xid      xid8;
    v_written  boolean;
    v_attempt  integer := 0;
    i          integer;
    v_at       integer;
    v_reused   integer;
    v_place    bigint;
    v_stream   text;
    v_version  bigint;
    v_type     text;
    v_sv       bigint;
    v_payload  jsonb;
    v_tx       bigint;
    v_pos      bigint;
BEGIN
    IF n = 0 THEN
        RAISE EXCEPTION 'an append needs at least one event' USING ERRCODE = 'CKA01';
    END IF;
    LOOP
        v_attempt := v_attempt + 1;
        -- The stream's row, locked: serializes this stream's appenders (a row lock,
        -- nothing global). "No stream" skips it on the first attempt: the insert of
        -- version 1 below is then the lock, and it finds an existing stream too.
        v_read := NOT (p_expected = 0 AND v_attempt = 1);
        IF v_read THEN
            SELECT s.version, s.last_xid INTO v_current, v_last_xid
              FROM %1$I.streams s WHERE s.stream_id = p_stream_id FOR UPDATE;
            v_exists := FOUND;
            IF NOT v_exists THEN
                v_current := 0;
            END IF;
        END IF;
        -- After the lock: when the append is its transaction's first write (always, for an
        -- owned append) the stream's last writer is older, and the guard cannot trip.
        v_xid := pg_current_xact_id();

        v_written := false;
        IF (p_expected = -2
            OR (p_expected = -1 AND v_current > 0)
            OR (p_expected >= 0 AND v_current = p_expected))
           AND NOT (v_exists AND v_last_xid > v_xid) THEN
            -- The events, at versions v_current + 1 ..= v_current + n.
            IF n = 1 THEN
                INSERT INTO %1$I.events (stream_id, stream_type, version, event_id, event_type,
                                         schema_version, payload, metadata, correlation_id,
                                         causation_id)
                VALUES (p_stream_id, p_stream_type, v_current + 1, p_event_ids[1],
                        p_event_types[1], p_schema_versions[1], p_payloads[1], p_metadata[1],
                        p_correlation_ids[1], p_causation_ids[1])
                ON CONFLICT DO NOTHING
                RETURNING global_position INTO pos;
                v_written := FOUND;
            ELSE
                BEGIN
                    WITH ins AS (
                        INSERT INTO %1$I.events (stream_id, stream_type, version, event_id,
                                                 event_type, schema_version, payload, metadata,
                                                 correlation_id, causation_id)
                        SELECT p_stream_id, p_stream_type, v_current + u.ord, u.id, u.typ,
                               u.sv, u.payload, u.meta, u.corr, u.caus
                          FROM unnest(p_event_ids, p_event_types, p_schema_versions,
                                      p_payloads, p_metadata, p_correlation_ids,
                                      p_causation_ids)
                               WITH ORDINALITY AS u(id, typ, sv, payload, meta, corr, caus, ord)
                         ORDER BY u.ord
                        RETURNING global_position
                    )
                    SELECT max(ins.global_position) INTO pos FROM ins;
                    v_written := true;
                EXCEPTION WHEN unique_violation THEN
                    -- Lost a race (or an id is stored): the subtransaction took the rows
                    -- back; say why below.
                    v_written := false;
                END;
            END IF;
            IF v_written THEN
                -- The stream's row, now that its events are in.
                IF v_exists THEN
                    UPDATE %1$I.streams s SET version = v_current + n, last_xid = v_xid
                     WHERE s.stream_id = p_stream_id;
                ELSE
                    INSERT INTO %1$I.streams (stream_id, stream_type, version, last_xid)
                    VALUES (p_stream_id, p_stream_type, n, v_xid);
                END IF;
                outcome := 0;
                first_version := v_current + 1;
                last_version := v_current + n;
                tx := v_xid::text::bigint;
                RETURN;
            END IF;
        END IF;

        -- Nothing was written. Why, in the reference model's order:
        -- 1. Idempotency: the first of the ids that is stored, in batch order.
        v_at := NULL;
        FOR i IN 1 .. n LOOP
            SELECT e.stream_id, e.version INTO v_stream, v_version
              FROM %1$I.events e WHERE e.event_id = p_event_ids[i];
            IF FOUND THEN
                v_at := i;
                EXIT;
            END IF;
        END LOOP;
        IF v_at IS NOT NULL THEN
            outcome := 4;
            other_event_id := p_event_ids[v_at];
            other_stream_id := v_stream;
            other_version := v_version;
            IF v_at = 1 AND v_stream = p_stream_id
               AND (p_expected < 0 OR v_version - 1 = p_expected) THEN
                -- The same place when every id is stored here at consecutive versions; the
                -- same events when each one's type, schema version and payload are too.
                v_place := v_version;
                v_reused := NULL;
                outcome := 1;
                FOR i IN 1 .. n LOOP
                    SELECT e.stream_id, e.version, e.event_type, e.schema_version, e.payload,
                           e.transaction_id::text::bigint, e.global_position
                      INTO v_stream, v_version, v_type, v_sv, v_payload, v_tx, v_pos
                      FROM %1$I.events e WHERE e.event_id = p_event_ids[i];
                    IF NOT FOUND OR v_stream <> p_stream_id OR v_version <> v_place + i - 1 THEN
                        outcome := 4;
                        EXIT;
                    END IF;
                    IF v_reused IS NULL
                       AND (v_type <> p_event_types[i]
                            OR v_sv <> p_schema_versions[i]
                            OR v_payload::text <> p_payloads[i]::text) THEN
                        v_reused := i;
                    END IF;
                END LOOP;
                IF outcome = 1 AND v_reused IS NOT NULL THEN
                    outcome := 5;
                    other_event_id := p_event_ids[v_reused];
                    other_stream_id := p_stream_id;
                    other_version := v_place + v_reused - 1;
                ELSIF outcome = 1 THEN
                    first_version := v_place;
                    last_version := v_place + n - 1;
                    tx := v_tx;
                    pos := v_pos;
                    other_event_id := NULL;
                    other_stream_id := NULL;
                    other_version := NULL;
                END IF;
            END IF;
            RETURN;
        END IF;

        -- 2. Expected version (read under the row lock; this attempt may not have read).
        IF NOT v_read THEN
            CONTINUE;
        END IF;
        IF NOT (p_expected = -2
                OR (p_expected = -1 AND v_current > 0)
                OR (p_expected >= 0 AND v_current = p_expected)) THEN
            outcome := 2;
            other_version := v_current;
            RETURN;
        END IF;

        -- 3. Feed order agrees with stream order (DESIGN invariant 6).
        IF v_exists AND v_last_xid > v_xid THEN
            outcome := 3;
            other_version := v_current;
            RETURN;
        END IF;

        -- 4. Allowed, no id stored, yet not written: a concurrent creator of the stream
        -- committed its version 1 first. Start over under the row it created (streams are
        -- never removed, so this settles on the next attempt).
        IF v_attempt >= 4 THEN
            RAISE EXCEPTION 'stream %% kept changing while appending; retry the transaction',
                p_stream_id USING ERRCODE = '40001';
        END IF;
    END LOOP;
END
$fn$
$ddl$, current_schema());
END
$migration$;
