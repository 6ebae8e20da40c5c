"""Apply the SQL migrations in ``ddl/`` and record them.

The migrations are the plain SQL files ``ddl/NNNN_*.sql`` (runnable one by one with
``psql -f``, or all at once through ``ddl/all.sql``), applied in name order, plus the opt-in
``ddl/optional/reference_fks.sql`` when asked for. :func:`apply_migrations` runs each file
that is not yet recorded in ``asset_sink_migrations`` in its own transaction, together with
the row that records it (name, SHA-256 of the file, time), so a file is either applied and
recorded or neither. A recorded file whose checksum has changed is refused: a migration that
ran is history and must not be edited; write a new file instead.

Every file is idempotent as well, so a database installed with ``psql -f ddl/all.sql`` and
migrated afterwards (every file then runs once more and gets recorded) ends up the same.
Concurrent runs against one database serialise on an advisory lock.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from sink import _paths
from sink.errors import FatalError

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "asset_sink_migrations"
REFERENCE_FKS_FILE = "optional/reference_fks.sql"
DATABASE_URL_ENV = "SINK_DATABASE_URL"
# Serialises concurrent migration runs on one database (any constant unique to this tool).
_ADVISORY_LOCK_KEY = 0x6173_7365_7473_696E  # "assetsin"

_CREATE_MIGRATIONS_TABLE = b"""
CREATE TABLE IF NOT EXISTS asset_sink_migrations (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file: ``name`` is its path relative to ``ddl/`` (e.g. ``0001_asset_events.sql``)."""

    name: str
    sql: bytes

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's bytes, hex."""
        return hashlib.sha256(self.sql).hexdigest()


def migrations(*, with_reference_fks: bool = False, ddl_dir: Path | None = None) -> list[Migration]:
    """The migrations to apply, in order: ``NNNN_*.sql`` by name, then the optional FK file.

    ``ddl/all.sql`` (the psql umbrella, which uses ``\\ir``) is not one of them.
    """
    root = ddl_dir or _paths.ddl_dir()
    files = sorted(p for p in root.glob("[0-9][0-9][0-9][0-9]_*.sql") if p.is_file())
    if not files:
        raise FatalError(f"no migration files in {root}")
    found = [Migration(p.name, p.read_bytes()) for p in files]
    if with_reference_fks:
        found.append(Migration(REFERENCE_FKS_FILE, (root / REFERENCE_FKS_FILE).read_bytes()))
    return found


def apply_migrations(url: str, *, with_reference_fks: bool = False) -> list[str]:
    """Apply every migration not yet recorded in ``url``'s database; return their names.

    Each file runs in its own transaction with its record. Blocks while another run holds
    the migration lock. Raises :class:`FatalError` when a recorded file's checksum differs
    from the file (naming the file), when a file fails (naming it, with PostgreSQL's
    message; that file's changes are rolled back, earlier files stay applied) or when the
    database cannot be reached.
    """
    pending = migrations(with_reference_fks=with_reference_fks)
    try:
        conn = psycopg.connect(url, autocommit=True, application_name="asset-sink migrate")
    except psycopg.Error as exc:
        raise FatalError(f"cannot connect to PostgreSQL to migrate: {exc}") from exc
    applied: list[str] = []
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
        try:
            conn.execute(_CREATE_MIGRATIONS_TABLE)
            recorded = _recorded(conn)
            _check_checksums(pending, recorded)
            for migration in pending:
                if migration.name in recorded:
                    continue
                _apply_one(conn, migration)
                applied.append(migration.name)
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    return applied


def _recorded(conn: psycopg.Connection[Any]) -> dict[str, str]:
    rows = conn.execute("SELECT name, checksum FROM asset_sink_migrations").fetchall()
    return {str(name): str(checksum) for name, checksum in rows}


def _check_checksums(pending: Iterable[Migration], recorded: dict[str, str]) -> None:
    for migration in pending:
        stored = recorded.get(migration.name)
        if stored is not None and stored != migration.checksum:
            raise FatalError(
                f"migration {migration.name} was applied with checksum {stored} but the file "
                f"now has {migration.checksum}: an applied migration must not change; restore "
                "the file and put the change in a new migration"
            )


def _apply_one(conn: psycopg.Connection[Any], migration: Migration) -> None:
    log.info("applying %s", migration.name, extra={"action": "migrate", "file": migration.name})
    try:
        with conn.transaction():
            # No parameters: psycopg sends the whole file with the simple query protocol, so
            # it may hold several statements, exactly as psql runs it.
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO asset_sink_migrations (name, checksum) VALUES (%s, %s)",
                (migration.name, migration.checksum),
            )
    except psycopg.Error as exc:
        raise FatalError(f"migration {migration.name} failed: {exc}") from exc


# -- command line -----------------------------------------------------------------------------


def add_database_url_option(parser: argparse.ArgumentParser) -> None:
    """``--database-url``, defaulting to ``$SINK_DATABASE_URL`` (resolved when run)."""
    parser.add_argument(
        "--database-url",
        default=None,
        metavar="URL",
        help=f"PostgreSQL URL or conninfo [${DATABASE_URL_ENV}]",
    )


def database_url(args: argparse.Namespace) -> str:
    """The URL given by ``--database-url`` or ``$SINK_DATABASE_URL``; FatalError if neither."""
    url: str | None = args.database_url or os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise FatalError(f"no database: pass --database-url or set {DATABASE_URL_ENV}")
    return url


def _run(args: argparse.Namespace) -> int:
    applied = apply_migrations(database_url(args), with_reference_fks=args.with_reference_fks)
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("database is up to date")
    return 0


def register(subparsers: Any) -> None:
    """Add ``asset-sink migrate``."""
    parser = subparsers.add_parser(
        "migrate",
        help="create or upgrade the database schema",
        description="Apply the SQL migrations not yet applied, each in its own transaction.",
    )
    add_database_url_option(parser)
    parser.add_argument(
        "--with-reference-fks",
        action="store_true",
        help="also add fk_asset_events_task / fk_asset_events_lease (NOT VALID, DEFERRABLE, "
        "ON DELETE SET NULL); validate them later with `asset-sink validate-references`",
    )
    parser.set_defaults(func=_run)
