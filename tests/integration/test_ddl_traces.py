"""Trace view and function, forensic views: results, the seed's examples, and their plans."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from hashlib import md5
from typing import Any

import psycopg
import pytest
from psycopg import errors

from sink.migrate import apply_migrations
from sink.partitions import ensure_partitions
from tests.integration._ddl_support import (
    INDEX_SCANS,
    AutoExplain,
    connect,
    event,
    explain,
    insert_events,
    plan_nodes,
    scans_by_relation,
    seed_sql_blocks,
    statements,
)

TASK = "00000000-0000-0000-0000-000000000001"


@pytest.fixture
def db(any_version_db: str) -> str:
    apply_migrations(any_version_db)
    return any_version_db


def _seed_fixture_rows(conn: psycopg.Connection[Any]) -> None:
    """Rows the seed's example queries select, in the past 24 hours."""
    conn.execute(
        "INSERT INTO task_orders (task_id, tenant_id, task_type, status) "
        "VALUES (%s, 'demo-tenant', 'login', 'failed')",
        (TASK,),
    )
    insert_events(
        conn,
        [
            event(
                task_id=TASK,
                correlation_id="corr-123",
                env="prod",
                provider_id="provider-123",
                sku_category="proxy",
                task_type="login",
                outcome="failure",
                error_code="IP_BANNED",
                http_status=403,
                latency_ms=812,
                occurred_at="now() - interval '2 hours'",
            ),
            event(
                task_id=TASK,
                correlation_id="corr-123",
                env="prod",
                provider_id="provider-123",
                sku_category="proxy",
                task_type="login",
                outcome="success",
                latency_ms=100,
                occurred_at="now() - interval '1 hour'",
            ),
        ],
    )


def test_seed_trace_and_forensic_examples_run_verbatim(db: str) -> None:
    blocks = [b for b in seed_sql_blocks() if "\\i " not in b and "VALIDATE" not in b]
    assert len(blocks) == 3  # traces, provider performance, error patterns
    with connect(db) as conn:
        _seed_fixture_rows(conn)
        results = [
            conn.execute(statement).fetchall()
            for block in blocks
            for statement in statements(block)
        ]
    counts = [len(r) for r in results]
    # trace by task, trace by correlation, the view, success_rate < 0.8, provider-123,
    # top error patterns, IP_BANNED by task_type
    assert counts == [2, 2, 2, 1, 2, 1, 1]


def test_trace_returns_one_row_per_event_on_a_time_axis_with_context(db: str) -> None:
    task, other = str(uuid.uuid4()), str(uuid.uuid4())
    with connect(db) as conn:
        conn.execute(
            "INSERT INTO task_orders (task_id, status) VALUES (%s, 'done'), (%s, 'x')",
            (task, other),
        )
        conn.execute(
            "INSERT INTO asset_snapshots (asset_id, status, captured_at) VALUES "
            "('acct-7', 'active', now() - interval '3 days'), "
            "('acct-7', 'banned', now() - interval '1 minute'), "
            "('acct-8', 'active', now())"
        )
        conn.execute(
            "INSERT INTO ledger_entries (entry_id, task_id, asset_id, amount, currency) VALUES "
            "(gen_random_uuid(), %s, 'acct-7', 1.50, 'USD'), "
            "(gen_random_uuid(), %s, 'acct-7', 2.25, 'USD'), "
            "(gen_random_uuid(), %s, 'acct-8', 99, 'USD')",
            (task, task, other),
        )
        # Inserted out of time order; one belongs to another task.
        insert_events(
            conn,
            [
                event(
                    task_id=task,
                    asset_id="acct-7",
                    event_type="task.failed",
                    old_status="active",
                    new_status="banned",
                    occurred_at="now() - interval '10 minutes'",
                ),
                event(
                    task_id=task,
                    asset_id="acct-7",
                    event_type="task.started",
                    occurred_at="now() - interval '30 minutes'",
                ),
                event(
                    task_id=task,
                    asset_id="acct-7",
                    event_type="task.retried",
                    occurred_at="2020-01-01T00:00:00Z",
                ),  # DEFAULT partition: still traced
                event(task_id=other, asset_id="acct-8", event_type="task.started"),
            ],
        )
        rows = conn.execute(
            "SELECT event_type, event_old_status, event_new_status, current_asset_status, "
            "task_status, ledger_entry_count, ledger_amount_total, "
            "jsonb_array_length(ledger_entries), task_order->>'status' "
            "FROM trace_asset_events(%s)",
            (task,),
        ).fetchall()
    assert rows == [
        ("task.retried", None, None, "banned", "done", 2, Decimal("3.75"), 2, "done"),
        ("task.started", None, None, "banned", "done", 2, Decimal("3.75"), 2, "done"),
        ("task.failed", "active", "banned", "banned", "done", 2, Decimal("3.75"), 2, "done"),
    ]


