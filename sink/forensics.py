"""Traces and forensic views from the shell: ``asset-sink trace`` and ``asset-sink forensics``.

Both only read what the database defines — ``trace_asset_events()``,
``view_provider_performance`` and ``view_error_patterns`` (see docs/sql.md) — adding filters
and an order on top, so the numbers are the views' own. A login holding
``asset_events_reader`` is enough. Output is an aligned table, or with ``--json`` one JSON
object per row with every column. Sessions are read-only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from sink._ops import cell, format_table, json_line
from sink.errors import FatalError
from sink.migrate import add_database_url_option, database_url

# SQLSTATE classes and codes that mean "these objects are not there"
_UNDEFINED = frozenset({"42P01", "42883"})  # undefined_table, undefined_function


@dataclass(frozen=True, slots=True)
class Result:
    """Rows of a query with their column names, in order."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def _query(url: str, query: sql.SQL | sql.Composed, params: Sequence[Any], *, app: str) -> Result:
    """Run one read-only query. FatalError when the server is unreachable, the schema is not
    migrated or the login may not read the objects."""
    try:
        with psycopg.connect(url, application_name=app, connect_timeout=10) as conn:
            conn.read_only = True
            cur = conn.execute(query, params)
            columns = tuple(d.name for d in cur.description or ())
            return Result(columns, tuple(cur.fetchall()))
    except psycopg.OperationalError as exc:
        raise FatalError(f"cannot connect to PostgreSQL: {exc}") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise FatalError(f"{exc}; grant asset_events_reader to the login") from exc
    except psycopg.Error as exc:
        if exc.sqlstate in _UNDEFINED:
            raise FatalError(
                f"{exc.diag.message_primary}: is the database migrated? (asset-sink migrate)"
            ) from exc
        raise FatalError(f"query failed: {exc}") from exc


# -- trace ------------------------------------------------------------------------------------

# the columns of the table view (--json has every column of asset_event_traces)
TRACE_COLUMNS = (
    "occurred_at",
    "event_type",
    "tenant_id",
    "asset_id",
    "provider_id",
    "outcome",
    "error_code",
    "http_status",
    "latency_ms",
    "status",
    "event_id",
)


def trace(
    url: str, *, task_id: uuid.UUID | None, correlation_id: str | None, tenant: str | None = None
) -> Result:
    """Rows of ``trace_asset_events(task_id, correlation_id)`` (AND when both), of one tenant
    when given, ordered by ``occurred_at``."""
    if task_id is None and correlation_id is None:
        raise ValueError("trace needs a task id or a correlation id")
    query: sql.Composed = sql.Composed([sql.SQL("SELECT * FROM trace_asset_events(%s, %s)")])
    params: list[Any] = [task_id, correlation_id]
    if tenant is not None:
        query += sql.SQL(" WHERE tenant_id = %s")
        params.append(tenant)
    query += sql.SQL(" ORDER BY occurred_at, event_id")
    return _query(url, query, params, app="asset-sink trace")


def trace_table(result: Result) -> str:
    """The trace as a table (one line per event) followed by what the rows share: the task
    orders with their ledger totals, and the assets' current status."""
    rows = []
    for r in result.dicts():
        change = None
        if r["event_old_status"] or r["event_new_status"]:
            change = f"{r['event_old_status'] or '-'}->{r['event_new_status'] or '-'}"
        rows.append(tuple(change if c == "status" else r[c] for c in TRACE_COLUMNS))
    lines = [format_table(TRACE_COLUMNS, rows)]
    first, last = result.dicts()[0]["occurred_at"], result.dicts()[-1]["occurred_at"]
    span = dt.timedelta(seconds=round((last - first).total_seconds()))
    lines.append(f"{len(rows)} events from {cell(first)} to {cell(last)} ({span})")
    tasks: dict[Any, dict[str, Any]] = {}
    assets: dict[str, dict[str, Any]] = {}
    for r in result.dicts():
        if r["task_id"] is not None:
            tasks.setdefault(r["task_id"], r)
        assets.setdefault(r["asset_id"], r)
    for task_id, r in tasks.items():
        total = r["ledger_amount_total"]
        lines.append(
            f"task {task_id}: status {r['task_status'] or '(no task order)'}, "
            f"{r['ledger_entry_count'] or 0} ledger entries"
            + ("" if total is None else f", total {cell(total)}")
        )
    for asset_id, r in assets.items():
        status = r["current_asset_status"]
        lines.append(
            f"asset {asset_id}: "
            + (
                "no snapshot"
                if status is None
                else f"current status {status} (since {cell(r['current_asset_status_at'])})"
            )
        )
    return "\n".join(lines)


def _emit(result: Result, *, as_json: bool, table: Callable[[Result], str]) -> bool:
    """Print ``result`` as JSON lines or as ``table(result)``; False when it has no rows."""
    if as_json:
        for row in result.dicts():
            print(json_line(row))
    elif result.rows:
        print(table(result))
    return bool(result.rows)


def _run_trace(args: argparse.Namespace) -> int:
    if args.task_id is None and args.correlation_id is None:
        raise FatalError("pass --task-id and/or --correlation-id")
    result = trace(
        database_url(args),
        task_id=args.task_id,
        correlation_id=args.correlation_id,
        tenant=args.tenant,
    )
    if not _emit(result, as_json=args.json, table=trace_table):
        print("no events found", file=sys.stderr)
        return 1
    return 0


