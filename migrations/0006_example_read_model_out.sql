-- The Orders example's read model leaves the library's schema (issue 13): chronik's
-- migrations create only chronik's own tables; a service creates its read-model tables
-- itself (the Orders example: `OrderProjection::create_table`).
--
-- 0002 created `order_summaries` in every store's schema. Applied migrations are never
-- edited, so this one removes it, without losing anything a projection built:
--
-- * an empty `order_summaries` (every store that never ran the Orders example, and every
--   new store) is dropped, with a shadow copy a failed rebuild may have left behind;
-- * one that holds rows is left exactly as it is, with its checkpoint: it now belongs
--   to the example (whose `create_table` finds it and keeps it), and the application
--   role keeps its privileges on it until the next `chronik roles grant`, which grants
--   it again when the operator binary registers the Orders projection.
DO $$
BEGIN
    IF to_regclass('order_summaries') IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM order_summaries) THEN
        DROP TABLE order_summaries;
    END IF;
    IF to_regclass('order_summaries__shadow') IS NOT NULL THEN
        DROP TABLE order_summaries__shadow;
    END IF;
END
$$;
