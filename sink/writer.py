"""Idempotent batch writes of validated events into ``asset_events``.

One batch is one PostgreSQL transaction. In the common case, every event new, it is two
COPYs: the ids into ``asset_event_ids``, then the rows straight into ``asset_events``. When
that fails on an id already registered (a redelivery, a replay) or a refused row, nothing of
it is kept and the batch takes the staging path, which stays in use until a batch arrives
with nothing already stored:

1. rows are COPY-loaded into a session-local staging table (``ON COMMIT DELETE ROWS``);
2. when reference FKs are enabled, rows whose ``task_id``/``lease_id`` has no referenced row
   are taken out of staging and returned as ``missing_reference`` rejections (a deferred FK
   would otherwise abort the whole batch at COMMIT);
3. one statement registers every ``event_id`` in ``asset_event_ids`` (``ON CONFLICT DO
   NOTHING``) and inserts into ``asset_events`` only the rows whose id was new;
4. only when some ids already existed, those rows are compared with the stored event: an
   identical event is a duplicate (counted, not stored again); different content under the
   same ``event_id`` is a ``conflicting_duplicate`` rejection.

Why redelivery is harmless: ``asset_event_ids`` has ``event_id`` as its primary key, so an
event is stored at most once across the whole table, whatever its ``occurred_at`` month and
however often Kafka delivers it; the registry row and the event row commit together.

A row PostgreSQL refuses (an impossible date, say) fails the whole statement; the batch is
then split in halves until each refused row is alone, and comes back as a ``db_rejected``
rejection while the rest of the batch is stored. Connection loss and other transient errors
raise :class:`~sink.errors.RetryableError`; nothing of the batch is then committed, and the
caller retries it whole.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from sink import metrics
from sink.contract import COLUMNS, Reason, Rejection
from sink.errors import FatalError, RetryableError

log = logging.getLogger(__name__)

#: Kafka coordinates the sink appends to each row (the table's last columns but ingested_at).
COORDINATE_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset")
ROW_COLUMNS = (*COLUMNS, *COORDINATE_COLUMNS)
#: Columns compared to tell an identical redelivery from a conflicting reuse of an event_id.
_IDENTITY_COMPARED = tuple(c for c in COLUMNS if c not in ("event_id", "task_id", "lease_id"))

_STAGING = sql.Identifier("asset_events_staging")

# SQLSTATE classes: 08 connection, 40 transaction rollback, 53 resources, 57 operator
# intervention (admin shutdown, cancel), 58 system error. These are worth retrying as is.
_RETRYABLE_CLASSES = ("08", "40", "53", "57", "58", "XX")
# 22 data exception, 23 integrity violation: the data of some row, not the system, is at fault.
_ROW_CLASSES = ("22", "23")


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What became of a batch. ``rejected`` pairs an input row index with its rejection."""

    inserted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, Rejection]] = field(default_factory=list)


def classify(exc: BaseException) -> str:
    """``"retry"``, ``"row"`` (some row's data) or ``"fatal"`` for a PostgreSQL failure."""
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and not getattr(
        exc, "sqlstate", None
    ):
        return "retry"
    state = getattr(exc, "sqlstate", None) or ""
    if state[:2] in _ROW_CLASSES:
        return "row"
    if state[:2] in _RETRYABLE_CLASSES or isinstance(exc, psycopg.OperationalError):
        return "retry"
    return "fatal"