def test_trace_by_correlation_with_both_arguments_and_with_none(db: str) -> None:
    task = str(uuid.uuid4())
    with connect(db) as conn:
        insert_events(
            conn,
            [
                event(correlation_id="corr-a", task_id=task),
                event(correlation_id="corr-a"),
                event(correlation_id="corr-b", task_id=task),
            ],
        )
        by_corr = conn.execute("SELECT count(*) FROM trace_asset_events(NULL, 'corr-a')")
        assert by_corr.fetchone() == (2,)
        both = conn.execute("SELECT count(*) FROM trace_asset_events(%s, 'corr-a')", (task,))
        assert both.fetchone() == (1,)
        without_ledger = conn.execute(
            "SELECT ledger_entry_count, ledger_amount_total, ledger_entries, task_order "
            "FROM trace_asset_events(NULL, 'corr-b')"
        ).fetchall()
        assert without_ledger == [(0, None, None, None)]
        with pytest.raises(errors.NullValueNotAllowed):
            conn.execute("SELECT * FROM trace_asset_events()")


# -- plans ------------------------------------------------------------------------------------


def _fill_three_months(conn: psycopg.Connection[Any], per_month: int = 4000) -> list[str]:
    """``per_month`` rows in each of the two previous months and this month (up to now), with
    ~2 rows per task and per correlation id and outcomes on every other row; returns the
    names of the partitions that hold rows."""
    this_month = conn.execute("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date")
    start = this_month.fetchone()
    assert start is not None
    first = (start[0].replace(day=1) - dt.timedelta(days=40)).replace(day=1)
    ensure_partitions(conn, 0, from_month=first)
    conn.execute(
        """
        INSERT INTO asset_events (event_id, tenant_id, asset_id, event_type, occurred_at,
                                  recorded_at, version, correlation_id, task_id, lease_id,
                                  provider_id, outcome, latency_ms)
        SELECT gen_random_uuid(), 'demo-tenant', 'acct-' || (i %% 500), 'task.finished',
               ts.t, ts.t, '1.0', 'corr-' || (i / 2), md5((i / 2)::text)::uuid,
               md5((i / 3)::text)::uuid, 'provider-' || (i %% 5),
               CASE WHEN i %% 2 = 0 THEN 'success' END, i %% 1000
        FROM generate_series(0, %(n)s * 3 - 1) AS i,
             LATERAL (SELECT m.start + CASE i %% 3
                 WHEN 0 THEN (i / 3) * ((now() - m.start) / %(n)s)
                 WHEN 1 THEN (i / 3) * (interval '1 month' / %(n)s) - interval '1 month'
                 ELSE (i / 3) * (interval '1 month' / %(n)s) - interval '2 months'
                 END AS t
                 FROM (SELECT %(start)s::timestamp AT TIME ZONE 'UTC' AS start) AS m) AS ts
        """,
        {"n": per_month, "start": start[0]},
    )
    conn.execute("ANALYZE asset_events")
    rows = conn.execute(
        "SELECT DISTINCT tableoid::regclass::text FROM asset_events ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def _generic_plans_of(
    conn: psycopg.Connection[Any], call: str, params: Any, pattern: str
) -> list[dict[str, Any]]:
    auto = AutoExplain(conn)
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute(call, params).fetchall()
    plans = auto.matching(pattern)
    assert plans, f"auto_explain reported no plan for {pattern!r}"
    return plans


