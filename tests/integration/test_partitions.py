"""Partition maintenance: months created ahead, DEFAULT rows moved without loss or duplicates."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import errors

from sink.migrate import apply_migrations
from sink.partitions import ensure_partitions
from tests.integration._ddl_support import (
    connect,
    event,
    insert_events,
    major,
    run_cli,
    table_digest,
)


@pytest.fixture
def db(any_version_db: str) -> str:
    apply_migrations(any_version_db)
    return any_version_db


def _months_from_now(conn: psycopg.Connection[Any], months: int) -> dt.date:
    row = conn.execute(
        "SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') "
        "+ make_interval(months => %s))::date",
        (months,),
    ).fetchone()
    assert row is not None
    month: dt.date = row[0]
    return month


def _at(month: dt.date, day: int) -> str:
    return f"{month:%Y-%m}-{day:02d}T12:00:00Z"


def _placement(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT tableoid::regclass::text, count(*) FROM asset_events GROUP BY 1"
    ).fetchall()
    return {str(name): int(count) for name, count in rows}


def test_ensure_creates_this_month_and_the_months_ahead_then_nothing(db: str) -> None:
    with connect(db) as conn:
        first = ensure_partitions(conn, ahead=5)
        again = ensure_partitions(conn, ahead=5)
        start = _months_from_now(conn, 4)
    assert [p.name for p in first] == [
        f"asset_events_p{start:%Y%m}",
        f"asset_events_p{_add_month(start):%Y%m}",
    ]
    assert first[0].range_from == dt.datetime(start.year, start.month, 1, tzinfo=dt.UTC)
    assert first[0].range_to == first[1].range_from
    assert again == []


def _add_month(day: dt.date) -> dt.date:
    return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def test_naive_partition_creation_fails_while_the_default_partition_holds_its_rows(
    db: str,
) -> None:
    """The trap the maintenance function exists for."""
    with connect(db) as conn:
        month = _months_from_now(conn, 6)
        insert_events(conn, [event(occurred_at=_at(month, 3))])
        conn.commit()
        with pytest.raises(errors.CheckViolation):
            conn.execute(
                f"CREATE TABLE naive PARTITION OF asset_events FOR VALUES "
                f"FROM ('{month:%Y-%m-%d}Z') TO ('{_add_month(month):%Y-%m-%d}Z')"
            )


def test_ensure_moves_default_rows_into_new_partitions_without_loss_or_duplicates(
    db: str,
) -> None:
    with connect(db) as conn:
        m6, m7 = _months_from_now(conn, 6), _months_from_now(conn, 7)
        rows = (
            [event(occurred_at=_at(m6, d % 28 + 1), asset_id=f"a{d}") for d in range(40)]
            + [event(occurred_at=_at(m7, 1), task_id=None)]
            + [event(occurred_at="2041-03-03T03:03:03Z")]  # stays in the DEFAULT partition
        )
        insert_events(conn, rows)
        # The first and last instants of the month, to pin the bounds.
        insert_events(
            conn,
            [
                event(occurred_at=f"{m6:%Y-%m-%d}T00:00:00Z"),
                event(occurred_at=f"{_add_month(m6):%Y-%m-%d}T00:00:00Z"),  # that is m7
            ],
        )
        conn.commit()
        before = table_digest(conn)
        assert _placement(conn) == {"asset_events_default": 44}

        created = ensure_partitions(conn, ahead=7)

        after = table_digest(conn)
        placement = _placement(conn)
        distinct = conn.execute("SELECT count(DISTINCT event_id) FROM asset_events").fetchone()
    moved = {p.name: p.moved_rows for p in created}
    assert moved == {
        f"asset_events_p{_months_from_now_static(m6, -2):%Y%m}": 0,
        f"asset_events_p{_months_from_now_static(m6, -1):%Y%m}": 0,
        f"asset_events_p{m6:%Y%m}": 41,
        f"asset_events_p{m7:%Y%m}": 2,
    }
    assert after == before
    assert distinct == (44,)
    assert placement == {
        f"asset_events_p{m6:%Y%m}": 41,
        f"asset_events_p{m7:%Y%m}": 2,
        "asset_events_default": 1,
    }


def _months_from_now_static(month: dt.date, delta: int) -> dt.date:
    total = month.year * 12 + month.month - 1 + delta
    return dt.date(total // 12, total % 12 + 1, 1)


def test_partition_built_from_default_rows_has_indexes_guards_and_fks(db: str) -> None:
    apply_migrations(db, with_reference_fks=True)
    with connect(db) as conn:
        month = _months_from_now(conn, 9)
        insert_events(conn, [event(occurred_at=_at(month, 2))])
        conn.commit()
        ensure_partitions(conn, 0, from_month=month)
        name = f"asset_events_p{month:%Y%m}"
        indexes = conn.execute(
            "SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass", (name,)
        ).fetchone()
        parent_indexes = conn.execute(
            "SELECT count(*) FROM pg_index WHERE indrelid = 'asset_events'::regclass"
        ).fetchone()
        fks = conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f' "
            "ORDER BY 1",
            (name,),
        ).fetchall()
        conn.commit()
        for statement in (
            f"UPDATE {name} SET env = 'x'",
            f"DELETE FROM {name}",
            f"TRUNCATE {name}",
        ):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(statement)
            conn.rollback()
            assert info.value.sqlstate == "55000"
    assert indexes == parent_indexes
    assert fks == [("fk_asset_events_lease",), ("fk_asset_events_task",)]


def test_default_rows_with_unchecked_references_move_when_fks_are_enabled(db: str) -> None:
    """Rows stored before the NOT VALID FKs existed are moved, not re-checked (15 and 18)."""
    with connect(db) as conn:
        month = _months_from_now(conn, 6)
        insert_events(
            conn,
            [
                event(
                    occurred_at=_at(month, 5),
                    task_id="00000000-0000-0000-0000-0000000000aa",
                    lease_id="00000000-0000-0000-0000-0000000000bb",
                ),
            ],
        )
        conn.commit()
    apply_migrations(db, with_reference_fks=True)
    with connect(db) as conn:
        created = ensure_partitions(conn, ahead=6)
        name = f"asset_events_p{month:%Y%m}"
        state = conn.execute(
            "SELECT conname, convalidated FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY 1",
            (name,),
        ).fetchall()
        placement = _placement(conn)
        server = major(conn)
    assert {p.name: p.moved_rows for p in created}[name] == 1
    assert placement == {name: 1}
    assert state == [("fk_asset_events_lease", False), ("fk_asset_events_task", False)], server


def test_partition_bounds_are_utc_months_whatever_the_session_time_zone(db: str) -> None:
    with connect(db) as conn:
        conn.execute("SET TimeZone = 'Pacific/Kiritimati'")  # UTC+14
        conn.execute("SET DateStyle = 'SQL, DMY'")  # psycopg cannot read it: names only
        created = conn.execute(
            "SELECT partition_name FROM asset_events_ensure_partitions_range('2030-01-01', "
            "'2030-01-01')"
        ).fetchall()
        conn.execute("SET DateStyle = 'ISO'")
        bounds = conn.execute(
            "SELECT lower_bound, upper_bound FROM asset_events_partitions() "
            "WHERE partition = 'asset_events_p203001'::regclass"
        ).fetchone()
    assert created == [("asset_events_p203001",)]
    assert bounds == (
        dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2030, 2, 1, tzinfo=dt.UTC),
    )


def test_a_month_partly_covered_by_a_hand_made_partition_is_refused_clearly(db: str) -> None:
    with connect(db) as conn:
        conn.execute(
            "CREATE TABLE half_month PARTITION OF asset_events "
            "FOR VALUES FROM ('2032-05-01Z') TO ('2032-05-16Z')"
        )
        conn.commit()
        with pytest.raises(errors.InvalidObjectDefinition) as info:
            ensure_partitions(conn, 0, from_month=dt.date(2032, 5, 1))
    assert "half_month" in str(info.value)


def test_cli_ensure_backfills_from_a_month_and_reports_what_it_did(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with connect(db) as conn:
        insert_events(conn, [event(occurred_at="2025-02-14T00:00:00Z")])
        conn.commit()
        last = _months_from_now(conn, -1)  # this month and after: made by the migration
    code = run_cli(
        ["partitions", "ensure", "--database-url", db, "--from", "2025-01", "--ahead", "1"]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith("created asset_events_p202501 [2025-01-01T00:00:00+00:00, ")
    assert out[1] == (
        "created asset_events_p202502 [2025-02-01T00:00:00+00:00, 2025-03-01T00:00:00+00:00)"
        ", moved 1 rows from the DEFAULT partition"
    )
    assert out[-1].startswith(f"created asset_events_p{last:%Y%m} ")
    assert run_cli(["partitions", "ensure", "--database-url", db, "--ahead", "1"]) == 0
    assert capsys.readouterr().out == "all partitions present\n"


def test_ensure_rejects_an_unreasonable_horizon(db: str) -> None:
    with connect(db) as conn, pytest.raises(errors.InvalidParameterValue):
        conn.execute("SELECT * FROM asset_events_ensure_partitions(1000)")


def test_writer_role_moves_default_rows_through_the_security_definer_function(db: str) -> None:
    with connect(db) as conn:
        month = _months_from_now(conn, 5)
        insert_events(conn, [event(occurred_at=_at(month, 9))])
        conn.commit()
        conn.execute("SET ROLE asset_sink_writer")
        created = conn.execute(
            "SELECT partition_name, moved_rows FROM asset_events_ensure_partitions(5)"
        ).fetchall()
        conn.commit()
        conn.execute("RESET ROLE")
        placement = _placement(conn)
        before = _months_from_now(conn, 4)
    assert created == [(f"asset_events_p{before:%Y%m}", 0), (f"asset_events_p{month:%Y%m}", 1)]
    assert placement == {f"asset_events_p{month:%Y%m}": 1}


def test_concurrent_ensure_calls_wait_for_each_other_and_move_each_row_once(db: str) -> None:
    with connect(db) as setup:
        month = _months_from_now(setup, 6)
        insert_events(setup, [event(occurred_at=_at(month, d)) for d in range(1, 11)])
        setup.commit()
        before = table_digest(setup)
    second: list[Any] = []
    with connect(db) as first, connect(db) as other:
        moved_first = first.execute(
            "SELECT partition_name, moved_rows FROM asset_events_ensure_partitions(6)"
        ).fetchall()  # transaction left open: holds the lock
        other_pid = other.info.backend_pid

        def call() -> None:
            second.extend(ensure_partitions(other, ahead=6))

        thread = threading.Thread(target=call)
        thread.start()
        deadline = time.monotonic() + 10
        while True:
            waiting = first.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (other_pid,)
            ).fetchone()
            if waiting == ("Lock",) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        first.commit()
        thread.join(timeout=30)
    assert waiting == ("Lock",)
    assert not thread.is_alive()
    assert (f"asset_events_p{month:%Y%m}", 10) in moved_first
    assert second == []
    with connect(db) as conn:
        assert table_digest(conn) == before
        assert _placement(conn) == {f"asset_events_p{month:%Y%m}": 10}
