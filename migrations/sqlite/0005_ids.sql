-- Ids that stay unique when several fleetgate processes share one database.
-- Command ids are reserved in blocks from a counter (the immobiliser needs an id before the
-- command is stored: it is the Codec 12 sequence number and the key of its in-memory state);
-- audit ids are allocated by SQLite itself (INTEGER PRIMARY KEY is the rowid).
CREATE TABLE id_counters (
    name TEXT    PRIMARY KEY,
    next INTEGER NOT NULL
);
INSERT INTO id_counters (name, next)
SELECT 'immobiliser_commands', COALESCE(MAX(id), 0) + 1 FROM immobiliser_commands;

CREATE TABLE audit_log_new (
    id         INTEGER PRIMARY KEY,
    time       INTEGER NOT NULL,
    vehicle_id TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    reason     TEXT,
    actor      TEXT    NOT NULL,
    comment    TEXT,
    state_from TEXT,
    state_to   TEXT,
    command_id BIGINT,
    forced     INTEGER NOT NULL DEFAULT 0,
    fix_time   INTEGER,
    lat        REAL,
    lon        REAL,
    speed_kmh  REAL,
    ignition   INTEGER
);
INSERT INTO audit_log_new SELECT id, time, vehicle_id, event, reason, actor, comment, state_from,
    state_to, command_id, forced, fix_time, lat, lon, speed_kmh, ignition FROM audit_log;
DROP TABLE audit_log;
ALTER TABLE audit_log_new RENAME TO audit_log;
CREATE INDEX audit_log_vehicle_time ON audit_log (vehicle_id, time);
CREATE INDEX audit_log_time ON audit_log (time);
