-- 0003: the reference tables the traces join, and the machinery of the opt-in reference FKs.
--
-- task_orders, leases, asset_snapshots and ledger_entries usually belong to other services.
-- They are created here only if absent, with the minimal shape the views and FKs rely on:
--   task_orders(task_id uuid PK, status)          leases(lease_id uuid PK)
--   asset_snapshots(asset_id, status, captured_at) ledger_entries(entry_id, task_id, amount,
--                                                                 booked_at)
-- Extra columns are welcome (traces return task orders and ledger entries whole, as jsonb).
--
-- fk_asset_events_task / fk_asset_events_lease are not created by default: run
-- `asset-sink migrate --with-reference-fks` (or psql -f ddl/optional/reference_fks.sql).
-- PostgreSQL 18 holds them on the partitioned parent, NOT VALID. PostgreSQL 15-17 refuse a
-- NOT VALID FK on a partitioned table, so there each partition holds its own NOT VALID copy
-- under the same name, and partition maintenance adds it to new partitions; once every
-- partition is validated, asset_events_validate_references() replaces the copies by one FK on
-- the parent (which adopts them without re-checking rows).

CREATE TABLE IF NOT EXISTS task_orders (
    task_id    uuid PRIMARY KEY,
    tenant_id  text,
    task_type  text,
    status     text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS leases (
    lease_id    uuid PRIMARY KEY,
    tenant_id   text,
    asset_id    text,
    provider_id text,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    released_at timestamptz
);

CREATE TABLE IF NOT EXISTS asset_snapshots (
    asset_id    text        NOT NULL,
    captured_at timestamptz NOT NULL,
    status      text        NOT NULL,
    tenant_id   text,
    attributes  jsonb,
    -- Serves "latest snapshot of an asset" (ORDER BY captured_at DESC LIMIT 1).
    PRIMARY KEY (asset_id, captured_at)
);

CREATE TABLE IF NOT EXISTS ledger_entries (
    entry_id  uuid PRIMARY KEY,
    task_id   uuid,
    asset_id  text,
    amount    numeric(20, 6) NOT NULL,
    currency  text,
    booked_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS ledger_entries_task_idx ON ledger_entries (task_id);

COMMENT ON TABLE task_orders IS 'Reference: tasks (expected shape: task_id uuid PK, status).';
COMMENT ON TABLE leases IS 'Reference: leases (expected shape: lease_id uuid PK).';
COMMENT ON TABLE asset_snapshots IS
    'Reference: asset status snapshots (expected shape: asset_id, status, captured_at).';
COMMENT ON TABLE ledger_entries IS
    'Reference: ledger (expected shape: entry_id, task_id, amount, booked_at).';

-- The two reference FKs, one definition each: every copy (parent or partition) uses it, so
-- PostgreSQL recognises the copies as the same constraint when it attaches or adopts them.
CREATE OR REPLACE FUNCTION asset_events_reference_fks()
RETURNS TABLE (constraint_name text, column_name text, referenced_table text, definition text)
LANGUAGE sql
IMMUTABLE
AS $$
    VALUES
        ('fk_asset_events_task', 'task_id', 'task_orders',
         'FOREIGN KEY (task_id) REFERENCES task_orders (task_id) '
         'ON DELETE SET NULL DEFERRABLE INITIALLY IMMEDIATE'),
        ('fk_asset_events_lease', 'lease_id', 'leases',
         'FOREIGN KEY (lease_id) REFERENCES leases (lease_id) '
         'ON DELETE SET NULL DEFERRABLE INITIALLY IMMEDIATE')
$$;

CREATE OR REPLACE FUNCTION asset_events_reference_fks_enabled() RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = public, pg_temp
AS $$
    SELECT coalesce(
        (SELECT s.value = 'on' FROM asset_sink_settings s WHERE s.name = 'reference_fks'),
        FALSE)
$$;

-- Adds every reference FK that is enabled but missing: on the parent (PostgreSQL 18+) or on
-- each leaf partition (before 18, unless the parent holds it already), always NOT VALID so no
-- existing row is checked. Returns what it added.
CREATE OR REPLACE FUNCTION asset_events_apply_reference_fks()
RETURNS TABLE (constraint_name text, relation regclass)
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
DECLARE
    v_fk record;
    v_rel regclass;
BEGIN
    IF NOT asset_events_reference_fks_enabled() THEN
        RETURN;
    END IF;
    FOR v_fk IN SELECT f.constraint_name, f.definition FROM asset_events_reference_fks() f LOOP
        IF EXISTS (
            SELECT 1 FROM pg_constraint c
            WHERE c.conrelid = 'asset_events'::regclass AND c.conname = v_fk.constraint_name
        ) THEN
            CONTINUE;  -- the parent holds it: partitions inherit it
        END IF;
        IF current_setting('server_version_num')::integer >= 180000 THEN
            EXECUTE format('ALTER TABLE asset_events ADD CONSTRAINT %I %s NOT VALID',
                           v_fk.constraint_name, v_fk.definition);
            constraint_name := v_fk.constraint_name;
            relation := 'asset_events'::regclass;
            RETURN NEXT;
            CONTINUE;
        END IF;
        FOR v_rel IN
            SELECT t.relid
            FROM pg_partition_tree('asset_events'::regclass) AS t
            WHERE t.isleaf
              AND NOT EXISTS (
                  SELECT 1 FROM pg_constraint c
                  WHERE c.conrelid = t.relid AND c.conname = v_fk.constraint_name)
            ORDER BY t.relid::text
        LOOP
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID',
                           v_rel, v_fk.constraint_name, v_fk.definition);
            constraint_name := v_fk.constraint_name;
            relation := v_rel;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;

-- Validates the reference FKs, partition by partition, so that one partition holding orphans
-- does not keep the others unvalidated. A partition that fails is reported (validated =
-- false, detail = the error) and left NOT VALID. When every partition of an FK is valid:
-- PostgreSQL 18+ validates the parent's FK (no row is read again); before 18 the FK is added
-- to the parent, which adopts the partitions' validated copies without reading rows, and from
-- then on `ALTER TABLE asset_events VALIDATE CONSTRAINT ...` works verbatim there too.
-- Returns one row per relation it validated or failed to validate.
CREATE OR REPLACE FUNCTION asset_events_validate_references()
RETURNS TABLE (constraint_name text, relation regclass, validated boolean, detail text)
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
DECLARE
    v_fk record;
    v_con record;
    v_parent oid;
    v_parent_valid boolean;
    v_failed boolean;
    v_leaves integer;
    v_valid_leaves integer;
BEGIN
    PERFORM asset_events_apply_reference_fks();  -- partitions created by hand lack the copies
    FOR v_fk IN SELECT f.constraint_name, f.definition FROM asset_events_reference_fks() f LOOP
        SELECT c.oid, c.convalidated INTO v_parent, v_parent_valid
        FROM pg_constraint c
        WHERE c.conrelid = 'asset_events'::regclass AND c.conname = v_fk.constraint_name;
        v_failed := FALSE;
        FOR v_con IN
            SELECT c.conrelid::regclass AS rel, c.conname
            FROM pg_partition_tree('asset_events'::regclass) AS t
            JOIN pg_constraint c ON c.conrelid = t.relid
            WHERE t.isleaf
              AND NOT c.convalidated
              AND c.contype = 'f'
              AND (c.conname = v_fk.constraint_name
                   OR (v_parent IS NOT NULL AND c.conparentid = v_parent))
            ORDER BY c.conrelid::regclass::text
        LOOP
            BEGIN
                EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', v_con.rel, v_con.conname);
                constraint_name := v_fk.constraint_name;
                relation := v_con.rel;
                validated := TRUE;
                detail := NULL;
            EXCEPTION WHEN foreign_key_violation THEN
                v_failed := TRUE;
                constraint_name := v_fk.constraint_name;
                relation := v_con.rel;
                validated := FALSE;
                detail := SQLERRM;
            END;
            RETURN NEXT;
        END LOOP;
        IF v_failed THEN
            CONTINUE;
        END IF;
        IF v_parent IS NOT NULL THEN
            IF NOT v_parent_valid THEN
                EXECUTE format('ALTER TABLE asset_events VALIDATE CONSTRAINT %I',
                               v_fk.constraint_name);
                constraint_name := v_fk.constraint_name;
                relation := 'asset_events'::regclass;
                validated := TRUE;
                detail := NULL;
                RETURN NEXT;
            END IF;
            CONTINUE;
        END IF;
        -- Before PostgreSQL 18: per-partition copies. Promote them once all are valid.
        SELECT count(*), count(*) FILTER (WHERE EXISTS (
                   SELECT 1 FROM pg_constraint c
                   WHERE c.conrelid = t.relid AND c.conname = v_fk.constraint_name
                     AND c.convalidated))
        INTO v_leaves, v_valid_leaves
        FROM pg_partition_tree('asset_events'::regclass) AS t
        WHERE t.isleaf;
        IF v_valid_leaves > 0 AND v_valid_leaves = v_leaves THEN
            EXECUTE format('ALTER TABLE asset_events ADD CONSTRAINT %I %s',
                           v_fk.constraint_name, v_fk.definition);
            constraint_name := v_fk.constraint_name;
            relation := 'asset_events'::regclass;
            validated := TRUE;
            detail := 'added to the parent: it adopts the validated constraints of the partitions';
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;

-- Rows of asset_events (or of one relation of its tree) whose task_id / lease_id has no row
-- in the referenced table: per reference, the number of such events, of distinct missing ids,
-- and a sample of the missing ids. Works whether or not the FKs exist.
CREATE OR REPLACE FUNCTION asset_events_reference_orphans(
    p_sample integer DEFAULT 10,
    p_relation regclass DEFAULT NULL
)
RETURNS TABLE (
    constraint_name text,
    column_name text,
    referenced_table text,
    orphan_events bigint,
    missing_ids bigint,
    sample_missing_ids text[]
)
LANGUAGE plpgsql
STABLE
SET search_path = public, pg_temp
AS $$
DECLARE
    v_fk record;
    v_rel regclass := coalesce(p_relation, 'asset_events'::regclass);
BEGIN
    FOR v_fk IN SELECT * FROM asset_events_reference_fks() LOOP
        constraint_name := v_fk.constraint_name;
        column_name := v_fk.column_name;
        referenced_table := v_fk.referenced_table;
        EXECUTE format(
            'SELECT count(*), count(DISTINCT e.%1$I) FROM %2$s e '
            'WHERE e.%1$I IS NOT NULL '
            'AND NOT EXISTS (SELECT 1 FROM %3$I r WHERE r.%1$I = e.%1$I)',
            v_fk.column_name, v_rel, v_fk.referenced_table)
        INTO orphan_events, missing_ids;
        EXECUTE format(
            'SELECT coalesce(array_agg(m.id ORDER BY m.id), ARRAY[]::text[]) FROM ('
            'SELECT DISTINCT e.%1$I::text AS id FROM %2$s e '
            'WHERE e.%1$I IS NOT NULL '
            'AND NOT EXISTS (SELECT 1 FROM %3$I r WHERE r.%1$I = e.%1$I) '
            'ORDER BY 1 LIMIT $1) m',
            v_fk.column_name, v_rel, v_fk.referenced_table)
        INTO sample_missing_ids
        USING greatest(coalesce(p_sample, 10), 0);
        RETURN NEXT;
    END LOOP;
END
$$;
