"""Helpers shared by the DDL tests: events, psql, plans, catalog signatures, extra databases."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sink.writer import ROW_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
DDL = ROOT / "ddl"
SHARED = ROOT.parent / "shared"
SEED = SHARED / "seed" / "asset-event-storage-v1.0.zh.md"
VALID_SAMPLES = SHARED / "samples" / "valid.jsonl"

EVENT_COLUMNS = ROW_COLUMNS  # the message columns, then the Kafka coordinates
INDEX_SCANS = frozenset({"Index Scan", "Index Only Scan", "Bitmap Index Scan"})


def event(**fields: Any) -> dict[str, Any]:
    """A valid event row; ``occurred_at`` defaults to one hour ago (SQL expression allowed)."""
    row: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "tenant_id": "demo-tenant",
        "asset_id": "acct-000001",
        "event_type": "task.started",
        "occurred_at": "now() - interval '1 hour'",
        "recorded_at": "now() - interval '1 hour'",
        "version": "1.0",
    }
    row.update(fields)
    return row


def insert_events(conn: psycopg.Connection[Any], rows: list[Mapping[str, Any]]) -> None:
    """INSERT the rows; ``occurred_at`` / ``recorded_at`` may be SQL expressions (``now() ...``)."""
    for row in rows:
        cols = [c for c in EVENT_COLUMNS if c in row]
        values = []
        params: list[Any] = []
        for col in cols:
            value = row[col]
            if (
                col in ("occurred_at", "recorded_at")
                and isinstance(value, str)
                and ("now()" in value)
            ):
                values.append(value)
            else:
                values.append("%s")
                params.append(json.dumps(value) if col == "payload" else value)
        conn.execute(
            f"INSERT INTO asset_events ({', '.join(cols)}) VALUES ({', '.join(values)})",
            params,
        )


def sample_events() -> list[dict[str, Any]]:
    return [json.loads(line) for line in VALID_SAMPLES.read_text().splitlines() if line.strip()]


def major(conn: psycopg.Connection[Any]) -> int:
    return conn.info.server_version // 10000


@contextmanager
def connect(url: str, **kwargs: Any) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(url, **kwargs) as conn:
        yield conn


@contextmanager
def sibling_db(url: str) -> Iterator[str]:
    """Another empty database on the server of ``url``, dropped afterwards."""
    params = conninfo_to_dict(url)
    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params["dbname"] = name
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def psql(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run psql with ON_ERROR_STOP; fail the test with its output when it fails."""
    exe = shutil.which("psql")
    if exe is None:
        pytest.fail("psql is not on PATH (install postgresql-client)")
    proc = subprocess.run(
        [exe, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"psql {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def run_cli(argv: list[str]) -> int:
    """``asset-sink argv`` in-process; the root logger is restored afterwards (the CLI points
    it at the current, captured, stderr)."""
    from sink.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return main(argv)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


# -- plans ------------------------------------------------------------------------------------


def plan_nodes(plan: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


def explain(conn: psycopg.Connection[Any], query: str, params: Any = None) -> dict[str, Any]:
    row = conn.execute(f"EXPLAIN (FORMAT JSON) {query}", params).fetchone()
    assert row is not None
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return dict(doc[0]["Plan"])


def scans_by_relation(plan: Mapping[str, Any]) -> dict[str, set[str]]:
    """Relation name -> node types that read it (Bitmap Heap Scans count their index child)."""
    found: dict[str, set[str]] = {}
    for node in plan_nodes(plan):
        rel = node.get("Relation Name")
        kind = str(node["Node Type"])
        if rel is None or not kind.endswith("Scan"):  # e.g. ModifyTable names its target
            continue
        if kind == "Bitmap Heap Scan":
            kinds = {str(n["Node Type"]) for n in plan_nodes(node) if n is not node}
            found.setdefault(rel, set()).update(kinds)
        else:
            found.setdefault(rel, set()).add(kind)
    return found


class AutoExplain:
    """Collects the plans auto_explain reports as notices (nested statements included)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.plans: list[dict[str, Any]] = []
        conn.execute("LOAD 'auto_explain'")
        for setting, value in (
            ("auto_explain.log_min_duration", "0"),
            ("auto_explain.log_nested_statements", "on"),
            ("auto_explain.log_format", "json"),
            ("auto_explain.log_level", "notice"),
        ):
            conn.execute("SELECT set_config(%s, %s, false)", (setting, value))
        conn.add_notice_handler(self._on_notice)

    def _on_notice(self, diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        start = text.find("{")
        if "plan:" in text and start >= 0:
            self.plans.append(json.loads(text[start:]))

    def matching(self, pattern: str) -> list[dict[str, Any]]:
        """Plans of statements whose text matches ``pattern`` (regex, case-insensitive)."""
        return [
            dict(p["Plan"])
            for p in self.plans
            if re.search(pattern, str(p.get("Query Text", "")), re.IGNORECASE | re.DOTALL)
        ]


# -- catalog ----------------------------------------------------------------------------------

_SIGNATURE_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind, c.relispartition, pg_get_expr(c.relpartbound, c.oid),
               c.relacl::text, obj_description(c.oid, 'pg_class')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'i', 'I')
          AND c.relname NOT LIKE 'asset_sink_migrations%'
        ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relkind IN ('r', 'p', 'v')
          AND c.relname <> 'asset_sink_migrations'
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated,
               conparentid <> 0
        FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace
          AND conrelid <> 0 AND conrelid::regclass::text <> 'asset_sink_migrations'
        ORDER BY 1, 2""",
    "indexes": """
        SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        WHERE c.relnamespace = 'public'::regnamespace
          AND c.relname <> 'asset_sink_migrations'
        ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled
        FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid),
               md5(pg_get_functiondef(p.oid)), p.proacl::text, p.prosecdef
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f'
        ORDER BY 1, 2""",
    "views": """
        SELECT c.relname, md5(pg_get_viewdef(c.oid))
        FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v'
        ORDER BY 1""",
    "event_triggers": """
        SELECT evtname, evtevent, evtfoid::regproc::text, evttags::text, evtenabled
        FROM pg_event_trigger ORDER BY 1""",
    "settings": "SELECT name, value FROM asset_sink_settings ORDER BY 1",
}


def schema_signature(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the DDL defines, as comparable rows (no OIDs, no data)."""
    with psycopg.connect(url) as conn:
        return {
            key: [tuple(r) for r in conn.execute(query).fetchall()]
            for key, query in _SIGNATURE_QUERIES.items()
        }


def table_digest(conn: psycopg.Connection[Any], table: str = "asset_events") -> tuple[int, str]:
    """Row count and an order-independent digest of every row of ``table``."""
    row = conn.execute(
        f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') "
        f"FROM {table} t"
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def seed_sql_blocks() -> list[str]:
    """The ```sql blocks of the design note, verbatim."""
    return re.findall(r"```sql\n(.*?)```", SEED.read_text(encoding="utf-8"), re.DOTALL)


def statements(block: str) -> list[str]:
    """Split a seed SQL block into statements (they hold no ';' inside literals)."""
    return [s.strip() for s in block.split(";") if re.sub(r"--[^\n]*", "", s).strip()]
