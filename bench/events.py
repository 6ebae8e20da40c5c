"""Realistic AssetEvents, generated deterministically, written once and reused by every contender.

:func:`generate` writes two line-aligned files into a directory:

* ``messages.tsv`` — ``<key>\\t<value>`` per event: the Kafka message key (the asset id, as the
  contract recommends) and the message value (one JSON object, optional fields absent);
* ``rows.tsv`` — the same event as a PostgreSQL COPY text row in the table's column order,
  without the three Kafka columns (known only once the message is produced).

:func:`write_copy_file` joins ``rows.tsv`` with the partition and offset each message got, so
``psql \\copy`` stores exactly the rows the sink stores. The mix of tenants, providers, event
types, outcomes and payload sizes follows examples/valid.jsonl: most messages are
300-700 bytes, a few carry payloads of several KiB. The same seed gives the same events
(``occurred_at`` is laid out over the previous and the current UTC month, up to the hour of
generation, so the same seed within the same hour gives identical files).
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

#: Columns of ``asset_events`` the rows fill, in table order (``ingested_at`` keeps its default).
EVENT_COLUMNS: tuple[str, ...] = (
    "event_id", "tenant_id", "asset_id", "event_type", "occurred_at", "recorded_at", "version",
    "correlation_id", "causation_id", "task_id", "lease_id", "task_type", "provider_id",
    "sku_category", "env", "severity", "outcome", "error_code", "error_message", "http_status",
    "latency_ms", "old_status", "new_status", "source", "payload",
)
KAFKA_COLUMNS: tuple[str, ...] = ("kafka_topic", "kafka_partition", "kafka_offset")
COPY_COLUMNS: tuple[str, ...] = EVENT_COLUMNS + KAFKA_COLUMNS

_TENANTS = ("demo-tenant", "acme", "globex", *(f"tenant-{i:02d}" for i in range(37)))
_TENANT_WEIGHTS = tuple(1.0 / (i + 1) for i in range(len(_TENANTS)))  # a few large tenants
_PROVIDERS = tuple(f"provider-{i}" for i in range(12))
_PROVIDER_WEIGHTS = (30, 20, 12, 9, 7, 6, 5, 4, 3, 2, 1, 1)
_SKUS = ("account", "proxy", "email", "phone", "residential-ip")
_TASK_TYPES = ("login", "checkout", "signup", "verify", "scrape")
_ENVS = ("prod", "staging", "dev")
_ENV_WEIGHTS = (85, 12, 3)
_EVENT_TYPES = (
    "task.started", "task.succeeded", "task.failed", "task.retried", "asset.status_changed",
    "lease.acquired", "lease.released", "asset.checked",
)
_EVENT_WEIGHTS = (25, 24, 10, 5, 12, 10, 9, 5)
_ERRORS = (
    ("IP_BANNED", 403, "upstream refused the login"),
    ("RATE_LIMITED", 429, "too many requests from this address"),
    ("CAPTCHA_REQUIRED", 403, "the provider asked for a captcha"),
    ("UPSTREAM_TIMEOUT", 504, "no answer from the provider within the deadline"),
    ("UPSTREAM_ERROR", 502, "the provider answered with a malformed page"),
    ("CREDENTIALS_INVALID", 401, "password rejected"),
    ("PROXY_UNREACHABLE", 503, "connect: connection refused"),
)
_STATUSES = ("active", "banned", "cooling", "retired", "pending", "locked")
_REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-southeast-1")
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
          "juliet", "kilo", "lima", "mike", "november", "oscar", "papa")
# Payload classes: none, small ({region, attempt}), medium (tags, headers), large (a trace of
# steps, ~1-2 KiB), huge (a captured page body, 4-8 KiB).
_PAYLOAD_CLASSES = ("none", "small", "medium", "large", "huge")
_PAYLOAD_WEIGHTS = (40, 36, 19.5, 4, 0.5)
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})

MESSAGES_FILE = "messages.tsv"
ROWS_FILE = "rows.tsv"


@dataclass(frozen=True, slots=True)
class Dataset:
    """Files of one generated set of events (see the module docstring for their format)."""

    directory: Path
    events: int
    seed: int
    window_start: dt.datetime  # earliest occurred_at (start of the previous UTC month)
    window_end: dt.datetime  # latest occurred_at (exclusive)
    value_bytes: int  # sum of the message value sizes

    @property
    def messages_path(self) -> Path:
        return self.directory / MESSAGES_FILE

    @property
    def rows_path(self) -> Path:
        return self.directory / ROWS_FILE

    def messages(self) -> Iterator[tuple[bytes, bytes]]:
        """Yield ``(key, value)`` of every event, in generation order."""
        with self.messages_path.open("rb") as fh:
            for line in fh:
                key, _, value = line.rstrip(b"\n").partition(b"\t")
                yield key, value


def month_start(moment: dt.datetime, months_back: int = 0) -> dt.datetime:
    """First instant (UTC) of the month ``months_back`` months before ``moment``'s month."""
    index = moment.year * 12 + moment.month - 1 - months_back
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def event_window(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Previous month's start up to the current hour: events in two monthly partitions."""
    start = month_start(now, 1)
    end = now.replace(minute=0, second=0, microsecond=0)
    if end <= month_start(now):  # first hour of a month: keep at least a minute of it
        end = month_start(now) + dt.timedelta(minutes=1)
    return start, end


def rfc3339(ts: float) -> str:
    """Seconds since the epoch as RFC 3339 UTC with milliseconds (``…T08:15:30.120Z``)."""
    text = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")
    return text[:-6] + "Z"


class EventFactory:
    """Builds AssetEvent dicts from a seeded random source; optional fields absent when unset."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._recent_ids: list[str] = []

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _payload(self, kind: str, attempt: int) -> dict[str, Any] | None:
        rng = self._rng
        if kind == "none":
            return None
        payload: dict[str, Any] = {"region": rng.choice(_REGIONS), "attempt": attempt}
        if kind == "small":
            return payload
        payload["tags"] = rng.sample(_WORDS, rng.randint(1, 4))
        payload["headers"] = {
            "user-agent": f"Mozilla/5.0 (X11; Linux x86_64) build/{rng.randint(1000, 9999)}",
            "accept-language": rng.choice(("en-US", "de-DE", "fr-FR", "ja-JP")),
            "x-request-id": f"{rng.getrandbits(64):016x}",
        }
        if kind == "medium":
            return payload
        steps = rng.randint(8, 20) if kind == "large" else 4
        payload["trace"] = [
            {"step": i, "name": rng.choice(_WORDS), "ms": rng.randint(1, 900),
             "ok": rng.random() > 0.1}
            for i in range(steps)
        ]
        if kind == "huge":
            words = rng.choices(_WORDS, k=rng.randint(600, 1200))
            payload["body"] = "<html><body><p>" + " ".join(words) + "</p></body></html>"
        return payload

    def event(self, occurred: float) -> dict[str, Any]:
        """One event that happened at ``occurred`` (epoch seconds)."""
        rng = self._rng
        event_type = rng.choices(_EVENT_TYPES, _EVENT_WEIGHTS)[0]
        event_id = self._uuid()
        event: dict[str, Any] = {
            "event_id": event_id,
            "tenant_id": rng.choices(_TENANTS, _TENANT_WEIGHTS)[0],
            "asset_id": f"acct-{rng.randrange(200_000):06d}",
            "event_type": event_type,
            "occurred_at": rfc3339(occurred),
            "recorded_at": rfc3339(occurred + rng.uniform(0.02, 2.0)),
            "version": "1.0",
        }
        family = event_type.split(".", 1)[0]
        if rng.random() < 0.9:
            event["correlation_id"] = f"corr-{rng.getrandbits(40):010x}"
        if family in ("task", "lease"):
            event["task_id"] = self._uuid()
            event["task_type"] = rng.choice(_TASK_TYPES)
            event["provider_id"] = rng.choices(_PROVIDERS, _PROVIDER_WEIGHTS)[0]
            event["sku_category"] = rng.choice(_SKUS)
        if family == "lease":
            event["lease_id"] = self._uuid()
        if rng.random() < 0.85:
            event["env"] = rng.choices(_ENVS, _ENV_WEIGHTS)[0]
        if rng.random() < 0.7:
            event["source"] = f"worker-{rng.randrange(64)}"
        if event_type == "task.succeeded":
            event.update(outcome="success", severity="info",
                         http_status=rng.choice((200, 200, 200, 201, 204)),
                         latency_ms=int(rng.lognormvariate(5.3, 0.6)))
        elif event_type == "task.failed":
            code, status, message = rng.choice(_ERRORS)
            event.update(outcome="failure", severity=rng.choice(("error", "error", "warning")),
                         error_code=code, error_message=message, http_status=status,
                         latency_ms=int(rng.lognormvariate(6.0, 0.9)))
        elif event_type == "task.retried":
            event["severity"] = "warning"
        elif event_type == "asset.status_changed":
            old, new = rng.sample(_STATUSES, 2)
            event.update(old_status=old, new_status=new, severity="info")
        if self._recent_ids and event_type in ("task.retried", "asset.status_changed",
                                                "task.failed", "lease.released"):
            event["causation_id"] = rng.choice(self._recent_ids)
        kind = rng.choices(_PAYLOAD_CLASSES, _PAYLOAD_WEIGHTS)[0]
        payload = self._payload(kind, rng.randint(1, 3))
        if payload is not None:
            event["payload"] = payload
        if len(self._recent_ids) < 1000:
            self._recent_ids.append(event_id)
        else:
            self._recent_ids[rng.randrange(1000)] = event_id
        return event


def copy_row(event: dict[str, Any]) -> str:
    """The event as a COPY text row over :data:`EVENT_COLUMNS` (no line end)."""
    fields = []
    for column in EVENT_COLUMNS:
        value = event.get(column)
        if value is None:
            fields.append("\\N")
        elif column == "payload":
            fields.append(orjson.dumps(value).decode().translate(_COPY_ESCAPES))
        elif isinstance(value, int):
            fields.append(str(value))
        else:
            fields.append(value.translate(_COPY_ESCAPES))
    return "\t".join(fields)


def generate(directory: Path, events: int, *, seed: int,
             now: dt.datetime | None = None) -> Dataset:
    """Write ``events`` events into ``directory`` (created) and describe them.

    Blocks for the whole generation (about 10 µs per event). ``occurred_at`` grows with the
    index over :func:`event_window` with a little jitter, like a real stream.
    """
    directory.mkdir(parents=True, exist_ok=True)
    start, end = event_window(now or dt.datetime.now(dt.UTC))
    t0, span = start.timestamp(), (end - start).total_seconds()
    factory = EventFactory(seed)
    jitter = random.Random(seed + 1)
    value_bytes = 0
    with (directory / MESSAGES_FILE).open("wb") as messages, \
            (directory / ROWS_FILE).open("w", encoding="utf-8") as rows:
        for i in range(events):
            occurred = t0 + span * (i + jitter.random()) / max(events, 1)
            event = factory.event(min(occurred, t0 + span - 0.001))
            value = orjson.dumps(event)
            value_bytes += len(value)
            messages.write(event["asset_id"].encode() + b"\t" + value + b"\n")
            rows.write(copy_row(event) + "\n")
    return Dataset(directory=directory, events=events, seed=seed, window_start=start,
                   window_end=end, value_bytes=value_bytes)


def write_copy_file(dataset: Dataset, path: Path, *, topic: str, partitions: array[int],
                    offsets: array[int]) -> Path:
    """Write the COPY text file of ``dataset`` with the Kafka coordinates each message got."""
    with dataset.rows_path.open("r", encoding="utf-8") as rows, \
            path.open("w", encoding="utf-8") as out:
        escaped_topic = topic.translate(_COPY_ESCAPES)
        for i, row in enumerate(rows):
            out.write(f"{row[:-1]}\t{escaped_topic}\t{partitions[i]}\t{offsets[i]}\n")
    return path


def write_ids_file(copy_file: Path, path: Path) -> Path:
    """The ``(event_id, occurred_at)`` pairs of a COPY file, as COPY text for
    ``asset_event_ids``."""
    with copy_file.open("r", encoding="utf-8") as rows, path.open("w", encoding="utf-8") as out:
        for row in rows:
            fields = row.split("\t", 5)
            out.write(f"{fields[0]}\t{fields[4]}\n")
    return path
