-- A store (every migration applied, unqualified names) seeded for `measure.sh`: 100,000
-- streams of one event each, time-ordered ids, correlation and causation set, as
-- `Repository::execute` writes them; analyzed; autovacuum off on both tables so that only
-- the commands measured write WAL in this database.
CREATE OR REPLACE FUNCTION uuid7() RETURNS uuid LANGUAGE sql AS $$
  SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
          || '7' || substr(md5(random()::text), 1, 3) || '8' || substr(md5(random()::text), 1, 15))::uuid $$;
INSERT INTO events (stream_id, stream_type, version, event_id, event_type, schema_version,
                    payload, metadata, correlation_id, causation_id)
SELECT 'order-' || g, 'order', 1, uuid7(), 'Placed', 1,
       '{"n": 1, "item": "abcdefghijklmnopqrstuvwxyz", "qty": 3}', '{}', uuid7(), uuid7()
  FROM generate_series(1, 100000) g;
INSERT INTO streams SELECT stream_id, stream_type, 1, transaction_id FROM events;
ALTER TABLE events SET (autovacuum_enabled = off);
ALTER TABLE streams SET (autovacuum_enabled = off);
VACUUM ANALYZE events;
VACUUM ANALYZE streams;
