"""asset_events matches the contract: columns, NOT NULL, CHECKs, keys, indexes, partitions."""

from __future__ import annotations

import itertools
import uuid

import psycopg
import pytest
from psycopg import errors

from sink.migrate import apply_migrations
from tests.integration._ddl_support import DDL, connect, event, insert_events

CONTRACT_COLUMNS = [
    ("event_id", "uuid", True),
    ("tenant_id", "text", True),
    ("asset_id", "text", True),
    ("event_type", "text", True),
    ("occurred_at", "timestamp with time zone", True),
    ("recorded_at", "timestamp with time zone", True),
    ("version", "text", True),
    ("correlation_id", "text", False),
    ("causation_id", "text", False),
    ("task_id", "uuid", False),
    ("lease_id", "uuid", False),
    ("task_type", "text", False),
    ("provider_id", "text", False),
    ("sku_category", "text", False),
    ("env", "text", False),
    ("severity", "text", False),
    ("outcome", "text", False),
    ("error_code", "text", False),
    ("error_message", "text", False),
    ("http_status", "smallint", False),
    ("latency_ms", "integer", False),
    ("old_status", "text", False),
    ("new_status", "text", False),
    ("source", "text", False),
    ("payload", "jsonb", False),
    ("kafka_topic", "text", False),
    ("kafka_partition", "integer", False),
    ("kafka_offset", "bigint", False),
    ("ingested_at", "timestamp with time zone", True),
]

# Key columns of every index asset_events must have, with its partial predicate if any.
EXPECTED_INDEXES = {
    ("event_id", "occurred_at"): None,
    ("tenant_id", "occurred_at"): None,
    ("asset_id", "occurred_at"): None,
    ("correlation_id", "occurred_at"): "(correlation_id IS NOT NULL)",
    ("causation_id",): "(causation_id IS NOT NULL)",
    ("task_id",): "(task_id IS NOT NULL)",
    ("lease_id",): "(lease_id IS NOT NULL)",
    ("occurred_at",): "(outcome IS NOT NULL)",
}


@pytest.fixture
def db(any_version_db: str) -> str:
    apply_migrations(any_version_db)
    return any_version_db


def test_columns_follow_the_contract_in_order_type_and_nullability(db: str) -> None:
    with connect(db) as conn:
        rows = conn.execute(
            """
            SELECT attname, format_type(atttypid, atttypmod), attnotnull
            FROM pg_attribute WHERE attrelid = 'asset_events'::regclass
              AND attnum > 0 AND NOT attisdropped ORDER BY attnum
            """
        ).fetchall()
        default = conn.execute(
            "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef "
            "WHERE adrelid = 'asset_events'::regclass"
        ).fetchall()
    assert rows == CONTRACT_COLUMNS
    assert default == [("now()",)]


@pytest.mark.parametrize(
    ("column", "bad"),
    [
        ("version", "1"),
        ("version", "v1.0"),
        ("version", "1.0.0"),
        ("severity", "fatal"),
        ("outcome", "maybe"),
        ("http_status", 99),
        ("http_status", 600),
        ("latency_ms", -1),
        ("latency_ms", 86_400_001),
    ],
)
def test_check_constraints_refuse_values_outside_the_contract(
    db: str, column: str, bad: object
) -> None:
    with connect(db) as conn, pytest.raises(errors.CheckViolation) as info:
        insert_events(conn, [event(**{column: bad})])
    assert info.value.diag.constraint_name == f"asset_events_{column}_check"


def test_check_constraints_accept_the_contract_boundaries(db: str) -> None:
    rows = [
        event(version="1.0", severity="critical", outcome="success", http_status=100, latency_ms=0),
        event(
            version="10.25",
            severity="debug",
            outcome="failure",
            http_status=599,
            latency_ms=86_400_000,
        ),
        event(),  # every optional column NULL
    ]
    with connect(db) as conn:
        insert_events(conn, rows)
        conn.commit()
        assert conn.execute("SELECT count(*) FROM asset_events").fetchone() == (3,)


@pytest.mark.parametrize("column", [c for c, _, required in CONTRACT_COLUMNS[:7] if required])
def test_required_fields_are_not_null(db: str, column: str) -> None:
    with connect(db) as conn, pytest.raises(errors.NotNullViolation):
        insert_events(conn, [event(**{column: None})])


