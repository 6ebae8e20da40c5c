-- 0005: forensic views over the past 24 hours (occurred_at >= now() - interval '24 hours').
--
-- Meanings (contract AssetEvent v1.0, "Meaning used by the forensic views"):
-- * a task attempt outcome is an event with outcome set;
-- * success_rate = successes / (successes + failures) over those events;
-- * failure_count counts events with outcome = 'failure';
-- * total_tasks counts distinct task_id among outcome events, an event without task_id
--   counting once on its own;
-- * affected_asset_count counts distinct asset_id.
-- view_error_patterns counts failures (outcome = 'failure'), so its occurrence_count adds up to
-- the failure_count of view_provider_performance.
--
-- Both read only the window: partitions wholly before it are pruned when the query starts
-- (now() is fixed for the statement) and, inside the partitions left, the partial index
-- asset_events_outcome_occurred_idx (occurred_at) WHERE outcome IS NOT NULL serves the range.

CREATE OR REPLACE VIEW view_provider_performance AS
SELECT
    e.provider_id,
    e.sku_category,
    e.error_code,
    count(DISTINCT e.task_id) + count(*) FILTER (WHERE e.task_id IS NULL) AS total_tasks,
    count(*) FILTER (WHERE e.outcome = 'failure') AS failure_count,
    count(*) FILTER (WHERE e.outcome = 'success')::numeric / count(*) AS success_rate,
    avg(e.latency_ms) AS avg_latency_ms
FROM asset_events AS e
WHERE e.outcome IS NOT NULL
  AND e.occurred_at >= now() - interval '24 hours'
GROUP BY e.provider_id, e.sku_category, e.error_code;

COMMENT ON VIEW view_provider_performance IS
    'Past 24 h task attempt outcomes per provider_id, sku_category, error_code: total_tasks, '
    'failure_count, success_rate (0..1), avg_latency_ms.';

CREATE OR REPLACE VIEW view_error_patterns AS
SELECT
    e.task_type,
    e.error_code,
    e.http_status,
    count(*) AS occurrence_count,
    count(DISTINCT e.asset_id) AS affected_asset_count
FROM asset_events AS e
WHERE e.outcome = 'failure'
  AND e.occurred_at >= now() - interval '24 hours'
GROUP BY e.task_type, e.error_code, e.http_status;

COMMENT ON VIEW view_error_patterns IS
    'Past 24 h failures per task_type, error_code, http_status: occurrence_count and '
    'affected_asset_count (distinct assets; many assets suggest a mass ban, few a logic error).';
