-- The position archive (issue #17, docs/architecture.md "Storage layout").
-- `positions` becomes the hot tier, partitioned by UTC day of fix time (`positions_dYYYYMMDD`,
-- created ahead by the archive and on demand by the group commit; no default partition).
-- The old unpartitioned table is kept as `positions_legacy` until `fleetgate migrate` (or the
-- daemon's start-up migration) has moved it into chunks; an empty one is dropped right here.
ALTER TABLE positions RENAME TO positions_legacy;
ALTER INDEX positions_pkey RENAME TO positions_legacy_pkey;
ALTER INDEX positions_fix_time_brin RENAME TO positions_legacy_fix_time_brin;

CREATE TABLE positions (
    device_id      TEXT COLLATE "C" NOT NULL,
    fix_time       BIGINT           NOT NULL,
    server_time    BIGINT           NOT NULL,
    valid          BOOLEAN          NOT NULL,
    lat            DOUBLE PRECISION NOT NULL,
    lon            DOUBLE PRECISION NOT NULL,
    speed_kmh      DOUBLE PRECISION NOT NULL,
    course         DOUBLE PRECISION NOT NULL,
    altitude       DOUBLE PRECISION NOT NULL,
    satellites     INTEGER,
    ignition       BOOLEAN,
    motion         BOOLEAN,
    odometer_m     DOUBLE PRECISION,
    gps_odometer_m DOUBLE PRECISION NOT NULL,
    inputs         BIGINT,
    outputs        BIGINT,
    power_v        DOUBLE PRECISION,
    alarm          TEXT,
    attributes     JSONB            NOT NULL,
    PRIMARY KEY (device_id, fix_time)
) PARTITION BY RANGE (fix_time);

-- Packed tier: one chunk per device and day (`storage::chunk`), partitioned by day
-- (`position_chunks_dYYYYMMDD`).
CREATE TABLE position_chunks (
    device_id TEXT COLLATE "C" NOT NULL,
    day       INTEGER  NOT NULL, -- days since 1970-01-01 (UTC)
    first_ms  BIGINT   NOT NULL,
    last_ms   BIGINT   NOT NULL,
    n         INTEGER  NOT NULL,
    format    SMALLINT NOT NULL,
    data      BYTEA    NOT NULL,
    PRIMARY KEY (device_id, day, first_ms)
) PARTITION BY RANGE (day);
-- Chunks are already compressed: do not let TOAST try again.
ALTER TABLE position_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE daily_summaries (
    vehicle_id       TEXT             NOT NULL,
    day              INTEGER          NOT NULL,
    device_id        TEXT             NOT NULL,
    positions        BIGINT           NOT NULL,
    distance_m       DOUBLE PRECISION NOT NULL,
    engine_s         BIGINT           NOT NULL,
    moving_s         BIGINT           NOT NULL,
    outside_s        BIGINT           NOT NULL,
    max_speed_kmh    DOUBLE PRECISION NOT NULL,
    first_fix        BIGINT           NOT NULL,
    last_fix         BIGINT           NOT NULL,
    odometer_first_m DOUBLE PRECISION,
    odometer_last_m  DOUBLE PRECISION,
    computed_at      BIGINT           NOT NULL,
    PRIMARY KEY (vehicle_id, day)
);

-- `retained_from`: the retention watermark (a day).
CREATE TABLE archive_meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM positions_legacy) THEN
        DROP TABLE positions_legacy;
    END IF;
END $$;
