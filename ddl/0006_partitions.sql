-- 0006: monthly partitions (UTC calendar months) and the DEFAULT partition.
--
-- asset_events_ensure_partitions(p_ahead) creates the partitions of the current month and the
-- p_ahead months after it; asset_events_ensure_partitions_range(p_from, p_to) those of any
-- month range (backfills). Both run in the caller's transaction: everything or nothing.
--
-- The DEFAULT partition catches events of months without a partition, so such an insert
-- never fails. But PostgreSQL refuses to create a partition for a month whose rows sit in the
-- DEFAULT partition; the functions then build the partition as a plain table, copy those rows
-- into it, delete them from the DEFAULT partition (the only DELETE the append-only trigger
-- allows, see 0002) and attach it. No row is lost or duplicated: the delete must remove
-- exactly the rows copied, and concurrent writers wait on the table lock meanwhile.
--
-- Partitions are named asset_events_pYYYYMM and cover [first day, first day of next month)
-- in UTC, whatever the caller's TimeZone. New partitions get the append-only triggers (cloned
-- row triggers, plus their own TRUNCATE guard) and, when enabled, the reference FKs.

-- Every partition of asset_events with its bounds (NULL bounds for the DEFAULT partition).
CREATE OR REPLACE FUNCTION asset_events_partitions()
RETURNS TABLE (
    partition regclass,
    is_default boolean,
    lower_bound timestamptz,
    upper_bound timestamptz
)
LANGUAGE sql
STABLE
SET search_path = public, pg_temp
AS $$
    SELECT
        b.relid::regclass,
        b.bound = 'DEFAULT',
        CASE m[1] WHEN 'MINVALUE' THEN '-infinity'::timestamptz
                  ELSE btrim(m[1], '''')::timestamptz END,
        CASE m[2] WHEN 'MAXVALUE' THEN 'infinity'::timestamptz
                  ELSE btrim(m[2], '''')::timestamptz END
    FROM (
        SELECT c.oid AS relid, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'asset_events'::regclass
    ) AS b
    LEFT JOIN LATERAL regexp_match(b.bound, '^FOR VALUES FROM \((.*)\) TO \((.*)\)$') AS m
        ON TRUE
    ORDER BY 3 NULLS LAST, 1
$$;

CREATE OR REPLACE FUNCTION asset_events_ensure_partitions_range(p_from date, p_to date)
RETURNS TABLE (partition_name text, range_from timestamptz, range_to timestamptz,
               moved_rows bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
AS $$
DECLARE
    v_first date;
    v_last date;
    v_month date;
    v_lo timestamptz;
    v_hi timestamptz;
    v_name text;
    v_default regclass;
    v_overlap regclass;
    v_has_rows boolean;
    v_moved bigint;
    v_deleted bigint;
    v_locked boolean := FALSE;
    v_fk record;
BEGIN
    IF p_from IS NULL OR p_to IS NULL THEN
        RAISE EXCEPTION 'asset_events_ensure_partitions_range needs both months'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    v_first := date_trunc('month', p_from)::date;
    v_last := date_trunc('month', p_to)::date;
    IF v_last < v_first THEN
        RAISE EXCEPTION 'month range % .. % is empty', v_first, v_last
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_last > (v_first + interval '1200 months')::date THEN
        RAISE EXCEPTION 'month range % .. % is over 100 years long', v_first, v_last
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR v_month IN
        SELECT g::date FROM generate_series(v_first, v_last, interval '1 month') AS g
    LOOP
        v_lo := v_month::timestamp AT TIME ZONE 'UTC';
        v_hi := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        IF EXISTS (SELECT 1 FROM asset_events_partitions() AS p
                   WHERE NOT p.is_default AND p.lower_bound <= v_lo AND p.upper_bound >= v_hi)
        THEN
            CONTINUE;
        END IF;
        IF NOT v_locked THEN
            -- Blocks writers (not readers) until commit, and serialises concurrent callers;
            -- taken only when there is work, so a start-up call costs no lock.
            LOCK TABLE asset_events IN SHARE ROW EXCLUSIVE MODE;
            v_locked := TRUE;
            IF EXISTS (SELECT 1 FROM asset_events_partitions() AS p
                       WHERE NOT p.is_default
                         AND p.lower_bound <= v_lo AND p.upper_bound >= v_hi)
            THEN
                CONTINUE;  -- created by a concurrent caller meanwhile
            END IF;
        END IF;
        SELECT p.partition INTO v_overlap
        FROM asset_events_partitions() AS p
        WHERE NOT p.is_default AND p.lower_bound < v_hi AND p.upper_bound > v_lo
        LIMIT 1;
        IF v_overlap IS NOT NULL THEN
            RAISE EXCEPTION 'month % is partly covered by partition %', to_char(v_month, 'YYYY-MM'),
                v_overlap
                USING ERRCODE = 'invalid_object_definition',
                      HINT = 'Create the partitions for the rest of that month by hand.';
        END IF;
        v_name := 'asset_events_p' || to_char(v_month, 'YYYYMM');
        IF to_regclass(quote_ident(v_name)) IS NOT NULL THEN
            RAISE EXCEPTION 'relation % exists but is not the partition of %', v_name,
                to_char(v_month, 'YYYY-MM')
                USING ERRCODE = 'duplicate_table';
        END IF;

        SELECT p.partition INTO v_default FROM asset_events_partitions() AS p WHERE p.is_default;
        v_has_rows := FALSE;
        IF v_default IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE occurred_at >= $1 '
                           'AND occurred_at < $2)', v_default)
                INTO v_has_rows USING v_lo, v_hi;
        END IF;
        v_moved := 0;
        IF NOT v_has_rows THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF asset_events FOR VALUES FROM (%L) TO (%L)',
                           v_name, v_lo, v_hi);
        ELSE
            -- Indexes come with ATTACH (built once, after the copy).
            EXECUTE format('CREATE TABLE %I (LIKE asset_events INCLUDING DEFAULTS '
                           'INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)',
                           v_name);
            EXECUTE format('INSERT INTO %I SELECT * FROM %s WHERE occurred_at >= $1 '
                           'AND occurred_at < $2', v_name, v_default)
                USING v_lo, v_hi;
            GET DIAGNOSTICS v_moved = ROW_COUNT;
            PERFORM set_config('asset_events.maintenance', 'move_from_default', TRUE);
            EXECUTE format('DELETE FROM %s WHERE occurred_at >= $1 AND occurred_at < $2',
                           v_default)
                USING v_lo, v_hi;
            GET DIAGNOSTICS v_deleted = ROW_COUNT;
            PERFORM set_config('asset_events.maintenance', '', TRUE);
            IF v_deleted <> v_moved THEN
                RAISE EXCEPTION 'moved % rows of % out of the DEFAULT partition but deleted %',
                    v_moved, to_char(v_month, 'YYYY-MM'), v_deleted
                    USING ERRCODE = 'internal_error';
            END IF;
            -- The DEFAULT partition's reference FKs may be NOT VALID and its rows unchecked:
            -- give the table a NOT VALID copy first, so ATTACH adopts it instead of checking
            -- the moved rows (it still checks them when the parent's FK is validated).
            IF asset_events_reference_fks_enabled() THEN
                FOR v_fk IN SELECT f.constraint_name, f.definition
                            FROM asset_events_reference_fks() AS f
                LOOP
                    IF NOT EXISTS (SELECT 1 FROM pg_constraint c
                                   WHERE c.conrelid = 'asset_events'::regclass
                                     AND c.conname = v_fk.constraint_name
                                     AND c.convalidated)
                    THEN
                        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s NOT VALID',
                                       v_name, v_fk.constraint_name, v_fk.definition);
                    END IF;
                END LOOP;
            END IF;
            EXECUTE format('ALTER TABLE asset_events ATTACH PARTITION %I '
                           'FOR VALUES FROM (%L) TO (%L)', v_name, v_lo, v_hi);
        END IF;
        partition_name := v_name;
        range_from := v_lo;
        range_to := v_hi;
        moved_rows := v_moved;
        RETURN NEXT;
    END LOOP;

    IF v_locked THEN
        PERFORM asset_events_guard_partitions();
        PERFORM asset_events_apply_reference_fks();
    END IF;
