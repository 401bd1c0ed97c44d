-- PostgreSQL twin of migrations/sqlite/0003_crm.sql (same tables and columns; times are Unix
-- milliseconds as BIGINT; rule state and payloads are JSON text).
CREATE TABLE crm_state (
    scope      TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    state      TEXT   NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope, id)
);

CREATE TABLE crm_outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idem_key        TEXT    NOT NULL UNIQUE,
    vehicle_id      TEXT    NOT NULL,
    deal_id         TEXT,
    kind            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending', -- pending | delivered | dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      BIGINT  NOT NULL,
    expires_at      BIGINT  NOT NULL,
    next_attempt_at BIGINT  NOT NULL,
    last_error      TEXT,
    delivered_at    BIGINT
);
CREATE INDEX crm_outbox_pending ON crm_outbox (status, vehicle_id, id);
CREATE INDEX crm_outbox_created ON crm_outbox (status, created_at);
