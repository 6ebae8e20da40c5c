-- 0001: the asset_events table (AssetEvent v1.0), its indexes and the global event identity.
--
-- Idempotent: every statement can run again on an installed database without effect.
-- Runs with plain psql (psql -v ON_ERROR_STOP=1 -1 -f ddl/0001_asset_events.sql) or through
-- `asset-sink migrate`. Partitions are created in 0006.

DO $$
BEGIN
    -- The SECURITY DEFINER functions pin search_path to public, so everything lives there.
    IF current_schema() IS DISTINCT FROM 'public' THEN
        RAISE EXCEPTION 'asset_events must be installed in schema public, not %',
            coalesce(current_schema(), '(none)')
            USING ERRCODE = 'invalid_schema_name',
                  HINT = 'Run the migrations with search_path = public.';
    END IF;
END
$$;

-- Switches of the installation (e.g. reference_fks = on), read by the maintenance functions.
CREATE TABLE IF NOT EXISTS asset_sink_settings (
    name       text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE asset_sink_settings IS
    'Installation switches of the asset event sink (reference_fks = on after '
    '`asset-sink migrate --with-reference-fks`).';

-- Columns in the order of the wire contract, then the columns the sink adds.
CREATE TABLE IF NOT EXISTS asset_events (
    event_id        uuid        NOT NULL,
    tenant_id       text        NOT NULL,
    asset_id        text        NOT NULL,
    event_type      text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    version         text        NOT NULL,
    correlation_id  text,
    causation_id    text,
    task_id         uuid,
    lease_id        uuid,
    task_type       text,
    provider_id     text,
    sku_category    text,
    env             text,
    severity        text,
    outcome         text,
    error_code      text,
    error_message   text,
    http_status     smallint,
    latency_ms      integer,
    old_status      text,
    new_status      text,
    source          text,
    payload         jsonb,
    kafka_topic     text,
    kafka_partition integer,
    kafka_offset    bigint,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    -- A unique key of a partitioned table must contain the partition key.
    CONSTRAINT asset_events_pkey PRIMARY KEY (event_id, occurred_at),
    CONSTRAINT asset_events_version_check CHECK (version ~ '^[0-9]+\.[0-9]+$'),
    CONSTRAINT asset_events_severity_check
        CHECK (severity IN ('debug', 'info', 'warning', 'error', 'critical')),
    CONSTRAINT asset_events_outcome_check CHECK (outcome IN ('success', 'failure')),
    CONSTRAINT asset_events_http_status_check CHECK (http_status BETWEEN 100 AND 599),
    CONSTRAINT asset_events_latency_ms_check CHECK (latency_ms BETWEEN 0 AND 86400000)
) PARTITION BY RANGE (occurred_at);

COMMENT ON TABLE asset_events IS
    'AssetEvents v1.0, append-only, one row per event, monthly RANGE partitions on occurred_at '
    '(UTC months) plus a DEFAULT partition. Corrections are compensation events, never edits.';
COMMENT ON COLUMN asset_events.old_status IS 'Asset status before the event, as the event says.';
COMMENT ON COLUMN asset_events.new_status IS 'Asset status after the event, as the event says.';
COMMENT ON COLUMN asset_events.kafka_topic IS 'Kafka topic the row was read from.';
COMMENT ON COLUMN asset_events.kafka_partition IS 'Kafka partition the row was read from.';
COMMENT ON COLUMN asset_events.kafka_offset IS 'Kafka offset of the message the row came from.';
COMMENT ON COLUMN asset_events.ingested_at IS 'When the sink stored the row.';

-- Tenant timeline, asset profile, call chain, causation chain, task attribution.
CREATE INDEX IF NOT EXISTS asset_events_tenant_occurred_idx
    ON asset_events (tenant_id, occurred_at);
CREATE INDEX IF NOT EXISTS asset_events_asset_occurred_idx
    ON asset_events (asset_id, occurred_at);
-- The reference columns are NULL on many events: partial indexes skip those rows (cheaper
-- writes, smaller indexes) and still serve every "= value" lookup, generic plans included.
CREATE INDEX IF NOT EXISTS asset_events_correlation_occurred_idx
    ON asset_events (correlation_id, occurred_at) WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS asset_events_causation_idx
    ON asset_events (causation_id) WHERE causation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS asset_events_task_idx
    ON asset_events (task_id) WHERE task_id IS NOT NULL;
-- ON DELETE SET NULL of fk_asset_events_lease looks referencing rows up by lease_id.
CREATE INDEX IF NOT EXISTS asset_events_lease_idx
    ON asset_events (lease_id) WHERE lease_id IS NOT NULL;
-- The forensic views read the outcome events of the past 24 hours: an index led by
-- occurred_at lets them read that window instead of whole monthly partitions.
CREATE INDEX IF NOT EXISTS asset_events_outcome_occurred_idx
    ON asset_events (occurred_at) WHERE outcome IS NOT NULL;

-- One row per event_id across every partition: the primary key of asset_events contains
-- occurred_at, so on its own it cannot stop the same event_id being stored under two months.
-- The writer inserts here with ON CONFLICT DO NOTHING and stores only the events whose id
-- was new, in the same transaction.
CREATE TABLE IF NOT EXISTS asset_event_ids (
    event_id    uuid PRIMARY KEY,
    occurred_at timestamptz NOT NULL
);

COMMENT ON TABLE asset_event_ids IS
    'Global identity of stored events (event_id -> occurred_at), append-only.';
