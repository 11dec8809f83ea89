-- append_streams takes every stream's lock before its transaction has an id (issue 16).
--
-- Why: 0008's function took each part's row lock in turn, and the first row lock gives the
-- transaction its id. While it waited for a later part's lock, a second multi-stream
-- append could lock and commit that later stream with a newer id; the first then met the
-- feed-order guard there (TransactionOrder) and, owned, had to start over, and writers
-- racing on the same streams kept tripping each other (the conformance suite's
-- opposite-order race ran out of retries in 3 of 20 runs).
--
-- Now the function first takes a transaction-scoped advisory lock per stream, in the order
-- of the locks' keys (so that two appends can never wait for each other's keys in a cycle,
-- even when two stream ids share a key), and only then runs 0008's function. An
-- advisory lock needs no transaction id, so an owned multi-stream append gets its id after
-- it holds every stream it writes: another multi-stream append of one of them waits for it
-- and cannot commit a newer id there first. Keys: (1667787635 = 'chks', hashtext of the
-- schema and stream id), the two-key form, apart from the projections' one-key locks.
-- A hash collision only makes two unrelated appends wait for each other. Single-stream
-- appends take no advisory lock (they take their row lock before their id already), so
-- one of them can still commit to a later stream of a multi-stream append that already
-- has its id: rare, and the owned path retries it.
--
-- 0008's function keeps its body under the name append_streams_parts.
--
-- Append-only: never edit an applied migration, add a new file.

DO $migration$
BEGIN
    EXECUTE format($ddl$
ALTER FUNCTION %1$I.append_streams(text[], text[], bigint[], integer[], uuid[], text[],
                                   bigint[], jsonb[], jsonb[], uuid[], uuid[])
    RENAME TO append_streams_parts
$ddl$, current_schema());

    EXECUTE format($ddl$
CREATE FUNCTION %1$I.append_streams(
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
    v_key integer;
BEGIN
    FOR v_key IN
        SELECT DISTINCT hashtext(%2$L || '/' || t.id) FROM unnest(p_stream_ids) AS t(id) ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(1667787635, v_key);
    END LOOP;
    RETURN QUERY
        SELECT * FROM %1$I.append_streams_parts(
            p_stream_ids, p_stream_types, p_expected, p_counts, p_event_ids, p_event_types,
            p_schema_versions, p_payloads, p_metadata, p_correlation_ids, p_causation_ids);
END
$fn$
$ddl$, current_schema(), current_schema());
END
$migration$;
