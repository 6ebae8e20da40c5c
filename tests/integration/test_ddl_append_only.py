"""Append-only: UPDATE, DELETE and TRUNCATE are refused everywhere, with a reason and a way out."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest
from psycopg import errors

from sink.migrate import apply_migrations
from sink.partitions import ensure_partitions
from tests.integration._ddl_support import connect, event, insert_events, table_digest

APPEND_ONLY = "55000"  # object_not_in_prerequisite_state


@pytest.fixture
def db(any_version_db: str) -> str:
    """Migrated, with one event this month and one in the DEFAULT partition."""
    apply_migrations(any_version_db)
    with connect(any_version_db) as conn:
        # now(): always in this month's partition (an hour ago may be last month, in DEFAULT).
        insert_events(conn, [event(occurred_at="now()"), event(occurred_at="2035-07-04T12:00:00Z")])
        conn.execute(
            "INSERT INTO asset_event_ids (event_id, occurred_at) "
            "SELECT event_id, occurred_at FROM asset_events"
        )
    return any_version_db


def _this_month_partition(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT tableoid::regclass::text FROM asset_events WHERE occurred_at < '2035-01-01'"
    ).fetchone()
    assert row is not None and row[0].startswith("asset_events_p")
    return str(row[0])


def _refused(conn: psycopg.Connection[Any], statement: str) -> errors.Diagnostic:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(statement)
    conn.rollback()
    assert info.value.sqlstate == APPEND_ONLY, info.value
    return info.value.diag


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE asset_events SET severity = 'info'",
        "DELETE FROM asset_events",
        "UPDATE asset_events SET task_id = NULL",  # only the FK action may null a reference
        "UPDATE {partition} SET severity = 'info'",
        "DELETE FROM {partition}",
        "UPDATE asset_events_default SET severity = 'info'",
        "DELETE FROM asset_events_default",
        "TRUNCATE asset_events",
        "TRUNCATE {partition}",
        "TRUNCATE asset_events_default",
        "TRUNCATE asset_events CASCADE",
        "UPDATE asset_event_ids SET occurred_at = now()",
        "DELETE FROM asset_event_ids",
        "TRUNCATE asset_event_ids",
    ],
)
def test_changing_history_is_refused_with_the_reason_and_the_alternative(
    db: str, statement: str
) -> None:
    with connect(db) as conn:
        before = table_digest(conn), table_digest(conn, "asset_event_ids")
        diag = _refused(conn, statement.format(partition=_this_month_partition(conn)))
        after = table_digest(conn), table_digest(conn, "asset_event_ids")
    assert "append-only" in (diag.message_primary or "")
    assert "compensation event" in (diag.message_hint or "")
    assert before == after and before[0][0] == 2


def test_partitions_created_later_are_guarded_too(db: str) -> None:
    with connect(db) as conn:
        created = ensure_partitions(conn, 0, from_month=dt.date(2030, 2, 1))
        conn.commit()
        assert created and created[0].name == "asset_events_p203002"
        insert_events(conn, [event(occurred_at="2030-02-10T00:00:00Z")])
        conn.commit()
        _refused(conn, "UPDATE asset_events_p203002 SET severity = 'info'")
        _refused(conn, "DELETE FROM asset_events_p203002")
        _refused(conn, "TRUNCATE asset_events_p203002")


def test_partition_created_by_hand_is_guarded_against_truncate(db: str) -> None:
    with connect(db, autocommit=True) as conn:
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert superuser.fetchone() == (True,), "the event trigger needs a superuser"
        conn.execute(
            "CREATE TABLE by_hand PARTITION OF asset_events "
            "FOR VALUES FROM ('2040-01-01Z') TO ('2040-02-01Z')"
        )
        insert_events(conn, [event(occurred_at="2040-01-15T00:00:00Z")])
        with pytest.raises(psycopg.Error) as info:
            conn.execute("TRUNCATE by_hand")
        assert info.value.sqlstate == APPEND_ONLY
        with pytest.raises(psycopg.Error) as info:
            conn.execute("DELETE FROM by_hand")
        assert info.value.sqlstate == APPEND_ONLY
        assert conn.execute("SELECT count(*) FROM by_hand").fetchone() == (1,)


def test_maintenance_setting_does_not_open_monthly_partitions(db: str) -> None:
    with connect(db) as conn:
        conn.execute("SET asset_events.maintenance = 'move_from_default'")
        _refused(conn, f"DELETE FROM {_this_month_partition(conn)}")
        conn.execute("SET asset_events.maintenance = 'move_from_default'")
        _refused(conn, "DELETE FROM asset_events")  # the monthly row blocks it
        conn.execute("SET asset_events.maintenance = 'move_from_default'")
        _refused(conn, "UPDATE asset_events_default SET severity = 'info'")


def test_referential_set_null_is_the_only_update_let_through(db: str) -> None:
    """An UPDATE from inside another trigger that changes more than the reference is refused."""
    with connect(db) as conn:
        conn.execute(
            """
            CREATE TABLE sneaky (id int);
            CREATE FUNCTION sneaky_update() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE asset_events SET task_id = NULL, severity = 'info';
                RETURN NEW;
            END $$;
            CREATE TRIGGER sneaky AFTER INSERT ON sneaky
                FOR EACH ROW EXECUTE FUNCTION sneaky_update();
            """
        )
        conn.commit()
        diag = _refused(conn, "INSERT INTO sneaky VALUES (1)")
    assert "UPDATE" in (diag.message_primary or "")
