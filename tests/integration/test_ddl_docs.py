"""The SQL shown in docs/sql.md runs, including the LIST (tenant_id) alternative."""

from __future__ import annotations

import re

import psycopg
import pytest

from sink.migrate import apply_migrations
from tests.integration._ddl_support import ROOT, connect, event, insert_events

DOC = ROOT / "docs" / "sql.md"


def _blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)


@pytest.fixture
def db(any_version_db: str) -> str:
    apply_migrations(any_version_db)
    return any_version_db


def test_list_tenant_example_routes_by_tenant_then_month_and_stays_append_only(db: str) -> None:
    (example,) = [b for b in _blocks() if b.startswith("-- docs-example: list-tenant")]
    with connect(db) as conn:
        conn.execute(example)
        conn.commit()
        for tenant in ("demo-tenant", "acme"):
            row = event(
                tenant_id=tenant,
                occurred_at="2026-12-05T10:00:00Z",
                recorded_at="2026-12-05T10:00:01Z",
            )
            columns = ", ".join(row)
            conn.execute(
                f"INSERT INTO asset_events_by_tenant ({columns}) "
                f"VALUES ({', '.join(['%s'] * len(row))})",
                list(row.values()),
            )
        conn.execute(
            "INSERT INTO asset_events_by_tenant (event_id, tenant_id, asset_id, event_type, "
            "occurred_at, recorded_at, version) "
            "VALUES (gen_random_uuid(), 'acme', 'a', 'x.y', '2031-01-01Z', now(), '1.0')"
        )
        conn.commit()
        placement = conn.execute(
            "SELECT tenant_id, tableoid::regclass::text FROM asset_events_by_tenant "
            "ORDER BY occurred_at, tenant_id"
        ).fetchall()
        pruned = conn.execute(
            "EXPLAIN (FORMAT JSON) SELECT * FROM asset_events_by_tenant "
            "WHERE tenant_id = 'demo-tenant'"
        ).fetchone()
        for statement in (
            "UPDATE asset_events_by_tenant SET env = 'x'",
            "TRUNCATE asset_events_by_tenant_other_p202612",
            "TRUNCATE asset_events_by_tenant",
        ):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(statement)
            conn.rollback()
            assert info.value.sqlstate == "55000"
    assert placement == [
        ("acme", "asset_events_by_tenant_other_p202612"),
        ("demo-tenant", "asset_events_by_tenant_demo_p202612"),
        ("acme", "asset_events_by_tenant_other_default"),
    ]
    assert pruned is not None and "asset_events_by_tenant_other" not in str(pruned[0])


def test_every_other_sql_example_of_the_doc_runs(db: str) -> None:
    runnable = [
        b
        for b in _blocks()
        if not b.startswith("-- docs-example")
        and "CREATE ROLE" not in b  # cluster-wide login roles: not in a test
        and "VALIDATE CONSTRAINT" not in b  # needs the FKs: see test_references
    ]
    assert len(runnable) >= 4
    with connect(db) as conn:
        insert_events(conn, [event(outcome="failure", provider_id="p", error_code="IP_BANNED")])
        for block in runnable:
            for statement in (s for s in block.split(";") if s.strip()):
                conn.execute(statement)