def _asset_events_scans(plan: dict[str, Any], populated: list[str]) -> dict[str, set[str]]:
    return {rel: kinds for rel, kinds in scans_by_relation(plan).items() if rel in populated}


@pytest.mark.parametrize(
    ("call", "pattern", "column"),
    [
        ("SELECT * FROM trace_asset_events(%s)", r"WHERE tr\.task_id = p_task_id\s", "task_id"),
        (
            "SELECT * FROM trace_asset_events(NULL, %s)",
            r"WHERE tr\.correlation_id = p_correlation_id\s",
            "correlation_id",
        ),
    ],
)
def test_trace_generic_plan_is_an_index_lookup_in_every_partition(
    db: str, call: str, pattern: str, column: str
) -> None:
    with connect(db) as conn:
        populated = _fill_three_months(conn)
        conn.commit()
        value: Any = (
            "corr-7" if column == "correlation_id" else str(uuid.UUID(md5(b"7").hexdigest()))
        )
        plans = _generic_plans_of(conn, call, (value,), pattern)
        rows = conn.execute(call, (value,)).fetchall()
    assert len(populated) == 3
    assert len(rows) >= 2
    for plan in plans:
        scans = _asset_events_scans(plan, populated)
        assert set(scans) == set(populated), scans
        assert all(kinds <= INDEX_SCANS for kinds in scans.values()), scans
        # A generic plan: the value is a parameter, not a constant folded in.
        conds = [n.get("Index Cond", "") for n in plan_nodes(plan) if "Index Cond" in n]
        assert any("$" in c and column in c for c in conds), conds


def test_the_same_data_makes_a_catch_all_trace_query_scan_whole_partitions(db: str) -> None:
    """Control for the test above: the shape it avoids really reads every row."""
    with connect(db) as conn:
        populated = _fill_three_months(conn)
        conn.execute(
            """
            CREATE FUNCTION naive_trace(p_task_id uuid) RETURNS SETOF asset_events
            LANGUAGE plpgsql STABLE AS $$
            BEGIN
                RETURN QUERY SELECT * FROM asset_events e
                    WHERE (p_task_id IS NULL OR e.task_id = p_task_id);
            END $$;
            """
        )
        conn.commit()
        plans = _generic_plans_of(
            conn, "SELECT * FROM naive_trace(%s)", (TASK,), r"p_task_id IS NULL OR"
        )
    scans = _asset_events_scans(plans[0], populated)
    assert scans and all("Seq Scan" in kinds for kinds in scans.values()), scans


def _window_reads(
    conn: psycopg.Connection[Any], plan: dict[str, Any], populated: list[str]
) -> dict[str, set[str]]:
    """Populated relation -> how it is read: the node type, and for an index the column the
    index starts with (an index range scan reads only the window when that is occurred_at)."""
    reads: dict[str, set[str]] = {}
    for node in plan_nodes(plan):
        index = node.get("Index Name")
        rel = node.get("Relation Name")
        if index is not None:
            lead = conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE i.indexrelid = %s::regclass",
                (index,),
            ).fetchone()
            assert lead is not None
            if rel is None:
                owner = conn.execute(
                    "SELECT indrelid::regclass::text FROM pg_index WHERE indexrelid = %s::regclass",
                    (index,),
                ).fetchone()
                assert owner is not None
                rel = owner[0]
            if rel in populated:
                reads.setdefault(rel, set()).add(f"index on {lead[0]}")
        elif rel in populated:
            reads.setdefault(rel, set()).add(str(node["Node Type"]))
    return reads


