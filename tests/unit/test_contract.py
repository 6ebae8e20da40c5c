"""Every rule of the AssetEvent v1.0 contract, both sides of every bound."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from sink import cli
from sink._paths import schemas_dir
from sink.contract import (
    COLUMNS,
    PAYLOAD_MAX_BYTES,
    Contract,
    Reason,
    Rejection,
    Row,
    decode_and_validate,
)
from sink.errors import FatalError

SAMPLES = Path(__file__).parents[2].parent / "shared" / "samples"
SCHEMA_FILE = schemas_dir() / "v1.0" / "AssetEvent.json"

REQUIRED = (
    "event_id",
    "tenant_id",
    "asset_id",
    "event_type",
    "occurred_at",
    "recorded_at",
    "version",
)
OPTIONAL = tuple(column for column in COLUMNS if column not in REQUIRED)

# The minimal valid event: required fields only.
BASE: dict[str, Any] = {
    "event_id": "5f3d5012-f8a8-402f-97cf-927fe49ba9ed",
    "tenant_id": "demo-tenant",
    "asset_id": "acct-000000",
    "event_type": "task.started",
    "occurred_at": "2026-12-01T08:00:00.000Z",
    "recorded_at": "2026-12-01T08:00:00.040Z",
    "version": "1.0",
}

# The valid event of the contract document: every field set.
FULL: dict[str, Any] = {
    "event_id": "6f1c8a52-3f4e-4a59-9d55-0d8f6a1c2b7e",
    "tenant_id": "demo-tenant",
    "asset_id": "acct-000123",
    "event_type": "task.failed",
    "occurred_at": "2026-12-01T08:15:30.120Z",
    "recorded_at": "2026-12-01T08:15:30.180Z",
    "version": "1.0",
    "correlation_id": "corr-123",
    "causation_id": "0b7e9d3c-8a31-4c55-a1a4-6f0a8d2e9c11",
    "task_id": "00000000-0000-0000-0000-000000000001",
    "lease_id": "7d444840-9dc0-11d1-b245-5ffdce74fad2",
    "task_type": "login",
    "provider_id": "provider-123",
    "sku_category": "proxy",
    "env": "prod",
    "severity": "error",
    "outcome": "failure",
    "error_code": "IP_BANNED",
    "error_message": "upstream refused the login",
    "http_status": 403,
    "latency_ms": 812,
    "old_status": "active",
    "new_status": "banned",
    "source": "worker-7",
    "payload": {"region": "eu-west-1", "attempt": 2},
}


def decode(event: Any, **options: Any) -> Row | Rejection:
    return decode_and_validate(orjson.dumps(event), **options)


def accept(event: Any) -> dict[str, Any]:
    """Decode ``event``, assert it is accepted, return its row by column name."""
    result = decode(event)
    assert not isinstance(result, Rejection), str(result)
    assert len(result) == len(COLUMNS)
    return dict(zip(COLUMNS, result, strict=True))


def reject(event: Any, reason: Reason = Reason.SCHEMA, field: str | None = None) -> Rejection:
    """Decode ``event``, assert it is rejected for ``reason`` (at ``field``), return why."""
    result = decode(event)
    assert isinstance(result, Rejection), f"accepted: {result}"
    assert result.reason is reason, str(result)
    if field is not None:
        assert result.field == field, str(result)
        assert field in result.detail, str(result)
    return result


def event(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


def without(name: str) -> dict[str, Any]:
    return {key: value for key, value in BASE.items() if key != name}


# --- the schema file and the column list -------------------------------------------------


def test_schema_file_is_draft_2020_12_with_an_id_and_no_extra_fields() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == list(REQUIRED)


def test_schema_and_columns_name_the_same_fields_in_table_order() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert tuple(schema["properties"]) == COLUMNS
    table_order = (
        *REQUIRED,
        "correlation_id",
        "causation_id",
        "task_id",
        "lease_id",
        "task_type",
        "provider_id",
        "sku_category",
        "env",
        "severity",
        "outcome",
        "error_code",
        "error_message",
        "http_status",
        "latency_ms",
        "old_status",
        "new_status",
        "source",
        "payload",
    )
    assert table_order == COLUMNS


def test_reasons_are_the_shared_machine_readable_labels() -> None:
    assert {reason.value for reason in Reason} == {
        "invalid_json",
        "not_an_object",
        "schema",
        "unsupported_version",
        "too_large",
        "nul_character",
        "conflicting_duplicate",
        "missing_reference",
        "db_rejected",
    }


# --- the shared samples -------------------------------------------------------------------


def _lines(name: str) -> list[bytes]:
    return (SAMPLES / name).read_bytes().splitlines()


@pytest.mark.parametrize(
    "line", _lines("valid.jsonl"), ids=lambda line: orjson.loads(line)["event_type"]
)
def test_every_valid_sample_is_accepted(line: bytes) -> None:
    result = decode_and_validate(line)
    assert not isinstance(result, Rejection), str(result)


@pytest.mark.parametrize(
    "case",
    [orjson.loads(line) for line in _lines("invalid.jsonl")],
    ids=lambda case: case["why"],
)
def test_every_invalid_sample_is_rejected(case: dict[str, str]) -> None:
    result = decode_and_validate(case["message"].encode())
    assert isinstance(result, Rejection), case["why"]
    assert result.detail


# --- the row handed to the writer ---------------------------------------------------------


def test_full_event_becomes_a_row_in_column_order() -> None:
    row = accept(FULL)
    expected = {**FULL, "payload": '{"region":"eu-west-1","attempt":2}'}
    assert row == expected


def test_row_lower_cases_uuids_and_keeps_timestamps_as_sent() -> None:
    row = accept(
        event(
            event_id="6F1C8A52-3F4E-4A59-9D55-0D8F6A1C2B7E",
            task_id="ABCDEF00-0000-0000-0000-000000000001",
            lease_id="Ab000000-0000-0000-0000-00000000000f",
            occurred_at="2026-12-01t13:45:30.5+05:30",
        )
    )
    assert row["event_id"] == "6f1c8a52-3f4e-4a59-9d55-0d8f6a1c2b7e"
    assert row["task_id"] == "abcdef00-0000-0000-0000-000000000001"
    assert row["lease_id"] == "ab000000-0000-0000-0000-00000000000f"
    assert row["occurred_at"] == "2026-12-01t13:45:30.5+05:30"


def test_integral_numbers_become_ints_for_smallint_and_integer_columns() -> None:
    row = accept(event(http_status=200.0, latency_ms=1e3))
    assert row["http_status"] == 200 and type(row["http_status"]) is int
    assert row["latency_ms"] == 1000 and type(row["latency_ms"]) is int


# --- required and optional fields ---------------------------------------------------------


@pytest.mark.parametrize("name", REQUIRED)
def test_each_required_field_is_required(name: str) -> None:
    why = reject(without(name), field=name)
    assert why.rule == "required"


@pytest.mark.parametrize("name", REQUIRED)
def test_required_field_may_not_be_null(name: str) -> None:
    why = reject(event(**{name: None}), field=name)
    assert why.rule == "type"


@pytest.mark.parametrize("name", OPTIONAL)
def test_optional_field_may_be_absent_or_null_and_is_stored_as_null(name: str) -> None:
    absent = accept({key: value for key, value in FULL.items() if key != name})
    null = accept({**FULL, name: None})
    assert absent[name] is None
    assert null[name] is None


def test_unknown_top_level_field_is_refused_and_named() -> None:
    why = reject(event(colour="red"), field="colour")
    assert why.rule == "additionalProperties"
    assert "payload" in why.detail


def test_several_unknown_fields_are_all_named() -> None:
    why = reject(event(colour="red", size=3))
    assert "'colour'" in why.detail and "'size'" in why.detail


# --- lengths (code points) ----------------------------------------------------------------

# field, shortest, longest, a character the field's pattern accepts anywhere
LENGTHS = [
    ("tenant_id", 1, 64, "a"),
    ("asset_id", 1, 128, "a"),
    ("correlation_id", 1, 128, "a"),
    ("causation_id", 1, 128, "a"),
    ("task_type", 1, 64, "a"),
    ("provider_id", 1, 128, "a"),
    ("sku_category", 1, 64, "a"),
    ("env", 1, 32, "a"),
    ("error_code", 1, 64, "A"),
    ("error_message", 0, 4096, "a"),
    ("old_status", 1, 32, "a"),
    ("new_status", 1, 32, "a"),
    ("source", 1, 128, "a"),
]


@pytest.mark.parametrize(("name", "shortest", "longest", "char"), LENGTHS)
def test_length_bounds_accept_min_and_max(
    name: str, shortest: int, longest: int, char: str
) -> None:
    assert accept(event(**{name: char * shortest}))[name] == char * shortest
    assert accept(event(**{name: char * longest}))[name] == char * longest


@pytest.mark.parametrize(("name", "shortest", "longest", "char"), LENGTHS)
def test_length_bounds_refuse_one_beyond(name: str, shortest: int, longest: int, char: str) -> None:
    assert reject(event(**{name: char * (longest + 1)}), field=name).rule == "maxLength"
    if shortest > 0:
        assert reject(event(**{name: char * (shortest - 1)}), field=name).rule == "minLength"


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("a.b", True), ("a." + "b" * 62, True), ("ab", False), ("a." + "b" * 63, False)],
)
def test_event_type_is_3_to_64_characters(value: str, accepted: bool) -> None:
    if accepted:
        accept(event(event_type=value))
    else:
        reject(event(event_type=value), field="event_type")


def test_lengths_count_code_points_not_bytes_or_utf16_units() -> None:
    accept(event(asset_id="\U0001f600" * 128, tenant_id="a" * 64, error_message="é" * 4096))
    reject(event(asset_id="\U0001f600" * 129), field="asset_id")


# --- integer ranges and types -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("http_status", 99, False),
        ("http_status", 100, True),
        ("http_status", 599, True),
        ("http_status", 600, False),
        ("latency_ms", -1, False),
        ("latency_ms", 0, True),
        ("latency_ms", 86_400_000, True),
        ("latency_ms", 86_400_001, False),
    ],
)
def test_integer_ranges(name: str, value: int, accepted: bool) -> None:
    if accepted:
        assert accept(event(**{name: value}))[name] == value
    else:
        why = reject(event(**{name: value}), field=name)
        assert why.rule in {"minimum", "maximum"}


@pytest.mark.parametrize("name", ["http_status", "latency_ms"])
@pytest.mark.parametrize("value", ["403", 403.5, True, [403], {"v": 403}])
def test_integer_fields_refuse_other_types(name: str, value: Any) -> None:
    reject(event(**{name: value}), field=name)


@pytest.mark.parametrize(
    "name", [n for n in COLUMNS if n not in {"http_status", "latency_ms", "payload"}]
)
def test_string_fields_refuse_numbers(name: str) -> None:
    assert reject(event(**{name: 1}), field=name).rule == "type"


# --- patterns -----------------------------------------------------------------------------

PATTERNS = [
    (
        "tenant_id",
        ["a", "Z", "0", "acme", "Demo-Tenant_1.eu:west"],
        ["-a", ".a", "_a", ":a", "a b", "a/b", "é", "a\n"],
    ),
    (
        "event_type",
        ["task.failed", "asset.status_changed", "a.b.c", "a1.b_2"],
        [
            "task",
            "Task.failed",
            "task.",
            ".task",
            "task..failed",
            "task.1x",
            "task-x.y",
            "task.failed\n",
            "task.faİled",
        ],
    ),
    ("task_type", ["login", "a", "a.b-c_d9"], ["Login", "1login", "-x", "_x", "log in", "login\n"]),
    ("env", ["prod", "staging-2", "a_b"], ["Prod", "1prod", "pr.od", "-prod", "prod\n"]),
    ("error_code", ["IP_BANNED", "E", "E1_2"], ["ip_banned", "1E", "_E", "E-1", "E 1", "É", "E\n"]),
]


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, ok, _ in PATTERNS for v in ok])
def test_pattern_accepts(name: str, value: str) -> None:
    assert accept(event(**{name: value}))[name] == value


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, _, bad in PATTERNS for v in bad])
def test_pattern_refuses(name: str, value: str) -> None:
    assert reject(event(**{name: value}), field=name).rule == "pattern"


@pytest.mark.parametrize("char", ["\x01", "\t", "\n", "\x1f", "\x7f", "\x85", "\x9f", "\x00"])
def test_asset_id_refuses_control_characters(char: str) -> None:
    assert reject(event(asset_id=f"acct{char}1"), field="asset_id").rule == "pattern"


@pytest.mark.parametrize("value", ["acct 1", "acct/1:2", "é-ü", "\xa0", "\U0001f600"])
def test_asset_id_accepts_other_characters(value: str) -> None:
    assert accept(event(asset_id=value))["asset_id"] == value


# --- enums and version --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [("severity", v) for v in ("debug", "info", "warning", "error", "critical")]
    + [("outcome", v) for v in ("success", "failure")],
)
def test_enum_accepts_each_member(name: str, value: str) -> None:
    assert accept(event(**{name: value}))[name] == value


@pytest.mark.parametrize(
    ("name", "value"),
    [("severity", v) for v in ("fatal", "ERROR", "Info", "", "warn")]
    + [("outcome", v) for v in ("ok", "Success", "", "failed")],
)
def test_enum_refuses_anything_else(name: str, value: str) -> None:
    assert reject(event(**{name: value}), field=name).rule == "enum"


@pytest.mark.parametrize("version", ["2.0", "1.1", "0.9", "1", "", "v1.0"])
def test_other_version_string_is_unsupported_and_names_supported_ones(version: str) -> None:
    why = reject(event(version=version), Reason.UNSUPPORTED_VERSION, field="version")
    assert f"'{version}'" in why.detail
    assert "supported: 1.0" in why.detail


@pytest.mark.parametrize("version", [1.0, 1, None, ["1.0"], {"v": "1.0"}])
def test_non_string_version_is_a_schema_error(version: Any) -> None:
    reject(event(version=version), Reason.SCHEMA, field="version")


def test_missing_version_is_a_schema_error() -> None:
    reject(without("version"), Reason.SCHEMA, field="version")


# --- timestamps ---------------------------------------------------------------------------

GOOD_TIMES = [
    "2026-12-01T08:15:30.120Z",
    "2026-12-01T08:15:30Z",
    "2026-12-01T13:45:30+05:30",
    "2026-12-01T00:15:30-08:00",
    "2026-12-01T08:15:30-00:00",
    "2026-12-01t08:15:30.1z",
    "2026-12-01T08:15:30.123456789+15:59",
    "2026-12-01T08:15:30-15:59",
    "2024-02-29T00:00:00Z",
    "2000-02-29T00:00:00Z",
    "2026-04-30T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
]
BAD_TIMES = [
    "2026-12-01T08:15:30",  # no offset
    "2026-12-01T08:15:30.120",  # no offset
    "2026-12-01 08:15:30Z",  # space instead of T
    "2026-12-01",  # date only
    "08:15:30Z",  # time only
    "2026-12-01T08:15:30+0530",  # offset without colon
    "2026-12-01T08:15:30+05",  # offset without minutes
    "2026-12-01T08:15:30+16:00",  # beyond what timestamptz accepts
    "2026-12-01T08:15:30+05:60",
    "2026-02-29T00:00:00Z",  # not a leap year
    "1900-02-29T00:00:00Z",  # not a leap year
    "2026-04-31T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-00-10T00:00:00Z",
    "2026-12-00T00:00:00Z",
    "2026-12-01T24:00:00Z",
    "2026-12-01T23:60:00Z",
    "2016-12-31T23:59:60Z",  # leap second
    "2026-12-01T08:15:30.Z",  # dot without digits
    "2026-12-01T08:15:30.1234567890Z",  # 10 fraction digits
    "0000-01-01T00:00:00Z",  # year 0
    "12026-12-01T08:15:30Z",
    "2026-12-01T08:15:30Z\n",
    " 2026-12-01T08:15:30Z",
    "\u0662\u0660\u0662\u0666-12-01T08:15:30Z",  # Arabic-Indic digits
    "2026-12-01T08:15:30UTC",
]


@pytest.mark.parametrize("name", ["occurred_at", "recorded_at"])
@pytest.mark.parametrize("value", GOOD_TIMES)
def test_timestamp_with_offset_is_accepted(name: str, value: str) -> None:
    assert accept(event(**{name: value}))[name] == value


@pytest.mark.parametrize("name", ["occurred_at", "recorded_at"])
@pytest.mark.parametrize("value", BAD_TIMES)
def test_timestamp_without_offset_or_out_of_range_is_refused(name: str, value: str) -> None:
    assert reject(event(**{name: value}), field=name).rule == "pattern"


# --- UUIDs --------------------------------------------------------------------------------

GOOD_UUIDS = [
    "6f1c8a52-3f4e-4a59-9d55-0d8f6a1c2b7e",  # v4
    "6F1C8A52-3F4E-4A59-9D55-0D8F6A1C2B7E",  # upper case
    "7d444840-9dc0-11d1-b245-5ffdce74fad2",  # v1
    "01890a5d-ac96-774b-bcce-b302099a8057",  # v7
    "00000000-0000-0000-0000-000000000000",  # nil
    "ffffffff-ffff-ffff-ffff-ffffffffffff",  # max
]
BAD_UUIDS = [
    "12345",
    "6f1c8a523f4e4a599d550d8f6a1c2b7e",  # no hyphens
    "{6f1c8a52-3f4e-4a59-9d55-0d8f6a1c2b7e}",
    "urn:uuid:6f1c8a52-3f4e-4a59-9d55-0d8f6a1c2b7e",
    "6f1c8a523-f4e-4a59-9d55-0d8f6a1c2b7e",  # hyphen misplaced
    "6f1c8a52-3f4e-4a59-9d55-0d8f6a1c2b7",  # one digit short
    "6f1c8a52-3f4e-4a59-9d55-0d8f6a1c2b7e0",  # one digit long
    "6f1c8a52-3f4e-4a59-9d55-0d8f6a1c2b7g",
    "6f1c8a52-3f4e-4a59-9d55-0d8f6a1c2b7e\n",
    " 6f1c8a52-3f4e-4a59-9d55-0d8f6a1c2b7e",
]


@pytest.mark.parametrize("name", ["event_id", "task_id", "lease_id"])
@pytest.mark.parametrize("value", GOOD_UUIDS)
def test_uuid_in_canonical_form_of_any_version_is_accepted(name: str, value: str) -> None:
    assert accept(event(**{name: value}))[name] == value.lower()


@pytest.mark.parametrize("name", ["event_id", "task_id", "lease_id"])
@pytest.mark.parametrize("value", BAD_UUIDS)
def test_uuid_in_any_other_form_is_refused(name: str, value: str) -> None:
    assert reject(event(**{name: value}), field=name).rule == "pattern"


# --- payload ------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", ["x", 1, [1, 2], True])
def test_payload_must_be_an_object(payload: Any) -> None:
    assert reject(event(payload=payload), field="payload").rule == "type"


def test_payload_is_stored_as_compact_json() -> None:
    payload = {"a": [1, 2.5, None, True], "b": {"c": "é \n"}}
    row = accept(event(payload=payload))
    assert row["payload"] == '{"a":[1,2.5,null,true],"b":{"c":"é \\n"}}'
    assert accept(event(payload={}))["payload"] == "{}"


def _payload_of_size(size: int, char: str = "a") -> dict[str, str]:
    """A payload whose compact JSON is exactly ``size`` bytes (``char`` 1 or 2 UTF-8 bytes)."""
    width = len(char.encode())
    text = char * ((size - 8) // width)  # {"x":"..."} is 8 bytes plus the text
    payload = {"x": text}
    assert len(orjson.dumps(payload)) == size
    return payload


@pytest.mark.parametrize("char", ["a", "é"])
def test_payload_of_64_kib_is_accepted(char: str) -> None:
    row = accept(event(payload=_payload_of_size(PAYLOAD_MAX_BYTES, char)))
    assert isinstance(row["payload"], str)
    assert len(row["payload"].encode()) == 65_536


@pytest.mark.parametrize(("char", "size"), [("a", 65_537), ("é", 65_538)])
def test_payload_above_64_kib_is_too_large(char: str, size: int) -> None:
    why = reject(event(payload=_payload_of_size(size, char)), Reason.TOO_LARGE, field="payload")
    assert "65536" in why.detail


def test_payload_size_counts_the_stored_form_not_the_message_text() -> None:
    # 1e15 is 4 bytes in the message but 18 once stored (1000000000000000.0).
    numbers = b"[" + b",".join([b"1e15"] * 3700) + b"]"
    message = orjson.dumps(event(payload={})).replace(
        b'"payload":{}', b'"payload":{"n":%s}' % numbers
    )
    assert len(message) < PAYLOAD_MAX_BYTES
    why = decode_and_validate(message)
    assert isinstance(why, Rejection)
    assert (why.reason, why.field) == (Reason.TOO_LARGE, "payload")


def _nested(depth: int) -> bytes:
    return b'{"v":' * depth + b"1" + b"}" * depth


def test_deeply_nested_payload_is_still_stored() -> None:
    message = orjson.dumps(event(payload={})).replace(b'"payload":{}', b'"payload":' + _nested(300))
    result = decode_and_validate(message)
    assert not isinstance(result, Rejection), str(result)
    assert orjson.loads(result[COLUMNS.index("payload")] or "") == orjson.loads(_nested(300))


def test_payload_too_deep_to_serialize_is_rejected_not_raised() -> None:
    message = orjson.dumps(event(payload={})).replace(
        b'"payload":{}', b'"payload":' + _nested(1020)
    )
    result = decode_and_validate(message)
    assert isinstance(result, Rejection)
    assert result.reason is Reason.TOO_LARGE and result.field == "payload"


# --- NUL characters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["correlation_id", "causation_id", "provider_id", "error_message", "source"]
)
def test_nul_in_a_top_level_string_is_refused(name: str) -> None:
    why = reject(event(**{name: "a\x00b"}), Reason.NUL_CHARACTER, field=name)
    assert "U+0000" in why.detail


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"note": "\x00"}, "payload.note"),
        ({"a": {"b": ["x", "y\x00z"]}}, "payload.a.b[1]"),
        ({"a": [[{"deep": ["\x00"]}]]}, "payload.a[0][0].deep[0]"),
        ({"a\x00b": 1}, "payload.a\\u0000b"),
    ],
)
def test_nul_anywhere_inside_payload_is_refused(payload: dict[str, Any], where: str) -> None:
    reject(event(payload=payload), Reason.NUL_CHARACTER, field=where)


def test_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    row = accept(event(error_message="C:\\u0000", payload={"path": "\\u0000"}))
    assert row["error_message"] == "C:\\u0000"


def test_raw_nul_byte_is_invalid_json() -> None:
    message = orjson.dumps(event(error_message="ab")).replace(b'"ab"', b'"a\x00b"')
    result = decode_and_validate(message)
    assert isinstance(result, Rejection) and result.reason is Reason.INVALID_JSON


# --- message-level refusals ---------------------------------------------------------------


def test_message_above_max_bytes_is_too_large_before_parsing() -> None:
    message = b"not json at all"
    assert isinstance(decode_and_validate(message, max_bytes=len(message)), Rejection)
    why = decode_and_validate(message, max_bytes=len(message) - 1)
    assert isinstance(why, Rejection)
    assert why.reason is Reason.TOO_LARGE
    assert str(len(message)) in why.detail


def test_message_of_exactly_max_bytes_is_accepted() -> None:
    message = orjson.dumps(BASE)
    assert not isinstance(decode_and_validate(message, max_bytes=len(message)), Rejection)


@pytest.mark.parametrize(
    "message",
    [
        b"not json {",
        b"",
        b"   ",
        b'{"a":1} x',
        b'{"a":NaN}',
        b'{"a":1,}',
        b'{"asset_id":"\xff"}',  # not UTF-8
        b'{"asset_id":"\\ud800"}',  # lone surrogate
        b'{"a":1e400}',  # not a finite number
    ],
)
def test_malformed_json_is_invalid_json_with_the_parser_message(message: bytes) -> None:
    why = decode_and_validate(message)
    assert isinstance(why, Rejection)
    assert why.reason is Reason.INVALID_JSON
    assert "line 1 column" in why.detail


def test_missing_message_value_is_invalid_json() -> None:
    why = decode_and_validate(None)
    assert isinstance(why, Rejection) and why.reason is Reason.INVALID_JSON


@pytest.mark.parametrize(
    ("value", "kind"),
    [([1, 2, 3], "array"), ("x", "string"), (1, "integer"), (None, "null"), (True, "boolean")],
)
def test_json_that_is_not_an_object_is_refused(value: Any, kind: str) -> None:
    why = reject(value, Reason.NOT_AN_OBJECT)
    assert kind in why.detail


def test_version_is_checked_before_the_rest_of_the_schema() -> None:
    reject({"version": "2.0"}, Reason.UNSUPPORTED_VERSION)


# --- sentences ----------------------------------------------------------------------------


def test_detail_names_field_value_rule_and_what_is_expected() -> None:
    why = reject(event(http_status=700))
    assert why.detail == (
        "field 'http_status': 700 is above the maximum 599 "
        "(must be an integer 100\u2013599, or null)"
    )
    assert (why.field, why.rule) == ("http_status", "maximum")
    assert str(why) == f"schema: {why.detail}"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"tenant_id": ""}, ["'tenant_id'", "too short", "1\u201364"]),
        ({"asset_id": "a" * 129}, ["'asset_id'", "129 characters", "maximum 128"]),
        (
            {"occurred_at": "2026-12-01T08:00:00"},
            ["'occurred_at'", "2026-12-01T08:00:00", "offset"],
        ),
        ({"severity": "fatal"}, ["'severity'", '"fatal"', "debug, info"]),
        ({"latency_ms": "12"}, ["'latency_ms'", 'got string "12"', "integer"]),
    ],
)
def test_detail_sentence_says_which_field_and_why(change: dict[str, Any], words: list[str]) -> None:
    why = reject(event(**change))
    for word in words:
        assert word in why.detail, why.detail


def test_missing_fields_are_all_listed() -> None:
    why = reject({"version": "1.0", "tenant_id": "t"}, field="event_id")
    for name in ("event_id", "asset_id", "event_type", "occurred_at", "recorded_at"):
        assert f"'{name}'" in why.detail


def test_detail_escapes_control_characters_of_the_value() -> None:
    why = reject(event(tenant_id="bad\nid\x1b[31m"))
    assert "\n" not in why.detail and "\x1b" not in why.detail


# --- schema discovery ---------------------------------------------------------------------


def _schema_with_version(version: str, **extra_properties: Any) -> bytes:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    schema["properties"]["version"]["const"] = version
    schema["properties"].update(extra_properties)
    return json.dumps(schema).encode()


def test_versions_are_discovered_from_the_directory_in_numeric_order(tmp_path: Path) -> None:
    for version in ("1.10", "1.0", "1.9"):
        (tmp_path / f"v{version}").mkdir()
        (tmp_path / f"v{version}" / "AssetEvent.json").write_bytes(
            _schema_with_version(version, colour={"type": "string"})
        )
    (tmp_path / "notes").mkdir()
    contract = Contract.load(tmp_path)
    assert contract.supported == ("1.0", "1.9", "1.10")
    assert contract.latest == "1.10"
    accepted = contract.decode(orjson.dumps(event(version="1.9", colour="red")))
    assert not isinstance(accepted, Rejection), str(accepted)
    refused = contract.decode(orjson.dumps(event(version="2.0")))
    assert isinstance(refused, Rejection)
    assert "supported: 1.0, 1.9, 1.10" in refused.detail


def test_shipped_schemas_support_exactly_1_0() -> None:
    assert Contract.load().supported == ("1.0",)


def test_empty_schema_directory_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="no schema found"):
        Contract.load(tmp_path)


def test_schema_whose_const_differs_from_its_directory_is_fatal(tmp_path: Path) -> None:
    (tmp_path / "v1.1").mkdir()
    shutil.copy(SCHEMA_FILE, tmp_path / "v1.1" / "AssetEvent.json")
    with pytest.raises(FatalError, match="declares version"):
        Contract.load(tmp_path)


def test_broken_schema_is_fatal(tmp_path: Path) -> None:
    (tmp_path / "v1.0").mkdir()
    (tmp_path / "v1.0" / "AssetEvent.json").write_bytes(b"{not json")
    with pytest.raises(FatalError, match="cannot read schema"):
        Contract.load(tmp_path)


# --- asset-sink validate ------------------------------------------------------------------


def test_validate_accepts_the_valid_samples(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["validate", str(SAMPLES / "valid.jsonl")])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out == [f"line {n}: ok" for n in range(1, len(_lines("valid.jsonl")) + 1)]


def test_validate_reports_each_bad_line_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        orjson.dumps(BASE),
        orjson.dumps(event(http_status=700)),
        b"",
        b"[1]",
        orjson.dumps(event(version="2.0")),
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    code = cli.main(["validate", str(path)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[0] == "line 1: ok"
    assert out[1].startswith("line 2: schema: field 'http_status': 700 is above the maximum 599")
    assert out[2].startswith("line 3: invalid_json: ")
    assert out[3].startswith("line 4: not_an_object: ")
    assert out[4].startswith("line 5: unsupported_version: version '2.0'")
    assert len(out) == 5


def test_validate_reads_stdin_by_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(orjson.dumps(BASE) + b"\n" + b"{}\n"))
    monkeypatch.setattr("sys.stdin", stdin)
    code = cli.main(["validate"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[0] == "line 1: ok"
    assert out[1].startswith("line 2: schema: missing required fields 'event_id'")


def test_validate_applies_max_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(BASE) + b"\n")
    assert cli.main(["validate", "--max-bytes", "100", str(path)]) == 1
    assert capsys.readouterr().out.startswith("line 1: too_large: ")


def test_validate_of_a_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["validate", str(tmp_path / "absent.jsonl")]) == 2
    assert "absent.jsonl" in capsys.readouterr().err
