-- PostgreSQL twin of migrations/sqlite/0002_immobiliser.sql: same tables, columns and indexes;
-- times are Unix milliseconds (UTC) as BIGINT, flags BOOLEAN, coordinates DOUBLE PRECISION.
-- Command and audit ids are allocated by the immobiliser (from the stored maximum at start),
-- as on SQLite, so they are plain BIGINT keys, not identity columns.

CREATE TABLE immobiliser_state (
    vehicle_id TEXT PRIMARY KEY,
    state      TEXT   NOT NULL, -- running | block_pending | blocking | blocked | unblocking
    since      BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The reasons standing now; a vehicle is blocked while it has at least one.
CREATE TABLE immobiliser_reasons (
    vehicle_id TEXT   NOT NULL,
    reason     TEXT   NOT NULL,
    since      BIGINT NOT NULL,
    actor      TEXT   NOT NULL,
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
    forced          BOOLEAN NOT NULL,
    reasons         TEXT    NOT NULL, -- comma-separated reason names
    actor           TEXT    NOT NULL,
    attempts        BIGINT  NOT NULL,
    created_at      BIGINT  NOT NULL,
    next_attempt_at BIGINT  NOT NULL,
    sent_at         BIGINT,
    acknowledged_at BIGINT,
    confirmed_at    BIGINT,
    finished_at     BIGINT,
    expires_at      BIGINT  NOT NULL,
    response        TEXT,
    error           TEXT
);
CREATE INDEX immobiliser_commands_vehicle ON immobiliser_commands (vehicle_id, id);
CREATE INDEX immobiliser_commands_status ON immobiliser_commands (status);

-- Who did what to which car, when, why, and where the car was at that moment.
CREATE TABLE audit_log (
    id         BIGINT PRIMARY KEY,
    time       BIGINT           NOT NULL,
    vehicle_id TEXT             NOT NULL,
    event      TEXT             NOT NULL, -- reason_added | reason_lifted | state_changed | command_<status> | force_refused
    reason     TEXT,
    actor      TEXT             NOT NULL,
    comment    TEXT,
    state_from TEXT,
    state_to   TEXT,
    command_id BIGINT,
    forced     BOOLEAN          NOT NULL DEFAULT FALSE,
    fix_time   BIGINT,
    lat        DOUBLE PRECISION,
    lon        DOUBLE PRECISION,
    speed_kmh  DOUBLE PRECISION,
    ignition   BOOLEAN
);
CREATE INDEX audit_log_vehicle_time ON audit_log (vehicle_id, time);
CREATE INDEX audit_log_time ON audit_log (time);