@pytest.mark.parametrize("view", ["view_provider_performance", "view_error_patterns"])
def test_24h_views_prune_old_partitions_and_read_the_window_through_an_index(
    db: str, view: str
) -> None:
    with connect(db) as conn:
        populated = _fill_three_months(conn)
        conn.commit()
        out_of_window = {
            str(r[0])
            for r in conn.execute(
                "SELECT partition::text FROM asset_events_partitions() "
                "WHERE upper_bound <= now() - interval '24 hours'"
            ).fetchall()
        }
        # Seq scans off: the plan shows whether an index can serve the window at all (whether
        # the planner prefers it depends on how much of the month has passed).
        conn.execute("SET enable_seqscan = off")
        plan = explain(conn, f"SELECT * FROM {view}")
        reads = _window_reads(conn, plan, populated)
        # Without the index led by occurred_at, the best left is a whole-index scan.
        conn.execute("DROP INDEX asset_events_outcome_occurred_idx")
        unindexed = _window_reads(conn, explain(conn, f"SELECT * FROM {view}"), populated)
        conn.rollback()
    assert len(out_of_window & set(populated)) >= 1
    assert not out_of_window & set(scans_by_relation(plan)), "partitions before the window read"
    assert reads and all(kinds == {"index on occurred_at"} for kinds in reads.values()), reads
    assert all("index on occurred_at" not in kinds for kinds in unindexed.values()), unindexed


def test_provider_performance_follows_the_contract_definitions(db: str) -> None:
    t1, t2, t3 = (str(uuid.uuid4()) for _ in range(3))
    common = {"provider_id": "p1", "sku_category": "proxy"}
    with connect(db) as conn:
        insert_events(
            conn,
            [
                event(**common, outcome="success", task_id=t1, latency_ms=100),
                event(**common, outcome="success", task_id=t1, latency_ms=200),  # same task
                event(**common, outcome="success", latency_ms=300),  # no task: counts once
                event(
                    **common, outcome="failure", error_code="IP_BANNED", task_id=t2, latency_ms=1000
                ),
                event(**common, outcome="failure", error_code="IP_BANNED", latency_ms=2000),
                event(**common, outcome="failure", error_code="IP_BANNED", latency_ms=3000),
                event(**common, outcome="failure", error_code="SLOW", task_id=t3, latency_ms=50),
                event(**common, outcome="success", error_code="SLOW", task_id=t3, latency_ms=150),
                event(**common, task_id=t1, latency_ms=999_999),  # no outcome: not an attempt
                event(
                    **common,
                    outcome="failure",
                    error_code="IP_BANNED",
                    occurred_at="now() - interval '25 hours'",
                ),  # outside the window
            ],
        )
        rows = conn.execute(
            "SELECT provider_id, sku_category, error_code, total_tasks, failure_count, "
            "success_rate, avg_latency_ms FROM view_provider_performance "
            "ORDER BY error_code NULLS FIRST"
        ).fetchall()
    assert rows == [
        ("p1", "proxy", None, 2, 0, Decimal(1), Decimal(200)),
        ("p1", "proxy", "IP_BANNED", 3, 3, Decimal(0), Decimal(2000)),
        ("p1", "proxy", "SLOW", 1, 1, Decimal("0.5"), Decimal(100)),
    ]


def test_error_patterns_count_failures_and_distinct_assets(db: str) -> None:
    with connect(db) as conn:
        insert_events(
            conn,
            [
                event(
                    task_type="login",
                    outcome="failure",
                    error_code="IP_BANNED",
                    http_status=403,
                    asset_id=f"acct-{i % 3}",
                )
                for i in range(5)
            ]
            + [
                event(
                    task_type="login", outcome="failure", error_code="TIMEOUT", asset_id="acct-1"
                ),
                event(
                    task_type="login", outcome="success", error_code="IP_BANNED", http_status=403
                ),
                event(task_type="login", error_code="IP_BANNED", http_status=403),  # no outcome
                event(
                    task_type="login",
                    outcome="failure",
                    error_code="IP_BANNED",
                    http_status=403,
                    occurred_at="now() - interval '2 days'",
                ),
            ],
        )
        rows = conn.execute(
            "SELECT task_type, error_code, http_status, occurrence_count, affected_asset_count "
            "FROM view_error_patterns ORDER BY occurrence_count DESC"
        ).fetchall()
    assert rows == [("login", "IP_BANNED", 403, 5, 3), ("login", "TIMEOUT", None, 1, 1)]
