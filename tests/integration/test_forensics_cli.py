"""``asset-sink trace`` and ``asset-sink forensics`` against a migrated database: they print
what trace_asset_events() and the forensic views return, as tables or JSON lines."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest

from tests.cli_support import run_cli as _cli

TENANT = "demo-tenant"


def _insert(conn: psycopg.Connection[Any], minutes_ago: int, **fields: Any) -> uuid.UUID:
    event_id = uuid.uuid4()
    occurred = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago)
    row: dict[str, Any] = {
        "event_id": event_id,
        "tenant_id": TENANT,
        "asset_id": "acct-1",
        "event_type": "task.attempted",
        "occurred_at": occurred,
        "recorded_at": occurred,
        "version": "1.0",
        **fields,
    }
    cols = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    conn.execute(f"INSERT INTO asset_events ({cols}) VALUES ({marks})", list(row.values()))
    return event_id


@pytest.fixture
def story(migrated_db: str) -> dict[str, Any]:
    """A task with three events, a ledger and an asset snapshot; other tenants' and
    providers' events around it."""
    task = uuid.uuid4()
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO task_orders (task_id, tenant_id, task_type, status) "
            "VALUES (%s, %s, 'login', 'failed')",
            (task, TENANT),
        )
        conn.execute(
            "INSERT INTO ledger_entries (entry_id, task_id, amount, currency) VALUES "
            "(%s, %s, 1.25, 'USD'), (%s, %s, 2.25, 'USD')",
            (uuid.uuid4(), task, uuid.uuid4(), task),
        )
        conn.execute(
            "INSERT INTO asset_snapshots (asset_id, captured_at, status) "
            "VALUES ('acct-1', now(), 'banned')"
        )
        ids = [
            _insert(
                conn,
                30,
                task_id=task,
                correlation_id="corr-1",
                event_type="task.started",
                provider_id="p-1",
                sku_category="proxy",
                old_status="idle",
                new_status="busy",
            ),
            _insert(
                conn,
                20,
                task_id=task,
                correlation_id="corr-1",
                event_type="task.failed",
                provider_id="p-1",
                sku_category="proxy",
                outcome="failure",
                error_code="IP_BANNED",
                http_status=403,
                latency_ms=800,
                task_type="login",
            ),
            _insert(
                conn,
                10,
                task_id=task,
                correlation_id="corr-1",
                event_type="task.failed",
                provider_id="p-1",
                sku_category="proxy",
                outcome="failure",
                error_code="IP_BANNED",
                http_status=403,
                latency_ms=600,
                task_type="login",
                asset_id="acct-2",
            ),
        ]
        _insert(
            conn, 15, correlation_id="corr-1", tenant_id="other-tenant", event_type="task.succeeded"
        )
        for i in range(3):
            _insert(
                conn,
                5 + i,
                provider_id="p-2",
                sku_category="proxy",
                outcome="success",
                latency_ms=100 + i,
                task_type="login",
            )
        _insert(
            conn,
            5,
            provider_id="p-2",
            sku_category="proxy",
            outcome="failure",
            error_code="TIMEOUT",
            http_status=504,
            latency_ms=30000,
            task_type="login",
        )
    return {"url": migrated_db, "task": task, "ids": ids}


def test_trace_by_task_prints_the_events_in_time_order_with_task_ledger_and_asset_status(
    story, capsys
):
    code, out, _ = _cli(
        capsys, "trace", "--task-id", str(story["task"]), "--database-url", story["url"]
    )

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "OCCURRED_AT",
        "EVENT_TYPE",
        "TENANT_ID",
        "ASSET_ID",
        "PROVIDER_ID",
        "OUTCOME",
        "ERROR_CODE",
        "HTTP_STATUS",
        "LATENCY_MS",
        "STATUS",
        "EVENT_ID",
    ]
    body = lines[1:4]
    assert [line.split()[1] for line in body] == ["task.started", "task.failed", "task.failed"]
    assert [line.split()[-1] for line in body] == [str(i) for i in story["ids"]]
    assert "idle->busy" in body[0]
    # aligned: every row's event_id starts in the header's EVENT_ID column
    column = lines[0].index("EVENT_ID")
    assert all(
        line[column:].split()[0] == str(i) for line, i in zip(body, story["ids"], strict=True)
    )
    assert lines[4].startswith("3 events from ")
    assert f"task {story['task']}: status failed, 2 ledger entries, total 3.500000" in out
    assert "asset acct-1: current status banned" in out
    assert "asset acct-2: no snapshot" in out


def test_trace_json_lines_carry_every_column_of_the_trace_function(story, capsys):
    code, out, _ = _cli(
        capsys, "trace", "--task-id", str(story["task"]), "--json", "--database-url", story["url"]
    )

    assert code == 0
    rows = [orjson.loads(line) for line in out.splitlines()]
    with psycopg.connect(story["url"]) as conn:
        cur = conn.execute("SELECT * FROM trace_asset_events(%s)", (story["task"],))
        expected_columns = [d.name for d in cur.description]
    assert [list(r) for r in rows] == [expected_columns] * 3
    assert [r["event_id"] for r in rows] == [str(i) for i in story["ids"]]
    assert rows[1]["task_status"] == "failed"
    assert rows[1]["ledger_entry_count"] == 2
    assert rows[1]["ledger_amount_total"] == 3.5
    assert rows[1]["task_order"]["task_type"] == "login"
    assert rows[0]["current_asset_status"] == "banned"


