-- Several instances on one database (docs/scaling.md): which instance holds each device's
-- connection, and requests one instance forwards to another.

-- One row per connected device: upserted when it identifies itself, deleted when its
-- connection closes or its instance stops; renewed by the instance's heartbeat, so a row of
-- an instance that died is ignored once heartbeat_at is older than [cluster] session_ttl_s.
-- Times are Unix milliseconds of the database's clock.
CREATE TABLE device_sessions (
    device_id    TEXT   PRIMARY KEY,
    instance_id  TEXT   NOT NULL,
    conn         BIGINT NOT NULL, -- the connection's id on that instance
    connected_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
CREATE INDEX device_sessions_instance ON device_sessions (instance_id);

-- Immobiliser requests for the instance that holds the vehicle's tracker (it runs the
-- vehicle's state machine). The sender inserts, NOTIFYs fleetgate_requests with the target's
-- name and waits for `answer`; the target claims, handles and answers.
CREATE TABLE cluster_requests (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id TEXT   NOT NULL, -- the instance asked
    sender      TEXT   NOT NULL,
    body        TEXT   NOT NULL, -- JSON
    created_at  BIGINT NOT NULL,
    claimed_at  BIGINT,
    answer      TEXT,            -- JSON; NULL with done_at set: the sender gave up
    done_at     BIGINT
);
CREATE INDEX cluster_requests_open ON cluster_requests (instance_id, id) WHERE done_at IS NULL;
