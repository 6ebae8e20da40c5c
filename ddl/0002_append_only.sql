-- 0002: append-only guards on asset_events (parent, every partition, future partitions)
-- and asset_event_ids.
--
-- * Row triggers BEFORE UPDATE OR DELETE refuse every change of a stored row. Declared on the
--   partitioned parent, they are cloned onto every existing and future partition.
-- * TRUNCATE fires no row trigger, and a statement trigger on the parent is not cloned, so
--   every partition gets its own BEFORE TRUNCATE trigger (asset_events_guard_partitions(),
--   called here, by the partition maintenance function and by an event trigger).
-- * Nothing guards INSERT: a BEFORE INSERT trigger would turn off COPY's multi-row batching.
--
-- Two changes are let through, deliberately:
-- * the referential action ON DELETE SET NULL of fk_asset_events_task / fk_asset_events_lease:
--   an UPDATE issued from inside the RI trigger (pg_trigger_depth() > 1) that sets task_id
--   and/or lease_id to NULL and changes nothing else;
-- * the DELETE from the DEFAULT partition that asset_events_ensure_partitions_range() does
--   after copying those rows into their new monthly partition: it sets the transaction-local
--   setting asset_events.maintenance = 'move_from_default', and only the owner of the table
--   passes. Anybody can set that setting, so it is a guard against accidents only: privileges
--   are the real control. The sink's role (asset_sink_writer) holds SELECT and INSERT only;
--   the owner can always drop a trigger, so the sink must never run as the owner.
--
-- Refusals raise SQLSTATE 55000 (object_not_in_prerequisite_state), the code PostgreSQL
-- itself uses for "this object does not accept that kind of change".

CREATE OR REPLACE FUNCTION asset_events_append_only() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND pg_trigger_depth() > 1
       AND (NEW.task_id IS NULL OR NEW.task_id = OLD.task_id)
       AND (NEW.lease_id IS NULL OR NEW.lease_id = OLD.lease_id)
       AND (to_jsonb(NEW) - 'task_id' - 'lease_id') = (to_jsonb(OLD) - 'task_id' - 'lease_id')
    THEN
        -- ON DELETE SET NULL of a reference FK: the row keeps everything but the reference.
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE'
       AND current_setting('asset_events.maintenance', TRUE) = 'move_from_default'
       AND EXISTS (
           SELECT 1
           FROM pg_class c
           WHERE c.oid = TG_RELID
             AND c.relispartition
             AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
             AND pg_has_role(current_user, c.relowner, 'USAGE')
       )
    THEN
        -- Partition maintenance moving rows out of the DEFAULT partition (copied already).
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only: % of a stored event is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = 'asset_events keeps every event exactly as it was received, so history '
                       'can be replayed.',
              HINT = 'To correct an event, append a compensation event (causation_id = the '
                     'event_id it corrects) instead of changing or removing the stored one.';
END
$$;

CREATE OR REPLACE FUNCTION asset_event_ids_append_only() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = 'asset_event_ids records which events are stored; it changes only by '
                       'INSERT together with asset_events.',
              HINT = 'To correct an event, append a compensation event instead.';
END
$$;

CREATE OR REPLACE FUNCTION asset_events_no_truncate() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: TRUNCATE is not allowed', TG_TABLE_NAME
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = 'TRUNCATE would wipe event history that cannot be replayed otherwise.',
              HINT = 'To correct events, append compensation events. Retiring whole months is '
                     'a deliberate DETACH PARTITION by the table owner.';
END
$$;

CREATE OR REPLACE TRIGGER asset_events_append_only
    BEFORE UPDATE OR DELETE ON asset_events
    FOR EACH ROW EXECUTE FUNCTION asset_events_append_only();

CREATE OR REPLACE TRIGGER asset_event_ids_append_only
    BEFORE UPDATE OR DELETE ON asset_event_ids
    FOR EACH ROW EXECUTE FUNCTION asset_event_ids_append_only();

CREATE OR REPLACE TRIGGER asset_events_no_truncate
    BEFORE TRUNCATE ON asset_event_ids
    FOR EACH STATEMENT EXECUTE FUNCTION asset_events_no_truncate();

-- Gives asset_events and each of its partitions (at any depth) the BEFORE TRUNCATE guard it
-- lacks; returns how many it added. Idempotent and cheap: call it after any partition DDL.
CREATE OR REPLACE FUNCTION asset_events_guard_partitions() RETURNS integer
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
DECLARE
    v_rel regclass;
    v_added integer := 0;
BEGIN
    IF to_regclass('public.asset_events') IS NULL THEN
        RETURN 0;
    END IF;
    FOR v_rel IN
        SELECT t.relid
        FROM pg_partition_tree('public.asset_events'::regclass) AS t
        WHERE NOT EXISTS (
            SELECT 1 FROM pg_trigger g
            WHERE g.tgrelid = t.relid AND g.tgname = 'asset_events_no_truncate'
        )
        ORDER BY t.level, t.relid::text
    LOOP
        EXECUTE format(
            'CREATE TRIGGER asset_events_no_truncate BEFORE TRUNCATE ON %s '
            'FOR EACH STATEMENT EXECUTE FUNCTION asset_events_no_truncate()', v_rel);
        v_added := v_added + 1;
    END LOOP;
    RETURN v_added;
END
$$;

-- Event trigger function: after CREATE TABLE / ALTER TABLE touching the asset_events tree
-- (a partition created or attached by hand), guard the new partitions against TRUNCATE.
CREATE OR REPLACE FUNCTION asset_events_guard_new_partitions() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
BEGIN
    IF to_regclass('public.asset_events') IS NULL THEN
        RETURN;
    END IF;
    IF EXISTS (
        SELECT 1
        FROM pg_event_trigger_ddl_commands() AS c
        JOIN pg_partition_tree('public.asset_events'::regclass) AS t ON t.relid = c.objid
        WHERE c.classid = 'pg_class'::regclass
    ) THEN
        PERFORM asset_events_guard_partitions();
    END IF;
END
$$;

-- Event triggers need a superuser. Without one, partitions made by
-- asset_events_ensure_partitions() are still guarded; a partition created by hand is guarded
-- by the next call of that function (or of asset_events_guard_partitions()).
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_event_trigger WHERE evtname = 'asset_events_guard_new_partitions'
    ) THEN
        IF (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
            CREATE EVENT TRIGGER asset_events_guard_new_partitions
                ON ddl_command_end
                WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
                EXECUTE FUNCTION asset_events_guard_new_partitions();
        ELSE
            RAISE NOTICE 'not a superuser: event trigger asset_events_guard_new_partitions '
                'not created; run SELECT asset_events_guard_partitions() after creating '
                'partitions by hand';
        END IF;
    END IF;
END
$$;

SELECT asset_events_guard_partitions() AS truncate_guards_added;
