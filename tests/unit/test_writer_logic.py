"""Pure parts of the writer and metrics: in-batch identity and the bulk histogram."""

import psycopg
from prometheus_client import generate_latest
from psycopg import errors as pg_errors

from sink.contract import COLUMNS
from sink.metrics import REGISTRY, BulkHistogram
from sink.writer import _dedupe, classify


def _row(event_id: str, asset: str = "a", offset: int = 0):
    values = [None] * len(COLUMNS)
    values[0], values[2] = event_id, asset
    return (*values, "t", 0, offset)


def test_identical_redelivery_in_one_batch_is_a_duplicate_even_from_another_offset():
    rows = [_row("E1", offset=1), _row("e1", offset=2)]
    assert _dedupe(rows, [0, 1]) == ([0], [], 1)


def test_other_content_under_one_event_id_is_deferred_to_a_pass_of_its_own():
    rows = [_row("e1"), _row("e2"), _row("e1", asset="other"), _row("e1", asset="other")]
    keep, deferred, dups = _dedupe(rows, [0, 1, 2, 3])
    assert (keep, deferred, dups) == ([0, 1], [2, 3], 0)
    # the next pass sees the deferred rows alone: one kept, its identical copy a duplicate
    assert _dedupe(rows, deferred) == ([2], [], 1)


def test_postgres_errors_are_classified_by_sqlstate_not_message():
    assert classify(pg_errors.DatetimeFieldOverflow()) == "row"
    assert classify(pg_errors.ForeignKeyViolation()) == "row"
    assert classify(pg_errors.SerializationFailure()) == "retry"
    assert classify(pg_errors.AdminShutdown()) == "retry"
    assert classify(pg_errors.UndefinedTable()) == "fatal"
    assert classify(pg_errors.InsufficientPrivilege()) == "fatal"
    assert classify(psycopg.OperationalError("connection refused")) == "retry"


def test_bulk_histogram_exposes_cumulative_buckets_count_and_sum():
    h = BulkHistogram("t_delay_seconds", "test", (0.1, 1.0))
    h.observe_counts([(0, 2), (1, 3), (2, 1), (9, 1)], total=12.5)
    REGISTRY.register(h)
    try:
        text = generate_latest(REGISTRY).decode()
    finally:
        REGISTRY.unregister(h)
    assert 't_delay_seconds_bucket{le="0.1"} 2.0' in text
    assert 't_delay_seconds_bucket{le="1.0"} 5.0' in text
    assert 't_delay_seconds_bucket{le="+Inf"} 7.0' in text
    assert "t_delay_seconds_count 7.0" in text
    assert "t_delay_seconds_sum 12.5" in text


def test_row_errors_send_a_batch_to_the_staging_path_while_others_propagate():
    # the fast path falls back only on a row's data (unique violation of a stored id, a
    # refused value); connection trouble must reach the retry logic instead
    assert classify(pg_errors.UniqueViolation()) == "row"
    assert classify(pg_errors.ConnectionFailure()) == "retry"