def test_trace_by_correlation_id_filters_by_tenant_when_asked(story, capsys):
    url = story["url"]
    code, out, _ = _cli(
        capsys, "trace", "--correlation-id", "corr-1", "--json", "--database-url", url
    )
    assert code == 0
    assert len(out.splitlines()) == 4

    code, out, _ = _cli(
        capsys,
        "trace",
        "--correlation-id",
        "corr-1",
        "--tenant",
        TENANT,
        "--json",
        "--database-url",
        url,
    )
    assert code == 0
    assert {orjson.loads(line)["tenant_id"] for line in out.splitlines()} == {TENANT}
    assert len(out.splitlines()) == 3


def test_trace_exits_1_when_nothing_matches_and_2_without_an_id(story, capsys):
    url = story["url"]
    code, out, err = _cli(capsys, "trace", "--task-id", str(uuid.uuid4()), "--database-url", url)
    assert (code, out) == (1, "")
    assert "no events found" in err
    code, _, err = _cli(capsys, "trace", "--database-url", url)
    assert code == 2
    assert "--task-id" in err


def _view(url: str, query: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(query)
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: float(v) if isinstance(v, Decimal) else v for k, v in row.items()}


def test_forensics_providers_prints_the_view_worst_success_rate_first(story, capsys):
    url = story["url"]
    code, out, _ = _cli(capsys, "forensics", "providers", "--json", "--database-url", url)

    assert code == 0
    printed = [orjson.loads(line) for line in out.splitlines()]
    view = _view(url, "SELECT * FROM view_provider_performance")
    assert sorted(printed, key=orjson.dumps) == sorted(map(_jsonable, view), key=orjson.dumps)
    rates = [r["success_rate"] for r in printed]
    assert rates == sorted(rates)

    code, out, _ = _cli(capsys, "forensics", "providers", "--database-url", url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "PROVIDER_ID",
        "SKU_CATEGORY",
        "ERROR_CODE",
        "TOTAL_TASKS",
        "FAILURE_COUNT",
        "SUCCESS_RATE",
        "AVG_LATENCY_MS",
    ]
    banned = next(line for line in lines if "IP_BANNED" in line)
    assert banned.split() == ["p-1", "proxy", "IP_BANNED", "1", "2", "0.0%", "700.0"]
    ok = next(line for line in lines if line.startswith("p-2") and " - " in line)
    assert ok.split()[-2:] == ["100.0%", "101.0"]
    # numbers are right-aligned under their header
    end = lines[0].index("SUCCESS_RATE") + len("SUCCESS_RATE")
    assert all(line[:end].endswith("%") for line in lines[1:])


def test_forensics_providers_filters_by_success_rate_and_provider(story, capsys):
    url = story["url"]
    code, out, _ = _cli(
        capsys,
        "forensics",
        "providers",
        "--max-success-rate",
        "0.5",
        "--json",
        "--database-url",
        url,
    )
    assert code == 0
    printed = [orjson.loads(line) for line in out.splitlines()]
    assert {(r["provider_id"], r["error_code"]) for r in printed} == {
        ("p-1", "IP_BANNED"),
        ("p-2", "TIMEOUT"),
    }
    code, out, _ = _cli(
        capsys, "forensics", "providers", "--provider", "p-2", "--json", "--database-url", url
    )
    assert {orjson.loads(line)["provider_id"] for line in out.splitlines()} == {"p-2"}


def test_forensics_errors_prints_the_view_most_frequent_first_with_thresholds(story, capsys):
    url = story["url"]
    code, out, _ = _cli(capsys, "forensics", "errors", "--json", "--database-url", url)

    assert code == 0
    printed = [orjson.loads(line) for line in out.splitlines()]
    assert printed == _view(url, "SELECT * FROM view_error_patterns ORDER BY occurrence_count DESC")
    assert printed[0] == {
        "task_type": "login",
        "error_code": "IP_BANNED",
        "http_status": 403,
        "occurrence_count": 2,
        "affected_asset_count": 2,
    }

    code, out, _ = _cli(
        capsys, "forensics", "errors", "--min-occurrences", "2", "--database-url", url
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "TASK_TYPE",
        "ERROR_CODE",
        "HTTP_STATUS",
        "OCCURRENCE_COUNT",
        "AFFECTED_ASSET_COUNT",
    ]
    assert [line.split() for line in lines[1:]] == [["login", "IP_BANNED", "403", "2", "2"]]


def test_forensics_on_a_database_without_the_schema_says_to_migrate(fresh_db, capsys):
    code, _, err = _cli(capsys, "forensics", "errors", "--database-url", fresh_db)
    assert code == 2
    assert "asset-sink migrate" in err


def test_forensics_with_an_empty_window_prints_no_rows_and_succeeds(migrated_db, capsys):
    code, out, err = _cli(capsys, "forensics", "providers", "--database-url", migrated_db)
    assert (code, out) == (0, "")
    assert "no rows in the past 24 hours" in err
