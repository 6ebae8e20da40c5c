"""Reference FKs: NOT VALID on 15 and 18, enforced for new rows, SET NULL under append-only,
validated later with orphans reported."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import errors

from sink.migrate import apply_migrations
from sink.partitions import ensure_partitions
from sink.references import validate_references
from tests.integration._ddl_support import (
    INDEX_SCANS,
    AutoExplain,
    connect,
    event,
    insert_events,
    major,
    run_cli,
    scans_by_relation,
    seed_sql_blocks,
    statements,
)

FKS = ("fk_asset_events_lease", "fk_asset_events_task")


@pytest.fixture
def db(any_version_db: str) -> str:
    apply_migrations(any_version_db, with_reference_fks=True)
    return any_version_db


def _fk_rows(conn: psycopg.Connection[Any]) -> list[tuple[str, str, bool, bool]]:
    """(relation, constraint, validated, inherited from the parent) for every reference FK."""
    return [
        (str(r[0]), str(r[1]), bool(r[2]), bool(r[3]))
        for r in conn.execute(
            """
            SELECT c.conrelid::regclass::text, c.conname, c.convalidated, c.conparentid <> 0
            FROM pg_constraint c
            WHERE c.contype = 'f' AND c.conname IN ('fk_asset_events_task', 'fk_asset_events_lease')
            ORDER BY 1, 2
            """
        ).fetchall()
    ]


def _leaves(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT relid::regclass::text FROM pg_partition_tree('asset_events') WHERE isleaf "
            "ORDER BY 1"
        ).fetchall()
    ]


def test_fks_are_not_valid_deferrable_set_null_where_the_server_allows_them(db: str) -> None:
    with connect(db) as conn:
        rows = _fk_rows(conn)
        leaves = _leaves(conn)
        definitions = {
            str(r[0])
            for r in conn.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = ANY(%s)",
                (list(FKS),),
            ).fetchall()
        }
        on_parent = major(conn) >= 18
    expected = [(leaf, fk, False, on_parent) for leaf in leaves for fk in FKS]
    if on_parent:
        expected += [("asset_events", fk, False, False) for fk in FKS]
    assert sorted(rows) == sorted(expected)
    assert definitions == {
        "FOREIGN KEY (task_id) REFERENCES task_orders(task_id) ON DELETE SET NULL DEFERRABLE "
        "NOT VALID",
        "FOREIGN KEY (lease_id) REFERENCES leases(lease_id) ON DELETE SET NULL DEFERRABLE "
        "NOT VALID",
    }


def test_new_partitions_get_the_fks(db: str) -> None:
    with connect(db) as conn:
        created = ensure_partitions(conn, 0, from_month=dt.date(2030, 3, 1))
        fks = conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'asset_events_p203003'::regclass "
            "AND contype = 'f' ORDER BY 1"
        ).fetchall()
    assert [p.name for p in created] == ["asset_events_p203003"]
    assert fks == [(fk,) for fk in FKS]


def test_not_valid_still_checks_every_new_row(db: str) -> None:
    with connect(db) as conn:
        for column, fk in (
            ("task_id", "fk_asset_events_task"),
            ("lease_id", "fk_asset_events_lease"),
        ):
            with pytest.raises(errors.ForeignKeyViolation) as info:
                insert_events(conn, [event(**{column: str(uuid.uuid4())})])
            conn.rollback()
            assert info.value.diag.constraint_name == fk
        # In the DEFAULT partition too.
        with pytest.raises(errors.ForeignKeyViolation):
            insert_events(conn, [event(task_id=str(uuid.uuid4()), occurred_at="2039-01-01Z")])


def test_deferred_fk_fails_at_commit_and_takes_the_whole_batch_with_it(db: str) -> None:
    task = str(uuid.uuid4())
    with connect(db) as conn:
        conn.execute("INSERT INTO task_orders (task_id) VALUES (%s)", (task,))
        conn.commit()
        conn.execute("SET CONSTRAINTS fk_asset_events_task DEFERRED")
        insert_events(conn, [event(task_id=task)] * 1 + [event(task_id=str(uuid.uuid4()))])
        # Both inserts succeeded; the orphan is only found at COMMIT.
        with pytest.raises(errors.ForeignKeyViolation):
            conn.commit()
        assert conn.execute("SELECT count(*) FROM asset_events").fetchone() == (0,)


def test_deleting_a_task_or_lease_sets_the_reference_null_despite_append_only(db: str) -> None:
    task, lease = str(uuid.uuid4()), str(uuid.uuid4())
    with connect(db) as conn:
        conn.execute("INSERT INTO task_orders (task_id) VALUES (%s)", (task,))
        conn.execute("INSERT INTO leases (lease_id) VALUES (%s)", (lease,))
        insert_events(
            conn,
            [
                event(task_id=task, lease_id=lease, severity="error", payload={"k": [1, 2]}),
                event(task_id=task, lease_id=lease, occurred_at="2038-08-08T08:08:08Z"),  # DEFAULT
            ],
        )
        conn.commit()
        before = conn.execute(
            "SELECT to_jsonb(e) - 'task_id' - 'lease_id' FROM asset_events e ORDER BY occurred_at"
        ).fetchall()

        conn.execute("DELETE FROM task_orders WHERE task_id = %s", (task,))
        conn.commit()
        after_task = conn.execute("SELECT task_id, lease_id::text FROM asset_events").fetchall()
        conn.execute("DELETE FROM leases WHERE lease_id = %s", (lease,))
        conn.commit()
        after = conn.execute(
            "SELECT to_jsonb(e) - 'task_id' - 'lease_id', task_id, lease_id "
            "FROM asset_events e ORDER BY occurred_at"
        ).fetchall()
    assert after_task == [(None, lease), (None, lease)]
    assert after == [(row[0], None, None) for row in before]


def test_lease_delete_finds_referencing_rows_through_the_lease_index(db: str) -> None:
    lease = str(uuid.uuid4())
    with connect(db) as conn:
        conn.execute(
            "INSERT INTO leases (lease_id) SELECT md5(i::text)::uuid FROM generate_series(0, 999) i"
        )
        conn.execute("INSERT INTO leases (lease_id) VALUES (%s)", (lease,))
        conn.execute(
            """
            INSERT INTO asset_events (event_id, tenant_id, asset_id, event_type, occurred_at,
                                      recorded_at, version, lease_id)
            SELECT gen_random_uuid(), 't', 'a', 'lease.used', now() - interval '1 hour', now(),
                   '1.0', md5((i % 1000)::text)::uuid
            FROM generate_series(1, 6000) i
            """
        )
        insert_events(conn, [event(lease_id=lease)])
        conn.execute("ANALYZE asset_events")
        conn.commit()
        auto = AutoExplain(conn)
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("DELETE FROM leases WHERE lease_id = %s", (lease,))
        plans = auto.matching(r"UPDATE .*asset_events.* SET \"lease_id\" = NULL")
        nulled = conn.execute("SELECT count(*) FROM asset_events WHERE lease_id IS NULL")
        assert nulled.fetchone() == (1,)
        populated = {
            str(r[0])
            for r in conn.execute("SELECT DISTINCT tableoid::regclass::text FROM asset_events")
        }
    assert plans, [p.get("Query Text") for p in auto.plans]
    reads = {
        rel: kinds
        for plan in plans
        for rel, kinds in scans_by_relation(plan).items()
        if rel in populated
    }
    assert set(reads) == populated, reads
    assert all(kinds <= INDEX_SCANS for kinds in reads.values()), reads


def test_validate_references_reports_orphans_and_validates_clean_partitions(
    any_version_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = any_version_db
    apply_migrations(db)
    missing_task = "00000000-0000-0000-0000-0000000000aa"
    missing_lease = "00000000-0000-0000-0000-0000000000bb"
    with connect(db) as conn:
        # Stored before the FKs existed: the DEFAULT partition holds the orphans.
        insert_events(
            conn,
            [
                event(task_id=missing_task, occurred_at="2037-01-01T00:00:00Z"),
                event(task_id=missing_task, occurred_at="2037-01-02T00:00:00Z"),
                event(lease_id=missing_lease, occurred_at="2037-01-03T00:00:00Z"),
            ],
        )
        conn.commit()
    apply_migrations(db, with_reference_fks=True)

    code = run_cli(["validate-references", "--database-url", db])
    out = capsys.readouterr().out
    with connect(db) as conn:
        state = {(rel, fk): valid for rel, fk, valid, _ in _fk_rows(conn)}
        leaves = _leaves(conn)
    assert code == 1
    assert (
        f"fk_asset_events_task (task_id -> task_orders): not valid, 2 orphaned events "
        f"referencing 1 missing ids, e.g. {missing_task}"
    ) in out
    assert (
        f"fk_asset_events_lease (lease_id -> leases): not valid, 1 orphaned events "
        f"referencing 1 missing ids, e.g. {missing_lease}"
    ) in out
    assert "fk_asset_events_task on asset_events_default: NOT validated" in out
    for leaf in leaves:
        for fk in FKS:
            assert state[(leaf, fk)] == (leaf != "asset_events_default"), (leaf, fk)

    # Repair the references, validate again: everything valid, the FK now on the parent.
    with connect(db) as conn:
        conn.execute("INSERT INTO task_orders (task_id) VALUES (%s)", (missing_task,))
        conn.execute("INSERT INTO leases (lease_id) VALUES (%s)", (missing_lease,))
    report = validate_references(db)
    with connect(db) as conn:
        rows = _fk_rows(conn)
    assert report.ok
    assert {r.state for r in report.references} == {"valid"}
    assert all(valid for _, _, valid, _ in rows)
    assert {(rel, fk) for rel, fk, _, _ in rows if rel == "asset_events"} == {
        ("asset_events", fk) for fk in FKS
    }
    assert run_cli(["validate-references", "--database-url", db]) == 0


def test_orphans_are_reported_without_fks_too(any_version_db: str) -> None:
    apply_migrations(any_version_db)
    with connect(any_version_db) as conn:
        insert_events(conn, [event(task_id=str(uuid.uuid4())) for _ in range(3)])
        conn.commit()
    report = validate_references(any_version_db, sample=2)
    task = next(r for r in report.references if r.column_name == "task_id")
    assert not report.ok
    assert report.steps == ()
    assert (task.state, task.orphan_events, task.missing_ids) == ("absent", 3, 3)
    assert len(task.sample_missing_ids) == 2


def test_seed_validate_constraint_snippet_runs_verbatim(db: str) -> None:
    (block,) = [b for b in seed_sql_blocks() if "VALIDATE CONSTRAINT" in b]
    seed_statements = statements(block)
    assert [s.splitlines()[-1].strip() for s in seed_statements] == [
        "ALTER TABLE asset_events VALIDATE CONSTRAINT fk_asset_events_task",
        "ALTER TABLE asset_events VALIDATE CONSTRAINT fk_asset_events_lease",
    ]
    with connect(db, autocommit=True) as conn:
        if major(conn) < 18:
            # Before 18 the parent holds no NOT VALID FK (PostgreSQL refuses it); the FKs move
            # to the parent at the first clean `asset-sink validate-references`.
            with pytest.raises(errors.UndefinedObject):
                conn.execute(seed_statements[0])
            assert validate_references(conn).ok
        for statement in seed_statements:
            conn.execute(statement)
        parent = conn.execute(
            "SELECT conname, convalidated FROM pg_constraint "
            "WHERE conrelid = 'asset_events'::regclass AND contype = 'f' ORDER BY 1"
        ).fetchall()
    assert parent == [(fk, True) for fk in FKS]


def test_after_promotion_new_partitions_inherit_the_valid_fk(any_version_db: str) -> None:
    apply_migrations(any_version_db, with_reference_fks=True)
    assert validate_references(any_version_db).ok
    with connect(any_version_db) as conn:
        ensure_partitions(conn, 0, from_month=dt.date(2031, 4, 1))
        rows = [r for r in _fk_rows(conn) if r[0] == "asset_events_p203104"]
        with pytest.raises(errors.ForeignKeyViolation):
            insert_events(conn, [event(task_id=str(uuid.uuid4()), occurred_at="2031-04-04Z")])
    assert rows == [("asset_events_p203104", fk, True, True) for fk in FKS]
