-- PostgreSQL twin of migrations/sqlite/0004_geofences.sql (same tables and columns; times are
-- Unix milliseconds as BIGINT; GeoJSON and zone lists as JSONB).

-- Zones added or replaced through the API (files under geofences/ are loaded at start and on
-- SIGHUP; a stored zone with the same name replaces the file's).
CREATE TABLE zones (
    name       TEXT PRIMARY KEY,
    kind       TEXT   NOT NULL,
    feature    JSONB  NOT NULL, -- the GeoJSON Feature as PUT
    updated_at BIGINT NOT NULL
);

-- Debounced zone membership per device, so a restart neither forgets that a car was inside
-- (and misses its exit) nor invents an event.
CREATE TABLE zone_state (
    device_id  TEXT PRIMARY KEY,
    last_fix   BIGINT NOT NULL,
    zones      JSONB  NOT NULL -- JSON array of zone names the device is inside
);

-- Confirmed enter/exit events.
CREATE TABLE zone_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vehicle_id TEXT,
    device_id  TEXT             NOT NULL,
    type       TEXT             NOT NULL, -- enter | exit
    zone       TEXT             NOT NULL,
    zone_kind  TEXT             NOT NULL,
    time       BIGINT           NOT NULL, -- fix time of the confirming fix
    lat        DOUBLE PRECISION NOT NULL,
    lon        DOUBLE PRECISION NOT NULL
);
CREATE INDEX zone_events_vehicle_time ON zone_events (vehicle_id, time);
CREATE INDEX zone_events_time ON zone_events (time);
