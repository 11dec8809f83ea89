-- No index on `events.causation_id`: no statement of chronik reads by it, and every command
-- paid for it. A command's events always carry a causation id (the command's, or the event a
-- reaction reacts to), so each of them added an entry to this index: counted with
-- pg_waldump over 2,000 commands (docs/benchmarks.md, "The command's WAL, record by
-- record"), 1.0 WAL record, 70 to 80 bytes and 1.1 buffers of about 10 records, 990 bytes
-- and 23 buffers per command on an existing stream. `chronik trace` reads a chain through
-- `events_correlation_id_idx` and links causes to effects in memory; a lookup by causation
-- within a chain is `WHERE correlation_id = $1 AND causation_id = $2`, served by that index.
-- A store that looks events up by causation alone creates the index itself, without
-- blocking appends: see docs/commands.md, "Correlation and causation".
-- DROP INDEX takes the table's exclusive lock for the moment of the drop: appends wait for
-- it, and it waits for the transactions that are writing `events`.
-- Unqualified names: run with `search_path` set to the store's schema (see 0001).
-- Append-only migration: never edit it once applied.

DROP INDEX IF EXISTS events_causation_id_idx;
