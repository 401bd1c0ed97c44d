-- The group commit writes one small chunk per packet and UTC day (`kind` 1) instead of one row
-- per position; compaction merges a device-day into one chunk (`kind` 0), as before. `id` is
-- the order of storage among a device-day's chunks (first stored wins, docs/archive.md): two
-- chunks of one device may now start at the same fix time, so it replaces `first_ms` in the
-- primary key. Chunks made before are all compaction's: `kind` 0.
CREATE SEQUENCE position_chunks_id;
ALTER TABLE position_chunks ADD COLUMN kind SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE position_chunks ADD COLUMN id BIGINT;
UPDATE position_chunks SET id = nextval('position_chunks_id');
ALTER TABLE position_chunks ALTER COLUMN id SET DEFAULT nextval('position_chunks_id');
ALTER TABLE position_chunks ALTER COLUMN id SET NOT NULL;
ALTER TABLE position_chunks DROP CONSTRAINT position_chunks_pkey;
ALTER TABLE position_chunks ADD PRIMARY KEY (device_id, day, id);
