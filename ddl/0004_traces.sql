-- 0004: the trace view and function: events on a time axis with their task order, the asset's
-- latest snapshot and the task's ledger entries.
--
-- One row per event, always: the latest snapshot comes from a LATERAL ... LIMIT 1 and the
-- ledger entries are aggregated (count, sum, jsonb array), so neither multiplies rows.
-- event_old_status / event_new_status are the statuses the event itself carried (at event
-- time); current_asset_status is the latest snapshot (now), which may be much later.

CREATE OR REPLACE VIEW asset_event_traces AS
SELECT
    e.event_id,
    e.tenant_id,
    e.asset_id,
    e.event_type,
    e.occurred_at,
    e.recorded_at,
    e.version,
    e.correlation_id,
    e.causation_id,
    e.task_id,
    e.lease_id,
    e.task_type,
    e.provider_id,
    e.sku_category,
    e.env,
    e.severity,
    e.outcome,
    e.error_code,
    e.error_message,
    e.http_status,
    e.latency_ms,
    e.old_status AS event_old_status,
    e.new_status AS event_new_status,
    e.source,
    e.payload,
    t.status AS task_status,
    to_jsonb(t) AS task_order,
    s.status AS current_asset_status,
    s.captured_at AS current_asset_status_at,
    l.ledger_entry_count,
    l.ledger_amount_total,
    l.ledger_entries
FROM asset_events AS e
LEFT JOIN task_orders AS t ON t.task_id = e.task_id
LEFT JOIN LATERAL (
    SELECT sn.status, sn.captured_at
    FROM asset_snapshots AS sn
    WHERE sn.asset_id = e.asset_id
    ORDER BY sn.captured_at DESC
    LIMIT 1
) AS s ON TRUE
LEFT JOIN LATERAL (
    SELECT
        count(le.entry_id) AS ledger_entry_count,
        sum(le.amount) AS ledger_amount_total,
        jsonb_agg(to_jsonb(le) ORDER BY le.booked_at, le.entry_id) AS ledger_entries
    FROM ledger_entries AS le
    WHERE le.task_id = e.task_id
) AS l ON TRUE;

COMMENT ON VIEW asset_event_traces IS
    'One row per event with its task order, the asset''s latest snapshot '
    '(current_asset_status) and the task''s ledger entries (aggregated). event_old_status / '
    'event_new_status are the statuses at event time.';

-- trace_asset_events(task_id) or trace_asset_events(NULL, correlation_id), or both (AND):
-- the events of a task or of a call chain, ordered by occurred_at.
--
-- Each argument combination is its own RETURN QUERY, so each has its own cached plan with a
-- plain "column = parameter" condition, which stays an index lookup in every partition even
-- as a generic plan. A single query WHERE ($1 IS NULL OR task_id = $1) would not: its
-- generic plan cannot use the index and reads every partition whole.
CREATE OR REPLACE FUNCTION trace_asset_events(
    p_task_id uuid DEFAULT NULL,
    p_correlation_id text DEFAULT NULL
)
RETURNS SETOF asset_event_traces
LANGUAGE plpgsql
STABLE
SET search_path = public, pg_temp
AS $$
BEGIN
    IF p_task_id IS NOT NULL AND p_correlation_id IS NOT NULL THEN
        RETURN QUERY
            SELECT * FROM asset_event_traces AS tr
            WHERE tr.task_id = p_task_id AND tr.correlation_id = p_correlation_id
            ORDER BY tr.occurred_at, tr.event_id;
    ELSIF p_task_id IS NOT NULL THEN
        RETURN QUERY
            SELECT * FROM asset_event_traces AS tr
            WHERE tr.task_id = p_task_id
            ORDER BY tr.occurred_at, tr.event_id;
    ELSIF p_correlation_id IS NOT NULL THEN
        RETURN QUERY
            SELECT * FROM asset_event_traces AS tr
            WHERE tr.correlation_id = p_correlation_id
            ORDER BY tr.occurred_at, tr.event_id;
    ELSE
        RAISE EXCEPTION 'trace_asset_events needs a task_id or a correlation_id'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Call trace_asset_events(''<task uuid>'') or '
                         'trace_asset_events(NULL, ''<correlation id>'').';
    END IF;
END
$$;

COMMENT ON FUNCTION trace_asset_events(uuid, text) IS
    'Events of a task (first argument) and/or a call chain (second argument) from '
    'asset_event_traces, ordered by occurred_at.';
