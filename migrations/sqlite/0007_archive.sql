-- The position archive (issue #17, docs/architecture.md "Storage layout"). `positions` stays the
-- hot tier: what compaction has not packed yet. Packed chunks live in one table per UTC day,
-- `position_chunks_dYYYYMMDD`, created by compaction (so expiring a day is one DROP TABLE).

-- Per vehicle and UTC day, kept forever (mileage history outlives positions).
CREATE TABLE daily_summaries (
    vehicle_id       TEXT    NOT NULL,
    day              INTEGER NOT NULL, -- days since 1970-01-01 (UTC)
    device_id        TEXT    NOT NULL,
    positions        INTEGER NOT NULL,
    distance_m       REAL    NOT NULL,
    engine_s         INTEGER NOT NULL,
    moving_s         INTEGER NOT NULL,
    outside_s        INTEGER NOT NULL,
    max_speed_kmh    REAL    NOT NULL,
    first_fix        INTEGER NOT NULL, -- Unix milliseconds
    last_fix         INTEGER NOT NULL,
    odometer_first_m REAL,
    odometer_last_m  REAL,
    computed_at      INTEGER NOT NULL,
    PRIMARY KEY (vehicle_id, day)
);

-- Small named integers: `retained_from` (the retention watermark, a day) and `migrate_before`
-- (present while a database made before this migration still has unpacked closed days:
-- `fleetgate migrate` / the daemon's start-up migration packs them, then removes it).
CREATE TABLE archive_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO archive_meta (key, value)
SELECT 'migrate_before', CAST(strftime('%s', 'now') AS INTEGER) / 86400
WHERE EXISTS (SELECT 1 FROM positions);