def _uuid_arg(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


# -- forensic views -----------------------------------------------------------------------------


def providers(
    url: str,
    *,
    provider: str | None = None,
    max_success_rate: float | None = None,
    min_tasks: int = 0,
    limit: int | None = None,
) -> Result:
    """Rows of ``view_provider_performance`` (past 24 h), worst success rate first, then the
    slowest."""
    where = [sql.SQL("total_tasks >= %s")]
    params: list[Any] = [min_tasks]
    if provider is not None:
        where.append(sql.SQL("provider_id = %s"))
        params.append(provider)
    if max_success_rate is not None:
        where.append(sql.SQL("success_rate <= %s"))
        params.append(Decimal(str(max_success_rate)))
    query = sql.SQL(
        "SELECT * FROM view_provider_performance WHERE {} "
        "ORDER BY success_rate ASC, avg_latency_ms DESC NULLS LAST, provider_id, "
        "sku_category, error_code"
    ).format(sql.SQL(" AND ").join(where))
    return _query(url, _limited(query, limit, params), params, app="asset-sink forensics")


def errors(
    url: str,
    *,
    task_type: str | None = None,
    min_occurrences: int = 0,
    min_assets: int = 0,
    limit: int | None = None,
) -> Result:
    """Rows of ``view_error_patterns`` (past 24 h), most frequent first."""
    where = [sql.SQL("occurrence_count >= %s"), sql.SQL("affected_asset_count >= %s")]
    params: list[Any] = [min_occurrences, min_assets]
    if task_type is not None:
        where.append(sql.SQL("task_type = %s"))
        params.append(task_type)
    query = sql.SQL(
        "SELECT * FROM view_error_patterns WHERE {} "
        "ORDER BY occurrence_count DESC, affected_asset_count DESC, task_type, error_code, "
        "http_status"
    ).format(sql.SQL(" AND ").join(where))
    return _query(url, _limited(query, limit, params), params, app="asset-sink forensics")


def _limited(query: sql.Composed, limit: int | None, params: list[Any]) -> sql.Composed:
    if limit is None:
        return query
    params.append(limit)
    return query + sql.SQL(" LIMIT %s")


def _display(column: str, value: Any) -> Any:
    """Table cell of a forensic column: rates as percentages, means to 0.1 ms."""
    if value is None:
        return None
    if column == "success_rate":
        return f"{Decimal(value) * 100:.1f}%"
    if column.startswith("avg_"):
        return Decimal(value).quantize(Decimal("0.1"))
    return value


def forensic_table(result: Result) -> str:
    rows = [
        tuple(_display(c, v) for c, v in zip(result.columns, row, strict=True))
        for row in result.rows
    ]
    return format_table(result.columns, rows, right={"success_rate"})


def _run_view(args: argparse.Namespace) -> int:
    url = database_url(args)
    if args.view == "providers":
        result = providers(
            url,
            provider=args.provider,
            max_success_rate=args.max_success_rate,
            min_tasks=args.min_tasks,
            limit=args.limit,
        )
    else:
        result = errors(
            url,
            task_type=args.task_type,
            min_occurrences=args.min_occurrences,
            min_assets=args.min_assets,
            limit=args.limit,
        )
    if not _emit(result, as_json=args.json, table=forensic_table):
        print("no rows in the past 24 hours", file=sys.stderr)
    return 0


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a rate between 0 and 1, not {text!r}")
    return value


def register(subparsers: Any) -> None:
    """Add ``asset-sink trace`` and ``asset-sink forensics providers|errors``."""
    tr = subparsers.add_parser(
        "trace",
        help="the events of a task or call chain with task, snapshot and ledger",
        description="Print trace_asset_events(task_id, correlation_id): the events on a time "
        "axis with their task order status, the asset's latest snapshot and the task's "
        "ledger entries. Both ids: events matching both. Exit 1 when nothing matches.",
    )
    tr.add_argument("--task-id", type=_uuid_arg, default=None, metavar="UUID")
    tr.add_argument("--correlation-id", default=None, metavar="ID")
    tr.add_argument("--tenant", default=None, help="only events of this tenant_id")
    tr.add_argument(
        "--json", action="store_true", help="JSON lines, every column of asset_event_traces"
    )
    add_database_url_option(tr)
    tr.set_defaults(func=_run_trace)

    fo = subparsers.add_parser(
        "forensics",
        help="the past 24 hours by provider or by error pattern",
        description="Print view_provider_performance or view_error_patterns (past 24 hours).",
    )
    sub = fo.add_subparsers(dest="view", required=True, metavar="VIEW")
    pr = sub.add_parser(
        "providers",
        help="success rate, failures and latency per provider, SKU, error code",
        description="view_provider_performance, lowest success rate first.",
    )
    pr.add_argument("--provider", default=None, help="only this provider_id")
    pr.add_argument(
        "--max-success-rate",
        type=_rate,
        default=None,
        metavar="R",
        help="only groups with success_rate <= R (0..1)",
    )
    pr.add_argument(
        "--min-tasks", type=_count, default=0, metavar="N", help="only groups with total_tasks >= N"
    )
    er = sub.add_parser(
        "errors",
        help="failures per task type, error code and HTTP status",
        description="view_error_patterns, most frequent first. Many affected assets suggest "
        "a mass ban, few a logic error.",
    )
    er.add_argument("--task-type", default=None, help="only this task_type")
    er.add_argument(
        "--min-occurrences",
        type=_count,
        default=0,
        metavar="N",
        help="only patterns seen at least N times",
    )
    er.add_argument(
        "--min-assets",
        type=_count,
        default=0,
        metavar="N",
        help="only patterns affecting at least N assets",
    )
    for p in (pr, er):
        p.add_argument("--limit", type=_count, default=None, metavar="N", help="at most N rows")
        p.add_argument("--json", action="store_true", help="JSON lines, one per row")
        add_database_url_option(p)
        p.set_defaults(func=_run_view)
