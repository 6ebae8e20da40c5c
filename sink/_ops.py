"""What the operator commands (replay, dlq, trace, forensics) share: the Kafka connection
options, the ``--dry-run``/``--execute`` switch, instants given on the command line, aligned
tables and JSON lines.

Kafka options follow the worker's precedence (flag, then ``SINK_*`` variable, then default),
so a shell with the worker's environment addresses the worker's topic and group without
flags; ``SINK_KAFKA_<PROP>`` variables and ``-X prop=value`` reach every client.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from sink.dlq import _applies_to_producer
from sink.errors import FatalError

DEFAULT_TOPIC = "asset-events"
DEFAULT_GROUP_ID = "asset-event-sink"
DEFAULT_DLQ_TOPIC = "asset-events.dlq"
REQUEST_TIMEOUT_S = 15.0  # bound of every admin request, seconds

_KAFKA_PREFIX = "SINK_KAFKA_"
# librdkafka properties the commands set themselves.
_RESERVED_KAFKA = frozenset(
    {"group.id", "bootstrap.servers", "enable.auto.commit", "enable.auto.offset.store"}
)


@dataclass(frozen=True, slots=True)
class KafkaTarget:
    """Where an operator command works: broker, topics, consumer group, client properties."""

    bootstrap_servers: str
    topic: str
    group_id: str
    dlq_topic: str
    properties: Mapping[str, str] = field(default_factory=dict, repr=False)

    def client_config(self, *, consumer: bool) -> dict[str, Any]:
        """librdkafka configuration; consumer-only properties are left out unless ``consumer``
        (the admin client and the producer would warn about them)."""
        props = {k: v for k, v in self.properties.items() if consumer or _applies_to_producer(k)}
        return {**props, "bootstrap.servers": self.bootstrap_servers}


def add_kafka_options(parser: argparse.ArgumentParser, *, dlq_topic: bool = False) -> None:
    """``--bootstrap-servers``, ``--topic``, ``--group-id`` (and ``--dlq-topic``), ``-X``."""
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        metavar="HOST:PORT",
        help="Kafka bootstrap servers [$SINK_BOOTSTRAP_SERVERS; required]",
    )
    parser.add_argument(
        "--topic", default=None, help=f"the worker's topic [$SINK_TOPIC; default {DEFAULT_TOPIC}]"
    )
    parser.add_argument(
        "--group-id",
        default=None,
        metavar="GROUP",
        help=f"the worker's consumer group [$SINK_GROUP_ID; default {DEFAULT_GROUP_ID}]",
    )
    if dlq_topic:
        parser.add_argument(
            "--dlq-topic",
            default=None,
            help=f"the dead-letter topic [$SINK_DLQ_TOPIC; default {DEFAULT_DLQ_TOPIC}]",
        )
    parser.add_argument(
        "-X",
        "--kafka-property",
        action="append",
        default=[],
        metavar="PROP=VALUE",
        help="librdkafka property (also $SINK_KAFKA_<PROP_WITH_UNDERSCORES>), e.g. for SASL",
    )


def kafka_target(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> KafkaTarget:
    """Resolve the options added by :func:`add_kafka_options`. Raises :class:`FatalError`
    when no bootstrap server is given or a property is malformed or reserved."""
    env = os.environ if environ is None else environ

    def pick(attr: str, var: str, default: str | None) -> str | None:
        value = getattr(args, attr, None) or env.get(var) or default
        return value.strip() if value else None

    bootstrap = pick("bootstrap_servers", "SINK_BOOTSTRAP_SERVERS", None)
    if not bootstrap:
        raise FatalError("no Kafka: pass --bootstrap-servers or set SINK_BOOTSTRAP_SERVERS")
    props: dict[str, str] = {}
    for var, value in env.items():
        if var.startswith(_KAFKA_PREFIX) and len(var) > len(_KAFKA_PREFIX):
            props[var[len(_KAFKA_PREFIX) :].lower().replace("_", ".")] = value
    for pair in getattr(args, "kafka_property", None) or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FatalError(f"--kafka-property {pair!r}: expected PROP=VALUE")
        props[key.strip()] = value
    reserved = sorted(props.keys() & _RESERVED_KAFKA)
    if reserved:
        raise FatalError(
            f"Kafka properties {', '.join(reserved)} are set by the command; "
            "use the matching option instead"
        )
    return KafkaTarget(
        bootstrap_servers=bootstrap,
        topic=pick("topic", "SINK_TOPIC", DEFAULT_TOPIC) or DEFAULT_TOPIC,
        group_id=pick("group_id", "SINK_GROUP_ID", DEFAULT_GROUP_ID) or DEFAULT_GROUP_ID,
        dlq_topic=pick("dlq_topic", "SINK_DLQ_TOPIC", DEFAULT_DLQ_TOPIC) or DEFAULT_DLQ_TOPIC,
        properties=props,
    )


def add_mode_options(parser: argparse.ArgumentParser, what: str) -> None:
    """The required choice between ``--dry-run`` and ``--execute`` (dest ``execute``)."""
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--dry-run",
        dest="execute",
        action="store_false",
        help="only show what --execute would do; change nothing",
    )
    mode.add_argument("--execute", dest="execute", action="store_true", help=what)


# -- instants -----------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_instant(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """An aware UTC datetime from ISO 8601 (``2026-12-01T08:00:00Z``, an offset, or none =
    UTC; a bare date is its midnight UTC) or a duration ago (``90s``, ``15m``, ``2h``, ``3d``,
    ``1w``). Raises :class:`ValueError` naming the accepted forms."""
    raw = text.strip()
    rel = _RELATIVE.match(raw)
    if rel:
        base = now or dt.datetime.now(dt.UTC)
        return base - dt.timedelta(seconds=float(rel.group(1)) * _UNIT_S[rel.group(2)])
    try:
        parsed = dt.datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not an instant: use ISO 8601 (2026-12-01T08:00:00Z, "
            "+01:00 offsets; no offset means UTC) or a duration ago (90s, 15m, 2h, 3d, 1w)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def instant_arg(text: str) -> dt.datetime:
    """argparse ``type`` for :func:`parse_instant`."""
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def epoch_ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def ms_datetime(ms: int | None) -> dt.datetime | None:
    """Milliseconds since the epoch as an aware UTC datetime; None when unknown (negative)."""
    if ms is None or ms < 0:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def format_ms(ms: int | None) -> str:
    """Milliseconds since the epoch as RFC 3339 UTC; ``-`` when unknown."""
    return cell(ms_datetime(ms))


# -- output -------------------------------------------------------------------------------------

_NUMBER_TYPES = (int, float, Decimal)


def cell(value: Any) -> str:
    """The text of one table cell: ``-`` for NULL, RFC 3339 for timestamps."""
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        text = value.astimezone(dt.UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def format_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Collection[str] = ()
) -> str:
    """An aligned plain-text table: a header line, then one line per row; columns of numbers
    (and those named in ``right``) right-aligned, the others left-aligned; cells through
    :func:`cell` unless already text. No trailing spaces."""
    texts = [[v if isinstance(v, str) else cell(v) for v in row] for row in rows]
    right_aligned = [
        name in right
        or (
            all(isinstance(row[i], _NUMBER_TYPES) or row[i] is None for row in rows)
            and any(isinstance(row[i], _NUMBER_TYPES) for row in rows)
        )
        for i, name in enumerate(columns)
    ]
    widths = [max([len(c), *(len(t[i]) for t in texts)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w)
            for v, w, r in zip(values, widths, right_aligned, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line([c.upper() for c in columns]), *(line(t) for t in texts)])


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)  # JSON numbers; double precision is what jq and friends read
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"not serialisable as JSON: {type(value).__name__}")


def json_line(obj: Mapping[str, Any]) -> str:
    """One JSON object on one line (timestamps RFC 3339, uuids as strings, numerics as
    numbers)."""
    return orjson.dumps(
        obj, default=_json_default, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS
    ).decode()
