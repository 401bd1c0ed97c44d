-- PostgreSQL twin of migrations/sqlite/0001_init.sql: same tables, same columns, same units
-- (times are Unix milliseconds, UTC, as BIGINT), native types where PostgreSQL has them
-- (BOOLEAN, DOUBLE PRECISION, JSONB).

-- Vehicles: the fleet's cars, each with the tracker (device) it carries.
CREATE TABLE vehicles (
    id          TEXT PRIMARY KEY,
    device_id   TEXT UNIQUE,
    protocol    TEXT,
    plate       TEXT,
    driver_id   TEXT,
    crm_deal_id TEXT,
    status      TEXT NOT NULL DEFAULT 'available',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Every accepted fix. (device, fix time) is unique: a re-sent batch inserts nothing twice.
-- The primary key serves one device's track; the BRIN index serves fleet-wide time-range
-- scans (reports, retention) at a tiny fraction of a B-tree's size, because rows arrive
-- roughly in fix-time order. Because fix_time is in the key, the table can later be turned
-- into a range-partitioned one (by fix_time) without changing any query (docs/scaling.md).
CREATE TABLE positions (
    device_id      TEXT             NOT NULL,
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
);
CREATE INDEX positions_fix_time_brin ON positions USING BRIN (fix_time);

-- Latest known state per device, written in the same transaction as its positions.
CREATE TABLE device_state (
    device_id      TEXT PRIMARY KEY,
    protocol       TEXT   NOT NULL,
    last_seen      BIGINT NOT NULL,
    fix_time       BIGINT,
    valid          BOOLEAN,
    lat            DOUBLE PRECISION,
    lon            DOUBLE PRECISION,
    speed_kmh      DOUBLE PRECISION,
    course         DOUBLE PRECISION,
    altitude       DOUBLE PRECISION,
    satellites     INTEGER,
    ignition       BOOLEAN,
    motion         BOOLEAN,
    odometer_m     DOUBLE PRECISION,
    gps_odometer_m DOUBLE PRECISION NOT NULL DEFAULT 0,
    inputs         BIGINT,
    outputs        BIGINT,
    power_v        DOUBLE PRECISION,
    attributes     JSONB
);
