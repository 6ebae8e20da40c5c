"""Validate the reference FKs of ``asset_events`` and report orphaned references.

``fk_asset_events_task`` and ``fk_asset_events_lease`` are added ``NOT VALID`` (see
``asset-sink migrate --with-reference-fks``): rows stored before them were never checked.
:func:`validate_references` runs ``VALIDATE CONSTRAINT`` through the SQL function
``asset_events_validate_references()`` — per partition, so one partition with orphans leaves
the others validated; on PostgreSQL before 18, where each partition holds its own copy, the
FK moves to the parent once every copy is valid — and then counts, per reference, the events
whose ``task_id`` / ``lease_id`` has no referenced row, with a sample of the missing ids.
Orphans are counted whether or not the FKs exist (a weak reference can be audited too).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg

from sink.errors import FatalError
from sink.migrate import add_database_url_option, database_url

DEFAULT_SAMPLE = 10  # missing ids shown per reference


@dataclass(frozen=True, slots=True)
class ValidationStep:
    """One ``VALIDATE CONSTRAINT`` (or promotion to the parent) and how it went."""

    constraint_name: str
    relation: str
    validated: bool
    detail: str | None


@dataclass(frozen=True, slots=True)
class ReferenceStatus:
    """One reference (FK) after validation.

    ``state`` is ``"valid"``, ``"not valid"`` (some copy still unvalidated) or ``"absent"``
    (reference FKs not enabled). ``orphan_events`` counts events referencing a missing row,
    ``missing_ids`` the distinct missing ids, of which ``sample_missing_ids`` shows a few.
    """

    constraint_name: str
    column_name: str
    referenced_table: str
    state: str
    orphan_events: int
    missing_ids: int
    sample_missing_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReferenceReport:
    """What :func:`validate_references` did and found; ``ok`` when no reference is orphaned."""

    steps: tuple[ValidationStep, ...]
    references: tuple[ReferenceStatus, ...]

    @property
    def ok(self) -> bool:
        return all(ref.orphan_events == 0 for ref in self.references)


_STATE_SQL = """
    SELECT f.constraint_name,
           CASE
               WHEN NOT EXISTS (
                   SELECT 1 FROM pg_partition_tree('asset_events'::regclass) t
                   JOIN pg_constraint c ON c.conrelid = t.relid
                   WHERE c.conname = f.constraint_name AND c.contype = 'f')
               THEN 'absent'
               WHEN EXISTS (
                   SELECT 1 FROM pg_partition_tree('asset_events'::regclass) t
                   JOIN pg_constraint c ON c.conrelid = t.relid
                   WHERE c.conname = f.constraint_name AND c.contype = 'f'
                     AND NOT c.convalidated)
               THEN 'not valid'
               ELSE 'valid'
           END
    FROM asset_events_reference_fks() f
"""


def validate_references(
    conn_or_url: psycopg.Connection[Any] | str, *, sample: int = DEFAULT_SAMPLE
) -> ReferenceReport:
    """Validate what can be validated, then count orphans; return the report.

    With a URL, opens its own connection; with a connection, works in a transaction block of
    it (committed if none was open). Each ``VALIDATE`` reads its partition whole but blocks
    no writer. Raises :class:`psycopg.Error` on failures other than foreign-key violations,
    which are reported instead.
    """
    if isinstance(conn_or_url, str):
        try:
            own = psycopg.connect(conn_or_url, application_name="asset-sink validate-references")
        except psycopg.OperationalError as exc:
            raise FatalError(f"cannot connect to PostgreSQL: {exc}") from exc
        with own:
            return validate_references(own, sample=sample)
    conn = conn_or_url
    with conn.transaction():
        steps = tuple(
            ValidationStep(str(name), str(rel), bool(ok), detail)
            for name, rel, ok, detail in conn.execute(
                "SELECT constraint_name, relation::text, validated, detail "
                "FROM asset_events_validate_references()"
            ).fetchall()
        )
        states = {str(name): str(state) for name, state in conn.execute(_STATE_SQL).fetchall()}
        orphans = conn.execute(
            "SELECT constraint_name, column_name, referenced_table, orphan_events, missing_ids, "
            "sample_missing_ids FROM asset_events_reference_orphans(%s)",
            (sample,),
        ).fetchall()
    references = tuple(
        ReferenceStatus(
            constraint_name=str(name),
            column_name=str(column),
            referenced_table=str(table),
            state=states[str(name)],
            orphan_events=int(count),
            missing_ids=int(missing),
            sample_missing_ids=tuple(str(i) for i in ids),
        )
        for name, column, table, count, missing, ids in orphans
    )
    return ReferenceReport(steps, references)


# -- command line -----------------------------------------------------------------------------


def _sample(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"--sample must be 0..1000, not {text!r}")
    return value


def _run(args: argparse.Namespace) -> int:
    try:
        report = validate_references(database_url(args), sample=args.sample)
    except psycopg.Error as exc:
        raise FatalError(f"validating references failed: {exc}") from exc
    for step in report.steps:
        if not step.validated:
            print(f"{step.constraint_name} on {step.relation}: NOT validated: {step.detail}")
    validated = Counter(step.constraint_name for step in report.steps if step.validated)
    for name, count in sorted(validated.items()):
        print(f"{name}: validated on {count} relations")
    for ref in report.references:
        line = (
            f"{ref.constraint_name} ({ref.column_name} -> {ref.referenced_table}): {ref.state}, "
            f"{ref.orphan_events} orphaned events"
        )
        if ref.orphan_events:
            line += f" referencing {ref.missing_ids} missing ids, e.g. " + ", ".join(
                ref.sample_missing_ids
            )
        print(line)
    return 0 if report.ok else 1


def register(subparsers: Any) -> None:
    """Add ``asset-sink validate-references``."""
    parser = subparsers.add_parser(
        "validate-references",
        help="VALIDATE the reference FKs and report orphaned task_id/lease_id (exit 1 if any)",
        description="Validate fk_asset_events_task / fk_asset_events_lease partition by "
        "partition and report events whose task_id or lease_id has no referenced row. "
        "Exit status 1 when such events exist.",
    )
    add_database_url_option(parser)
    parser.add_argument(
        "--sample",
        type=_sample,
        default=DEFAULT_SAMPLE,
        metavar="N",
        help=f"missing ids shown per reference (default {DEFAULT_SAMPLE})",
    )
    parser.set_defaults(func=_run)
