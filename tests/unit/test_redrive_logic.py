"""Dead-letter records, redrive headers and the selection of records to redrive (no broker)."""

from __future__ import annotations

from typing import Any

from sink.redrive import (
    DeadLetterRecord,
    Selection,
    Verdict,
    redrive_group,
    redrive_headers,
)


class FakeMessage:
    """The part of confluent_kafka.Message the reader uses."""

    def __init__(
        self,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]],
        *,
        offset: int = 7,
        timestamp_ms: int = 1_000,
    ) -> None:
        self._value, self._headers = value, headers
        self._offset, self._ts = offset, timestamp_ms

    def topic(self) -> str:
        return "events.dlq"

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes | None]]:
        return self._headers


def _record(
    reason: str = "missing_reference", value: bytes | None = b"{}", **kw: Any
) -> DeadLetterRecord:
    headers = [
        ("trace", b"t-1"),
        ("asset-sink.reason", reason.encode()),
        ("asset-sink.detail", b"task_id 42 is not in task_orders"),
        ("asset-sink.original.topic", b"events"),
        ("asset-sink.original.partition", b"1"),
        ("asset-sink.original.offset", b"99"),
        *kw.pop("extra_headers", []),
    ]
    return DeadLetterRecord.from_message(FakeMessage(value, headers, **kw))


def test_record_decodes_the_sinks_headers_and_keeps_the_rest():
    record = _record()
    assert record.reason == "missing_reference"
    assert record.original == "events/1/99"
    assert record.coordinates == "events.dlq/2/7"
    assert record.own["detail"] == "task_id 42 is not in task_orders"
    assert ("trace", b"t-1") in record.headers


def test_redrive_headers_drop_the_sinks_headers_and_name_the_dead_letter_record():
    record = _record(extra_headers=[("asset-sink.redriven-from", b"events.dlq/0/1")])
    assert redrive_headers(record) == [
        ("trace", b"t-1"),
        ("asset-sink.redriven-from", b"events.dlq/2/7"),
    ]


def test_selection_by_reason_and_time():
    record = _record(timestamp_ms=5_000)
    assert Selection().verdict(record) is Verdict.REDRIVE
    assert Selection(reason="missing_reference").verdict(record) is Verdict.REDRIVE
    assert Selection(reason="schema").verdict(record) is Verdict.FILTERED
    assert Selection(since_ms=5_000).verdict(record) is Verdict.REDRIVE
    assert Selection(since_ms=5_001).verdict(record) is Verdict.FILTERED


def test_truncated_or_valueless_records_are_not_redriven():
    truncated = _record(extra_headers=[("asset-sink.value.truncated.from", b"2000000")])
    assert Selection().verdict(truncated) is Verdict.UNREDRIVABLE
    assert Selection().verdict(_record(value=None)) is Verdict.UNREDRIVABLE
    # a filter applies first: a truncated record of another reason is merely filtered
    assert Selection(reason="schema").verdict(truncated) is Verdict.FILTERED


def test_the_default_progress_group_is_per_reason():
    assert redrive_group("asset-event-sink", None) == "asset-event-sink-redrive"
    assert redrive_group("asset-event-sink", "schema") == "asset-event-sink-redrive.schema"


def test_preview_is_the_first_200_characters_even_with_multibyte_text():
    record = _record(value=("é" * 300).encode())
    assert record.preview() == "é" * 200
    assert _record(value=None).preview() is None


def test_json_form_names_both_coordinates():
    out = _record().as_json()
    assert out["dlq"]["partition"] == 2 and out["dlq"]["offset"] == 7
    assert out["original"]["topic"] == "events"
    assert out["original"]["offset"] == 99
    assert out["original"]["timestamp"] is None
    assert out["reason"] == "missing_reference"