class PostgresWriter:
    """Writes batches over one connection; reconnects lazily after a failure.

    Not thread-safe: one writer per consume loop.
    """

    def __init__(self, url: str, *, application_name: str = "asset-event-sink") -> None:
        self._url = url
        self._appname = application_name
        self._conn: psycopg.Connection[Any] | None = None
        self._reference_checks = False
        self._insert_sql = _insert_sql()
        self._conflict_sql = _conflict_sql()
        self._copy_ids_sql = sql.SQL(
            "COPY asset_event_ids (event_id, occurred_at) FROM STDIN"
        )
        self._copy_events_sql = sql.SQL("COPY asset_events ({}) FROM STDIN").format(
            sql.SQL(", ").join(map(sql.Identifier, ROW_COLUMNS))
        )
        self._fast_path = True  # off while batches carry events that are already stored

    # -- connection ---------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(
                self._url, autocommit=False, application_name=self._appname, connect_timeout=10
            )
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL(
                        "CREATE TEMP TABLE IF NOT EXISTS {} "
                        "(LIKE asset_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                    ).format(_STAGING)
                )
                cur.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conname IN "
                    "('fk_asset_events_task', 'fk_asset_events_lease'))"
                )
                row = cur.fetchone()
                self._reference_checks = bool(row and row[0])
            conn.commit()
        except psycopg.Error as exc:
            raise self._translate(exc, "connecting to PostgreSQL") from exc
        self._conn = conn
        log.info(
            "connected to PostgreSQL",
            extra={"action": "db_connect", "reference_checks": self._reference_checks},
        )
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def ping(self) -> None:
        """Raise :class:`RetryableError` unless PostgreSQL answers ``SELECT 1``."""
        conn = self._connection()
        try:
            conn.execute("SELECT 1")
            conn.rollback()
        except psycopg.Error as exc:
            raise self._translate(exc, "probing PostgreSQL") from exc

    def ensure_partitions(self, ahead: int) -> list[str]:
        """Create this month's and the next ``ahead`` months' partitions (see ddl/)."""
        conn = self._connection()
        try:
            rows = conn.execute(
                "SELECT * FROM asset_events_ensure_partitions(%s)", (ahead,)
            ).fetchall()
            conn.commit()
        except psycopg.Error as exc:
            raise self._translate(exc, "ensuring partitions") from exc
        return [str(r[0]) for r in rows]

    def _translate(self, exc: psycopg.Error, doing: str) -> Exception:
        kind = classify(exc)
        self.close()  # a failed session may hold an aborted transaction: start afresh
        if kind == "fatal":
            return FatalError(f"PostgreSQL refused {doing}: {exc.sqlstate or ''} {exc}".strip())
        return RetryableError(f"PostgreSQL failed while {doing}: {exc}")

    # -- writes -------------------------------------------------------------------------------

    def write(self, rows: Sequence[Sequence[Any]]) -> WriteResult:
        """Store ``rows`` (values in :data:`ROW_COLUMNS` order) exactly once each.

        Blocks until the transaction committed. Raises :class:`RetryableError` when nothing
        was committed and the same rows should be written again later; raises
        :class:`FatalError` on misconfiguration (missing table, missing privilege).
        """
        inserted = duplicates = 0
        rejected: list[tuple[int, Rejection]] = []
        pending = list(range(len(rows)))
        while pending:
            # one pass per variant of an event_id in the batch (nearly always exactly one):
            # each pass compares its rows with what is stored, which decides duplicate or not
            unique, pending, in_batch_dups = _dedupe(rows, pending)
            result = self._write_unique([rows[i] for i in unique], unique)
            inserted += result.inserted
            duplicates += result.duplicates + in_batch_dups
            rejected.extend(result.rejected)
        return WriteResult(
            inserted=inserted, duplicates=duplicates, rejected=sorted(rejected, key=_first)
        )

    def _write_unique(self, rows: list[Sequence[Any]], index: list[int]) -> WriteResult:
        conn = self._connection()
        if self._fast_path and not self._reference_checks:
            try:
                return self._direct_copy(conn, rows)
            except psycopg.Error as exc:
                if not conn.closed:
                    conn.rollback()
                if classify(exc) != "row":
                    raise self._translate(exc, "writing a batch") from exc
                # a stored id (redelivery, replay) or a refused row: the staging path sorts
                # it out; stay on it until a batch arrives with nothing already stored
                self._fast_path = False
        try:
            result = self._transaction(conn, rows, index)
            self._fast_path = result.inserted == len(rows)
            return result
        except psycopg.Error as exc:
            conn.rollback() if not conn.closed else None
            if classify(exc) != "row":
                raise self._translate(exc, "writing a batch") from exc
            if len(rows) == 1:
                return WriteResult(rejected=[(index[0], _row_rejection(exc))])
        half = len(rows) // 2
        log.info(
            "batch refused by PostgreSQL; splitting to isolate the refused rows",
            extra={"action": "batch_split", "rows": len(rows)},
        )
        first = self._write_unique(rows[:half], index[:half])
        second = self._write_unique(rows[half:], index[half:])
        return WriteResult(
            inserted=first.inserted + second.inserted,
            duplicates=first.duplicates + second.duplicates,
            rejected=first.rejected + second.rejected,
        )

    def _direct_copy(
        self, conn: psycopg.Connection[Any], rows: list[Sequence[Any]]
    ) -> WriteResult:
        """The common case, all rows new: COPY the ids, then the rows, straight in.

        Any id already registered fails the first COPY (unique violation) and nothing is
        written; the caller then takes the staging path, which tells duplicates from
        conflicts. ``rows`` hold distinct event_ids (see :func:`_dedupe`).
        """
        with conn.cursor() as cur:
            with cur.copy(self._copy_ids_sql) as copy:
                for row in rows:
                    copy.write_row((row[0], row[4]))  # event_id, occurred_at
            with cur.copy(self._copy_events_sql) as copy:
                for row in rows:
                    copy.write_row(row)
            # the delay histogram from evenly spaced rows, each standing for `weight` rows:
            # parsing every row's recorded_at again would cost PostgreSQL ~8 % of the write
            step = max(1, len(rows) // _DELAY_SAMPLE_ROWS)
            recorded = [row[5] for row in rows[::step]]
            buckets = cur.execute(
                _DELAY_OF_RECORDED_SQL, (list(metrics.INGEST_DELAY.bounds), recorded)
            ).fetchall()
        conn.commit()
        self._observe_delays(buckets, weight=len(rows) / len(recorded))
        return WriteResult(inserted=len(rows))

    @staticmethod
    def _observe_delays(buckets: list[tuple[Any, ...]], *, weight: float = 1.0) -> None:
        metrics.INGEST_DELAY.observe_counts(
            ((int(b), int(c) * weight) for b, c, _ in buckets),
            sum(float(s or 0) for _, _, s in buckets) * weight,
        )

    def _transaction(
        self, conn: psycopg.Connection[Any], rows: list[Sequence[Any]], index: list[int]
    ) -> WriteResult:
        rejected: list[tuple[int, Rejection]] = []
        by_id: dict[str, int] | None = None
        with conn.cursor() as cur:
            with cur.copy(
                sql.SQL("COPY {} ({}) FROM STDIN").format(
                    _STAGING, sql.SQL(", ").join(map(sql.Identifier, ROW_COLUMNS))
                )
            ) as copy:
                for row in rows:
                    copy.write_row(row)
            expected = len(rows)
            if self._reference_checks:
                missing = cur.execute(_MISSING_REFERENCES_SQL).fetchall()
                if missing:
                    by_id = _index_by_id(rows, index)
                    for event_id, task_missing, task_id, lease_id in missing:
                        detail = (
                            f"task_id '{task_id}' has no row in task_orders"
                            if task_missing
                            else f"lease_id '{lease_id}' has no row in leases"
                        ) + "; redrive the message once the referenced row exists"
                        field_name = "task_id" if task_missing else "lease_id"
                        rejected.append(
                            (by_id[event_id], Rejection(Reason.MISSING_REFERENCE, detail,
                                                        field_name))
                        )
                    expected -= len(missing)
            buckets = cur.execute(self._insert_sql, (list(metrics.INGEST_DELAY.bounds),)).fetchall()
            inserted = sum(int(count) for _, count, _ in buckets)
            if inserted < expected:
                for (event_id,) in cur.execute(self._conflict_sql).fetchall():
                    by_id = by_id or _index_by_id(rows, index)
                    rejected.append(
                        (by_id[event_id], Rejection(
                            Reason.CONFLICTING_DUPLICATE,
                            f"event_id {event_id} is already stored with different content; "
                            "an event is immutable: send a new event with a new event_id",
                            "event_id",
                        ))
                    )
        conn.commit()
        self._observe_delays(buckets)
        conflicts = sum(1 for _, r in rejected if r.reason is Reason.CONFLICTING_DUPLICATE)
        return WriteResult(
            inserted=inserted,
            duplicates=expected - inserted - conflicts,
            rejected=rejected,
        )


def _first(pair: tuple[int, Rejection]) -> int:
    return pair[0]


def _dedupe(
    rows: Sequence[Sequence[Any]], indexes: list[int]
) -> tuple[list[int], list[int], int]:
    """Split ``indexes`` by event_id: the first row of each id, rows to defer, duplicates.

    A later row identical to the first of its id is an in-batch duplicate (counted only). A
    later row with other content is deferred to the next pass rather than judged here: the
    stored event, not the order inside the batch, decides which variant is the conflict.
    Returns (kept, deferred, duplicate count).
    """
    n_msg = len(COLUMNS)
    seen: dict[str, int] = {}
    keep: list[int] = []
    deferred: list[int] = []
    dups = 0
    for i in indexes:
        row = rows[i]
        first = seen.setdefault(str(row[0]).lower(), i)
        if first == i:
            keep.append(i)
        elif tuple(rows[first][1:n_msg]) == tuple(row[1:n_msg]):
            dups += 1
        else:
            deferred.append(i)
    return keep, deferred, dups


def _index_by_id(rows: Sequence[Sequence[Any]], index: list[int]) -> dict[str, int]:
    return {str(row[0]).lower(): i for row, i in zip(rows, index, strict=True)}


def _row_rejection(exc: psycopg.Error) -> Rejection:
    diag = exc.diag
    if isinstance(exc, pg_errors.ForeignKeyViolation):
        return Rejection(
            Reason.MISSING_REFERENCE,
            f"PostgreSQL: {diag.message_primary} ({diag.message_detail or 'no detail'}); "
            "redrive the message once the referenced row exists",
            diag.column_name or "task_id",
        )
    where = f" (column {diag.column_name})" if diag.column_name else ""
    return Rejection(
        Reason.DB_REJECTED,
        f"PostgreSQL refused the row with SQLSTATE {exc.sqlstate}{where}: "
        f"{diag.message_primary or exc}; fix the producer and resend",
        diag.column_name or "$",
    )


def _insert_sql() -> sql.Composed:
    cols = sql.SQL(", ").join(map(sql.Identifier, ROW_COLUMNS))
    s_cols = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in ROW_COLUMNS)
    return sql.SQL(
        """
        WITH new_ids AS (
            INSERT INTO asset_event_ids (event_id, occurred_at)
            SELECT event_id, occurred_at FROM {staging}
            ON CONFLICT (event_id) DO NOTHING
            RETURNING event_id
        ), ins AS (
            INSERT INTO asset_events ({cols})
            SELECT {s_cols} FROM {staging} s JOIN new_ids n ON n.event_id = s.event_id
            RETURNING EXTRACT(EPOCH FROM ingested_at - recorded_at)::float8 AS delay
        )
        SELECT width_bucket(delay, %s::float8[]), count(*), sum(delay) FROM ins GROUP BY 1
        """
    ).format(staging=_STAGING, cols=cols, s_cols=s_cols)