END
$$;

COMMENT ON FUNCTION asset_events_ensure_partitions_range(date, date) IS
    'Creates the missing monthly partitions of asset_events for the UTC months p_from .. p_to '
    '(inclusive), moving their rows out of the DEFAULT partition; returns what it created.';

CREATE OR REPLACE FUNCTION asset_events_ensure_partitions(p_ahead integer DEFAULT 3)
RETURNS TABLE (partition_name text, range_from timestamptz, range_to timestamptz,
               moved_rows bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_this_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
BEGIN
    IF p_ahead IS NULL OR p_ahead < 0 OR p_ahead > 120 THEN
        RAISE EXCEPTION 'p_ahead must be between 0 and 120 months, not %', p_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
        SELECT * FROM asset_events_ensure_partitions_range(
            v_this_month, (v_this_month + make_interval(months => p_ahead))::date);
END
$$;

COMMENT ON FUNCTION asset_events_ensure_partitions(integer) IS
    'Creates the missing partitions of asset_events for the current UTC month and p_ahead '
    'months after it; returns what it created. Safe to call at every start-up.';

CREATE TABLE IF NOT EXISTS asset_events_default PARTITION OF asset_events DEFAULT;

SELECT count(*) AS partitions_created FROM asset_events_ensure_partitions(3);

-- Partitions that existed before this file ran get their guards and FKs too.
SELECT asset_events_guard_partitions() AS truncate_guards_added;
SELECT count(*) AS reference_fks_added FROM asset_events_apply_reference_fks();
