-- Zones added or replaced through the API (files under geofences/ are loaded at start and on
-- SIGHUP; a stored zone with the same name replaces the file's).
CREATE TABLE zones (
    name       TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    feature    TEXT NOT NULL, -- the GeoJSON Feature as PUT
    updated_at INTEGER NOT NULL
);

-- Debounced zone membership per device, so a restart neither forgets that a car was inside
-- (and misses its exit) nor invents an event.
CREATE TABLE zone_state (
    device_id  TEXT PRIMARY KEY,
    last_fix   INTEGER NOT NULL,
    zones      TEXT NOT NULL -- JSON array of zone names the device is inside
);

-- Confirmed enter/exit events.
CREATE TABLE zone_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    vehicle_id TEXT,
    device_id  TEXT NOT NULL,
    type       TEXT NOT NULL, -- enter | exit
    zone       TEXT NOT NULL,
    zone_kind  TEXT NOT NULL,
    time       INTEGER NOT NULL, -- fix time of the confirming fix
    lat        REAL NOT NULL,
    lon        REAL NOT NULL
);
CREATE INDEX zone_events_vehicle_time ON zone_events (vehicle_id, time);
CREATE INDEX zone_events_time ON zone_events (time);
