"""Migrations: ordered, recorded, idempotent, identical to a psql install, checksums enforced."""

from __future__ import annotations

import pytest

from sink.errors import FatalError
from sink.migrate import REFERENCE_FKS_FILE, apply_migrations, migrations
from tests.integration._ddl_support import (
    DDL,
    connect,
    insert_events,
    psql,
    run_cli,
    sample_events,
    schema_signature,
    sibling_db,
    table_digest,
)

NUMBERED = sorted(p.name for p in DDL.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def test_apply_migrations_twice_on_an_empty_database(any_version_db: str) -> None:
    first = apply_migrations(any_version_db)
    signature = schema_signature(any_version_db)
    second = apply_migrations(any_version_db)
    with connect(any_version_db) as conn:
        recorded = conn.execute(
            "SELECT name, checksum FROM asset_sink_migrations ORDER BY name"
        ).fetchall()
    assert first == NUMBERED
    assert second == []
    assert schema_signature(any_version_db) == signature
    assert recorded == [(m.name, m.checksum) for m in migrations()]


def test_psql_install_gives_the_same_schema_as_apply_migrations(any_version_db: str) -> None:
    apply_migrations(any_version_db)
    with sibling_db(any_version_db) as by_umbrella, sibling_db(any_version_db) as by_files:
        psql(by_umbrella, "-1", "-f", str(DDL / "all.sql"))
        for name in NUMBERED:
            psql(by_files, "-f", str(DDL / name))
        expected = schema_signature(any_version_db)
        assert schema_signature(by_umbrella) == expected
        assert schema_signature(by_files) == expected


def test_psql_install_with_reference_fks_matches_too(any_version_db: str) -> None:
    apply_migrations(any_version_db, with_reference_fks=True)
    with sibling_db(any_version_db) as other:
        psql(other, "-1", "-f", str(DDL / "all.sql"))
        psql(other, "-1", "-f", str(DDL / REFERENCE_FKS_FILE))
        assert schema_signature(other) == schema_signature(any_version_db)


def test_reapplying_everything_on_a_populated_database_changes_nothing(
    any_version_db: str,
) -> None:
    apply_migrations(any_version_db, with_reference_fks=True)
    with connect(any_version_db) as conn:
        task_ids = {e["task_id"] for e in sample_events() if e.get("task_id")}
        conn.execute(
            "INSERT INTO task_orders (task_id) SELECT unnest(%s::uuid[])", (list(task_ids),)
        )
        insert_events(conn, sample_events())
        conn.execute("INSERT INTO asset_event_ids SELECT event_id, occurred_at FROM asset_events")
        conn.commit()
        data = table_digest(conn), table_digest(conn, "asset_event_ids")
    signature = schema_signature(any_version_db)

    psql(any_version_db, "-1", "-f", str(DDL / "all.sql"))
    psql(any_version_db, "-1", "-f", str(DDL / REFERENCE_FKS_FILE))
    for name in NUMBERED:
        psql(any_version_db, "-f", str(DDL / name))
    assert apply_migrations(any_version_db, with_reference_fks=True) == []

    with connect(any_version_db) as conn:
        assert (table_digest(conn), table_digest(conn, "asset_event_ids")) == data
        assert data[0][0] == len(sample_events())
    assert schema_signature(any_version_db) == signature


def test_migrating_a_psql_installed_database_records_the_files(any_version_db: str) -> None:
    psql(any_version_db, "-1", "-f", str(DDL / "all.sql"))
    signature = schema_signature(any_version_db)
    assert apply_migrations(any_version_db) == NUMBERED
    assert apply_migrations(any_version_db) == []
    assert schema_signature(any_version_db) == signature


def test_reference_fks_are_applied_later_on_request_only(any_version_db: str) -> None:
    apply_migrations(any_version_db)
    with connect(any_version_db) as conn:
        none = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'fk_asset_events_%'"
        ).fetchone()
    assert none == (0,)
    assert apply_migrations(any_version_db, with_reference_fks=True) == [REFERENCE_FKS_FILE]
    assert apply_migrations(any_version_db) == []
    with connect(any_version_db) as conn:
        setting = conn.execute(
            "SELECT value FROM asset_sink_settings WHERE name = 'reference_fks'"
        ).fetchone()
    assert setting == ("on",)


def test_a_changed_migration_is_refused_naming_the_file(any_version_db: str) -> None:
    apply_migrations(any_version_db)
    with connect(any_version_db) as conn:
        conn.execute(
            "UPDATE asset_sink_migrations SET checksum = repeat('0', 64) "
            "WHERE name = '0004_traces.sql'"
        )
        conn.execute("DELETE FROM asset_sink_migrations WHERE name = '0007_roles.sql'")
    with pytest.raises(FatalError, match=r"0004_traces\.sql"):
        apply_migrations(any_version_db)
    with connect(any_version_db) as conn:
        pending = conn.execute(
            "SELECT count(*) FROM asset_sink_migrations WHERE name = '0007_roles.sql'"
        ).fetchone()
    assert pending == (0,)  # refused before applying anything


def test_cli_migrate_reads_the_url_from_the_environment_and_prints_what_it_applied(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SINK_DATABASE_URL", fresh_db)
    assert run_cli(["migrate"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"applied {name}" for name in NUMBERED]
    assert run_cli(["migrate", "--with-reference-fks"]) == 0
    assert capsys.readouterr().out == f"applied {REFERENCE_FKS_FILE}\n"
    assert run_cli(["migrate"]) == 0
    assert capsys.readouterr().out == "database is up to date\n"


def test_cli_migrate_without_a_database_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SINK_DATABASE_URL", raising=False)
    assert run_cli(["migrate"]) == 2
    assert "SINK_DATABASE_URL" in capsys.readouterr().err
