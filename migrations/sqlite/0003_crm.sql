-- CRM rules and outbox. Rule state is JSON per (scope, id): `shift` per vehicle, `balance` per
-- driver, `inspection` per vehicle; it is written in the same transaction as the events it causes.
CREATE TABLE crm_state (
    scope      TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope, id)
);

-- Events for the CRM, delivered at least once, in id order per vehicle.
CREATE TABLE crm_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    idem_key        TEXT    NOT NULL UNIQUE,
    vehicle_id      TEXT    NOT NULL,
    deal_id         TEXT,
    kind            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending', -- pending | delivered | dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    delivered_at    INTEGER
);
CREATE INDEX crm_outbox_pending ON crm_outbox (status, vehicle_id, id);
CREATE INDEX crm_outbox_created ON crm_outbox (status, created_at);
