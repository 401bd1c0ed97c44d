-- Outbox claims, so several instances deliver each CRM event once: an instance takes the head
-- event of a vehicle with SELECT … FOR UPDATE SKIP LOCKED and marks it with its name and a
-- lease (Unix ms). Another instance skips it until delivered, retried or the lease runs out
-- (the claimer died mid-delivery).
ALTER TABLE crm_outbox ADD COLUMN locked_by TEXT, ADD COLUMN locked_until BIGINT;
