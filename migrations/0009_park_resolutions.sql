-- chronik projections: a park decision can be resolved (issue 14). Until now a decision
-- was forever: the runner and rebuilds passed over the event, and an operator could
-- neither apply it once the handler was fixed nor acknowledge it for good. Now an
-- operator resolves it (`projections retry | drop-parked`):
--   'retried': the event was applied after all (or, not reached yet, will be): runners
--              and rebuilds no longer pass over it;
--   'dropped': given up for good: it stays passed over, and leaves the list of parked
--              events to look at.
-- Rows are still never deleted: the decision and its resolution are the record.
-- Unqualified names: run with `search_path` set to the store's schema (see 0001).
-- Append-only: never edit an applied migration, add a new file.

ALTER TABLE projection_parked
    ADD COLUMN resolution  text CHECK (resolution IN ('retried', 'dropped')),
    ADD COLUMN resolved_by text,
    ADD COLUMN resolved_at timestamptz,
    ADD CONSTRAINT projection_parked_resolved_check
        CHECK ((resolution IS NULL) = (resolved_by IS NULL AND resolved_at IS NULL));