def test_primary_key_is_event_id_and_occurred_at_and_ids_are_unique_globally(db: str) -> None:
    event_id = str(uuid.uuid4())
    with connect(db, autocommit=True) as conn:
        insert_events(conn, [event(event_id=event_id)])
        # Same id, same instant: the primary key refuses it.
        row = conn.execute(
            "SELECT occurred_at FROM asset_events WHERE event_id = %s", (event_id,)
        ).fetchone()
        assert row is not None
        with pytest.raises(errors.UniqueViolation):
            insert_events(conn, [event(event_id=event_id, occurred_at=row[0])])
        # Same id in another month is only caught by the global identity table.
        insert_events(conn, [event(event_id=event_id, occurred_at="2031-01-01T00:00:00Z")])
        conn.execute(
            "INSERT INTO asset_event_ids (event_id, occurred_at) VALUES (%s, now())", (event_id,)
        )
        with pytest.raises(errors.UniqueViolation):
            conn.execute(
                "INSERT INTO asset_event_ids (event_id, occurred_at) VALUES (%s, now())",
                (event_id,),
            )
        pk = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'asset_events'::regclass AND contype = 'p'"
        ).fetchone()
    assert pk == ("PRIMARY KEY (event_id, occurred_at)",)


def test_every_required_index_exists_on_the_parent_and_on_every_partition(db: str) -> None:
    with connect(db) as conn:
        found = {
            (tuple(cols), pred)
            for cols, pred in conn.execute(
                """
                SELECT array_agg(a.attname ORDER BY k.ord), pg_get_expr(i.indpred, i.indrelid)
                FROM pg_index i
                CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                WHERE i.indrelid = 'asset_events'::regclass
                GROUP BY i.indexrelid, i.indpred, i.indrelid
                """
            ).fetchall()
        }
        missing_on_partitions = conn.execute(
            """
            SELECT p.relid::regclass::text, pi.indexrelid::regclass::text
            FROM pg_partition_tree('asset_events') p
            CROSS JOIN pg_index pi
            WHERE p.isleaf AND pi.indrelid = 'asset_events'::regclass
              AND NOT EXISTS (
                  SELECT 1 FROM pg_inherits inh JOIN pg_index ci ON ci.indexrelid = inh.inhrelid
                  WHERE inh.inhparent = pi.indexrelid AND ci.indrelid = p.relid)
            """
        ).fetchall()
    assert found == set(EXPECTED_INDEXES.items())
    assert missing_on_partitions == []


def test_monthly_partitions_and_a_default_partition_exist(db: str) -> None:
    with connect(db) as conn:
        parts = conn.execute(
            "SELECT partition::text, is_default, lower_bound, upper_bound "
            "FROM asset_events_partitions()"
        ).fetchall()
        this_month = conn.execute(
            "SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        ).fetchone()
    assert this_month is not None
    assert [p[0] for p in parts if p[1]] == ["asset_events_default"]
    monthly = [p for p in parts if not p[1]]
    assert len(monthly) == 4  # this month and three ahead
    assert monthly[0][2] == this_month[0]
    for earlier, later in itertools.pairwise(monthly):
        assert earlier[3] == later[2]  # contiguous


def test_event_of_a_month_without_partition_lands_in_the_default_partition(db: str) -> None:
    with connect(db) as conn:
        insert_events(conn, [event(occurred_at="2035-07-04T12:00:00Z")])
        row = conn.execute("SELECT tableoid::regclass::text FROM asset_events").fetchone()
    assert row == ("asset_events_default",)


def test_no_before_insert_row_trigger_anywhere_so_copy_keeps_batching(db: str) -> None:
    with connect(db) as conn:
        insert_triggers = conn.execute(
            """
            SELECT tgrelid::regclass::text, tgname FROM pg_trigger
            WHERE tgrelid IN (SELECT relid FROM pg_partition_tree('asset_events')
                              UNION ALL SELECT 'asset_event_ids'::regclass)
              AND tgtype & 1 = 1   -- row level
              AND tgtype & 2 = 2   -- before
              AND tgtype & 4 = 4   -- insert
            """
        ).fetchall()
        # The guards exist (so the query above would see triggers if they covered INSERT).
        guards = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'asset_events_append_only'"
        ).fetchone()
    assert insert_triggers == []
    assert guards is not None and guards[0] >= 6  # parent + default + 4 monthly partitions


def test_all_sql_includes_every_numbered_file_in_order_and_not_the_optional_one() -> None:
    lines = [
        line.split(maxsplit=1)[1]
        for line in (DDL / "all.sql").read_text().splitlines()
        if line.startswith("\\ir ")
    ]
    assert lines == sorted(p.name for p in DDL.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert (DDL / "optional" / "reference_fks.sql").is_file()


def test_installing_outside_schema_public_is_refused(any_version_db: str) -> None:
    with connect(any_version_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA elsewhere")
        conn.execute("SET search_path = elsewhere")
        with pytest.raises(psycopg.errors.InvalidSchemaName):
            conn.execute((DDL / "0001_asset_events.sql").read_bytes())
