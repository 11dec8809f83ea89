-- Room on every `streams` page for the next version of its rows: an append to an existing
-- stream updates the stream's row, and on a full page that update goes to another page,
-- which costs a second lock record, a new `streams_pkey` entry and a page more. With 30%
-- of each page left free the update stays on its page (a HOT update: no index entry).
-- Measured (docs/benchmarks.md, "The command's WAL, record by record"): 1,000 commands on
-- 100,000 existing streams wrote 11.7 WAL records and 1,105 bytes and touched 34.9 buffers
-- each on full pages, 10.4, 993 and 30.5 with this setting.
-- Applies to pages written from now on (new streams); the pages of an existing store keep
-- their rows until an update moves them (`VACUUM FULL streams` rewrites them at once, under
-- an exclusive lock: the operator's choice, not this migration's).
-- Unqualified names: run with `search_path` set to the store's schema (see 0001).
-- Append-only migration: never edit it once applied.

ALTER TABLE streams SET (fillfactor = 70);
