-- 0007: roles and privileges.
--
-- asset_sink_writer (NOLOGIN): grant it to the sink's login role. It may read and append
--   events, register event ids, read the reference tables (the sink checks references before
--   inserting) and create partitions through asset_events_ensure_partitions(). Nothing else:
--   without UPDATE, DELETE and TRUNCATE privileges it cannot change history even if a
--   trigger were dropped. The sink must not log in as the tables' owner.
-- asset_events_reader (NOLOGIN): the traces and the forensic views, nothing more. Views read
--   the tables with their owner's privileges, so the reader needs no grant on them.
--
-- Roles are cluster-wide: every database of the cluster shares them, and two databases may
-- be migrated at the same moment, so creation tolerates a role that appears concurrently.
-- Creating them needs CREATEROLE; privileges are granted per database.

DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['asset_sink_writer', 'asset_events_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile from another database of the cluster
            END;
        END IF;
    END LOOP;
END
$$;

-- Functions are executable by PUBLIC unless revoked.
REVOKE ALL ON FUNCTION asset_events_ensure_partitions(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION asset_events_ensure_partitions_range(date, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION asset_events_partitions() FROM PUBLIC;
REVOKE ALL ON FUNCTION asset_events_guard_partitions() FROM PUBLIC;
REVOKE ALL ON FUNCTION asset_events_apply_reference_fks() FROM PUBLIC;
REVOKE ALL ON FUNCTION asset_events_validate_references() FROM PUBLIC;
REVOKE ALL ON FUNCTION asset_events_reference_orphans(integer, regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION trace_asset_events(uuid, text) FROM PUBLIC;

GRANT SELECT, INSERT ON asset_events, asset_event_ids TO asset_sink_writer;
GRANT SELECT ON task_orders, leases TO asset_sink_writer;
GRANT EXECUTE ON FUNCTION asset_events_ensure_partitions(integer) TO asset_sink_writer;

GRANT SELECT ON asset_event_traces, view_provider_performance, view_error_patterns
    TO asset_events_reader;
GRANT EXECUTE ON FUNCTION trace_asset_events(uuid, text) TO asset_events_reader;
