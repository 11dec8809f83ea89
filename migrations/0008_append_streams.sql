-- append_streams: several streams, each with its own expected version, appended in one
-- statement and one transaction, all or nothing (issue 16).
--
-- Each part goes through append_events, so a part means exactly what one append means
-- (idempotency, then the expected version, then the feed-order guard; the same outcome
-- codes). The parts are taken in stream-id order (bytewise, COLLATE "C"), whatever order
-- the caller gave: append_events takes each stream's row lock (or, for a new stream, its
-- first event's key), so two appends naming the same streams in opposite orders take the
-- locks in the same order and cannot deadlock.
--
-- All or nothing without aborting the caller's transaction: the parts run inside one
-- subtransaction (a BEGIN ... EXCEPTION block). When any part is refused, every part is
-- still decided (so the caller learns every conflicting stream), then the block raises
-- CKM01, which rolls back what the other parts wrote, and the function returns the
-- outcomes. PL/pgSQL variables keep their values across that rollback. Any other error
-- (deadlock, timeout, 40001 from append_events) is not caught: it aborts the statement
-- and, in a caller's transaction, the transaction, as for append_events.
--
-- Arguments: one entry per part in p_stream_ids, p_stream_types, p_expected (codes as
-- append_events) and p_counts (how many events the part has); the events of every part,
-- concatenated in part order, in the event arrays. Returns one row per part, in the order
-- given (r_part is its 1-based index), with append_events' columns. Nothing is written
-- unless every r_outcome is 0 or 1.
--
-- Append-only: never edit an applied migration, add a new file.

DO $migration$
BEGIN
    EXECUTE format($ddl$
CREATE OR REPLACE FUNCTION %1$I.append_streams(
    p_stream_ids      text[],
    p_stream_types    text[],
    p_expected        bigint[],
    p_counts          integer[],
    p_event_ids       uuid[],
    p_event_types     text[],
    p_schema_versions bigint[],
    p_payloads        jsonb[],
    p_metadata        jsonb[],
    p_correlation_ids uuid[],
    p_causation_ids   uuid[]
)
RETURNS TABLE (
    r_outcome         smallint,
    r_first_version   bigint,
    r_last_version    bigint,
    r_tx              bigint,
    r_pos             bigint,
    r_other_event_id  uuid,
    r_other_stream_id text,
    r_other_version   bigint,
    r_part            integer
)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    k          integer := coalesce(cardinality(p_stream_ids), 0);
    v_start    integer[];
    v_order    integer[];
    v_outcome  smallint[];
    v_first    bigint[];
    v_last     bigint[];
    v_tx       bigint[];
    v_pos      bigint[];
    v_oid      uuid[];
    v_ostream  text[];
    v_over     bigint[];
    v_refused  boolean := false;
    v_at       integer := 1;
    i          integer;
    a          record;
BEGIN
    IF k = 0 THEN
        RAISE EXCEPTION 'a multi-stream append needs at least one stream' USING ERRCODE = 'CKA01';
    END IF;
    IF cardinality(p_stream_types) <> k OR cardinality(p_expected) <> k
       OR cardinality(p_counts) <> k THEN
        RAISE EXCEPTION 'append_streams: per-part arrays differ in length' USING ERRCODE = 'CKA01';
    END IF;
    v_start := array_fill(0, ARRAY[k]);
    v_outcome := array_fill(NULL::smallint, ARRAY[k]);
    v_first := array_fill(NULL::bigint, ARRAY[k]);
    v_last := array_fill(NULL::bigint, ARRAY[k]);
    v_tx := array_fill(NULL::bigint, ARRAY[k]);
    v_pos := array_fill(NULL::bigint, ARRAY[k]);
    v_oid := array_fill(NULL::uuid, ARRAY[k]);
    v_ostream := array_fill(NULL::text, ARRAY[k]);
    v_over := array_fill(NULL::bigint, ARRAY[k]);
    FOR i IN 1 .. k LOOP
        v_start[i] := v_at;
        v_at := v_at + p_counts[i];
    END LOOP;
    IF v_at - 1 <> coalesce(cardinality(p_event_ids), 0) THEN
        RAISE EXCEPTION 'append_streams: the part counts do not add up to the events' USING ERRCODE = 'CKA01';
    END IF;
    SELECT array_agg(t.part ORDER BY t.id COLLATE "C") INTO v_order
      FROM unnest(p_stream_ids) WITH ORDINALITY AS t(id, part);

    BEGIN
        FOREACH i IN ARRAY v_order LOOP
            SELECT e.* INTO a
              FROM %1$I.append_events(
                       p_stream_ids[i], p_stream_types[i], p_expected[i],
                       p_event_ids[v_start[i] : v_start[i] + p_counts[i] - 1],
                       p_event_types[v_start[i] : v_start[i] + p_counts[i] - 1],
                       p_schema_versions[v_start[i] : v_start[i] + p_counts[i] - 1],
                       p_payloads[v_start[i] : v_start[i] + p_counts[i] - 1],
                       p_metadata[v_start[i] : v_start[i] + p_counts[i] - 1],
                       p_correlation_ids[v_start[i] : v_start[i] + p_counts[i] - 1],
                       p_causation_ids[v_start[i] : v_start[i] + p_counts[i] - 1]) AS e;
            v_outcome[i] := a.outcome;
            v_first[i] := a.first_version;
            v_last[i] := a.last_version;
            v_tx[i] := a.tx;
            v_pos[i] := a.pos;
            v_oid[i] := a.other_event_id;
            v_ostream[i] := a.other_stream_id;
            v_over[i] := a.other_version;
            IF a.outcome > 1 THEN
                v_refused := true;
            END IF;
        END LOOP;
        IF v_refused THEN
            -- Take back what the accepted parts wrote; the outcomes stay.
            RAISE EXCEPTION 'append_streams refused' USING ERRCODE = 'CKM01';
        END IF;
    EXCEPTION WHEN SQLSTATE 'CKM01' THEN
        NULL;
    END;

    RETURN QUERY
        SELECT v_outcome[p], v_first[p], v_last[p], v_tx[p], v_pos[p], v_oid[p], v_ostream[p],
               v_over[p], p
          FROM generate_series(1, k) AS p
         ORDER BY p;
END
$fn$
$ddl$, current_schema());
END
$migration$;
