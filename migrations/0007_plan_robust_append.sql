-- append_events plans every lookup with sequential scans disabled (issue 12).
--
-- Why: PL/pgSQL caches each statement's plan for the session and keeps it until the
-- table's statistics change. A session that first ran the function while `streams` or
-- `events` was small, or analyzed empty (what autovacuum records for a new store), kept
-- a sequential scan for the stream row's lock and update and for the duplicate path's
-- id lookups, and read the whole table on every append while it grew; nothing re-plans
-- until the next analyze. `tests/plans.rs` counts the scans.
--
-- The setting applies inside the function only (PostgreSQL saves and restores it around
-- each call), so a caller's own statements are planned as before. Every lookup in the
-- function is equality on a unique key, which an index always serves; writes through
-- `ON CONFLICT` find their conflicts through the arbiter index whatever the plan. A
-- boolean planner setting is cheap to apply: unlike `search_path` (which 0003 dropped)
-- it invalidates nothing. Measured in docs/benchmarks.md.
--
-- Append-only: never edit an applied migration, add a new file.

DO $migration$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION %I.append_events(text, text, bigint, uuid[], text[], bigint[], jsonb[], jsonb[], uuid[], uuid[]) SET enable_seqscan = off',
        current_schema());
END
$migration$;