def _conflict_sql() -> sql.Composed:
    """Staging rows whose event_id was stored earlier with other content.

    ``task_id``/``lease_id`` may have been set to NULL since by the FK's ``ON DELETE SET
    NULL``, so a stored NULL there matches any incoming value.
    """
    e = sql.SQL(", ").join(sql.SQL("e.{}").format(sql.Identifier(c)) for c in _IDENTITY_COMPARED)
    s = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in _IDENTITY_COMPARED)
    return sql.SQL(
        """
        SELECT s.event_id::text
        FROM {staging} s
        JOIN asset_event_ids i ON i.event_id = s.event_id
        JOIN asset_events e ON e.event_id = i.event_id AND e.occurred_at = i.occurred_at
        WHERE e.xmin <> pg_current_xact_id()::xid
          AND (({e}) IS DISTINCT FROM ({s})
               OR (e.task_id IS NOT NULL AND e.task_id IS DISTINCT FROM s.task_id)
               OR (e.lease_id IS NOT NULL AND e.lease_id IS DISTINCT FROM s.lease_id))
        """
    ).format(staging=_STAGING, e=e, s=s)


_DELAY_SAMPLE_ROWS = 256  # rows of a fast-path batch whose ingest delay is measured
# ingested_at is the transaction's now(): the delay of each row is known without reading it back
_DELAY_OF_RECORDED_SQL = """
    SELECT width_bucket(d, %s::float8[]), count(*), sum(d)
    FROM (SELECT EXTRACT(EPOCH FROM now() - r)::float8 AS d
          FROM unnest(%s::timestamptz[]) AS r) AS delays
    GROUP BY 1
"""

_MISSING_REFERENCES_SQL = """
    DELETE FROM asset_events_staging s
    WHERE (s.task_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM task_orders t WHERE t.task_id = s.task_id))
       OR (s.lease_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.lease_id = s.lease_id))
    RETURNING s.event_id::text,
              s.task_id IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM task_orders t WHERE t.task_id = s.task_id),
              s.task_id::text, s.lease_id::text
"""
