"""PostgreSQL side of the benchmark: a fresh, migrated database per contender and run."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.events import COPY_COLUMNS, month_start
from sink.migrate import apply_migrations


def with_database(url: str, dbname: str) -> str:
    """``url`` (URI or key=value conninfo) pointing at database ``dbname`` instead."""
    return make_conninfo(url, dbname=dbname)


def jdbc_url(url: str) -> tuple[str, str, str]:
    """``(jdbc_url, user, password)`` for the libpq ``url``."""
    params = conninfo_to_dict(url)
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    return (f"jdbc:postgresql://{host}:{port}/{params.get('dbname', 'postgres')}",
            str(params.get("user", "postgres")), str(params.get("password", "")))


@contextmanager
def fresh_database(server_url: str, label: str, *, keep: bool = False) -> Iterator[str]:
    """Create ``bench_<label>_<hex>``, migrate it, yield its URL, drop it afterwards.

    The database gets every migration (all indexes, append-only guards) and the monthly
    partitions of the previous month, the current one and three ahead, so the generated
    events land in monthly partitions, not in the DEFAULT one.
    """
    name = f"bench_{label}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(server_url, name)
    try:
        apply_migrations(url)
        ensure_months(url)
        yield url
    finally:
        if not keep:
            drop_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def ensure_months(url: str, now: dt.datetime | None = None) -> None:
    """Partitions for the previous month, the current one and three ahead."""
    now = now or dt.datetime.now(dt.UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT asset_events_ensure_partitions(3)")
        conn.execute("SELECT * FROM asset_events_ensure_partitions_range(%s, %s)",
                     (month_start(now, 1).date(), month_start(now).date()))


def psql_copy(url: str, path: Path, *, ids_file: Path | None = None,
              table: str = "asset_events") -> float:
    """``psql \\copy`` the COPY text file into ``table``; return the seconds it took.

    Runs as one psql process (client-side COPY, one transaction), timed from process start
    to exit. With ``ids_file`` (event_id, occurred_at per line) the same transaction also
    copies it into ``asset_event_ids``: the rows plus the identity registry the sink keeps.
    Raises ``RuntimeError`` with psql's message on failure.
    """
    columns = ", ".join(COPY_COLUMNS)
    commands = ["-c", f"\\copy {table} ({columns}) FROM '{path}'"]
    if ids_file is not None:
        commands += ["-c", f"\\copy asset_event_ids (event_id, occurred_at) FROM '{ids_file}'"]
    started = time.perf_counter()
    proc = subprocess.run(
        ["psql", "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-d", url, *commands],
        capture_output=True, text=True, check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"psql \\copy failed: {proc.stderr.strip()}")
    return elapsed


def row_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM asset_events").fetchone()
        return int(row[0]) if row else 0


def analyze(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE asset_events")
        conn.execute("VACUUM ANALYZE asset_event_ids")


def register_ids(url: str) -> None:
    """Fill ``asset_event_ids`` from the rows ``\\copy`` put in (for pre-loaded tables).

    The sink keeps both tables in step; a table pre-loaded behind its back must too, or the
    sink's identity check would not see the pre-loaded events.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO asset_event_ids (event_id, occurred_at) "
                     "SELECT event_id, occurred_at FROM asset_events ON CONFLICT DO NOTHING")


def delays(url: str, since: dt.datetime) -> list[float]:
    """``ingested_at - recorded_at`` in seconds of every row recorded at or after ``since``."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT EXTRACT(EPOCH FROM ingested_at - recorded_at)::float8 FROM asset_events "
            "WHERE recorded_at >= %s", (since,)).fetchall()
    return [float(r[0]) for r in rows]
