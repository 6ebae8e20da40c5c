"""Roles: the writer can only read and append; the reader only sees the views and the trace."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import errors

from sink.migrate import apply_migrations
from tests.integration._ddl_support import (
    connect,
    event,
    insert_events,
    sibling_db,
    table_digest,
)


@pytest.fixture
def db(any_version_db: str) -> str:
    apply_migrations(any_version_db)
    with connect(any_version_db) as conn:
        insert_events(conn, [event(), event(occurred_at="2035-07-04T12:00:00Z")])
    return any_version_db


def _as(conn: psycopg.Connection[Any], role: str) -> None:
    conn.execute(f"SET ROLE {role}")


def test_roles_exist_and_cannot_log_in(db: str) -> None:
    with connect(db) as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper FROM pg_roles "
            "WHERE rolname IN ('asset_sink_writer', 'asset_events_reader') ORDER BY 1"
        ).fetchall()
    assert rows == [("asset_events_reader", False, False), ("asset_sink_writer", False, False)]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE asset_events SET severity = 'info'",
        "DELETE FROM asset_events",
        "TRUNCATE asset_events",
        "UPDATE asset_events_default SET severity = 'info'",
        "DELETE FROM asset_events_default",
        "TRUNCATE asset_events_default",
        "UPDATE asset_event_ids SET occurred_at = now()",
        "DELETE FROM asset_event_ids",
        "TRUNCATE asset_event_ids",
        "SELECT * FROM asset_events_ensure_partitions_range('2030-01-01', '2030-02-01')",
        "SELECT * FROM view_error_patterns",
        "ALTER TABLE asset_events DISABLE TRIGGER asset_events_append_only",
        "DROP TRIGGER asset_events_append_only ON asset_events",
    ],
)
def test_writer_role_has_no_privilege_to_change_history(db: str, statement: str) -> None:
    with connect(db) as conn:
        before = table_digest(conn)
        _as(conn, "asset_sink_writer")
        # Even the maintenance setting does not help a role that is not the owner.
        conn.execute("SET asset_events.maintenance = 'move_from_default'")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(statement)
        conn.rollback()
        assert table_digest(conn) == before


def test_writer_role_can_append_read_check_references_and_ensure_partitions(db: str) -> None:
    with connect(db) as conn:
        _as(conn, "asset_sink_writer")
        insert_events(conn, [event(event_id="6f1c8a52-3f4e-4a59-9d55-0d8f6a1c2b7e")])
        conn.execute(
            "INSERT INTO asset_event_ids (event_id, occurred_at) VALUES "
            "('6f1c8a52-3f4e-4a59-9d55-0d8f6a1c2b7e', now()) ON CONFLICT DO NOTHING"
        )
        conn.execute("SELECT count(*) FROM task_orders").fetchone()
        conn.execute("SELECT count(*) FROM leases").fetchone()
        created = conn.execute("SELECT * FROM asset_events_ensure_partitions(6)").fetchall()
        conn.commit()
        assert conn.execute("SELECT count(*) FROM asset_events").fetchone() == (3,)
    assert [r[0][-6:] for r in created] == sorted(r[0][-6:] for r in created)
    assert len(created) == 3  # months +4 .. +6; the others existed


def test_reader_role_reads_views_and_traces_but_not_the_table(db: str) -> None:
    with connect(db) as conn:
        _as(conn, "asset_events_reader")
        conn.execute("SELECT * FROM asset_event_traces").fetchall()
        conn.execute("SELECT * FROM view_provider_performance").fetchall()
        conn.execute("SELECT * FROM view_error_patterns").fetchall()
        conn.execute(
            "SELECT * FROM trace_asset_events('00000000-0000-0000-0000-000000000001')"
        ).fetchall()
        for statement in (
            "SELECT * FROM asset_events",
            "INSERT INTO asset_events (event_id) VALUES (gen_random_uuid())",
            "SELECT * FROM asset_events_ensure_partitions(3)",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
            _as(conn, "asset_events_reader")


def test_functions_are_not_executable_by_public(db: str) -> None:
    with connect(db) as conn:
        public = conn.execute(
            """
            SELECT p.proname FROM pg_proc p
            WHERE p.pronamespace = 'public'::regnamespace
              AND p.prorettype <> 'trigger'::regtype
              AND p.prorettype <> 'event_trigger'::regtype
              AND has_function_privilege('public', p.oid, 'EXECUTE')
              AND p.proname IN ('asset_events_ensure_partitions',
                                'asset_events_ensure_partitions_range',
                                'asset_events_validate_references',
                                'asset_events_apply_reference_fks',
                                'asset_events_guard_partitions', 'trace_asset_events')
            """
        ).fetchall()
    assert public == []


def test_roles_migration_is_harmless_in_a_second_database_of_the_cluster(db: str) -> None:
    """Roles are cluster-wide: another database migrates without tripping over them."""
    with sibling_db(db) as other:
        apply_migrations(other)
        with connect(other) as conn:
            grants = conn.execute(
                "SELECT has_table_privilege('asset_sink_writer', 'asset_events', 'INSERT'), "
                "has_table_privilege('asset_sink_writer', 'asset_events', 'UPDATE')"
            ).fetchone()
    assert grants == (True, False)
