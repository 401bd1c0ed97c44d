-- Ids that stay unique when several fleetgate instances share this database (0002 let each
-- immobiliser count from the stored maximum, which collides across instances).
-- Command ids: the immobiliser reserves a few at a time with nextval (it needs the id before
-- the command is stored: it is the Codec 12 sequence number and the key of its state).
CREATE SEQUENCE immobiliser_command_ids OWNED BY immobiliser_commands.id;
SELECT setval('immobiliser_command_ids',
              COALESCE((SELECT MAX(id) FROM immobiliser_commands), 0) + 1, false);

-- Audit ids: allocated by the database on insert.
CREATE SEQUENCE audit_log_ids OWNED BY audit_log.id;
SELECT setval('audit_log_ids', COALESCE((SELECT MAX(id) FROM audit_log), 0) + 1, false);
ALTER TABLE audit_log ALTER COLUMN id SET DEFAULT nextval('audit_log_ids');
