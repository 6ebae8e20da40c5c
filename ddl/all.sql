-- Installs or upgrades the asset_events schema in one go, from any directory:
--   psql -v ON_ERROR_STOP=1 -1 -f ddl/all.sql
-- (-1: one transaction, all or nothing.) Every file is idempotent, so running this again is
-- harmless. The reference FKs are opt-in: ddl/optional/reference_fks.sql.
-- `asset-sink migrate` applies the same files, one transaction each, and records them.

\ir 0001_asset_events.sql
\ir 0002_append_only.sql
\ir 0003_reference_tables.sql
\ir 0004_traces.sql
\ir 0005_forensics.sql
\ir 0006_partitions.sql
\ir 0007_roles.sql
