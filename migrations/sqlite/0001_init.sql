-- Vehicles: the fleet's cars, each with the tracker (device) it carries.
CREATE TABLE vehicles (
    id          TEXT PRIMARY KEY,
    device_id   TEXT UNIQUE,
    protocol    TEXT,
    plate       TEXT,
    driver_id   TEXT,
    crm_deal_id TEXT,
    status      TEXT NOT NULL DEFAULT 'available',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Every accepted fix. (device, fix time) is unique: a re-sent batch inserts nothing twice.
CREATE TABLE positions (
    device_id      TEXT    NOT NULL,
    fix_time       INTEGER NOT NULL, -- Unix milliseconds, UTC
    server_time    INTEGER NOT NULL,
    valid          INTEGER NOT NULL,
    lat            REAL    NOT NULL,
    lon            REAL    NOT NULL,
    speed_kmh      REAL    NOT NULL,
    course         REAL    NOT NULL,
    altitude       REAL    NOT NULL,
    satellites     INTEGER,
    ignition       INTEGER,
    motion         INTEGER,
    odometer_m     REAL,
    gps_odometer_m REAL    NOT NULL,
    inputs         INTEGER,
    outputs        INTEGER,
    power_v        REAL,
    alarm          TEXT,
    attributes     TEXT    NOT NULL,
    PRIMARY KEY (device_id, fix_time)
) WITHOUT ROWID;

-- Latest known state per device, written in the same transaction as its positions.
CREATE TABLE device_state (
    device_id      TEXT PRIMARY KEY,
    protocol       TEXT    NOT NULL,
    last_seen      INTEGER NOT NULL,
    fix_time       INTEGER,
    valid          INTEGER,
    lat            REAL,
    lon            REAL,
    speed_kmh      REAL,
    course         REAL,
    altitude       REAL,
    satellites     INTEGER,
    ignition       INTEGER,
    motion         INTEGER,
    odometer_m     REAL,
    gps_odometer_m REAL NOT NULL DEFAULT 0,
    inputs         INTEGER,
    outputs        INTEGER,
    power_v        REAL,
    attributes     TEXT
);
