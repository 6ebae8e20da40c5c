"""Monthly partitions of ``asset_events``: a thin wrapper over the SQL maintenance functions.

``asset_events_ensure_partitions(p_ahead)`` (SECURITY DEFINER, executable by
``asset_sink_writer``) creates the partitions of the current UTC month and the ``p_ahead``
months after it; ``asset_events_ensure_partitions_range(p_from, p_to)`` (owner only) those of
any month range, for backfills. Both move the rows the DEFAULT partition holds for a new
month into it, and are idempotent: a second call creates nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

from sink.errors import FatalError
from sink.migrate import add_database_url_option, database_url

DEFAULT_AHEAD = 3  # months


@dataclass(frozen=True, slots=True)
class CreatedPartition:
    """A partition created by a call: its UTC month range and the rows moved into it."""

    name: str
    range_from: dt.datetime
    range_to: dt.datetime
    moved_rows: int


def ensure_partitions(
    conn_or_url: psycopg.Connection[Any] | str,
    ahead: int = DEFAULT_AHEAD,
    *,
    from_month: dt.date | None = None,
) -> list[CreatedPartition]:
    """Create the missing partitions from ``from_month`` (default: this UTC month) through the
    current UTC month + ``ahead``; return those created, in month order.

    With a URL, opens its own connection and commits. With a connection, runs in a
    transaction block of it: committed at the end if none was open, else a savepoint the
    caller's commit makes durable. Blocks writers of ``asset_events`` only while it has work
    to do, until that transaction ends. Raises :class:`FatalError` when the URL cannot be
    reached and :class:`psycopg.Error` on any other failure (nothing is then created or
    moved). ``from_month`` needs the table owner's rights (the range function is not granted
    to ``asset_sink_writer``).
    """
    if isinstance(conn_or_url, str):
        try:
            own = psycopg.connect(conn_or_url, application_name="asset-sink partitions")
        except psycopg.OperationalError as exc:
            raise FatalError(f"cannot connect to PostgreSQL: {exc}") from exc
        with own:
            return ensure_partitions(own, ahead, from_month=from_month)
    conn = conn_or_url
    if from_month is None:
        query = "SELECT * FROM asset_events_ensure_partitions(%s)"
        params: tuple[Any, ...] = (ahead,)
    else:
        query = """
            SELECT * FROM asset_events_ensure_partitions_range(
                %s::date,
                greatest(%s::date, (date_trunc('month', now() AT TIME ZONE 'UTC')
                                    + make_interval(months => %s))::date))
        """
        params = (from_month, from_month, ahead)
    with conn.transaction():
        rows = conn.execute(query, params).fetchall()
    return [CreatedPartition(str(r[0]), r[1], r[2], int(r[3])) for r in rows]


# -- command line -----------------------------------------------------------------------------


def _month(text: str) -> dt.date:
    try:
        return dt.datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a month in YYYY-MM form: {text!r}") from None


def _ahead(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 120:
        raise argparse.ArgumentTypeError(f"--ahead must be 0..120 months, not {text!r}")
    return value


def _run_ensure(args: argparse.Namespace) -> int:
    try:
        created = ensure_partitions(database_url(args), args.ahead, from_month=args.from_month)
    except psycopg.Error as exc:
        raise FatalError(f"partition maintenance failed: {exc}") from exc
    for part in created:
        moved = (
            f", moved {part.moved_rows} rows from the DEFAULT partition" if part.moved_rows else ""
        )
        print(
            f"created {part.name} [{part.range_from.isoformat()}, "
            f"{part.range_to.isoformat()}){moved}"
        )
    if not created:
        print("all partitions present")
    return 0


def register(subparsers: Any) -> None:
    """Add ``asset-sink partitions ensure``."""
    parser = subparsers.add_parser(
        "partitions",
        help="maintain the monthly partitions of asset_events",
        description="Maintain the monthly (UTC) partitions of asset_events.",
    )
    sub = parser.add_subparsers(dest="partitions_command", required=True, metavar="ACTION")
    ensure = sub.add_parser(
        "ensure",
        help="create missing monthly partitions, moving their rows out of the DEFAULT partition",
        description="Create the partitions from --from (default: this month) through this "
        "month + --ahead, moving rows of those months out of the DEFAULT partition.",
    )
    add_database_url_option(ensure)
    ensure.add_argument(
        "--ahead",
        type=_ahead,
        default=DEFAULT_AHEAD,
        metavar="N",
        help=f"months after the current one (default {DEFAULT_AHEAD})",
    )
    ensure.add_argument(
        "--from",
        dest="from_month",
        type=_month,
        default=None,
        metavar="YYYY-MM",
        help="first month, e.g. for a backfill (needs the table owner's rights)",
    )
    ensure.set_defaults(func=_run_ensure)
