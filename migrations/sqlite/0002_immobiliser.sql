-- Immobiliser: per-vehicle state and reason set, durable commands, and the audit trail.
-- Times are Unix milliseconds (UTC).

CREATE TABLE immobiliser_state (
    vehicle_id TEXT PRIMARY KEY,
    state      TEXT    NOT NULL, -- running | block_pending | blocking | blocked | unblocking
    since      INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The reasons standing now; a vehicle is blocked while it has at least one.
CREATE TABLE immobiliser_reasons (
    vehicle_id TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    since      INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    comment    TEXT,
    PRIMARY KEY (vehicle_id, reason)
);

-- Every block/unblock command ever issued; ids are allocated by the immobiliser.
CREATE TABLE immobiliser_commands (
    id              BIGINT PRIMARY KEY,
    vehicle_id      TEXT    NOT NULL,
    device_id       TEXT,
    intent          TEXT    NOT NULL, -- block | unblock
    text            TEXT,
    output          INTEGER NOT NULL,
    status          TEXT    NOT NULL, -- queued | sent | acknowledged | confirmed | failed | expired | superseded
    forced          INTEGER NOT NULL,
    reasons         TEXT    NOT NULL,
    actor           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    sent_at         INTEGER,
    acknowledged_at INTEGER,
    confirmed_at    INTEGER,
    finished_at     INTEGER,
    expires_at      INTEGER NOT NULL,
    response        TEXT,
    error           TEXT
);
CREATE INDEX immobiliser_commands_vehicle ON immobiliser_commands (vehicle_id, id);
CREATE INDEX immobiliser_commands_status ON immobiliser_commands (status);

-- Who did what to which car, when, why, and where the car was at that moment.
CREATE TABLE audit_log (
    id         BIGINT PRIMARY KEY,
    time       INTEGER NOT NULL,
    vehicle_id TEXT    NOT NULL,
    event      TEXT    NOT NULL, -- reason_added | reason_lifted | state_changed | command_<status> | force_refused
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
CREATE INDEX audit_log_vehicle_time ON audit_log (vehicle_id, time);
CREATE INDEX audit_log_time ON audit_log (time);
