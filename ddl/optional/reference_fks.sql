-- Opt-in: the reference FKs fk_asset_events_task -> task_orders(task_id) and
-- fk_asset_events_lease -> leases(lease_id), DEFERRABLE, ON DELETE SET NULL, added NOT VALID
-- (existing rows are not checked; every new row is). Not part of the default sequence:
-- apply with `asset-sink migrate --with-reference-fks`, or after the default sequence with
--   psql -v ON_ERROR_STOP=1 -1 -f ddl/optional/reference_fks.sql
-- Idempotent. Validate later with `asset-sink validate-references`
-- (SELECT * FROM asset_events_validate_references()).
--
-- Where the FKs live depends on the server (see 0003_reference_tables.sql): on the parent
-- from PostgreSQL 18, on each partition before (partition maintenance adds them to new
-- partitions because the setting below says so).

INSERT INTO asset_sink_settings (name, value)
VALUES ('reference_fks', 'on')
ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
WHERE asset_sink_settings.value IS DISTINCT FROM EXCLUDED.value;

SELECT constraint_name, relation FROM asset_events_apply_reference_fks();
