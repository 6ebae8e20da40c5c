"""Shared pieces of the operator commands: tables, JSON lines, instants, Kafka options."""

from __future__ import annotations

import argparse
import datetime as dt
import uuid
from decimal import Decimal

import orjson
import pytest

from sink._ops import format_table, json_line, kafka_target, parse_instant
from sink.errors import FatalError

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def test_table_right_aligns_numbers_left_aligns_text_and_shows_null_as_dash():
    text = format_table(("name", "count", "note"), [("a", 5, None), ("bbbb", 1234, "x")])
    assert text.splitlines() == [
        "NAME  COUNT  NOTE",
        "a         5  -",
        "bbbb   1234  x",
    ]


def test_table_can_right_align_a_text_column_on_request():
    text = format_table(("rate",), [("5.0%",), ("100.0%",)], right={"rate"})
    assert text.splitlines() == ["  RATE", "  5.0%", "100.0%"]


def test_json_line_writes_decimals_as_numbers_and_uuids_and_timestamps_as_text():
    value = uuid.UUID(int=1)
    line = json_line({"n": Decimal("0.25"), "id": value, "at": NOW, "none": None})
    assert "\n" not in line
    assert orjson.loads(line) == {
        "n": 0.25,
        "id": str(value),
        "at": "2026-12-01T12:00:00Z",
        "none": None,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T08:00:00Z", dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC)),
        ("2026-12-01T09:00:00+01:00", dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC)),
        ("2026-12-01T08:00:00", dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC)),  # no offset: UTC
        ("2026-12-01", dt.datetime(2026, 12, 1, tzinfo=dt.UTC)),
        ("90s", NOW - dt.timedelta(seconds=90)),
        ("2h", NOW - dt.timedelta(hours=2)),
        ("3d", NOW - dt.timedelta(days=3)),
        ("1w", NOW - dt.timedelta(weeks=1)),
    ],
)
def test_instants_are_iso_8601_or_a_duration_ago(text, expected):
    assert parse_instant(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "12/01/2026", ""])
def test_other_instants_are_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_instant(text, now=NOW)


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(
        **{
            "bootstrap_servers": None,
            "topic": None,
            "group_id": None,
            "dlq_topic": None,
            "kafka_property": [],
            **kw,
        }
    )


def test_kafka_options_come_from_flags_then_sink_variables_then_defaults():
    env = {
        "SINK_BOOTSTRAP_SERVERS": "k:9092",
        "SINK_GROUP_ID": "g-env",
        "SINK_KAFKA_SASL_USERNAME": "u",
        "SINK_KAFKA_SESSION_TIMEOUT_MS": "6000",
    }
    target = kafka_target(_args(topic="t-flag", kafka_property=["client.rack=r1"]), env)
    assert (target.bootstrap_servers, target.topic, target.group_id, target.dlq_topic) == (
        "k:9092",
        "t-flag",
        "g-env",
        "asset-events.dlq",
    )
    assert target.properties == {
        "sasl.username": "u",
        "session.timeout.ms": "6000",
        "client.rack": "r1",
    }
    # consumer-only properties stay out of the admin client's and the producer's config
    assert "session.timeout.ms" not in target.client_config(consumer=False)
    assert target.client_config(consumer=True)["session.timeout.ms"] == "6000"
    assert "secret" not in repr(
        kafka_target(_args(), {**env, "SINK_KAFKA_SASL_PASSWORD": "secret"})
    )


def test_kafka_options_need_a_broker_and_refuse_properties_the_command_sets():
    with pytest.raises(FatalError, match="SINK_BOOTSTRAP_SERVERS"):
        kafka_target(_args(), {})
    with pytest.raises(FatalError, match=r"group\.id"):
        kafka_target(_args(kafka_property=["group.id=x"]), {"SINK_BOOTSTRAP_SERVERS": "k"})
    with pytest.raises(FatalError, match="PROP=VALUE"):
        kafka_target(_args(kafka_property=["nonsense"]), {"SINK_BOOTSTRAP_SERVERS": "k"})


def test_every_command_line_in_the_operations_guide_parses():
    import re
    import shlex
    from pathlib import Path

    from sink.cli import build_parser

    doc = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
    blocks = re.findall(r"```sh\n(.*?)```", doc.read_text(), flags=re.S)
    commands = [
        shlex.split(line.split(" | ")[0], comments=True)[1:]
        for block in blocks
        for line in block.splitlines()
        if line.startswith("asset-sink ") and "…" not in line
    ]
    assert len(commands) >= 15
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert callable(args.func), argv
